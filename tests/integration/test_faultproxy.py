"""The fault proxy itself, against a tiny upstream: it forwards what it should, as it comes,
and each fault does what it says (who saw the request, what the client got)."""
import http.client
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from faultproxy import FaultProxy, ProxyProcess
from util import wait_for

HERE = os.path.dirname(os.path.abspath(__file__))


class Upstream:
    """A small HTTP/1.1 server that records what reaches it. Routes:
    POST /api/echo       the body back, Content-Length framed (request body by length or
                         chunked)
    GET  /api/chunked    three chunks
    GET  /api/close      a body framed by closing the connection
    GET  /api/events     text/event-stream: 'one', then 'two' once release is set
    GET  /ws             with Upgrade: 101, then echoes raw bytes
    anything else        200 'ok'"""

    def __init__(self):
        self.seen = []                  # (method, path, body, connection id)
        self.release = threading.Event()
        up = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = 'HTTP/1.1'

            def log_message(self, *a):
                pass

            def body(self):
                if 'chunked' in (self.headers.get('Transfer-Encoding') or ''):
                    out = b''
                    while True:
                        n = int(self.rfile.readline().split(b';')[0], 16)
                        if n == 0:
                            while self.rfile.readline() not in (b'\r\n', b'\n', b''):
                                pass
                            return out
                        out += self.rfile.read(n)
                        self.rfile.readline()
                return self.rfile.read(int(self.headers.get('Content-Length') or 0))

            def reply(self, data, ctype='text/plain'):
                self.send_response(200)
                self.send_header('Content-Type', ctype)
                self.send_header('Content-Length', str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def do_POST(self):
                data = self.body()
                up.seen.append((self.command, self.path, data, id(self.connection)))
                self.reply(data)

            def do_GET(self):
                up.seen.append((self.command, self.path, b'', id(self.connection)))
                if self.path == '/api/chunked':
                    self.send_response(200)
                    self.send_header('Transfer-Encoding', 'chunked')
                    self.end_headers()
                    for part in (b'abc', b'defg', b'h'):
                        self.wfile.write(b'%x\r\n%s\r\n' % (len(part), part))
                    self.wfile.write(b'0\r\n\r\n')
                elif self.path == '/api/close':
                    self.send_response(200)
                    self.send_header('Connection', 'close')
                    self.end_headers()
                    self.wfile.write(b'until close')
                    self.close_connection = True
                elif self.path == '/api/events':
                    self.send_response(200)
                    self.send_header('Content-Type', 'text/event-stream')
                    self.send_header('Transfer-Encoding', 'chunked')
                    self.end_headers()
                    for ev in (b'data: one\n\n', None, b'data: two\n\n'):
                        if ev is None:
                            up.release.wait(30)
                            continue
                        self.wfile.write(b'%x\r\n%s\r\n' % (len(ev), ev))
                        self.wfile.flush()
                    self.wfile.write(b'0\r\n\r\n')
                elif self.path == '/ws' and self.headers.get('Upgrade'):
                    self.send_response(101)
                    self.send_header('Upgrade', 'websocket')
                    self.send_header('Connection', 'Upgrade')
                    self.end_headers()
                    self.wfile.flush()
                    while True:
                        d = self.connection.recv(4096)
                        if not d:
                            break
                        self.connection.sendall(d.upper())
                    self.close_connection = True
                else:
                    self.reply(b'ok')

        self.server = ThreadingHTTPServer(('127.0.0.1', 0), Handler)
        self.server.daemon_threads = True
        self.url = 'http://127.0.0.1:%d' % self.server.server_address[1]
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def paths(self):
        return [s[1] for s in self.seen]

    def close(self):
        self.release.set()
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def upstream():
    u = Upstream()
    yield u
    u.close()


@pytest.fixture
def proxy(upstream):
    p = FaultProxy(upstream.url, seed=7).start()
    yield p
    p.stop()


def conn(proxy, timeout=10):
    return http.client.HTTPConnection('127.0.0.1', proxy.port, timeout=timeout)


def raw_request(proxy, data, timeout=10):
    """Sends raw bytes on a fresh connection; returns (bytes received until EOF, error)."""
    s = socket.create_connection(('127.0.0.1', proxy.port), timeout=timeout)
    try:
        s.sendall(data)
        got = b''
        while True:
            d = s.recv(65536)
            if not d:
                return got, None
            got += d
    except OSError as e:
        return got, e
    finally:
        s.close()


ECHO = (b"POST /api/echo HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nConnection: close\r\n\r\n"
        b"hello")


def test_forwards_keepalive_bodies_and_framings(proxy, upstream):
    c = conn(proxy)
    c.request('POST', '/api/echo', body=b'x' * 300000)
    r = c.getresponse()
    assert r.status == 200 and r.read() == b'x' * 300000
    c.request('POST', '/api/echo', body=iter([b'chunk one ', b'chunk two']),
              encode_chunked=True)
    assert c.getresponse().read() == b'chunk one chunk two'
    c.request('GET', '/api/chunked')
    assert c.getresponse().read() == b'abcdefgh'
    c.request('GET', '/api/other?x=1')
    assert c.getresponse().read() == b'ok'
    c.request('GET', '/api/close')
    r = c.getresponse()
    assert r.read() == b'until close'
    c.close()
    assert upstream.paths() == ['/api/echo', '/api/echo', '/api/chunked', '/api/other?x=1',
                                '/api/close']
    # one client connection, one upstream connection
    assert len({s[3] for s in upstream.seen}) == 1
    cnt = proxy.counts()
    assert cnt['requests'] == cnt['forwarded'] == cnt['answered'] == 5
    assert cnt['faults'] == 0
    assert proxy.by_request()['POST /api/echo']['forwarded'] == 2


def test_p503_answers_without_forwarding_and_keeps_the_connection(proxy, upstream):
    proxy.set(p503=100)
    c = conn(proxy)
    c.request('POST', '/api/echo', body=b'lost')
    r = c.getresponse()
    assert r.status == 503 and b'503 Service Unavailable' in r.read()
    assert upstream.seen == []
    proxy.set(p503=0)
    c.request('POST', '/api/echo', body=b'kept')      # the same connection
    assert c.getresponse().read() == b'kept'
    c.close()
    assert upstream.paths() == ['/api/echo']
    assert proxy.counts()['p503'] == 1
    assert proxy.by_request()['POST /api/echo']['p503'] == 1


def test_reset_closes_with_rst_without_forwarding(proxy, upstream):
    proxy.set(reset=100)
    got, err = raw_request(proxy, ECHO)
    assert got == b'' and isinstance(err, ConnectionResetError), (got, err)
    assert upstream.seen == []
    assert proxy.counts()['reset'] == 1


def test_drop_reply_forwards_then_closes_without_answer(proxy, upstream):
    proxy.set(drop_reply=100)
    got, err = raw_request(proxy, ECHO)
    assert got == b'' and err is None, (got, err)
    assert upstream.seen == [('POST', '/api/echo', b'hello', upstream.seen[0][3])]
    assert proxy.counts()['drop_reply'] == 1


def test_drop_reply_on_a_reused_connection(proxy, upstream):
    """What makes duplicates: the second request on a kept-alive connection ran, yet its
    client sees the connection die before any answer (libcurl then resends it on a fresh
    connection, so it runs twice)."""
    c = conn(proxy)
    c.request('POST', '/api/echo', body=b'first')
    assert c.getresponse().read() == b'first'
    proxy.set(drop_reply=100)
    c.request('POST', '/api/echo', body=b'second')
    with pytest.raises((http.client.RemoteDisconnected, ConnectionError)):
        c.getresponse()
    c.close()
    assert [s[2] for s in upstream.seen] == [b'first', b'second']


def test_streams_pass_unbuffered_and_are_not_dropped(proxy, upstream):
    proxy.set(drop_reply=100)
    s = socket.create_connection(('127.0.0.1', proxy.port), timeout=10)
    s.sendall(b'GET /api/events HTTP/1.1\r\nHost: x\r\n\r\n')
    got = b''
    # 'one' comes through while upstream still holds 'two' back
    while b'data: one' not in got:
        d = s.recv(65536)
        assert d, 'stream closed early: %r' % got
        got += d
    assert b'two' not in got
    upstream.release.set()
    while not got.endswith(b'0\r\n\r\n'):
        d = s.recv(65536)
        assert d, 'stream closed early: %r' % got
        got += d
    s.close()
    assert b'text/event-stream' in got and b'data: two' in got
    c = proxy.counts()
    assert c.get('drop_reply', 0) == 0 and c['drop_reply_passed'] == 1


def test_upgrade_becomes_a_raw_pipe_without_faults(proxy, upstream):
    proxy.set(p503=100)
    s = socket.create_connection(('127.0.0.1', proxy.port), timeout=10)
    s.sendall(b'GET /ws HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\n'
              b'Upgrade: websocket\r\n\r\n')
    got = b''
    while b'\r\n\r\n' not in got:
        got += s.recv(65536)
    assert got.startswith(b'HTTP/1.1 101')
    s.sendall(b'raw bytes')
    echo = b''
    while len(echo) < 9:
        echo += s.recv(65536)
    assert echo == b'RAW BYTES'
    s.close()
    assert proxy.counts()['upgrades'] == 1


def test_preview_and_non_api_requests_are_not_faulted(proxy, upstream):
    proxy.set(p503=100)
    got, _ = raw_request(proxy, b'GET /api/x HTTP/1.1\r\nHost: 8080-local-abcdef.localhost:7\r\n'
                                b'Connection: close\r\n\r\n')
    assert got.startswith(b'HTTP/1.0 200') or got.startswith(b'HTTP/1.1 200'), got
    got, _ = raw_request(proxy, b'GET /index.html HTTP/1.1\r\nHost: x\r\n'
                                b'Connection: close\r\n\r\n')
    assert b' 200 ' in got.split(b'\r\n')[0], got
    assert upstream.paths() == ['/api/x', '/index.html']
    assert proxy.counts().get('api', 0) == 0


def test_latency(proxy, upstream):
    proxy.set(latency_ms=300)
    c = conn(proxy)
    t0 = time.monotonic()
    c.request('GET', '/api/other')
    assert c.getresponse().read() == b'ok'
    assert time.monotonic() - t0 >= 0.3
    c.close()


def _echo_held(proxy):
    """A POST /api/echo in a thread, held by the stall: (the thread, {'body': its answer})."""
    result = {}

    def call():
        c = conn(proxy, timeout=30)
        c.request('POST', '/api/echo', body=b'held')
        result['body'] = c.getresponse().read()
        c.close()
    t = threading.Thread(target=call)
    t.start()
    assert wait_for(lambda: proxy.held() == 1, 10)
    return t, result


def test_stall_holds_requests_until_resume(proxy, upstream):
    proxy.set(p503=0)
    proxy.stall()
    t, result = _echo_held(proxy)
    assert proxy.held_requests() == {'POST /api/echo': 1}
    assert upstream.seen == [] and 'body' not in result
    proxy.resume()
    t.join(10)
    assert result.get('body') == b'held'
    assert proxy.held() == 0 and proxy.counts()['stalled'] == 1


def test_stall_of_some_requests_lets_the_others_through(proxy, upstream):
    proxy.set(p503=0)
    proxy.stall(only=['POST /api/echo'])
    t, result = _echo_held(proxy)
    c = conn(proxy)
    c.request('GET', '/api/other')
    assert c.getresponse().read() == b'ok'
    c.close()
    assert upstream.paths() == ['/api/other'] and 'body' not in result
    proxy.resume()
    t.join(10)
    assert result.get('body') == b'held'


def test_stall_drops_requests_whose_client_left(proxy, upstream):
    proxy.stall()
    s = socket.create_connection(('127.0.0.1', proxy.port), timeout=10)
    s.sendall(ECHO)
    assert wait_for(lambda: proxy.held() == 1, 10)
    s.close()                           # the client gives up
    assert wait_for(lambda: proxy.held() == 0, 10)
    proxy.resume()
    c = conn(proxy)
    c.request('GET', '/api/other')
    assert c.getresponse().read() == b'ok'
    c.close()
    assert upstream.paths() == ['/api/other']
    assert proxy.counts()['stall_abandoned'] == 1


def test_outage_refuses_and_resets_then_restore(proxy, upstream):
    c = conn(proxy)
    c.request('GET', '/api/other')
    assert c.getresponse().read() == b'ok'
    port = proxy.port
    proxy.outage()
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(('127.0.0.1', port), timeout=5)
    # the kept-alive connection was reset: the next request on it fails
    with pytest.raises((ConnectionError, http.client.HTTPException)):
        c.request('GET', '/api/other')
        c.getresponse().read()
    c.close()
    proxy.restore()
    assert proxy.port == port
    c = conn(proxy)
    c.request('GET', '/api/other')
    assert c.getresponse().read() == b'ok'
    c.close()


def test_fault_rates_follow_the_settings(proxy, upstream):
    proxy.set(p503=10, reset=10, drop_reply=10)
    outcomes = {'ok': 0, 'p503': 0, 'reset': 0, 'drop_reply': 0}
    for _ in range(600):
        got, err = raw_request(proxy, ECHO)
        if isinstance(err, ConnectionResetError):
            outcomes['reset'] += 1
        elif got.startswith(b'HTTP/1.1 503'):
            outcomes['p503'] += 1
        elif got == b'':
            outcomes['drop_reply'] += 1
        else:
            assert got.startswith(b'HTTP/1.0 200') or got.startswith(b'HTTP/1.1 200'), got
            outcomes['ok'] += 1
    cnt = proxy.counts()
    for f in ('p503', 'reset', 'drop_reply'):
        assert outcomes[f] == cnt.get(f, 0), (outcomes, cnt)
        assert 25 <= outcomes[f] <= 100, outcomes
    # the upstream saw exactly the forwarded ones: answered and dropped
    assert len(upstream.seen) == outcomes['ok'] + outcomes['drop_reply']


def test_script_mode(upstream):
    p = subprocess.Popen([sys.executable, os.path.join(HERE, 'faultproxy.py'), '--upstream',
                          upstream.url, '--p503', '100'], stdout=subprocess.PIPE, text=True)
    try:
        line = p.stdout.readline()
        assert line.startswith('faultproxy: http://127.0.0.1:'), line
        port = int(line.split()[1].rsplit(':', 1)[1])
        c = http.client.HTTPConnection('127.0.0.1', port, timeout=10)
        c.request('GET', '/api/other')
        assert c.getresponse().status == 503
        c.close()
        p.send_signal(signal.SIGINT)
        out = p.communicate(timeout=20)[0]
    finally:
        if p.poll() is None:
            p.kill()
            p.wait()
    assert p.returncode == 0
    assert 'p503 1' in out and 'GET /api/other: ' in out, out
    assert upstream.seen == []



def test_proxy_process_is_driven_over_its_pipe(upstream):
    p = ProxyProcess(upstream.url, seed=3, p503=100)
    try:
        c = http.client.HTTPConnection('127.0.0.1', p.port, timeout=10)
        c.request('GET', '/api/other')
        r = c.getresponse()
        assert r.status == 503 and r.read()
        p.set(p503=0)
        c.request('GET', '/api/other')
        assert c.getresponse().read() == b'ok'
        c.close()
        # the proxy counts an answer once it has passed it on, which may be a moment after
        # the client read it
        assert wait_for(lambda: p.counts().get('answered') == 1, 10), p.counts()
        assert p.counts()['p503'] == 1
        assert p.by_request()['GET /api/other']['requests'] == 2
        with pytest.raises(ValueError):
            p.set(nonsense=1)
        p.stall()
        assert p.held() == 0
        p.resume()
    finally:
        p.stop()
    assert p.proc.returncode == 0
