#!/usr/bin/env python3
"""A fault-injecting HTTP/1.1 proxy to put between sbxfs and sbxd.

It forwards every request of a client connection, in order, over one upstream connection of
its own (kept alive as the client's is), and for each API request draws a fault from a
seeded RNG:

  p503        answer "503 Service Unavailable" itself, as a CDN would; sbxd never sees it
  reset       read the request, then reset the client connection (RST); sbxd never sees it
  drop_reply  forward the request, read sbxd's whole answer, then close the client
              connection (FIN) without a byte of it: the request ran, the reply is lost
              (streams, text/event-stream, pass: their answer is not a single reply)
  latency_ms  wait that long before forwarding
  event_delay_ms  hold each piece of a stream's answer (text/event-stream) that long before
              passing it on: change events that come late, as from the container, which
              sends them in batches

The three faults are percentages of the API requests and exclusive (at 10 each, 30 % of the
requests meet one). stall() holds every request it reads from then on, forwarding none,
until resume(); a held request whose client gave up meanwhile is dropped, the others go on
as if the network had only been slow. outage() resets every connection and closes the
listening socket (connections are refused) until restore() binds the same port again.

API requests are those whose path starts with /api/; preview requests (a Host of the shape
<port>-<sandbox id>-<token>...) and upgrades (WebSocket) are forwarded untouched, and an
upgraded connection becomes a raw pipe both ways.

Threads. One thread accepts; each client connection gets a thread that owns the client
socket, its upstream socket and the buffers of both. The other threads (the test's, the
accept thread) only ever set flags under self._lock and wake a connection thread by
shutting down the read side of its sockets, which makes its blocking recv or poll
return; the connection thread itself closes its sockets (with SO_LINGER 0 where the
connection must end in a reset), so no socket is closed under a thread still using it.

Bodies go through as they arrive, in both directions: nothing is held whole except a
request body read while stalled (the test's requests are small) and an answer that
drop_reply reads to throw away.

Counters: per event kind and per request ("POST /api/x/mkdir": the path without its query,
segments holding digits shown as {id}), so a test can say how many faults it injected.

In front of a mount use ProxyProcess, the same proxy in a child process (see why there).

As a script, for measuring by hand:
  faultproxy.py --upstream http://127.0.0.1:7070 --listen 7071 --p503 10 --reset 10 ...
prints its counters on SIGHUP and on exit (SIGINT, SIGTERM); SIGUSR1 toggles stall/resume,
SIGUSR2 toggles outage/restore.
"""
import argparse
import collections
import json
import os
import random
import re
import select
import signal
import socket
import struct
import subprocess
import sys
import threading
import time
from urllib.parse import urlsplit

FAULTS = ('p503', 'reset', 'drop_reply')
_SETTINGS = FAULTS + ('latency_ms', 'event_delay_ms')
_HEAD_MAX = 256 * 1024
_IO = 1 << 16
_PREVIEW_HOST_RE = re.compile(r'^\d+-[^.]+-')
_ID_SEGMENT_RE = re.compile(r'/[^/]*\d[^/]*')
_BODY_503 = (b'<html><head><title>503 Service Unavailable</title></head>\r\n'
             b'<body><h1>503 Service Unavailable</h1><p>injected by faultproxy</p></body>'
             b'</html>\r\n')


class _Gone(Exception):
    """The peer closed the connection, reset it, or the proxy told this thread to stop."""


class _Peer:
    """One socket with a read buffer: heads line by line, bodies in pieces as they come."""

    def __init__(self, sock):
        self.sock = sock
        self.buf = b''

    def _fill(self):
        try:
            data = self.sock.recv(_IO)
        except OSError as e:
            raise _Gone(str(e))
        if not data:
            raise _Gone('closed')
        self.buf += data

    def readline(self):
        while True:
            i = self.buf.find(b'\n')
            if i >= 0:
                line, self.buf = self.buf[:i + 1], self.buf[i + 1:]
                return line
            if len(self.buf) > _HEAD_MAX:
                raise _Gone('line too long')
            self._fill()

    def read_head(self):
        """The raw bytes of a request or status line and its headers, up to the blank line."""
        lines = []
        while True:
            line = self.readline()
            if not lines and line in (b'\r\n', b'\n'):
                continue            # stray CRLF between messages (RFC 9112 2.2)
            lines.append(line)
            if line in (b'\r\n', b'\n'):
                return b''.join(lines)
            if sum(map(len, lines)) > _HEAD_MAX:
                raise _Gone('head too long')

    def read_some(self, n=_IO):
        if not self.buf:
            self._fill()
        data, self.buf = self.buf[:n], self.buf[n:]
        return data

    def send(self, data):
        try:
            self.sock.sendall(data)
        except OSError as e:
            raise _Gone(str(e))

    def gone(self):
        """Without blocking: whether the peer has closed or reset the connection. Data it
        sent meanwhile stays queued for the next read."""
        if self.buf:
            return False
        try:
            return (bool(_readable([self.sock], 0))
                    and self.sock.recv(1, socket.MSG_PEEK | socket.MSG_DONTWAIT) == b'')
        except BlockingIOError:
            return False
        except (OSError, ValueError):   # ValueError: closed meanwhile (fileno -1)
            return True


