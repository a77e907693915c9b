"""Helpers for the integration suite: a real sbxd, a real sbxfs mount, and the sandbox API.

A Sandbox owns one sbxd process (its workspace, state directory and token file live in a
private temporary directory) and at most one sbxfs mount of it. Both run in the foreground
with stderr in a log file, so the fixtures can fail a test on what they print (errors,
sanitizer reports) and on how they exit.
"""
import errno
import json
import os
import re
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request

# Reports that fail a test whenever they appear in sbxd's or sbxfs's stderr.
SANITIZER_RE = re.compile(r'AddressSanitizer|LeakSanitizer|UndefinedBehaviorSanitizer|'
                          r'ThreadSanitizer|runtime error:|ERROR: ')
# Error lines of common/log.c ("12:00:00.000 sbxfs: error: ..."): fail a test unless the
# test provokes them on purpose (marker expect_errors).
ERROR_LINE_RE = re.compile(r'^.*\b(sbxd|sbxfs): error: .*$', re.M)
# What workerd prints for an exception the Worker did not handle, or an error of its own.
WORKERD_ERROR_RE = re.compile(r'^.*(\bUncaught\b|\bworkerd/\S+: error: ).*$', re.M)

# errnos a filesystem operation may fail with when the backend is down or hangs
BACKEND_DOWN_ERRNOS = {errno.EIO, errno.ENOTCONN, errno.ETIMEDOUT, errno.ECONNREFUSED,
                       errno.EHOSTUNREACH, errno.ECONNRESET}

SLOW = 3 if os.environ.get('ASAN_OPTIONS') else 1   # sanitizers slow everything down


def default_sigint():
    """preexec_fn for a child the test will Ctrl-C: a suite started in the background (by a
    non-interactive shell) inherits SIGINT ignored, and so would the child."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def free_port():
    with socket.socket() as s:
        s.bind(('127.0.0.1', 0))
        return s.getsockname()[1]


def wait_for(pred, timeout, interval=0.05):
    """Polls pred() until it returns a true value or timeout seconds pass; returns the last
    value."""
    deadline = time.monotonic() + timeout
    while True:
        v = pred()
        if v or time.monotonic() >= deadline:
            return v
        time.sleep(interval)


def sh(cmd, cwd=None, env=None, timeout=120, check=True, input=None):
    """Runs a bash command line as a user would type it; returns the CompletedProcess."""
    p = subprocess.run(['bash', '-c', 'set -o pipefail; ' + cmd], cwd=cwd, env=env,
                       input=input, capture_output=True, timeout=timeout * SLOW)
    if check and p.returncode != 0:
        raise AssertionError('command failed (exit %d): %s\nstdout: %s\nstderr: %s' % (
            p.returncode, cmd, _text(p.stdout), _text(p.stderr)))
    return p


def shell(sbx, cmd):
    """(exit status, stdout, stderr) of cmd run in sbx's mount point as a user types it."""
    r = sh('cd %s && %s' % (shlex.quote(sbx.mnt), cmd), check=False)
    return r.returncode, r.stdout.decode(), r.stderr.decode()


def curl(url, *opts):
    """(HTTP status, body) of a request; curl resolves *.localhost to loopback by itself."""
    r = subprocess.run(['curl', '-s', '-m', str(10 * SLOW), '-w', '\n%{http_code}'] +
                       list(opts) + [url], capture_output=True, timeout=20 * SLOW)
    body, _, code = r.stdout.decode(errors='replace').rpartition('\n')
    return int(code or 0), body


def _text(b):
    return b.decode(errors='replace') if isinstance(b, bytes) else b


# A child python performs one operation so that a hanging FUSE request can never wedge the
# test process itself; it prints OK or the errno's name.
_OP_SCRIPT = r'''
import errno, os, sys
op, path = sys.argv[1], sys.argv[2]
try:
    if op == "listdir": os.listdir(path)
    elif op == "stat": os.stat(path)
    elif op == "read": open(path, "rb").read()
    elif op == "create": os.close(os.open(path, os.O_CREAT | os.O_WRONLY | os.O_EXCL, 0o644))
    elif op == "write":
        with open(path, "wb") as f: f.write(b"x" * 4096); f.flush(); os.fsync(f.fileno())
    elif op == "mkdir": os.mkdir(path)
    else: raise SystemExit("unknown op " + op)
    print("OK")
except OSError as e:
    print(errno.errorcode.get(e.errno, str(e.errno)))
'''


