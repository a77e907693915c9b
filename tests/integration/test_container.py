"""sbxd in a container that is itself the sandbox: --isolation=none and container/start-sbxd,
tested on the host as container/Dockerfile would run them.

The container is made with bubblewrap by the test (the host's /usr and /etc read-only, its own
/tmp, /run, /root and pid namespace, the workspace at /workspace, sbxd and start-sbxd in
/usr/local/bin, and no bubblewrap inside: /usr/bin/bwrap is covered), root with all
capabilities as in a container. start-sbxd starts sbxd there as the image's CMD would, with the
settings the Worker gives the container in its environment. sbxfs mounts it from the host, as a
client reaches a container through the Worker.
"""
import json
import os
import re
import secrets
import shlex
import signal
import subprocess
import urllib.request

import pytest

from util import SLOW, Sandbox, free_port, sh, wait_for

pytestmark = pytest.mark.timeout(180 * SLOW)

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
START_SBXD = os.path.join(REPO, 'container', 'start-sbxd')
PREVIEW_BASE = 'https://sbx.example.com'


@pytest.fixture(autouse=True)
def ext_only(mode):
    """Nothing here depends on the mode the suite runs in: one run (ext) is enough."""
    if mode != 'ext':
        pytest.skip('runs in ext mode only')


def children(pid):
    out = []
    for task in os.listdir('/proc/%d/task' % pid):
        with open('/proc/%d/task/%s/children' % (pid, task)) as f:
            out += [int(p) for p in f.read().split()]
    return out


def own_cgroup_dirs():
    """This process's pids and memory cgroup directories (v1), or its v2 one."""
    mounts = {}
    with open('/proc/self/mountinfo') as f:
        for line in f:
            pre, post = line.split(' - ')
            fstype, _, opts = post.split()[:3]
            root, mnt = pre.split()[3:5]
            if fstype == 'cgroup':
                for c in ('pids', 'memory'):
                    if c in opts.split(','):
                        mounts[c] = (root, mnt)
            elif fstype == 'cgroup2':
                mounts.setdefault('unified', (root, mnt))
    dirs = []
    with open('/proc/self/cgroup') as f:
        for line in f:
            _, ctrls, path = line.rstrip('\n').split(':', 2)
            for c in ctrls.split(',') if ctrls else ['unified']:
                if c in mounts and (c != 'unified' or not dirs):
                    root, mnt = mounts[c]
                    rel = path[len(root):] if root != '/' and path.startswith(root) else path
                    dirs.append(mnt + rel.rstrip('/'))
    return [d for d in dirs if os.path.isdir(d)]


