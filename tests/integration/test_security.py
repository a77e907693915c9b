"""Break-out attempts: from inside the sandbox (shell, Python, JavaScript), through the API and
through the mount. Each must be contained, and sbxd must keep serving other requests.

The list of escapes tried here is the one docs/security.md summarises; a test that finds a
way out fails with what it could reach.
"""
import json
import os
import signal
import subprocess
import threading
import time
import urllib.error
import urllib.request

import pytest

from util import SLOW, Sandbox, wait_for

pytestmark = pytest.mark.timeout(180 * SLOW)

SECRET = 'host-secret-6b1f0c'


class Limited(Sandbox):
    """An sbxd with small limits, so that hogs hit them quickly."""

    extra = ['--memory-limit', '192M', '--pids-limit', '96', '--file-size-limit', '1M',
             '--cpu-limit', '2']

    def start_server(self):
        orig = self.sbxd_bin
        wrapper = os.path.join(self.tmp, 'sbxd-limited')
        with open(wrapper, 'w') as f:
            f.write('#!/bin/sh\nexec %s "$@" %s\n' % (orig, ' '.join(self.extra)))
        os.chmod(wrapper, 0o755)
        self.sbxd_bin = wrapper
        try:
            super().start_server()
        finally:
            self.sbxd_bin = orig


def _close(s):
    problems = s.close()
    s.remove()
    assert not problems, problems


@pytest.fixture(scope='module')
def srv(build_dir):
    s = Sandbox(build_dir, 'ext')
    try:
        s.start_server()
        s.mount()
    except BaseException:
        s.close()
        raise
    # a file only the host has, next to the token and the state dir
    s.secret = os.path.join(s.tmp, 'secret.txt')
    with open(s.secret, 'w') as f:
        f.write(SECRET)
    yield s
    _close(s)


@pytest.fixture(scope='module')
def limited(build_dir):
    s = Limited(build_dir, 'ext')
    s.start_server()
    yield s
    _close(s)


def sh(s, cmd, timeout=60):
    r = s.execute(cmd, timeout=timeout)
    return r['exitCode'], r['stdout'], r['stderr']


def assert_serving(s):
    assert s.ping()
    code, out, _ = sh(s, 'echo alive')
    assert (code, out) == (0, 'alive\n')


# ---- from the shell ----

def test_host_files_are_not_visible(srv):
    code, out, err = sh(srv, '''
        for f in %s %s %s/sbxd.log /etc/shadow /etc/gshadow; do
            if cat "$f" >/dev/null 2>&1; then echo "READ $f"; fi
        done
        ls -d %s %s /work /farm /old_root /root/.bashrc /home/* 2>/dev/null
        echo run: $(ls -A /run/sbxd)
        true''' % (srv.secret, srv.token_file, srv.tmp, srv.tmp, srv.state))
    assert 'READ' not in out
    lines = out.splitlines()
    # /run/sbxd holds only the sessions directory, which is the sandbox's own
    assert lines == ['run: sessions'], out


def test_token_is_nowhere_in_the_sandbox(srv):
    # a pattern that matches the token but whose text is not the token (the command line
    # and environment of the search itself are searched too)
    pattern = srv.token[:4] + '[' + srv.token[4] + ']' + srv.token[5:]
    code, out, err = sh(srv, '''
        cat %s 2>/dev/null
        grep -rlsE -- '%s' /etc /tmp /root /run /var /home /workspace 2>/dev/null
        cat /proc/[0-9]*/environ /proc/[0-9]*/cmdline 2>/dev/null | tr '\\0' '\\n' |
            grep -cE -- '%s'
        env | grep -cE -- '%s'
        true''' % (srv.token_file, pattern, pattern, pattern))
    assert srv.token not in out
    assert out.split() == ['0', '0'], out


def test_sbxd_is_not_visible_and_cannot_be_killed(srv):
    pid = srv.sbxd.pid
    code, out, err = sh(srv, '''
        ps -e -o comm= | grep -c '^sbxd$'
        kill -9 %d 2>&1; kill -KILL -1 2>&1; echo done''' % pid)
    assert out.splitlines()[0] == '0'
    assert 'No such process' in out
    assert srv.sbxd.poll() is None
    assert_serving(srv)