def fs_op(op, path, timeout):
    """Runs one filesystem operation in a child; returns (result, seconds) where result is
    'OK', an errno name, or 'HANG' when the child had to be killed after timeout s."""
    t0 = time.monotonic()
    try:
        p = subprocess.run([sys.executable, '-c', _OP_SCRIPT, op, path],
                           capture_output=True, timeout=timeout)
        out = p.stdout.decode().strip() or 'exit %d: %s' % (p.returncode, _text(p.stderr))
    except subprocess.TimeoutExpired:
        out = 'HANG'
    return out, time.monotonic() - t0


def mount_entry(mnt):
    """The /proc/self/mountinfo line of mount point mnt, or None."""
    mnt = os.path.realpath(mnt)
    with open('/proc/self/mountinfo') as f:
        for line in f:
            fields = line.split()
            if fields[4].encode().decode('unicode_escape') == mnt:
                return fields
    return None


def is_mounted(mnt):
    """Whether mnt is a mount point, without touching the (maybe hung) filesystem."""
    return mount_entry(mnt) is not None


def abort_fuse_connection(mnt):
    """Aborts a hung FUSE connection through fusectl, the kernel's last resort."""
    e = mount_entry(mnt)
    if not e:
        return
    minor = e[2].split(':')[1]
    try:
        with open('/sys/fs/fuse/connections/%s/abort' % minor, 'w') as f:
            f.write('1')
    except OSError:
        pass


def program(build_dir, name):
    """Path of sbxd or sbxfs: $SBXD_BIN / $SBXFS_BIN, else the build directory's."""
    return os.environ.get(name.upper() + '_BIN') or os.path.join(build_dir, 'src', name)