class Container(Sandbox):
    """A container-like root made with bubblewrap, running inner (default: start-sbxd) with
    env as its environment. The workspace is /workspace in there; /run/sbxd is
    self.tmp/run-sbxd (where start-sbxd's token file goes). cgroups: directories the container
    is started in (its own, so that nothing it does touches another sbxd's)."""

    def __init__(self, build_dir, env, inner=None, cgroups=()):
        super().__init__(build_dir, 'ext')
        self.env = dict(env)
        self.env['SBXD_OPTIONS'] = ('--listen 127.0.0.1:%d ' % self.port +
                                    self.env.get('SBXD_OPTIONS', ''))
        self.inner = inner or ['/usr/local/bin/start-sbxd']
        self.cgroups = list(cgroups)
        self.run_sbxd = os.path.join(self.tmp, 'run-sbxd')
        os.makedirs(self.run_sbxd)

    def bwrap_args(self):
        a = ['bwrap', '--die-with-parent', '--unshare-pid', '--unshare-ipc', '--unshare-uts',
             '--hostname', 'container', '--cap-add', 'ALL',
             '--ro-bind', '/usr', '/usr', '--ro-bind', '/etc', '/etc']
        for d in ('/bin', '/sbin', '/lib', '/lib32', '/lib64', '/libx32'):
            if os.path.islink(d):
                a += ['--symlink', os.readlink(d), d]
            elif os.path.isdir(d):
                a += ['--ro-bind', d, d]
        a += ['--proc', '/proc', '--dev', '/dev', '--tmpfs', '/tmp', '--tmpfs', '/run',
              '--dir', '/root', '--ro-bind', '/sys', '/sys', '--tmpfs', '/sys/fs/cgroup',
              '--bind', self.workspace, '/workspace', '--bind', self.run_sbxd, '/run/sbxd',
              '--tmpfs', '/usr/local/bin', '--ro-bind', self.sbxd_bin, '/usr/local/bin/sbxd',
              '--ro-bind', START_SBXD, '/usr/local/bin/start-sbxd',
              '--ro-bind', '/dev/null', '/usr/bin/bwrap']
        for d in self.cgroups:
            a += ['--bind', d, d]     # as container runtimes do: a hierarchy's subtree
        return a + ['--'] + self.inner

    def start_server(self):
        env = {'PATH': '/usr/local/bin:/usr/bin:/bin', 'HOME': '/root'}
        env.update(self.env)
        for k in [k for k, v in env.items() if v is None]:
            del env[k]
        argv = self.bwrap_args()
        if self.cgroups:
            join = 'for d in %s; do echo $$ > "$d/cgroup.procs" || exit 1; done; exec "$@"' % (
                ' '.join(shlex.quote(d) for d in self.cgroups))
            argv = ['sh', '-c', join, 'sh'] + argv
        log = open(self.sbxd_log, 'ab')
        self.sbxd = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=log, stderr=log,
                                     env=env)
        log.close()
        ok = wait_for(lambda: self.sbxd.poll() is not None or self.ping(), 20 * SLOW)
        if self.sbxd.poll() is not None or not ok:
            raise RuntimeError('the container did not start sbxd (exit %s):\n%s' % (
                self.sbxd.poll(), self.read_log(self.sbxd_log)))
        self.token = env.get('SBXD_TOKEN')
        if self.token:
            with open(self.token_file, 'w') as f:     # for sbxfs
                f.write(self.token + '\n')
        else:
            self.token_file = os.path.join(self.run_sbxd, 'token')
            with open(self.token_file) as f:
                self.token = f.read().strip()

    def main_pid(self):
        """sbxd's pid as the host sees it: the child of bubblewrap's init in the container."""
        for init in children(self.sbxd.pid):
            for p in children(init):
                return p
        return None

    def stop_server(self, sig=signal.SIGTERM):
        if not self.sbxd or self.sbxd.poll() is not None:
            return
        pid = self.main_pid()
        if pid:
            os.kill(pid, sig)
        else:
            self.sbxd.kill()
        try:
            rc = self.sbxd.wait(20 * SLOW)
        except subprocess.TimeoutExpired:
            self.sbxd.kill()
            rc = self.sbxd.wait()
            self.problems.append('the container did not end within %d s' % (20 * SLOW))
        if rc != 0:
            self.problems.append('the container ended with status %d after SIGTERM' % rc)


def start(build_dir, env, **kw):
    c = Container(build_dir, env, **kw)
    try:
        c.start_server()
    except BaseException:
        c.close()
        c.remove()
        raise
    return c


def finish(c):
    problems = c.close()
    c.remove()
    assert not problems, problems


def container_env(**more):
    """The environment a Worker would give the container (the Container also puts a --listen
    on loopback into SBXD_OPTIONS: start-sbxd's own default listens on every address)."""
    env = {'SBXD_TOKEN': secrets.token_hex(32), 'SBXD_SANDBOX_ID': 'box-1',
           'SBXD_PREVIEW_BASE': PREVIEW_BASE,
           'SBXD_OPTIONS': '--file-size-limit 1M --open-files-limit 256'}
    env.update(more)
    return env


@pytest.fixture(scope='module')
def cont(build_dir):
    c = start(build_dir, container_env())
    yield c
    finish(c)


def execute(c, command):
    r = c.execute(command)
    return r['exitCode'], r['stdout'], r['stderr']


def test_commands_run_in_the_container_itself(cont):
    status, caps = cont.api('/api/x/capabilities')
    assert status == 200 and caps['isolation'] == 'none' and caps['sandboxId'] == 'box-1'
    code, out, err = execute(cont, 'pwd; id -u; hostname; ulimit -n; ulimit -f; '
                                   'echo made-inside > inside.txt')
    assert code == 0, err
    assert out.split() == ['/workspace', '0', 'container', '256', '1024']
    with open(os.path.join(cont.workspace, 'inside.txt')) as f:
        assert f.read() == 'made-inside\n'
    # commands see the container's own /run, where start-sbxd put nothing of the token
    code, out, _ = execute(cont, 'ls /run/sbxd')
    assert (code, out) == (0, '')