class _Head:
    def __init__(self, raw):
        self.raw = raw
        lines = raw.decode('latin-1').split('\n')
        self.first = lines[0].strip()
        self.headers = []
        for line in lines[1:]:
            if ':' in line:
                k, v = line.split(':', 1)
                self.headers.append((k.strip().lower(), v.strip()))

    def get(self, name):
        vals = [v for k, v in self.headers if k == name]
        return vals[-1] if vals else None

    def has_token(self, name, token):
        return any(token in (t.strip().lower() for t in v.split(','))
                   for k, v in self.headers if k == name)

    def framing(self):
        """('chunked', None), ('length', n) or ('none', 0), for a request or an answer
        whose body is not otherwise ruled out."""
        if self.has_token('transfer-encoding', 'chunked'):
            return 'chunked', None
        cl = self.get('content-length')
        if cl is not None:
            return 'length', int(cl)
        return 'none', 0


def _readable(socks, timeout=None):
    """The sockets of socks that have something to read (or an EOF, or an error)."""
    p = select.poll()
    for s in socks:
        p.register(s, select.POLLIN)
    ms = None if timeout is None else int(timeout * 1000)
    fds = {fd for fd, _ in p.poll(ms)}
    return [s for s in socks if s.fileno() in fds]


def _copy_body(src, framing, length, sink, watch=None):
    """Copies one body from src to sink(bytes) as it comes, framing bytes included.
    framing 'close' reads until src closes. While waiting for src, a watch peer that goes
    away ends the copy (_Gone): a stream whose reader left is not followed any further."""
    def wait():
        nonlocal watch
        if watch is None or src.buf:
            return
        r = _readable([src.sock, watch.sock])
        if src.sock not in r:
            if watch.gone():
                raise _Gone('reader left')
            watch = None        # it sent something: stop watching, it is read later

    def piece(n):
        wait()
        return src.read_some(n)

    if framing == 'length':
        left = length
        while left:
            d = piece(min(left, _IO))
            sink(d)
            left -= len(d)
    elif framing == 'chunked':
        while True:
            wait()
            line = src.readline()
            sink(line)
            size = int(line.split(b';')[0].strip() or b'0', 16)
            if size == 0:
                while True:                 # trailers, then the blank line
                    t = src.readline()
                    sink(t)
                    if t in (b'\r\n', b'\n'):
                        return
            left = size + 2                 # the data and its CRLF
            while left:
                d = piece(min(left, _IO))
                sink(d)
                left -= len(d)
    elif framing == 'close':
        while True:
            try:
                d = piece(_IO)
            except _Gone:
                if watch is not None and watch.gone():
                    raise
                return
            sink(d)


def _reset(sock):
    """Closes sock with a RST instead of a FIN."""
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack('ii', 1, 0))
    except OSError:
        pass
    sock.close()


def _wake(sock, rst=False):
    """Makes the thread blocked on sock return; with rst, its close will send a RST."""
    try:
        if rst:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack('ii', 1, 0))
        sock.shutdown(socket.SHUT_RD)
    except OSError:
        pass


def request_key(method, target):
    """'POST /api/x/mkdir' for counting: the path without its query, and segments that hold
    digits (ids, ports) as {id}."""
    path = target.split('?', 1)[0]
    return '%s %s' % (method, _ID_SEGMENT_RE.sub('/{id}', path))


