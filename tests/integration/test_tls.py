"""https backends: sbxfs verifies the server's certificate and its name, unless told not to.

sbxd speaks plain HTTP; a TLS-terminating forwarder (Python's ssl module, a certificate made
by the openssl command) stands in front of it as a Worker or a reverse proxy would.
"""
import os
import socket
import ssl
import subprocess
import threading
import time

from util import SLOW, is_mounted


def make_cert(tmp, name, san):
    key, cert = os.path.join(tmp, name + '.key'), os.path.join(tmp, name + '.pem')
    subprocess.run(['openssl', 'req', '-x509', '-newkey', 'rsa:2048', '-nodes', '-days', '2',
                    '-subj', '/CN=sbxfs test', '-addext', 'subjectAltName=' + san,
                    '-keyout', key, '-out', cert], check=True, capture_output=True, timeout=60)
    return key, cert


class TLSForwarder:
    """Accepts TLS on a loopback port and forwards the plain bytes to sbxd."""

    def __init__(self, key, cert, upstream_port):
        self.ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        self.ctx.load_cert_chain(cert, key)
        self.upstream = ('127.0.0.1', upstream_port)
        self.sock = socket.create_server(('127.0.0.1', 0))
        self.port = self.sock.getsockname()[1]
        self.handshakes_refused = 0
        self.closing = False
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self):
        while not self.closing:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            threading.Thread(target=self._serve, args=(conn,), daemon=True).start()

    def _serve(self, conn):
        try:
            tls = self.ctx.wrap_socket(conn, server_side=True)
        except (ssl.SSLError, OSError):
            self.handshakes_refused += 1    # the client did not trust us: what we test
            conn.close()
            return
        up = socket.create_connection(self.upstream)
        threading.Thread(target=self._pump, args=(up, tls), daemon=True).start()
        self._pump(tls, up)

    @staticmethod
    def _pump(src, dst):
        try:
            while True:
                data = src.recv(65536)
                if not data:
                    break
                dst.sendall(data)
        except OSError:
            pass
        for s in (src, dst):
            try:
                s.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass

    def close(self):
        self.closing = True
        self.sock.close()


def forwarder_for(server, san):
    key, cert = make_cert(server.tmp, 'cert', san)
    fwd = TLSForwarder(key, cert, server.port)
    return fwd, cert


def mount_https(server, url, *opts):
    plain, server.url = server.url, url     # Sandbox.mount mounts server.url
    try:
        server.mount(*opts)
    finally:
        server.url = plain                  # the tests' own API calls go straight to sbxd


def refused(server, url, *opts):
    args = [server.sbxfs_bin, url, server.mnt, '-f', '-o', 'token_file=' + server.token_file]
    for o in opts:
        args += ['-o', o]
    t0 = time.monotonic()
    p = subprocess.run(args, capture_output=True, timeout=60 * SLOW)
    assert time.monotonic() - t0 < 40 * SLOW
    assert p.returncode != 0 and not is_mounted(server.mnt), 'sbxfs mounted anyway'
    return p.stderr.decode(errors='replace')


def use_the_mount(server):
    with open(os.path.join(server.ws, 'over-tls'), 'w') as f:
        f.write('secret\n')
    with open(os.path.join(server.workspace, 'over-tls')) as f:
        assert f.read() == 'secret\n'
    # the sandbox's change events come through the same connection pool
    server.execute('echo from-inside > /workspace/made-inside')
    deadline = time.monotonic() + 10 * SLOW
    while not os.path.exists(os.path.join(server.ws, 'made-inside')):
        assert time.monotonic() < deadline, 'change event did not arrive over TLS'
        time.sleep(0.1)


def test_untrusted_certificate_is_refused(server):
    fwd, _ = forwarder_for(server, 'IP:127.0.0.1,DNS:localhost')
    try:
        err = refused(server, 'https://127.0.0.1:%d' % fwd.port)
        assert 'certificate' in err.lower(), 'no clear reason: %r' % err
        assert fwd.handshakes_refused >= 1
    finally:
        fwd.close()


def test_ca_file_makes_it_trusted(server):
    fwd, cert = forwarder_for(server, 'IP:127.0.0.1,DNS:localhost')
    try:
        mount_https(server, 'https://localhost:%d' % fwd.port, 'ca_file=' + cert)
        use_the_mount(server)
        server.unmount()
    finally:
        fwd.close()


def test_name_mismatch_is_refused_even_with_the_ca(server):
    fwd, cert = forwarder_for(server, 'DNS:some-other-host.example')
    try:
        err = refused(server, 'https://127.0.0.1:%d' % fwd.port, 'ca_file=' + cert)
        low = err.lower()
        assert 'certificate' in low or 'name' in low, 'no clear reason: %r' % err
    finally:
        fwd.close()


def test_insecure_skips_verification(server):
    fwd, _ = forwarder_for(server, 'DNS:some-other-host.example')
    try:
        mount_https(server, 'https://127.0.0.1:%d' % fwd.port, 'insecure')
        use_the_mount(server)
        assert 'not verified' in server.read_log(server.sbxfs_log), 'no warning about insecure'
        server.unmount()
    finally:
        fwd.close()