def test_cannot_write_outside_the_workspace(srv):
    marker = 'sbx-escape-%d' % os.getpid()
    targets = ['/usr/' + marker, '/etc/' + marker, '/' + marker, '/sys/' + marker,
               '/bin/' + marker, '/lib/' + marker]
    code, out, err = sh(srv, '''
        for f in %s; do (echo x > "$f") 2>/dev/null && echo "WROTE $f"; done
        mount -t tmpfs none /mnt 2>/dev/null && echo MOUNTED
        mount -o remount,rw /usr 2>/dev/null && echo REMOUNTED
        mknod /dev/sdz b 8 0 2>/dev/null && echo MKNOD
        for f in /proc/sys/kernel/core_pattern /proc/sys/vm/drop_caches /proc/sysrq-trigger; do
            [ -w "$f" ] && echo "WRITABLE $f"
        done
        python3 -c "
import os
try:
    os.close(os.open('/proc/sys/kernel/core_pattern', os.O_WRONLY)); print('OPENED')
except OSError as e:
    print(e.errno)"
        grep -E '^Cap(Eff|Prm)' /proc/self/status
        true''' % ' '.join(targets))
    assert 'WROTE' not in out and 'MOUNTED' not in out and 'REMOUNTED' not in out
    assert 'MKNOD' not in out and 'WRITABLE' not in out and 'OPENED' not in out
    assert 'CapEff:\t0000000000000000' in out and 'CapPrm:\t0000000000000000' in out
    for t in targets:
        assert not os.path.exists(t), t
    assert not os.path.exists('/workspace/' + marker)


def _api_from_inside(port, route, token):
    return '''python3 -c "
import urllib.request, urllib.error
req = urllib.request.Request('http://127.0.0.1:%d%s', data=b'{\\\\"command\\\\":\\\\"id\\\\"}')
%s
try:
    print(urllib.request.urlopen(req, timeout=10).status)
except urllib.error.HTTPError as e:
    print(e.code)
"''' % (port, route, "req.add_header('Authorization', 'Bearer %s')" % token if token else '')


def test_api_without_the_token_from_inside(srv):
    for token in (None, 'wrong', srv.token[:-1], srv.token + 'x'):
        code, out, err = sh(srv, _api_from_inside(srv.port, '/api/execute', token))
        assert out.strip() == '401', (token, out, err)
    # ping is public, and the network is shared: the sandbox reaches sbxd, without powers
    code, out, err = sh(srv, 'python3 -c "import urllib.request; print(urllib.request.'
                             'urlopen(\'http://127.0.0.1:%d/api/ping\', timeout=10).status)"'
                        % srv.port)
    assert out.strip() == '200', (out, err)


def test_process_tree_dies_with_its_leader(srv):
    marker = 31000 + os.getpid() % 1000
    code, out, err = sh(srv, '(sleep %d &) ; setsid sleep %d & echo started' % (marker, marker))
    assert out == 'started\n'
    assert wait_for(lambda: subprocess.run(['pgrep', '-f', 'sleep %d' % marker],
                                           capture_output=True).returncode != 0, 10 * SLOW)


def test_host_root_gets_no_stray_directories(srv):
    before = set(os.listdir('/'))
    sh(srv, 'cd /workspace && ls >/dev/null')
    assert set(os.listdir('/')) == before


# ---- limits (an sbxd with small ones) ----

def _bg_execute(s, results, cmd, timeout=120):
    def run():
        try:
            results.append(s.execute(cmd, timeout=timeout))
        except Exception as e:  # reported by the test
            results.append(e)
    t = threading.Thread(target=run)
    t.start()
    return t


def test_fork_bomb_is_contained(limited):
    results = []
    t = _bg_execute(limited, results, 'timeout -s KILL %d python3 -c "import os\nwhile True:\n'
                             '    try: os.fork()\n    except OSError: pass" 2>/dev/null; '
                             'echo bomb-over' % (8 * SLOW))
    time.sleep(2 * SLOW)
    assert_serving(limited)       # other requests still work while it rages
    t.join(120 * SLOW)
    assert results and isinstance(results[0], dict), results
    assert 'bomb-over' in results[0]['stdout']
    assert_serving(limited)