def test_sessions_contexts_and_signals(cont):
    """What runs in the sandbox through the other routes works the same without bubblewrap."""
    status, r = cont.api('/api/session/create', {'id': 'c1', 'env': {'GREETING': 'hello'}})
    assert status == 200, r
    for command in ('cd /tmp && export LATER=1', 'echo "$PWD $GREETING $LATER"'):
        status, r = cont.api('/api/execute', {'command': command, 'sessionId': 'c1'})
        assert status == 200 and r['exitCode'] == 0, r
    assert r['stdout'] == '/tmp hello 1\n'
    status, r = cont.api('/api/contexts', {'language': 'python'}, timeout=90)
    assert status == 200, r
    ctx = r['contextId']
    req = urllib.request.Request(cont.url + '/api/execute/code', method='POST', data=json.dumps(
        {'context_id': ctx, 'code': 'import os; print(os.getcwd()); 6 * 7'}).encode(),
        headers={'Authorization': 'Bearer ' + cont.token})
    with urllib.request.urlopen(req, timeout=90 * SLOW) as resp:
        events = [json.loads(line[6:]) for line in resp if line.startswith(b'data: ')]
    assert ''.join(e['text'] for e in events if e['type'] == 'stdout') == '/workspace\n', events
    assert any(e['type'] == 'result' and '42' in json.dumps(e) for e in events), events
    cont.api('/api/contexts/' + ctx, method='DELETE')
    # a signal sent as soon as the process is started reaches it
    for _ in range(5):
        status, r = cont.api('/api/process/start', {'command': 'sleep 60'})
        assert status == 200, r
        pid = r['processId']
        assert cont.api('/api/process/%s?signal=TERM' % pid, method='DELETE')[0] == 200
        assert wait_for(lambda: cont.api('/api/process/' + pid)[1]['process']['status'] !=
                        'running', 10 * SLOW), 'TERM right after the start was lost'


def test_says_loudly_what_it_does_not_protect(cont):
    log = cont.read_log(cont.sbxd_log)
    assert re.search(r'sbxd: warning: sandbox: --isolation=none: commands run WITHOUT '
                     r'ISOLATION, directly on this system as root', log), log
    assert 'NOT protected from commands: every file of this system' in log, log
    assert 'still enforced: the token on every route but /api/ping' in log, log


def test_token_and_path_confinement_still_hold(cont):
    for token in (None, 'wrong', cont.token[:-1]):
        status, _ = cont.api('/api/execute', {'command': 'touch /workspace/pwned'},
                             token=token)
        assert status == 401
    assert not os.path.exists(os.path.join(cont.workspace, 'pwned'))
    code, _, err = execute(cont, 'ln -sfn / /workspace/escape && ln -sfn /etc/passwd '
                                 '/workspace/abs')
    assert code == 0, err
    for route, body in (('/api/read', {'path': '/etc/passwd'}),
                        ('/api/read', {'path': '/workspace/../etc/passwd'}),
                        ('/api/read', {'path': '/workspace/abs'}),
                        ('/api/read', {'path': '/workspace/escape/etc/passwd'}),
                        ('/api/write', {'path': '/workspace/escape/tmp/pwned', 'content': 'x'}),
                        ('/api/x/stat', {'path': '/workspace/escape/etc'}),
                        ('/api/mkdir', {'path': '/tmp/pwned-dir'})):
        status, r = cont.api(route, body)
        assert status in (400, 403, 404) and not r.get('success'), (route, body, status, r)
        assert 'root:x:0:0' not in json.dumps(r)
    code, out, _ = execute(cont, 'ls /tmp')
    assert (code, out) == (0, '')


def test_limits_hold_without_bubblewrap(cont):
    # 1 MiB file size limit: head is killed by SIGXFSZ (128 + 25)
    code, out, _ = execute(cont, 'head -c 2M /dev/zero > big || echo failed $?')
    assert out.strip() == 'failed 153'
    assert os.stat(os.path.join(cont.workspace, 'big')).st_size == 1 << 20
    # a background process too, from its first instruction on
    status, r = cont.api('/api/process/start', {'command': 'exec cat /proc/self/limits'})
    assert status == 200, r
    pid = r['processId']
    assert wait_for(lambda: cont.api('/api/process/' + pid)[1]['process']['status'] !=
                    'running', 20 * SLOW)
    _, logs = cont.api('/api/process/%s/logs' % pid)
    assert re.search(r'Max open files\s+256\s+256', logs['stdout']), logs
    assert re.search(r'Max file size\s+1048576\s+1048576', logs['stdout']), logs


