"""Ports and preview URLs (/api/x/ports and sbxd's preview proxy), against a real sbxd.

The service behind the preview URLs is a small Python HTTP server on the host's loopback (the
sandbox shares the host's network namespace): it echoes requests, serves 20 MB with a length,
in chunks and until it closes, drips a slow answer and accepts a WebSocket-style upgrade after
which it echoes raw bytes.
"""
import hashlib
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request

import pytest

from util import SLOW, Sandbox, free_port, wait_for

SERVICE = r'''
import hashlib, json, sys, time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

BIG = 20 * 1024 * 1024

def big_block(i):
    return hashlib.sha256(b'%d' % i).digest() * 2048     # 64 KiB

class H(BaseHTTPRequestHandler):
    protocol_version = 'HTTP/1.1'

    def log_message(self, *a):
        pass

    def answer(self, status, body, ctype='application/json', extra=()):
        self.send_response(status)
        self.send_header('Content-Type', ctype)
        self.send_header('Content-Length', str(len(body)))
        for k, v in extra:
            self.send_header(k, v)
        self.end_headers()
        if self.command != 'HEAD':
            self.wfile.write(body)

    def echo(self):
        n = int(self.headers.get('Content-Length') or 0)
        body = self.rfile.read(n) if n else b''
        if self.headers.get('Transfer-Encoding', '').lower() == 'chunked':
            while True:
                size = int(self.rfile.readline().split(b';')[0], 16)
                body += self.rfile.read(size)
                self.rfile.readline()
                if size == 0:
                    break
        out = json.dumps({'method': self.command, 'path': self.path,
                          'headers': {k.lower(): v for k, v in self.headers.items()},
                          'body_sha': hashlib.sha256(body).hexdigest(),
                          'body_len': len(body)}).encode()
        self.answer(200, out, extra=[('Set-Cookie', 'a=1'), ('Set-Cookie', 'b=2'),
                                     ('X-Service', 'yes')])

    def do_GET(self):
        if self.path == '/big':
            self.send_response(200)
            self.send_header('Content-Type', 'application/octet-stream')
            self.send_header('Content-Length', str(BIG))
            self.end_headers()
            for i in range(BIG // 65536):
                self.wfile.write(big_block(i))
        elif self.path == '/big-chunked':
            self.send_response(200)
            self.send_header('Transfer-Encoding', 'chunked')
            self.end_headers()
            for i in range(BIG // 65536):
                b = big_block(i)
                self.wfile.write(b'%x\r\n' % len(b) + b + b'\r\n')
            self.wfile.write(b'0\r\n\r\n')
        elif self.path == '/big-close':
            self.send_response(200)
            self.send_header('Connection', 'close')
            self.end_headers()
            for i in range(BIG // 65536):
                self.wfile.write(big_block(i))
            self.close_connection = True
        elif self.path == '/slow':
            self.send_response(200)
            self.send_header('Transfer-Encoding', 'chunked')
            self.end_headers()
            for i in range(3):
                b = b'tick %d\n' % i
                self.wfile.write(b'%x\r\n' % len(b) + b + b'\r\n')
                self.wfile.flush()
                time.sleep(1)
            self.wfile.write(b'0\r\n\r\n')
        elif self.path == '/ws' and self.headers.get('Upgrade', '').lower() == 'websocket':
            self.send_response(101)
            self.send_header('Upgrade', 'websocket')
            self.send_header('Connection', 'Upgrade')
            self.send_header('Sec-WebSocket-Accept', 'test-accept')
            self.end_headers()
            self.wfile.flush()
            conn = self.connection
            while True:
                data = conn.recv(65536)
                if not data:
                    break
                conn.sendall(data.upper())
            self.close_connection = True
        elif self.path == '/nothing':
            self.answer(204, b'')
        else:
            self.echo()

    do_POST = do_PUT = do_DELETE = do_PATCH = echo

    def do_HEAD(self):
        self.answer(200, b'x' * 1234, 'text/plain')

ThreadingHTTPServer(('127.0.0.1', int(sys.argv[1])), H).serve_forever()
'''