def test_memory_hog_is_contained(limited):
    code, out, err = sh(limited, 'python3 -c "x = bytearray(1 << 30); print(len(x))"; echo $?')
    assert out.split()[-1] in ('137', '1'), (out, err)   # OOM-killed (or MemoryError)
    assert str(1 << 30) not in out
    assert_serving(limited)


def test_file_size_limit(limited):
    code, out, err = sh(limited, 'head -c 2M /dev/zero > /tmp/big; stat -c %s /tmp/big')
    assert out.split()[-1] == str(1 << 20), (out, err)


def test_cpu_limit(limited):
    code, out, err = sh(limited, 'python3 -c "while True: pass"; echo $?', timeout=60)
    assert out.split()[-1] in ('152', '137'), (out, err)   # SIGXCPU, then SIGKILL


def test_stopping_sbxd_leaves_nothing_behind(build_dir):
    s = Sandbox(build_dir, 'ext')
    s.start_server()
    try:
        marker = 32000 + os.getpid() % 1000
        status, r = s.api('/api/process/start', {'command': 'sleep %d' % marker})
        assert status == 200, r
        sh(s, 'nohup setsid sleep %d >/dev/null 2>&1 & disown; echo ok' % (marker + 1))
        assert subprocess.run(['pgrep', '-f', 'sleep %d' % marker],
                              capture_output=True).returncode == 0
        s.stop_server(signal.SIGTERM)
        for m in (marker, marker + 1):
            assert wait_for(lambda: subprocess.run(['pgrep', '-f', 'sleep %d' % m],
                                                   capture_output=True).returncode != 0,
                            10 * SLOW), 'sleep %d survived sbxd' % m
        leftovers = [p for p in ('/sys/fs/cgroup/pids', '/sys/fs/cgroup')
                     if os.path.isdir(os.path.join(p, 'sbxd-%d' % s.sbxd.pid))]
        assert not leftovers
    finally:
        _close(s)


def test_killed_sbxd_leaves_nothing_behind(build_dir):
    s = Sandbox(build_dir, 'ext')
    s.start_server()
    try:
        marker = 33000 + os.getpid() % 1000
        status, r = s.api('/api/process/start', {'command': 'sleep %d' % marker})
        assert status == 200, r
        assert wait_for(lambda: subprocess.run(['pgrep', '-f', 'sleep %d' % marker],
                                               capture_output=True).returncode == 0, 10 * SLOW)
        s.sbxd.kill()
        s.sbxd.wait()
        assert wait_for(lambda: subprocess.run(['pgrep', '-f', 'sleep %d' % marker],
                                               capture_output=True).returncode != 0,
                        10 * SLOW), 'the sandbox survived a SIGKILLed sbxd'
    finally:
        s.problems = []
        s.close()
        s.remove()


# ---- from Python and JavaScript (code contexts) ----

def _run_code(s, language, code):
    status, r = s.api('/api/contexts', {'language': language}, timeout=90)
    assert status == 200, (status, r)
    ctx = r['contextId']
    req = urllib.request.Request(s.url + '/api/execute/code',
                                 data=json.dumps({'context_id': ctx, 'code': code}).encode(),
                                 method='POST')
    req.add_header('Authorization', 'Bearer ' + s.token)
    events = []
    with urllib.request.urlopen(req, timeout=120 * SLOW) as resp:
        for line in resp:
            if line.startswith(b'data: '):
                events.append(json.loads(line[6:]))
    s.api('/api/contexts/' + ctx, method='DELETE')
    out = ''.join(e.get('text', '') for e in events if e['type'] == 'stdout')
    return out, events


PY_ESCAPES = r'''
import os, json, urllib.request, urllib.error
res = {}
for name, path in (("secret", SECRET_PATH), ("token", TOKEN_PATH), ("shadow", "/etc/shadow")):
    try:
        open(path).read(); res[name] = "READ"
    except OSError as e:
        res[name] = e.errno
for name, path in (("usr", "/usr/pwned"), ("etc", "/etc/pwned"), ("root", "/pwned")):
    try:
        open(path, "w").write("x"); res[name] = "WROTE"
    except OSError as e:
        res[name] = e.errno
try:
    os.kill(SBXD_PID, 9); res["kill"] = "KILLED"
except OSError as e:
    res["kill"] = e.errno
try:
    req = urllib.request.Request("http://127.0.0.1:%d/api/execute" % PORT, data=b'{"command":"id"}')
    res["api"] = urllib.request.urlopen(req, timeout=10).status
except urllib.error.HTTPError as e:
    res["api"] = e.code
print(json.dumps(res))
'''