def test_preview_urls_use_the_public_base(cont):
    port = free_port()
    status, r = cont.api('/api/process/start', {
        'command': 'exec python3 -m http.server %d --bind 127.0.0.1' % port})
    assert status == 200, r
    status, r = cont.api('/api/x/ports', {'port': port})
    assert status == 200, r
    m = re.fullmatch(r'https://%d-box-1-([a-z0-9_]{16})\.sbx\.example\.com/' % port, r['url'])
    assert m, r['url']
    host = r['url'][len('https://'):-1]
    # the request as the Worker forwards it: to sbxd, with the preview host name
    wait_for(lambda: execute(cont, 'exec 3<>/dev/tcp/127.0.0.1/%d' % port)[0] == 0, 20 * SLOW)
    req = urllib.request.Request(cont.url + '/inside.txt', headers={'Host': host})
    with urllib.request.urlopen(req, timeout=20 * SLOW) as resp:
        assert resp.status == 200 and resp.read() == b'made-inside\n'
    cont.api('/api/x/ports/%d' % port, method='DELETE')


def test_mount_gets_the_extensions(cont):
    cont.mount()
    try:
        with open(os.path.join(cont.ws, 'through-mount.txt'), 'w') as f:
            f.write('from the mount\n')
        code, out, _ = execute(cont, 'cat through-mount.txt; echo later > made-later.txt')
        assert (code, out) == (0, 'from the mount\n')
        later = os.path.join(cont.ws, 'made-later.txt')
        assert wait_for(lambda: os.path.exists(later), 10 * SLOW)
        # ports/ and env are extensions: they work only against sbxd
        sh('echo GREETING=hi > env', cwd=cont.mnt)
        code, out, _ = execute(cont, 'echo $GREETING')
        assert out == 'hi\n'
        port = free_port()
        sh('touch ports/%d' % port, cwd=cont.mnt)
        url = sh('cat ports/%d' % port, cwd=cont.mnt).stdout.decode().strip()
        assert url.startswith('https://%d-box-1-' % port) and url.endswith('.sbx.example.com/')
        sh('rm ports/%d' % port, cwd=cont.mnt)
    finally:
        cont.unmount()


def test_start_sbxd_makes_a_token_file_without_a_token(build_dir):
    c = start(build_dir, container_env(SBXD_TOKEN=None))
    try:
        st = os.stat(os.path.join(c.run_sbxd, 'token'))
        assert st.st_mode & 0o777 == 0o600 and len(c.token) == 64
        code, out, _ = execute(c, 'echo ok')
        assert (code, out) == (0, 'ok\n')
        assert c.api('/api/execute', {'command': 'true'}, token='wrong')[0] == 401
    finally:
        finish(c)


@pytest.mark.expect_errors
def test_no_silent_fallback_without_bubblewrap(build_dir):
    """The default isolation in a container without bubblewrap refuses commands (it used
    to run them without isolation because the workspace was /workspace)."""
    c = start(build_dir, {'SBXD_TOKEN': secrets.token_hex(32)},
              inner=['sh', '-c', 'exec sbxd --workspace /workspace $SBXD_OPTIONS'])
    try:
        status, r = c.api('/api/execute', {'command': 'echo ran > /workspace/ran'})
        assert status != 200 or not r.get('success'), r
        assert '--isolation=none' in json.dumps(r), r
        assert not os.path.exists(os.path.join(c.workspace, 'ran'))
        assert 'bubblewrap is unusable, so commands are refused' in c.read_log(c.sbxd_log)
        status, caps = c.api('/api/x/capabilities')
        assert caps['isolation'] == 'bubblewrap'
    finally:
        finish(c)


def test_isolation_none_wants_the_workspace_at_slash_workspace(build_dir, tmp_path):
    s = Sandbox(build_dir, 'ext')
    try:
        p = subprocess.run([s.sbxd_bin, '--isolation=none', '--workspace', str(tmp_path),
                            '--token-file', s.token_file, '--state-dir', s.state,
                            '--listen', '127.0.0.1:0'], capture_output=True, timeout=20 * SLOW)
    finally:
        s.remove()
    assert p.returncode == 2
    assert ('with --isolation=none commands see this system\'s files as they are, so the '
            'workspace must be /workspace, not %s' % tmp_path) in p.stderr.decode()