class FaultProxy:
    """The proxy. FaultProxy(upstream_url).start() listens on 127.0.0.1 (a free port unless
    port= is given); .url is what to give the client."""

    def __init__(self, upstream, port=0, host='127.0.0.1', seed=1, log=None, **faults):
        u = urlsplit(upstream)
        if u.scheme != 'http' or not u.hostname:
            raise ValueError('upstream must be http://HOST:PORT, not %r' % upstream)
        self.upstream = (u.hostname, u.port or 80)
        self.host = host
        self.port = port
        self._rng = random.Random(seed)
        self._lock = threading.Lock()
        self._cond = threading.Condition(self._lock)
        self._settings = dict.fromkeys(_SETTINGS, 0)
        self._counts = collections.Counter()
        self._by_request = collections.defaultdict(collections.Counter)
        self._stalled = False
        self._stall_only = None             # request keys a stall holds (None: all)
        self._held = collections.Counter()     # request key -> how many are held now
        self._down = False
        self._stopping = False
        self._listener = None
        self._acceptor = None
        self._conns = {}            # thread -> [client socket, upstream socket or None]
        self.log = log              # log(line) for every request's fate, when set
        self.set(**faults)

    # -- control, from any thread --

    def start(self):
        self._listen()
        return self

    @property
    def url(self):
        return 'http://%s:%d' % (self.host, self.port)

    def set(self, **faults):
        """Changes fault percentages (p503, reset, drop_reply), latency_ms and
        event_delay_ms; the others keep their values."""
        for k, v in faults.items():
            if k not in _SETTINGS:
                raise ValueError('unknown fault %r (known: %s)' % (k, ', '.join(_SETTINGS)))
            if v < 0 or (k in FAULTS and v > 100):
                raise ValueError('%s=%r is out of range' % (k, v))
        with self._lock:
            new = dict(self._settings, **faults)
            if sum(new[k] for k in FAULTS) > 100:
                raise ValueError('the fault percentages add up to more than 100: %r' % new)
            self._settings = new

    def settings(self):
        with self._lock:
            return dict(self._settings)

    def stall(self, only=None):
        """From now on requests are read and held, never forwarded, until resume(); with
        only (request keys, as held_requests() names them), those requests alone."""
        with self._lock:
            self._stalled = True
            self._stall_only = frozenset(only) if only is not None else None

    def resume(self):
        with self._lock:
            self._stalled = False
            self._cond.notify_all()

    def held(self):
        """How many requests are held by a stall right now (their clients still waiting)."""
        with self._lock:
            return sum(self._held.values())

    def held_requests(self):
        """The requests held right now: {'POST /api/x/close': 3, ...}."""
        with self._lock:
            return {k: n for k, n in self._held.items() if n}

    def outage(self):
        """Resets every connection and refuses new ones until restore()."""
        self._go_down(count=True)

    def _go_down(self, count):
        with self._lock:
            if self._down:
                return
            self._down = True
            if count:
                self._counts['outages'] += 1
            self._cond.notify_all()
            for client, upstream in self._conns.values():
                _wake(client, rst=True)
                if upstream is not None:
                    _wake(upstream)
            listener, self._listener = self._listener, None
        if listener is not None:
            _wake(listener)
            listener.close()
        if self._acceptor is not None:
            self._acceptor.join(10)

    def restore(self):
        with self._lock:
            if not self._down or self._stopping:
                return
            self._down = False
        self._listen()

    def stop(self):
        """Closes everything and waits for the connection threads."""
        with self._lock:
            self._stopping = True
        self._go_down(count=False)
        with self._lock:
            threads = list(self._conns)
        for t in threads:
            t.join(10)

    def counts(self):
        """Events so far: requests (all), api (those faults apply to), forwarded, answered,
        p503, reset, drop_reply, drop_reply_passed (a stream it let through), stalled,
        stall_abandoned (held, and its client left), upgrades, upstream_errors, outages,
        and faults (p503 + reset + drop_reply)."""
        with self._lock:
            c = dict(self._counts)
        c['faults'] = sum(c.get(k, 0) for k in FAULTS)
        return c

    def by_request(self):
        """{'POST /api/x/mkdir': {'requests': 5, 'p503': 1, ...}, ...}"""
        with self._lock:
            return {k: dict(v) for k, v in self._by_request.items()}

    def reset_counts(self):
        with self._lock:
            self._counts.clear()
            self._by_request.clear()

    def summary(self):
        """The counters in one line, and per request the faults, for messages."""
        c = self.counts()
        head = ', '.join('%s %d' % (k, c[k]) for k in sorted(c))
        lines = ['%s: %s' % (key, ', '.join('%s %d' % kv for kv in sorted(v.items())))
                 for key, v in sorted(self.by_request().items())
                 if any(v.get(f) for f in FAULTS)]
        return head + ('\n  ' + '\n  '.join(lines) if lines else '')

    # -- internals --

    def _count(self, key, *events):
        if self.log is not None:
            self.log('%.3f %s %s: %s' % (time.monotonic(), threading.current_thread().name,
                                         key, ' '.join(events)))
        with self._lock:
            for e in events:
                self._counts[e] += 1
                if key is not None:
                    self._by_request[key][e] += 1

    def _listen(self):
        s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.bind((self.host, self.port))
        s.listen(128)
        self.port = s.getsockname()[1]
        with self._lock:
            self._listener = s
        self._acceptor = threading.Thread(target=self._accept, args=(s,), daemon=True,
                                          name='faultproxy-accept')
        self._acceptor.start()

    def _accept(self, listener):
        while True:
            try:
                sock, _ = listener.accept()
            except OSError:
                return
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            with self._lock:
                if self._down:
                    _reset(sock)
                    continue
                self._counts['connections'] += 1
                t = threading.Thread(target=self._serve, args=(sock,), daemon=True,
                                     name='faultproxy-conn%d' % self._counts['connections'])
                self._conns[t] = [sock, None]
            t.start()

    def _draw(self):
        with self._lock:
            r = self._rng.random() * 100
            s = self._settings
            latency = s['latency_ms']
            for f in FAULTS:
                if r < s[f]:
                    return f, latency
                r -= s[f]
            return None, latency

    def _set_upstream(self, sock):
        with self._lock:
            self._conns[threading.current_thread()][1] = sock
            if self._down:              # an outage began meanwhile
                raise _Gone('outage')

    def _connect(self):
        sock = socket.create_connection(self.upstream, timeout=10)
        sock.settimeout(None)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self._set_upstream(sock)
        return _Peer(sock)

    def _serve(self, sock):
        client = _Peer(sock)
        up = None
        rst = False
        try:
            while True:
                up, again, rst = self._one(client, up)
                if not again:
                    return
        except _Gone:
            pass
        finally:
            with self._lock:
                self._conns.pop(threading.current_thread(), None)
                rst = rst or self._down
            if up is not None:
                up.sock.close()
            if rst:
                _reset(sock)
            else:
                sock.close()

    def _one(self, client, up):
        """Serves one request of the client connection; returns (upstream peer or None,
        whether the connection goes on, whether to end it with a reset)."""
        req = _Head(client.read_head())
        parts = req.first.split(' ')
        if len(parts) != 3:
            raise _Gone('not HTTP')
        method, target = parts[0], parts[1]
        key = request_key(method, target)
        upgrade = req.has_token('connection', 'upgrade') and req.get('upgrade') is not None
        host = req.get('host') or ''
        api = (target.startswith('/api/') and not upgrade
               and not _PREVIEW_HOST_RE.match(host))
        self._count(key, 'requests', *(['api'] if api else []))
        framing, length = req.framing()
        body = None                         # the request body when read before forwarding

        if api:
            with self._lock:
                stalled = self._stalled and (self._stall_only is None
                                             or key in self._stall_only)
            if stalled:
                body = []
                _copy_body(client, framing, length, body.append)
                if not self._hold(client, key):
                    return up, False, False
            fault, latency = self._draw()
            if latency:
                time.sleep(latency / 1000)
            if fault in ('p503', 'reset'):
                expect = req.has_token('expect', '100-continue')
                if body is None and not expect:
                    _copy_body(client, framing, length, lambda d: None)
                self._count(key, fault)
                if fault == 'reset':
                    return up, False, True
                keep = not expect and not req.has_token('connection', 'close')
                client.send(b'HTTP/1.1 503 Service Unavailable\r\n'
                            b'Content-Type: text/html\r\nContent-Length: %d\r\n'
                            b'Connection: %s\r\n\r\n%s' % (
                                len(_BODY_503), b'keep-alive' if keep else b'close',
                                _BODY_503))
                return up, keep, False
        else:
            fault = None

        # forward
        if up is not None and up.gone():    # sbxd closed it while idle
            up.sock.close()
            up = None
        try:
            if up is None:
                up = self._connect()
            up.send(req.raw)
            if body is not None:
                up.send(b''.join(body))
            else:
                _copy_body(client, framing, length, up.send)
            self._count(key, 'forwarded')
            while True:
                resp = _Head(up.read_head())
                status = int(resp.first.split(' ')[1])
                if status == 101 or not 100 <= status < 200:
                    break
                client.send(resp.raw)       # 100 Continue, 103 Early Hints
        except (_Gone, OSError, ValueError, IndexError) as e:
            if not isinstance(e, _Gone) or str(e) != 'outage':
                self._count(key, 'upstream_errors')
            raise _Gone('upstream: %s' % e)

        if status == 101:
            self._count(key, 'upgrades')
            client.send(resp.raw)
            self._pipe(client, up)
            return up, False, False

        if method == 'HEAD' or status in (204, 304):
            rframing, rlength = 'none', 0
        else:
            rframing, rlength = resp.framing()
            if rframing == 'none' and resp.get('content-length') is None:
                rframing = 'close'
        stream = (resp.get('content-type') or '').startswith('text/event-stream')
        close = (rframing == 'close' or resp.has_token('connection', 'close')
                 or req.has_token('connection', 'close'))

        if fault == 'drop_reply':
            if stream:
                self._count(key, 'drop_reply_passed')
            else:
                _copy_body(up, rframing, rlength, lambda d: None)
                self._count(key, 'drop_reply')
                return up, False, False

        def late(d):                        # a stream's pieces, event_delay_ms late
            with self._lock:
                delay = self._settings['event_delay_ms']
            if delay:
                time.sleep(delay / 1000)
            client.send(d)

        client.send(resp.raw)
        _copy_body(up, rframing, rlength, late if stream else client.send, watch=client)
        self._count(key, 'answered')
        if close:
            return up, False, False
        return up, True, False

    def _hold(self, client, key):
        """Waits while stalled; False when the client left meanwhile (or the proxy stops)."""
        self._count(key, 'stalled')
        with self._lock:
            self._held[key] += 1
            try:
                while self._stalled and not self._down:
                    self._cond.wait(0.1)
                    if client.gone():
                        self._counts['stall_abandoned'] += 1
                        self._by_request[key]['stall_abandoned'] += 1
                        return False
                return not self._down
            finally:
                self._held[key] -= 1

    def _pipe(self, a, b):
        """Joins two upgraded connections until both have closed."""
        for p, q in ((a, b), (b, a)):
            if p.buf:
                q.send(p.buf)
                p.buf = b''
        open_ = {a.sock: b.sock, b.sock: a.sock}
        while open_:
            for s in _readable(list(open_)):
                try:
                    d = s.recv(_IO)
                except OSError:
                    d = b''
                if d:
                    try:
                        open_[s].sendall(d)
                    except OSError:
                        return
                else:
                    try:
                        open_[s].shutdown(socket.SHUT_WR)
                    except OSError:
                        pass
                    del open_[s]