JS_ESCAPES = r'''
const fs = require('fs'), http = require('http');
const res = {};
for (const [name, p] of [['secret', SECRET_PATH], ['token', TOKEN_PATH], ['shadow', '/etc/shadow']]) {
  try { fs.readFileSync(p); res[name] = 'READ'; } catch (e) { res[name] = e.code; }
}
for (const [name, p] of [['usr', '/usr/pwned'], ['etc', '/etc/pwned'], ['root', '/pwned']]) {
  try { fs.writeFileSync(p, 'x'); res[name] = 'WROTE'; } catch (e) { res[name] = e.code; }
}
try { process.kill(SBXD_PID, 'SIGKILL'); res.kill = 'KILLED'; } catch (e) { res.kill = e.code; }
await new Promise((resolve) => {
  const req = http.request({host: '127.0.0.1', port: PORT, path: '/api/execute', method: 'POST'},
    (r) => { res.api = r.statusCode; r.resume(); r.on('end', resolve); });
  req.on('error', (e) => { res.api = e.code; resolve(); });
  req.end('{"command":"id"}');
});
console.log(JSON.stringify(res));
'''


@pytest.mark.parametrize('language', ['python', 'javascript'])
def test_escapes_from_interpreters(srv, language):
    code = (PY_ESCAPES if language == 'python' else JS_ESCAPES)
    code = (code.replace('SECRET_PATH', json.dumps(srv.secret))
                .replace('TOKEN_PATH', json.dumps(srv.token_file))
                .replace('SBXD_PID', str(srv.sbxd.pid)).replace('PORT', str(srv.port)))
    if language == 'javascript':
        code = '(async () => {\n' + code + '\n})()'
    out, events = _run_code(srv, language, code)
    lines = [l for l in out.splitlines() if l.startswith('{')]
    assert lines, events
    res = json.loads(lines[-1])
    assert 'READ' not in res.values() and 'WROTE' not in res.values(), res
    assert res['kill'] != 'KILLED' and res['api'] == 401, res
    assert srv.sbxd.poll() is None
    for p in ('/usr/pwned', '/etc/pwned', '/pwned'):
        assert not os.path.exists(p)
    assert_serving(srv)


def test_memory_hog_from_python_is_contained(limited):
    out, events = _run_code(limited, 'python', 'x = bytearray(1 << 30)\nprint(len(x))')
    assert str(1 << 30) not in out
    assert events[-1]['type'] == 'error', events[-1]
    assert_serving(limited)


# ---- through the API ----

ESCAPING_PATHS = ['../etc/passwd', '/etc/passwd', '/workspace/../etc/passwd',
                  '/workspace/../../../etc/passwd', '..', '/', '/workspacex/a',
                  '/workspace/escape/etc/passwd', '/workspace/up/etc/passwd',
                  '/workspace/abs', '/workspace/rel']


@pytest.fixture(scope='module')
def links(srv):
    """Symlinks in the workspace that point out of it, made inside the sandbox."""
    code, out, err = sh(srv, 'cd /workspace && ln -sfn / escape && ln -sfn ../.. up && '
                             'ln -sfn /etc/passwd abs && ln -sfn ../../../etc/passwd rel && '
                             'echo ok')
    assert out == 'ok\n', err
    yield
    for n in ('escape', 'up', 'abs', 'rel'):
        os.unlink(os.path.join(srv.workspace, n))


def _refused(status, r):
    return status in (400, 403, 404) and isinstance(r, dict) and not r.get('success')


@pytest.mark.parametrize('path', ESCAPING_PATHS)
def test_api_read_refuses_escapes(srv, links, path):
    status, r = srv.api('/api/read', {'path': path})
    if path == '/':
        assert status != 200 or 'root:' not in json.dumps(r)
        return
    assert _refused(status, r), (path, status, r)
    assert 'root:x:0:0' not in json.dumps(r)