@pytest.mark.parametrize('arg,ok', [
    ('--isolation=bwrap', True), ('--isolation=none2', False), ('--isolation=', False),
    ('--preview-base=https://sbx.example.com', True),
    ('--preview-base=http://localhost:8787/', True),
    ('--preview-base=ftp://sbx.example.com', False),
    ('--preview-base=https://10.0.0.1', False),
    ('--preview-base=https://sbx.example.com/path', False),
    ('--preview-base=https://sbx.example.com:99999', False),
    ('--preview-base=https://sbx..example.com', False),
    ('--preview-base=https://', False),
    ('--preview-base=sbx.example.com', False),
])
def test_option_values(build_dir, arg, ok):
    sbxd = os.path.join(build_dir, 'src', 'sbxd')
    p = subprocess.run([sbxd, arg, '--help'], capture_output=True, timeout=20 * SLOW)
    if ok:
        assert p.returncode == 0, p.stderr
    else:
        assert p.returncode == 2 and arg.split('=')[0].encode() + b' wants ' in p.stderr, p


@pytest.mark.parametrize('listen', ['127.0.0.1:65536', '127.0.0.1:4294967296',
                                    '127.0.0.1:18446744073709551617', '127.0.0.1:', '7070'])
def test_listen_port_out_of_range(build_dir, listen):
    sbxd = os.path.join(build_dir, 'src', 'sbxd')
    env = {k: v for k, v in os.environ.items() if k != 'SBXD_TOKEN'}
    p = subprocess.run([sbxd, '--listen', listen], capture_output=True, env=env,
                       timeout=20 * SLOW)
    assert p.returncode == 2 and b'--listen wants HOST:PORT' in p.stderr, p


def test_preview_base_on_the_host(build_dir):
    s = Sandbox(build_dir, 'ext')
    s.server_args = ['--preview-base', 'HTTP://Sbx.Example.com:8443', '--sandbox-id', 'Box-2']
    try:
        s.start_server()
        status, r = s.api('/api/x/ports', {'port': free_port()})
        assert status == 200, r
        assert re.fullmatch(r'http://\d+-box-2-[a-z0-9_]{16}\.sbx\.example\.com:8443/',
                            r['url']), r
    finally:
        problems = s.close()
        s.remove()
    assert not problems, problems


# ---- limits through a cgroup, where the container has one of its own ----

@pytest.fixture
def cgroup_dirs():
    """A fresh cgroup below this process's own in each pids/memory hierarchy, so that the
    container's sbxd (whose pids are those of its own namespace) only ever sees its own."""
    if os.geteuid() != 0:
        pytest.skip('creating cgroups needs root')
    made = []
    for parent in own_cgroup_dirs():
        d = os.path.join(parent, 'sbxfs-container-test-%d' % os.getpid())
        try:
            os.mkdir(d)
        except OSError:
            continue
        made.append(d)
    if not made:
        pytest.skip('no writable cgroup hierarchy')
    yield made
    for d in made:
        wait_for(lambda: _rmdir(d), 10 * SLOW)


def _rmdir(d):
    try:
        os.rmdir(d)
    except FileNotFoundError:
        pass
    except OSError:
        return False
    return True


FORKS = r'''
import os, signal, time
kids = []
try:
    while len(kids) < 200:
        pid = os.fork()
        if pid == 0:
            time.sleep(60)
            os._exit(0)
        kids.append(pid)
except OSError as e:
    print(len(kids), e.strerror)
for k in kids:
    os.kill(k, signal.SIGKILL)
    os.waitpid(k, 0)
'''


def test_pids_limit_with_a_cgroup(build_dir, cgroup_dirs):
    env = container_env()
    env['SBXD_OPTIONS'] += ' --pids-limit 24'
    c = start(build_dir, env, cgroups=cgroup_dirs)
    try:
        log = c.read_log(c.sbxd_log)
        if 'NOT enforced without a writable cgroup: number of processes' in log:
            pytest.skip('the pids controller cannot be delegated here: ' + log)
        code, out, err = execute(c, 'cat /proc/self/cgroup')
        assert re.search(r'pids:.*/sbxd-\d+$', out, re.M) or re.search(r'^0::.*/sbxd-\d+$',
                                                                        out, re.M), out
        with open(os.path.join(c.workspace, 'forks.py'), 'w') as f:
            f.write(FORKS)
        code, out, err = execute(c, 'python3 forks.py')
        n, _, why = out.partition(' ')
        assert code == 0 and int(n) < 24 and 'Resource temporarily unavailable' in why, \
            (code, out, err)
    finally:
        finish(c)
