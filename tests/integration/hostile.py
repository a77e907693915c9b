"""A sandbox server that says whatever a test makes it say.

sbxd never sends a name with '/' or a negative size, so how sbxfs copes with a hostile or
buggy server (or a plain container whose sandboxed code names its files) is tested against
this one: a threaded http.server that answers the routes sbxfs needs to mount and list a
directory, in either backend's shape, with the entries a test chooses, however wrong.

  ext       GET /api/x/capabilities names a server with the "fs" extension; POST /api/x/stat
            and /api/x/readdir answer from the table of directories, as sbxd would
  fallback  the capabilities route is 404, as on a plain container; POST /api/execute answers
            the `find -printf ... | base64 -w0` commands of client/sandbox_fallback.c with
            records in its format, stdout as text (a container ignores "encoding":"base64")

Both answer GET /api/ping and POST /api/watch (a stream that says "watching" and then stays
quiet, with keepalive comments, until the server stops). Everything else is a 404.

An entry is a dict: name (str, or bytes for the fallback), kind ('f', 'd', 'l', ... as find's
%y), perm, ino, nlink, uid, gid, size, blocks, atime/mtime/ctime as (seconds, nanoseconds),
target; numbers may be anything Python holds (10**30, -1, 1.5). 'mode' overrides kind and perm
for the extensions' JSON; 'raw' maps a find field name (see FIELDS) to the exact bytes the
fallback prints for it.
"""
import base64
import json
import re
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

KIND_BITS = {'f': 0o100000, 'd': 0o040000, 'l': 0o120000, 'b': 0o060000, 'c': 0o020000,
             'p': 0o010000, 's': 0o140000}
# The fields of client/fallback_parse.h's FIND_STAT_FMT, in order.
FIELDS = ('ino', 'perm', 'kind', 'nlink', 'uid', 'gid', 'size', 'blocks', 'atime', 'mtime',
          'ctime', 'name', 'target')
DEFAULTS = {'kind': 'f', 'perm': 0o644, 'nlink': 1, 'uid': 0, 'gid': 0, 'size': 0,
            'atime': (1700000000, 0), 'mtime': (1700000000, 0), 'ctime': (1700000000, 0)}

_next_ino = [1000]


def entry(name, **fields):
    """An entry with sane defaults for what the test does not set."""
    base = dict(DEFAULTS)
    if fields.get('kind') == 'd':
        base.update(size=4096, nlink=2, perm=0o755)
    e = dict(base, name=name, **fields)
    if 'ino' not in e:
        _next_ino[0] += 1
        e['ino'] = _next_ino[0]
    if 'blocks' not in e:
        e['blocks'] = (e['size'] + 511) // 512 if isinstance(e['size'], int) else 0
    return e


def _text(v):
    return v.decode('utf-8', 'surrogateescape') if isinstance(v, bytes) else v


def ext_stat(e):
    """The extensions' stat object of an entry (docs/protocol.md)."""
    mode = e.get('mode', KIND_BITS.get(e['kind'], 0) | e['perm'])
    o = {'ino': e['ino'], 'mode': mode, 'nlink': e['nlink'], 'uid': e['uid'],
         'gid': e['gid'], 'size': e['size'], 'blocks': e['blocks'],
         'atime': list(e['atime']), 'mtime': list(e['mtime']), 'ctime': list(e['ctime'])}
    if 'target' in e:
        o['target'] = _text(e['target'])
    return o


def _find_time(t):
    sec, ns = t
    if sec < 0 and ns:      # find prints -1 s + 0.5 s as -0.5
        return '-%d.%09d0' % (-(sec + 1), 1000000000 - ns)
    return '%d.%09d0' % (sec, ns)


def find_record(e):
    """The entry as find -printf FIND_STAT_FMT prints it: 13 NUL-terminated fields."""
    vals = {'ino': str(e['ino']), 'perm': '%o' % e['perm'], 'kind': e['kind'],
            'nlink': str(e['nlink']), 'uid': str(e['uid']), 'gid': str(e['gid']),
            'size': str(e['size']), 'blocks': str(e['blocks']),
            'atime': _find_time(e['atime']), 'mtime': _find_time(e['mtime']),
            'ctime': _find_time(e['ctime']), 'name': e['name'],
            'target': e.get('target', '') if e['kind'] == 'l' else ''}
    vals.update(e.get('raw', {}))
    return b''.join((v if isinstance(v, bytes) else v.encode()) + b'\0'
                    for v in (vals[f] for f in FIELDS))