@pytest.mark.parametrize('path', ESCAPING_PATHS + ['/tmp/pwned-by-api'])
def test_api_write_refuses_escapes(srv, links, path):
    before = open('/etc/passwd').read()
    status, r = srv.api('/api/write', {'path': path, 'content': 'pwned'})
    assert _refused(status, r) or status == 409, (path, status, r)
    assert open('/etc/passwd').read() == before
    assert not os.path.exists('/tmp/pwned-by-api')


@pytest.mark.parametrize('route,body', [
    ('/api/mkdir', {'path': '/tmp/evil-dir', 'recursive': True}),
    ('/api/mkdir', {'path': '/workspace/escape/tmp/evil-dir'}),
    ('/api/delete', {'path': '/workspace/abs'}),
    ('/api/rename', {'oldPath': '/workspace/abs', 'newPath': '/tmp/evil-renamed'}),
    ('/api/move', {'sourcePath': '/workspace/up/etc/hostname', 'destinationPath': 'x'}),
    ('/api/list-files', {'path': '/workspace/escape'}),
    ('/api/list-files', {'path': '/etc'}),
    ('/api/exists', {'path': '/etc/passwd'}),
    ('/api/x/stat', {'path': '/workspace/escape/etc'}),
    ('/api/x/open', {'path': '/workspace/abs', 'access': 'r'}),
    ('/api/x/open', {'path': '/workspace/escape/tmp/evil-created', 'access': 'w',
                     'create': True}),
    ('/api/x/readdir', {'path': '/workspace/up'}),
    ('/api/x/rename', {'oldPath': '/workspace/rel', 'newPath': '/etc/evil'}),
    ('/api/x/link', {'oldPath': '/workspace/abs', 'newPath': '/workspace/hard'}),
    ('/api/git/checkout', {'repoUrl': 'file:///etc', 'targetDir': '/tmp/evil-clone'}),
])
def test_other_routes_refuse_escapes(srv, links, route, body):
    status, r = srv.api(route, body)
    text = json.dumps(r) if isinstance(r, dict) else repr(r)
    if route == '/api/delete':
        # deleting the link itself is fine; what it points to must survive
        assert os.path.exists('/etc/passwd')
        sh(srv, 'ln -sfn /etc/passwd /workspace/abs')
        return
    if route == '/api/exists':
        assert status == 400 or r.get('exists') is not True, r
        return
    if route == '/api/x/link':
        # link(2) links the symlink itself, never what it points to
        hard = os.path.join(srv.workspace, 'hard')
        if os.path.lexists(hard):
            assert os.path.islink(hard)
            os.unlink(hard)
        return
    assert status >= 400, (route, body, status, r)
    assert 'root:x:0:0' not in text
    for p in ('/tmp/evil-dir', '/tmp/evil-renamed', '/etc/evil', '/tmp/evil-clone',
              '/tmp/evil-created'):
        assert not os.path.exists(p), p


# ---- authentication ----

@pytest.mark.parametrize('route,method', [
    ('/api/execute', 'POST'), ('/api/read', 'POST'), ('/api/version', 'GET'),
    ('/api/contexts', 'GET'), ('/api/process/list', 'GET'), ('/api/x/capabilities', 'GET'),
    ('/api/no-such-route', 'GET'), ('/api/x/ports', 'GET'),
])
@pytest.mark.parametrize('auth', [None, 'Bearer wrong', 'Bearer ', 'Basic Zm9vOmJhcg==',
                                  'TOKEN-ONLY', 'Bearer TOKEN-x', 'Bearer TOKEN-PREFIX'])
def test_missing_or_wrong_token_is_401(srv, route, method, auth):
    req = urllib.request.Request(srv.url + route, method=method,
                                 data=b'{}' if method == 'POST' else None)
    if auth:
        auth = (auth.replace('TOKEN-ONLY', srv.token).replace('TOKEN-PREFIX', srv.token[:8])
                .replace('TOKEN-x', srv.token + 'x'))
        req.add_header('Authorization', auth)
    try:
        status = urllib.request.urlopen(req, timeout=10).status
    except urllib.error.HTTPError as e:
        status = e.code
        body = json.loads(e.read())
        assert body['code'] == 'UNAUTHORIZED'
    assert status == 401


def test_token_is_never_logged(srv):
    srv.api('/api/execute', {'command': 'true'})
    srv.api('/api/execute', {'command': 'true'}, token='wrong-' + srv.token)
    for path in (srv.sbxd_log, srv.sbxfs_log):
        assert srv.token not in Sandbox.read_log(path)