def big_digest():
    h = hashlib.sha256()
    for i in range(20 * 1024 * 1024 // 65536):
        h.update(hashlib.sha256(b'%d' % i).digest() * 2048)
    return h.hexdigest()


def port_open(port):
    try:
        socket.create_connection(('127.0.0.1', port), timeout=1).close()
        return True
    except OSError:
        return False


@pytest.fixture(scope='module')
def server(build_dir):
    s = Sandbox(build_dir, 'ext')
    s.start_server()
    yield s
    problems = s.close()
    s.remove()
    assert not problems, problems


@pytest.fixture(scope='module')
def service(tmp_path_factory):
    """The service's port; it runs for the whole module."""
    port = free_port()
    p = subprocess.Popen(['/usr/bin/python3', '-c', SERVICE, str(port)],
                         stdin=subprocess.DEVNULL)
    try:
        assert wait_for(lambda: p.poll() is not None or port_open(port), 20 * SLOW)
        assert p.poll() is None, 'the test service did not start'
        yield port
    finally:
        p.terminate()
        p.wait(10)


def expose(server, port, name=None):
    body = {'port': port}
    if name is not None:
        body['name'] = name
    status, r = server.api('/api/x/ports', body)
    assert status == 200 and r['success'], (status, r)
    return r


def preview_host(url):
    return re.match(r'http://([^/]+)/$', url).group(1)


def fetch(server, host, path='/', data=None, method=None, headers=(), timeout=60):
    """Request to sbxd with this Host header; (status, headers, body)."""
    req = urllib.request.Request(server.url + path, data=data, method=method)
    req.add_header('Host', host)
    for k, v in headers:
        req.add_header(k, v)
    try:
        with urllib.request.urlopen(req, timeout=timeout * SLOW) as r:
            return r.status, r.headers, r.read()
    except urllib.error.HTTPError as e:
        return e.code, e.headers, e.read()


def test_expose_list_unexpose(server, service):
    r = expose(server, service, 'web')
    assert r['port'] == service and r['name'] == 'web'
    m = re.match(r'http://(\d+)-local-([a-z0-9_]{16})\.localhost:(\d+)/$', r['url'])
    assert m, r['url']
    assert int(m.group(1)) == service and int(m.group(3)) == server.port
    # exposing again keeps the URL
    again = expose(server, service)
    assert again['url'] == r['url'] and again['name'] == 'web'
    status, l = server.api('/api/x/ports')
    assert status == 200
    assert {'port': service, 'url': r['url'], 'name': 'web', 'status': 'active'} in l['ports']
    status, d = server.api('/api/x/ports/%d' % service, method='DELETE')
    assert status == 200 and d['success'], d
    status, l = server.api('/api/x/ports')
    assert all(p['port'] != service for p in l['ports'])
    status, d = server.api('/api/x/ports/%d' % service, method='DELETE')
    assert status == 404 and d['code'] == 'PORT_NOT_EXPOSED' and d['errno'] == 'ENOENT', d
    # a new exposure is a new token
    r2 = expose(server, service)
    assert r2['url'] != r['url'] and r2['name'] is None
    server.api('/api/x/ports/%d' % service, method='DELETE')


@pytest.mark.parametrize('body', [{}, {'port': 80}, {'port': 1023}, {'port': 65536},
                                  {'port': '8080'}, {'port': 8080.5}, {'port': 8080, 'name': 3},
                                  'own'])
def test_expose_refuses(server, body):
    if body == 'own':
        body = {'port': server.port}
    status, r = server.api('/api/x/ports', body)
    assert status == 400 and r['code'] == 'VALIDATION_FAILED' and r['errno'] == 'EINVAL', r


def test_ports_need_the_token(server):
    for route, body, method in (('/api/x/ports', {'port': 8080}, None),
                                ('/api/x/ports', None, None),
                                ('/api/x/ports/8080', None, 'DELETE')):
        status, r = server.api(route, body, token=None, method=method)
        assert status == 401, (route, r)


def test_proxy_get_and_headers(server, service):
    r = expose(server, service)
    host = preview_host(r['url'])
    status, headers, body = fetch(server, host, '/some/p%20ath?x=a+b&y=%2F&z')
    assert status == 200, body
    echo = json.loads(body)
    assert echo['method'] == 'GET'
    assert echo['path'] == '/some/p%20ath?x=a+b&y=%2F&z', 'the target must pass unchanged'
    h = echo['headers']
    assert h['x-forwarded-host'] == host
    assert h['x-forwarded-proto'] == 'http'
    assert h['x-original-url'] == 'http://%s/some/p%%20ath?x=a+b&y=%%2F&z' % host
    assert headers.get_all('Set-Cookie') == ['a=1', 'b=2']
    assert headers['X-Service'] == 'yes'
    # sbxd's own token never reaches the service; other credentials do
    _, _, body = fetch(server, host, '/', headers=[('Authorization', 'Bearer ' + server.token)])
    assert 'authorization' not in json.loads(body)['headers']
    _, _, body = fetch(server, host, '/', headers=[('Authorization', 'Bearer app-secret')])
    assert json.loads(body)['headers']['authorization'] == 'Bearer app-secret'
    # upper case in the Host is the same name
    status, _, _ = fetch(server, host.upper(), '/')
    assert status == 200
    server.api('/api/x/ports/%d' % service, method='DELETE')


def test_proxy_post_body_round_trips(server, service):
    r = expose(server, service)
    host = preview_host(r['url'])
    data = os.urandom(3 * 1024 * 1024 + 17)
    status, _, body = fetch(server, host, '/upload', data=data, method='POST')
    assert status == 200, body
    echo = json.loads(body)
    assert echo['method'] == 'POST' and echo['body_len'] == len(data)
    assert echo['body_sha'] == hashlib.sha256(data).hexdigest()
    # a chunked request body goes on chunked
    def gen():
        for i in range(0, len(data), 100000):
            yield data[i:i + 100000]
    req = urllib.request.Request(server.url + '/chunked', data=gen(), method='PUT')
    req.add_header('Host', host)
    req.add_header('Transfer-Encoding', 'chunked')
    with urllib.request.urlopen(req, timeout=60 * SLOW) as resp:
        echo = json.loads(resp.read())
    assert echo['method'] == 'PUT' and echo['body_len'] == len(data)
    assert echo['body_sha'] == hashlib.sha256(data).hexdigest()
    server.api('/api/x/ports/%d' % service, method='DELETE')


def test_proxy_head_and_no_content(server, service):
    r = expose(server, service)
    host = preview_host(r['url'])
    status, headers, body = fetch(server, host, '/', method='HEAD')
    assert status == 200 and body == b'' and headers['Content-Length'] == '1234'
    status, headers, body = fetch(server, host, '/nothing')
    assert status == 204 and body == b''
    server.api('/api/x/ports/%d' % service, method='DELETE')


@pytest.mark.parametrize('path', ['/big', '/big-chunked', '/big-close'])
def test_proxy_20mb_download(server, service, path):
    r = expose(server, service)
    host = preview_host(r['url'])
    req = urllib.request.Request(server.url + path)
    req.add_header('Host', host)
    h = hashlib.sha256()
    n = 0
    with urllib.request.urlopen(req, timeout=120 * SLOW) as resp:
        assert resp.status == 200
        while True:
            b = resp.read(1 << 20)
            if not b:
                break
            h.update(b)
            n += len(b)
    assert n == 20 * 1024 * 1024
    assert h.hexdigest() == big_digest()
    server.api('/api/x/ports/%d' % service, method='DELETE')


def test_proxy_streams_slow_answers(server, service):
    """The first piece of a slow answer arrives before the answer is complete."""
    r = expose(server, service)
    req = urllib.request.Request(server.url + '/slow')
    req.add_header('Host', preview_host(r['url']))
    start = time.monotonic()
    with urllib.request.urlopen(req, timeout=30 * SLOW) as resp:
        first = resp.readline()
        first_at = time.monotonic() - start
        rest = resp.read()
    assert first == b'tick 0\n' and rest == b'tick 1\ntick 2\n'
    assert first_at < 1.5 * SLOW, 'the first line waited for the whole answer'
    server.api('/api/x/ports/%d' % service, method='DELETE')


def test_preview_refusals(server, service):
    r = expose(server, service)
    host = preview_host(r['url'])
    m = re.match(r'(\d+)-local-([a-z0-9_]+)(\..*)$', host)
    port, token, rest = m.groups()
    wrong_token = ('a' if token[0] != 'a' else 'b') + token[1:]
    other = free_port()
    for bad in ('%s-local-%s%s' % (port, wrong_token, rest),          # wrong token
                '%s-local-%s%s' % (port, token[:-1], rest),           # short token
                '%d-local-%s%s' % (other, token, rest),               # unexposed port
                '%s-other-%s%s' % (port, token, rest),                # other sandbox
                '%s-local-%s.example.com' % (port, wrong_token)):     # any suffix
        status, headers, body = fetch(server, bad, '/api/ping')
        assert status == 404 and body == b'preview URL not found\n', (bad, status, body)
        assert headers['Content-Type'].startswith('text/plain')
    # the right one with another suffix works
    status, _, _ = fetch(server, '%s-local-%s.example.com' % (port, token), '/')
    assert status == 200
    # and never needs sbxd's token, while the API still does
    status, _, _ = fetch(server, '127.0.0.1:%d' % server.port, '/api/x/ports')
    assert status == 401
    server.api('/api/x/ports/%d' % service, method='DELETE')
    status, _, body = fetch(server, host, '/')
    assert status == 404 and body == b'preview URL not found\n', 'unexposing must end the URL'


def test_upstream_down_is_502(server):
    port = free_port()
    r = expose(server, port)
    status, headers, body = fetch(server, preview_host(r['url']), '/')
    assert status == 502 and b'port %d' % port in body, body
    assert headers['Content-Type'].startswith('text/plain')
    server.api('/api/x/ports/%d' % port, method='DELETE')


def test_websocket_upgrade_tunnel(server, service):
    r = expose(server, service)
    host = preview_host(r['url'])
    s = socket.create_connection(('127.0.0.1', server.port), timeout=30 * SLOW)
    try:
        s.sendall(('GET /ws HTTP/1.1\r\nHost: %s\r\nUpgrade: websocket\r\n'
                   'Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n'
                   'Sec-WebSocket-Version: 13\r\n\r\n' % host).encode())
        head = b''
        while b'\r\n\r\n' not in head:
            b = s.recv(4096)
            assert b, 'closed during the handshake: %r' % head
            head += b
        head, rest = head.split(b'\r\n\r\n', 1)
        lines = head.decode().split('\r\n')
        assert lines[0].startswith('HTTP/1.1 101'), lines
        fields = {l.split(':', 1)[0].lower(): l.split(':', 1)[1].strip() for l in lines[1:]}
        assert fields['upgrade'].lower() == 'websocket'
        assert fields['sec-websocket-accept'] == 'test-accept'
        for msg in (b'hello', b'x' * 200000):
            s.sendall(msg)
            got = rest
            rest = b''
            while len(got) < len(msg):
                b = s.recv(65536)
                assert b, 'tunnel closed early'
                got += b
            assert got == msg.upper()
        s.shutdown(socket.SHUT_WR)
        assert s.recv(10) == b'', 'the tunnel should close after both sides did'
    finally:
        s.close()
    server.api('/api/x/ports/%d' % service, method='DELETE')


@pytest.mark.skipif(not shutil.which('curl'), reason='curl is not installed')
def test_curl_resolves_localhost_names(server, service):
    """curl (7.88) resolves *.localhost to loopback by itself: the URL works as given."""
    r = expose(server, service)
    p = subprocess.run(['curl', '-sS', '--max-time', str(30 * SLOW), r['url'] + 'via-curl'],
                       capture_output=True, timeout=60 * SLOW)
    assert p.returncode == 0, p.stderr
    assert json.loads(p.stdout)['path'] == '/via-curl'
    server.api('/api/x/ports/%d' % service, method='DELETE')


def test_no_extensions_has_no_ports(build_dir):
    s = Sandbox(build_dir, 'fallback')
    s.start_server()
    try:
        status, r = s.api('/api/x/ports', {'port': 8080})
        assert status == 404, r
    finally:
        problems = s.close()
        s.remove()
    assert not problems, problems


def test_stop_with_open_tunnel_and_stream(build_dir, service):
    """SIGTERM ends sbxd promptly even with a WebSocket tunnel and a stalled download open."""
    s = Sandbox(build_dir, 'ext')
    s.start_server()
    socks = []
    try:
        host = preview_host(expose(s, service)['url'])
        ws = socket.create_connection(('127.0.0.1', s.port), timeout=30 * SLOW)
        socks.append(ws)
        ws.sendall(('GET /ws HTTP/1.1\r\nHost: %s\r\nUpgrade: websocket\r\n'
                    'Connection: Upgrade\r\n\r\n' % host).encode())
        assert ws.recv(100).startswith(b'HTTP/1.1 101')
        for path in ('/big', '/slow'):
            c = socket.create_connection(('127.0.0.1', s.port), timeout=30 * SLOW)
            socks.append(c)
            c.sendall(('GET %s HTTP/1.1\r\nHost: %s\r\n\r\n' % (path, host)).encode())
            assert c.recv(100).startswith(b'HTTP/1.1 200')
        start = time.monotonic()
        s.stop_server()
        assert time.monotonic() - start < 5 * SLOW
    finally:
        for c in socks:
            c.close()
        problems = s.close()
        s.remove()
    assert not problems, problems


@pytest.mark.parametrize('answer', [b'', b'garbage\r\n\r\n', b'HTTP/1.1 200 OK\r\nContent-'])
def test_upstream_bad_answer_is_502(server, answer):
    import threading
    ls = socket.socket()
    ls.bind(('127.0.0.1', 0))
    ls.listen(4)
    port = ls.getsockname()[1]

    def serve():
        c, _ = ls.accept()
        c.recv(65536)
        c.sendall(answer)
        c.close()
    t = threading.Thread(target=serve, daemon=True)
    t.start()
    try:
        r = expose(server, port)
        status, _, body = fetch(server, preview_host(r['url']), '/')
        assert status == 502 and b'port %d' % port in body, (status, body)
    finally:
        t.join(10)
        ls.close()
        server.api('/api/x/ports/%d' % port, method='DELETE')