class ProxyProcess:
    """A FaultProxy in a child process, driven over a pipe, with the same methods (set,
    stall, resume, held, held_requests, outage, restore, counts, by_request, reset_counts,
    summary, stop).

    Use this one in front of a mount. A process that forks (subprocess) hands every child
    its descriptors, the proxy's sockets among them, until the child execs (they are
    close-on-exec); a child that meanwhile touches the mount (subprocess's cwd= is a chdir
    between fork and exec) waits for an answer on a connection whose client side it holds
    open itself, so a connection the proxy closes stays open and the client waits for its
    full timeout. In a process of its own the proxy's sockets are nobody else's."""

    _CALLS = ('set', 'settings', 'stall', 'resume', 'held', 'held_requests', 'outage',
              'restore', 'counts', 'by_request', 'reset_counts', 'summary')

    def __init__(self, upstream, seed=1, verbose=False, **faults):
        args = [sys.executable, os.path.abspath(__file__), '--upstream', upstream,
                '--seed', str(seed), '--control']
        self.proc = subprocess.Popen(args + (['--verbose'] if verbose else []),
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        self._lock = threading.Lock()
        hello = self.proc.stdout.readline()
        if not hello:
            self.proc.wait()
            raise RuntimeError('faultproxy did not start (exit %s)' % self.proc.returncode)
        self.host, self.port = '127.0.0.1', json.loads(hello)['port']
        if faults:
            self.set(**faults)

    @property
    def url(self):
        return 'http://%s:%d' % (self.host, self.port)

    def _call(self, name, **kwargs):
        with self._lock:
            try:
                self.proc.stdin.write(json.dumps({'call': name, 'kwargs': kwargs}) + '\n')
                self.proc.stdin.flush()
                line = self.proc.stdout.readline()
            except OSError:
                line = ''
        if not line:
            raise RuntimeError('the faultproxy process is gone (exit %s)' % self.proc.poll())
        r = json.loads(line)
        if 'error' in r:
            raise ValueError(r['error'])
        return r['ok']

    def __getattr__(self, name):
        if name in self._CALLS:
            return lambda **kw: self._call(name, **kw)
        raise AttributeError(name)

    def stop(self):
        if self.proc.poll() is None:
            try:
                self.proc.stdin.close()     # EOF: it stops and exits
                self.proc.wait(20)
            except (OSError, subprocess.TimeoutExpired):
                self.proc.kill()
                self.proc.wait()
        self.proc.stdout.close()


def _control(p):
    """Serves ProxyProcess calls from stdin, one JSON line each, until EOF."""
    print(json.dumps({'port': p.port}), flush=True)
    while True:
        line = sys.stdin.readline()
        if not line:
            break
        req = json.loads(line)
        if req['call'] not in ProxyProcess._CALLS:
            out = {'error': 'unknown call %r' % req['call']}
        else:
            try:
                out = {'ok': getattr(p, req['call'])(**req['kwargs'])}
            except (ValueError, TypeError) as e:
                out = {'error': str(e)}
        print(json.dumps(out), flush=True)
    p.stop()


def main():
    ap = argparse.ArgumentParser(description='A fault-injecting HTTP/1.1 proxy for sbxd.')
    ap.add_argument('--upstream', required=True, help='http://HOST:PORT of sbxd')
    ap.add_argument('--listen', type=int, default=0, help='port on 127.0.0.1 (0: any free)')
    ap.add_argument('--seed', type=int, default=1)
    ap.add_argument('--p503', type=float, default=0, help='%% of API requests answered 503')
    ap.add_argument('--reset', type=float, default=0, help='%% reset without forwarding')
    ap.add_argument('--drop-reply', type=float, default=0,
                    help='%% forwarded whose answer is lost')
    ap.add_argument('--latency-ms', type=float, default=0)
    ap.add_argument('--event-delay-ms', type=float, default=0)
    ap.add_argument('--verbose', action='store_true',
                    help='print every request\'s fate to stderr')
    ap.add_argument('--control', action='store_true',
                    help='driven by ProxyProcess: JSON calls on stdin, answers on stdout')
    a = ap.parse_args()
    log = (lambda line: print(line, file=sys.stderr, flush=True)) if a.verbose else None
    p = FaultProxy(a.upstream, port=a.listen, seed=a.seed, log=log, p503=a.p503,
                   reset=a.reset, drop_reply=a.drop_reply, latency_ms=a.latency_ms,
                   event_delay_ms=a.event_delay_ms).start()
    if a.control:
        signal.signal(signal.SIGINT, signal.SIG_IGN)    # the test's Ctrl-C is for pytest
        return _control(p)
    done = threading.Event()

    def report(*_):
        print('faultproxy: %s' % p.summary(), flush=True)

    def toggle_stall(*_):
        with p._lock:
            stalled = p._stalled
        (p.resume if stalled else p.stall)()
        print('faultproxy: %s' % ('resumed' if stalled else 'stalled'), flush=True)

    def toggle_outage(*_):
        with p._lock:
            down = p._down
        (p.restore if down else p.outage)()
        print('faultproxy: %s' % ('restored' if down else 'outage'), flush=True)

    signal.signal(signal.SIGHUP, report)
    signal.signal(signal.SIGUSR1, toggle_stall)
    signal.signal(signal.SIGUSR2, toggle_outage)
    signal.signal(signal.SIGINT, lambda *_: done.set())
    signal.signal(signal.SIGTERM, lambda *_: done.set())
    # last: whoever reads this line may signal us at once
    print('faultproxy: %s -> http://%s:%d (%r)' % (p.url, p.upstream[0], p.upstream[1],
                                                  p.settings()), flush=True)
    while not done.wait(1):
        pass
    p.stop()
    report()


if __name__ == '__main__':
    sys.exit(main())