def test_token_not_on_command_lines():
    for pid in os.listdir('/proc'):
        if not pid.isdigit():
            continue
        try:
            with open('/proc/%s/cmdline' % pid, 'rb') as f:
                cmd = f.read().replace(b'\0', b' ').decode(errors='replace')
        except OSError:
            continue
        if 'sbxfs' in cmd or 'sbxd' in cmd:
            assert 'token=' not in cmd.replace('token_file=', ''), cmd


def test_malformed_requests(srv):
    for body in (b'{', b'[]', b'"x"', b'{"path": }', b'\xff\xfe', b'{"a":' * 5000):
        req = urllib.request.Request(srv.url + '/api/read', data=body, method='POST')
        req.add_header('Authorization', 'Bearer ' + srv.token)
        try:
            status = urllib.request.urlopen(req, timeout=10).status
        except urllib.error.HTTPError as e:
            status = e.code
            assert json.loads(e.read())['code'] == 'VALIDATION_FAILED'
        assert status == 400, body[:20]
    # a body announced larger than the limit is refused before it is read
    import http.client
    c = http.client.HTTPConnection('127.0.0.1', srv.port, timeout=10)
    c.putrequest('POST', '/api/write')
    c.putheader('Authorization', 'Bearer ' + srv.token)
    c.putheader('Content-Length', str(1 << 40))
    c.endheaders()
    assert c.getresponse().status == 413
    c.close()
    assert_serving(srv)


def test_nul_in_strings_is_refused(srv):
    """JSON may carry \\u0000; a C string cannot. Cut at the NUL, a path or a session id
    would name something else and content would be cut short, so sbxd refuses it."""
    with open(os.path.join(srv.workspace, 'victim'), 'w') as f:
        f.write('intact\n')
    for route, body in (
            ('/api/write', {'path': '/workspace/victim\0.txt', 'content': 'x'}),
            ('/api/write', {'path': '/workspace/victim', 'content': 'cut\0here'}),
            ('/api/delete', {'path': '/workspace/victim\0/../other'}),
            ('/api/execute', {'command': 'echo hi', 'sessionId': 'a\0b'}),
            ('/api/execute', {'command': 'rm -f /workspace/victim\0 never'})):
        status, r = srv.api(route, body)
        assert status == 400 and r['code'] == 'VALIDATION_FAILED', (route, status, r)
        assert 'NUL' in r['message'], r
    with open(os.path.join(srv.workspace, 'victim')) as f:
        assert f.read() == 'intact\n'
    # an escaped backslash followed by "u0000" is just text
    status, r = srv.api('/api/write', {'path': '/workspace/victim', 'content': '\\u0000'})
    assert status == 200, r
    with open(os.path.join(srv.workspace, 'victim')) as f:
        assert f.read() == '\\u0000'
    assert_serving(srv)


# ---- through the mount ----

def test_mount_escapes(srv, links):
    ws = srv.ws
    # the kernel keeps ".." and "/" out of names; the server refuses what points out
    with pytest.raises(OSError):
        os.link('/etc/hostname', os.path.join(ws, 'hard-out'))
    with pytest.raises(OSError):
        os.rename(os.path.join(ws, 'abs'), '/tmp/renamed-out-of-mount')
    # a link made through the mount is only a link: the server never follows it out
    os.symlink('/etc/passwd', os.path.join(ws, 'made-through-mount'))
    try:
        assert os.readlink(os.path.join(ws, 'made-through-mount')) == '/etc/passwd'
        status, r = srv.api('/api/read', {'path': '/workspace/made-through-mount'})
        assert _refused(status, r), (status, r)
        code, out, err = sh(srv, 'cat /workspace/made-through-mount | head -c 0; '
                                 'readlink /workspace/made-through-mount')
        assert out.strip() == '/etc/passwd'
    finally:
        os.unlink(os.path.join(ws, 'made-through-mount'))
    # mount options: private to its user, permissions checked by the kernel
    opts = [l.split()[3] for l in open('/proc/mounts') if l.split()[1] == srv.mnt]
    assert opts and 'default_permissions' in opts[0] and 'allow_other' not in opts[0], opts