class HostileServer:
    """dirs maps an absolute sandbox path to the list of entries it holds; /workspace and
    every directory in dirs stat as directories, other paths as the first entry of that name
    in their parent's list."""

    def __init__(self, mode, dirs):
        self.mode = mode
        self.dirs = dirs
        self.listings = {}              # path -> how many times its listing was asked
        self.stopping = threading.Event()
        self.lock = threading.Lock()
        handler = type('Handler', (_Handler,), {'hs': self})
        self.httpd = ThreadingHTTPServer(('127.0.0.1', 0), handler)
        self.httpd.daemon_threads = True
        self.url = 'http://127.0.0.1:%d' % self.httpd.server_address[1]
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    def stop(self):
        self.stopping.set()
        self.httpd.shutdown()
        self.httpd.server_close()

    def listed(self, path):
        with self.lock:
            return self.listings.get(path, 0)

    def lookup(self, path):
        """The entry at path, or None."""
        if path == '/workspace' or path in self.dirs:
            return entry(path.rsplit('/', 1)[1], kind='d', ino=abs(hash(path)) % 10**9 + 2)
        parent, _, name = path.rpartition('/')
        for e in self.dirs.get(parent, ()):
            if _text(e['name']) == name:
                return e
        return None

    def listing(self, path):
        with self.lock:
            self.listings[path] = self.listings.get(path, 0) + 1
        return self.dirs.get(path)


class _Handler(BaseHTTPRequestHandler):
    protocol_version = 'HTTP/1.1'
    hs = None

    def log_message(self, *args):
        pass

    def _json(self, status, obj):
        body = json.dumps(obj).encode()
        self.send_response(status)
        self.send_header('Content-Type', 'application/json')
        self.send_header('Content-Length', str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def _error(self, status, code, message, err):
        self._json(status, {'success': False, 'code': code, 'message': message,
                            'httpStatus': status, 'errno': err})

    def _body(self):
        n = int(self.headers.get('Content-Length') or 0)
        raw = self.rfile.read(n) if n else b''
        try:
            return json.loads(raw or b'{}')
        except ValueError:
            return {}

    def do_GET(self):
        if self.path == '/api/ping':
            self._json(200, {'success': True, 'status': 'healthy'})
        elif self.path == '/api/x/capabilities' and self.hs.mode == 'ext':
            self._json(200, {'success': True, 'server': 'hostile', 'version': '0.0.1',
                             'sandboxId': 'hostile', 'extensions': ['fs', 'watch']})
        else:
            self._error(404, 'NOT_FOUND', 'no route ' + self.path, 'ENOENT')

    def do_POST(self):
        body = self._body()
        hs = self.hs
        if self.path == '/api/watch':
            return self._watch()
        if hs.mode == 'ext' and self.path in ('/api/x/stat', '/api/x/readdir'):
            path = body.get('path', '')
            if self.path == '/api/x/readdir':
                ents = hs.listing(path)
                if ents is None:
                    return self._error(404, 'FILE_NOT_FOUND', 'no ' + path, 'ENOENT')
                return self._json(200, {'success': True, 'entries': [
                    {'name': _text(e['name']), 'stat': ext_stat(e)} for e in ents]})
            e = hs.lookup(path)
            if e is None:
                return self._error(404, 'FILE_NOT_FOUND', 'no ' + path, 'ENOENT')
            return self._json(200, {'success': True, 'stat': ext_stat(e)})
        if hs.mode == 'fallback' and self.path == '/api/execute':
            return self._execute(body.get('command', ''))
        self._error(404, 'NOT_FOUND', 'no route ' + self.path, 'ENOENT')

    def _execute(self, cmd):
        hs = self.hs
        out, err, code = b'', '', 0
        m = re.search(r"find -- '([^']*)/' -mindepth 1 -maxdepth 1 -printf", cmd)
        s = re.search(r"find (?:-H )?-- '([^']*)' -maxdepth 0 -printf", cmd)
        if m:
            ents = hs.listing(m.group(1))
            if ents is None:
                code, err = 1, "find: '%s/': No such file or directory\n" % m.group(1)
            else:
                out = b''.join(find_record(e) for e in ents)
        elif s and hs.lookup(s.group(1)) is not None:
            out = find_record(hs.lookup(s.group(1)))
        elif s:
            code, err = 1, "find: '%s': No such file or directory\n" % s.group(1)
        else:
            code, err = 1, 'hostile test server: unsupported command\n'
        self._json(200, {'success': True, 'exitCode': code,
                         'stdout': base64.b64encode(out).decode(), 'stderr': err,
                         'command': cmd})

    def _watch(self):
        self.send_response(200)
        self.send_header('Content-Type', 'text/event-stream')
        self.send_header('Connection', 'close')
        self.end_headers()
        self.close_connection = True
        try:
            self.wfile.write(b'data: {"type":"watching","path":"/workspace",'
                             b'"watchId":"hostile-1"}\n\n')
            self.wfile.flush()
            while not self.hs.stopping.wait(15):
                self.wfile.write(b': keepalive\n\n')
                self.wfile.flush()
        except OSError:
            pass