class Sandbox:
    """One sbxd on a private workspace, and optionally one sbxfs mount of it."""

    def __init__(self, build_dir, mode, tmp=None):
        self.sbxd_bin = program(build_dir, 'sbxd')
        self.sbxfs_bin = program(build_dir, 'sbxfs')
        for b in (self.sbxd_bin, self.sbxfs_bin):
            if not os.access(b, os.X_OK):
                raise RuntimeError('%s is missing: build first (ninja -C %s)' % (b, build_dir))
        self.mode = mode
        self.tmp = tmp or tempfile.mkdtemp(prefix='sbxfs-test-')
        self._workspace = os.path.join(self.tmp, 'workspace')
        self.state = os.path.join(self.tmp, 'state')
        self.token_file = os.path.join(self.tmp, 'token')
        self.mnt = os.path.join(self.tmp, 'mnt')
        self.ws = os.path.join(self.mnt, 'workspace')
        for d in (self._workspace, self.state, self.mnt):
            os.makedirs(d, exist_ok=True)
        self.port = free_port()
        self.url = 'http://127.0.0.1:%d' % self.port
        self.sbxd = None
        self.sbxfs = None
        self.proxy = None       # a fault proxy before sbxd (conftest's faulty_sbx)
        self.worker = None      # the Cloudflare Worker before sbxd (worker.WorkerProcess)
        self.server_args = []   # more sbxd options (a test's --handle-lease, say)
        self.sbxd_log = os.path.join(self.tmp, 'sbxd.log')
        self.sbxfs_log = os.path.join(self.tmp, 'sbxfs.log')
        self.problems = []      # unexpected exits, found by stop/unmount

    # -- sbxd --

    def start_server(self):
        args = [self.sbxd_bin, '--listen', '127.0.0.1:%d' % self.port,
                '--workspace', self._workspace, '--token-file', self.token_file,
                '--state-dir', self.state]
        if self.mode == 'fallback':
            args.append('--no-extensions')
        args += self.server_args
        log = open(self.sbxd_log, 'ab')
        self.sbxd = subprocess.Popen(args, stdin=subprocess.DEVNULL, stdout=log, stderr=log)
        log.close()
        ok = wait_for(lambda: self.sbxd.poll() is not None or self.ping(), 20 * SLOW)
        if self.sbxd.poll() is not None or not ok:
            raise RuntimeError('sbxd did not start (exit %s):\n%s' % (
                self.sbxd.poll(), self.read_log(self.sbxd_log)))
        with open(self.token_file) as f:
            self.token = f.read().strip()

    def stop_server(self, sig=signal.SIGTERM):
        """Stops sbxd with sig; a SIGTERM must end it cleanly (status 0)."""
        if not self.sbxd or self.sbxd.poll() is not None:
            return
        self.sbxd.send_signal(sig)
        if sig == signal.SIGSTOP:
            return
        try:
            rc = self.sbxd.wait(20 * SLOW)
        except subprocess.TimeoutExpired:
            self.sbxd.kill()
            rc = self.sbxd.wait()
            self.problems.append('sbxd did not exit within %d s of %s' % (20 * SLOW, sig.name))
        if sig == signal.SIGTERM and rc != 0:
            self.problems.append('sbxd exited with status %d after SIGTERM' % rc)

    def ping(self):
        try:
            with urllib.request.urlopen(self.url + '/api/ping', timeout=2) as r:
                return r.status == 200
        except (OSError, urllib.error.URLError):
            return False

    # -- the HTTP API --

    def api(self, route, body=None, token=True, method=None, timeout=60, data=None,
            headers=None):
        """Calls route with body as JSON, or with the bytes data as they are; returns (HTTP
        status, decoded JSON or raw bytes)."""
        if body is not None:
            data = json.dumps(body).encode()
        req = urllib.request.Request(self.url + route, data=data, method=method)
        if body is not None:
            req.add_header('Content-Type', 'application/json')
        if token is True:
            token = self.token
        if token:
            req.add_header('Authorization', 'Bearer ' + token)
        for k, v in (headers or {}).items():
            req.add_header(k, v)
        try:
            with urllib.request.urlopen(req, timeout=timeout * SLOW) as r:
                status, raw = r.status, r.read()
        except urllib.error.HTTPError as e:
            status, raw = e.code, e.read()
        try:
            return status, json.loads(raw)
        except ValueError:
            return status, raw

    @property
    def workspace(self):
        """The sandbox's workspace on the host, once what was written through the mount is
        there."""
        self.sync()
        return self._workspace

    def sync(self):
        """Waits until what was written through the mount is in the sandbox (`cat sync`), as
        a user must before looking at the sandbox by another way than the mount."""
        if is_mounted(self.mnt):
            with open(os.path.join(self.mnt, 'sync'), 'rb') as f:
                f.read()

    def execute(self, command, timeout=60):
        """Runs command inside the sandbox (cwd /workspace) through POST /api/execute, after
        a sync, as a process started through the mount would."""
        self.sync()
        status, r = self.api('/api/execute', {'command': command}, timeout=timeout)
        assert status == 200 and isinstance(r, dict), 'execute %r: HTTP %d %r' % (
            command, status, r)
        return r

    # -- sbxfs --

    def mount(self, *opts, env=None, token_file=True, url=None):
        """Mounts sbxd at self.mnt; url: another way to reach it (a proxy in front)."""
        args = [self.sbxfs_bin, url or self.url, self.mnt, '-f']
        if token_file:
            args += ['-o', 'token_file=' + self.token_file]
        for o in opts:
            args += ['-o', o]
        if not any(o.startswith('cache_dir=') for o in opts):
            # the write-back journal of this sandbox, not the machine's
            args += ['-o', 'cache_dir=' + os.path.join(self.tmp, 'journal')]
        log = open(self.sbxfs_log, 'ab')
        self.sbxfs = subprocess.Popen(args, stdin=subprocess.DEVNULL, stdout=log, stderr=log,
                                      env=env)
        log.close()
        wait_for(lambda: self.sbxfs.poll() is not None or is_mounted(self.mnt), 20 * SLOW)
        if not is_mounted(self.mnt):
            raise RuntimeError('sbxfs did not mount (exit %s):\n%s' % (
                self.sbxfs.poll(), self.read_log(self.sbxfs_log)))

    def wait_watching(self, timeout=20):
        """Waits until sbxfs says that change events flow (from then on it trusts its
        caches); returns whether they do."""
        return wait_for(lambda: 'change events flowing' in self.read_log(self.sbxfs_log),
                        timeout * SLOW)

    def unmount(self):
        """Unmounts; sbxfs must then exit by itself with status 0."""
        if is_mounted(self.mnt):
            ok = False
            for _ in range(20):
                try:
                    p = subprocess.run(['fusermount3', '-u', self.mnt], capture_output=True,
                                       timeout=10)
                    ok = p.returncode == 0
                except subprocess.TimeoutExpired:
                    ok = False
                if ok or not is_mounted(self.mnt):
                    break
                time.sleep(0.25)        # EBUSY: a child process may still hold a file
            if is_mounted(self.mnt):
                self.problems.append('fusermount3 -u failed: lazy unmount')
                abort_fuse_connection(self.mnt)
                subprocess.run(['fusermount3', '-uz', self.mnt], capture_output=True,
                               timeout=10)
        if self.sbxfs and self.sbxfs.poll() is None:
            try:
                rc = self.sbxfs.wait(20 * SLOW)
            except subprocess.TimeoutExpired:
                self.sbxfs.kill()
                self.sbxfs.wait()
                self.problems.append('sbxfs still running %d s after the unmount' % (20 * SLOW))
                return
        if self.sbxfs and self.sbxfs.returncode != 0:
            self.problems.append('sbxfs exited with status %d' % self.sbxfs.returncode)

    def open_files(self):
        """What sbxd has open under the workspace (from /proc, so with sbxd stopped too):
        the targets of its file descriptors that lie in the workspace directory."""
        ws = os.path.realpath(self._workspace)
        fd_dir = '/proc/%d/fd' % self.sbxd.pid
        out = []
        for fd in os.listdir(fd_dir):
            try:
                target = os.readlink(os.path.join(fd_dir, fd))
            except OSError:
                continue                # closed meanwhile
            if target == ws or target.startswith(ws + '/'):
                out.append(target)
        return out

    # -- logs and teardown --

    @staticmethod
    def read_log(path, start=0):
        try:
            with open(path, 'rb') as f:
                f.seek(start)
                return f.read().decode(errors='replace')
        except FileNotFoundError:
            return ''

    def logs(self):
        return [self.sbxd_log, self.sbxfs_log] + ([self.worker.log] if self.worker else [])

    def log_sizes(self):
        return {p: (os.path.getsize(p) if os.path.exists(p) else 0) for p in self.logs()}

    def log_complaints(self, since=None, errors_expected=False):
        """What sbxd and sbxfs printed (since the given log sizes) that fails a test."""
        out = []
        for path in self.logs():
            text = self.read_log(path, (since or {}).get(path, 0))
            name = os.path.basename(path)
            errors = WORKERD_ERROR_RE if name == 'workerd.log' else ERROR_LINE_RE
            if SANITIZER_RE.search(text):
                out.append('%s has a sanitizer report or ERROR:\n%s' % (name, text[-20000:]))
            elif not errors_expected and errors.search(text):
                out.append('%s has error lines:\n%s' % (
                    name, '\n'.join(m.group(0) for m in errors.finditer(text))[-8000:]))
        return out

    def close(self):
        """Unmounts, stops the Worker (if any) and sbxd; returns the list of problems seen."""
        self.unmount()
        if self.worker:
            # before sbxd: a stream sbxfs left is cut by workerd, not by a vanishing sbxd
            self.problems += self.worker.stop()
        self.stop_server()
        return self.problems + self.log_complaints(errors_expected=True)

    def remove(self):
        if not is_mounted(self.mnt):
            shutil.rmtree(self.tmp, ignore_errors=True)
