"""sbxd's background processes, git checkout and environment store, through its HTTP API (no
mount): /api/process/*, /api/x/process/remove, /api/git/checkout, /api/x/env."""
import json
import os
import random
import shutil
import subprocess
import time
import urllib.request

import pytest

from util import SLOW, Sandbox, free_port, sh, wait_for


@pytest.fixture(autouse=True)
def ext_only(mode):
    """The API is sbxd's own whatever the mount does: one run (ext) is enough."""
    if mode != 'ext':
        pytest.skip('sbxd API tests run in ext mode only')


@pytest.fixture(scope='module')
def sbx(api_server):
    return api_server   # ext only: see ext_only


def uid():
    return '%d%06d' % (os.getpid(), random.randrange(10 ** 6))


def start(sbx, command, **kw):
    body = dict(command=command, **kw)
    status, r = sbx.api('/api/process/start', body)
    assert status == 200 and r['success'], r
    return r['processId']


def get(sbx, pid):
    status, r = sbx.api('/api/process/' + pid)
    assert status == 200, r
    return r['process']


def logs(sbx, pid, offset=None):
    q = '' if offset is None else '?offset=%s' % offset
    status, r = sbx.api('/api/process/%s/logs%s' % (pid, q))
    assert status == 200, r
    return r


def wait_done(sbx, pid, timeout=20):
    p = wait_for(lambda: (lambda p: p if p['status'] != 'running' else None)(get(sbx, pid)),
                 timeout * SLOW)
    assert p, 'process %s still running' % pid
    return p


def kill(sbx, pid, signal=None):
    q = '' if signal is None else '?signal=' + signal
    return sbx.api('/api/process/%s%s' % (pid, q), method='DELETE')


def stream(sbx, pid, timeout=30):
    """The events of GET /api/process/{id}/stream until the server ends it."""
    req = urllib.request.Request('%s/api/process/%s/stream' % (sbx.url, pid))
    req.add_header('Authorization', 'Bearer ' + sbx.token)
    events = []
    deadline = time.monotonic() + timeout * SLOW
    with urllib.request.urlopen(req, timeout=timeout * SLOW) as r:
        assert r.headers['Content-Type'].startswith('text/event-stream')
        for line in r:
            if line.startswith(b'data: '):
                events.append(json.loads(line[6:]))
            assert time.monotonic() < deadline, 'stream did not end: %r' % events
    return events


def outputs(events):
    """(type, text) pairs with consecutive pieces of the same stream joined."""
    out = []
    for e in events:
        if e['type'] in ('stdout', 'stderr'):
            if out and out[-1][0] == e['type']:
                out[-1] = (e['type'], out[-1][1] + e['data'])
            else:
                out.append((e['type'], e['data']))
    return out


def pgrep(pattern):
    p = subprocess.run(['pgrep', '-f', pattern], capture_output=True, text=True)
    return p.stdout.split()


ALTERNATE = ('for i in 1 2 3; do echo out$i; sleep 0.2; echo err$i >&2; sleep 0.2; done')
ALTERNATE_OUT = [('stdout', 'out1\n'), ('stderr', 'err1\n'), ('stdout', 'out2\n'),
                 ('stderr', 'err2\n'), ('stdout', 'out3\n'), ('stderr', 'err3\n')]


# ---- processes ----

def test_start_list_get_logs_stream_interleaved(sbx):
    pid = start(sbx, ALTERNATE, processId='alt-' + uid())
    live = stream(sbx, pid)
    assert live[0]['type'] == 'process_info' and live[0]['processId'] == pid
    assert live[0]['status'] == 'running'
    assert outputs(live) == ALTERNATE_OUT
    assert live[-1]['type'] == 'exit' and live[-1]['exitCode'] == 0
    assert live[-1]['data'] == 'Process completed with exit code 0'
    # the replay of a finished process keeps the order too, and has no duplicates
    replay = stream(sbx, pid)
    assert replay[0]['status'] == 'completed'
    assert outputs(replay) == ALTERNATE_OUT
    assert [e['type'] for e in replay][-1] == 'exit'

    p = get(sbx, pid)
    assert p['status'] == 'completed' and p['exitCode'] == 0 and p['command'] == ALTERNATE
    assert p['startTime'] <= p['endTime'] and p['pid'] > 0
    lg = logs(sbx, pid)
    assert lg['stdout'] == 'out1\nout2\nout3\n' and lg['stderr'] == 'err1\nerr2\nerr3\n'
    status, r = sbx.api('/api/process/list')
    assert status == 200 and pid in [x['id'] for x in r['processes']]
    status, r = sbx.api('/api/process/list?status=completed')
    assert all(x['status'] == 'completed' for x in r['processes'])
    assert pid in [x['id'] for x in r['processes']]
    status, r = sbx.api('/api/process/list?status=running')
    assert pid not in [x['id'] for x in r['processes']]


def test_stream_joined_midway_has_everything_in_order(sbx):
    pid = start(sbx, ALTERNATE)
    assert pid.startswith('proc_')
    time.sleep(0.5)
    assert outputs(stream(sbx, pid)) == ALTERNATE_OUT


def test_exit_codes_and_statuses(sbx):
    ok = start(sbx, 'true')
    bad = start(sbx, 'echo before; exit 3')
    ev = stream(sbx, bad)
    assert ev[-1]['type'] == 'exit' and ev[-1]['exitCode'] == 3
    assert ev[-1]['data'] == 'Process failed with exit code 3'
    assert outputs(ev) == [('stdout', 'before\n')]
    p = wait_done(sbx, ok)
    assert (p['status'], p['exitCode']) == ('completed', 0)
    p = get(sbx, bad)
    assert (p['status'], p['exitCode']) == ('failed', 3)

    slow = start(sbx, 'sleep 100')
    assert get(sbx, slow)['status'] == 'running'
    t0 = time.monotonic()
    status, r = kill(sbx, slow)
    assert status == 200 and r["processId"] == slow, r
    assert time.monotonic() - t0 < 5
    p = get(sbx, slow)   # a TERM answers once the process is gone
    assert (p['status'], p['exitCode']) == ('killed', 143)
    ev = stream(sbx, slow)
    assert ev[-1] == dict(ev[-1], type='exit', exitCode=143)
    # a finished process cannot be killed
    status, r = kill(sbx, slow)
    assert status == 404 and r['errno'] == 'ESRCH'
    status, r = kill(sbx, 'no-such-process')
    assert status == 404 and r['code'] == 'PROCESS_NOT_FOUND'


def test_kill_sigint_runs_the_trap(sbx):
    pid = start(sbx, "trap 'echo got INT; exit 3' INT; echo ready; "
                     "while :; do sleep 0.1; done")
    assert wait_for(lambda: 'ready' in logs(sbx, pid)['stdout'], 10 * SLOW)
    status, r = kill(sbx, pid, 'INT')
    assert status == 200, r
    p = wait_done(sbx, pid)
    assert (p['status'], p['exitCode']) == ('killed', 3)
    assert logs(sbx, pid)['stdout'] == 'ready\ngot INT\n'


def test_kill_sigkill_and_signal_names(sbx):
    for name in ('KILL', 'SIGKILL', '9', 'kill'):
        pid = start(sbx, "trap '' TERM INT; echo ready; while :; do sleep 0.1; done")
        assert wait_for(lambda: 'ready' in logs(sbx, pid)['stdout'], 10 * SLOW)
        status, r = kill(sbx, pid, name)
        assert status == 200, r
        p = wait_done(sbx, pid)
        assert (p['status'], p['exitCode']) == ('killed', 137), name
    pid = start(sbx, 'sleep 100')
    for bad in ('NOPE', '0', '-1', '99999', ''):
        status, r = kill(sbx, pid, bad)
        assert status == 400 and r['errno'] == 'EINVAL', bad
    assert get(sbx, pid)['status'] == 'running'
    # a process that ignores TERM is killed 5 s later
    pid2 = start(sbx, "trap '' TERM; echo ready; while :; do sleep 0.1; done")
    assert wait_for(lambda: 'ready' in logs(sbx, pid2)['stdout'], 10 * SLOW)
    t0 = time.monotonic()
    status, r = kill(sbx, pid2, 'TERM')
    assert status == 200 and 4.5 < time.monotonic() - t0 < 9 * SLOW
    assert (get(sbx, pid2)['status'], get(sbx, pid2)['exitCode']) == ('killed', 137)
    kill(sbx, pid, 'KILL')
    wait_done(sbx, pid)


def test_kill_all(sbx):
    done = start(sbx, 'true')
    wait_done(sbx, done)
    pids = [start(sbx, 'sleep 100') for _ in range(3)]
    status, r = sbx.api('/api/process/kill-all?signal=KILL', method='DELETE')
    assert status == 200 and r['cleanedCount'] >= 3
    for pid in pids:
        p = wait_done(sbx, pid)
        assert (p['status'], p['exitCode']) == ('killed', 137)
    assert get(sbx, done)['status'] == 'completed'
    status, r = sbx.api('/api/process/kill-all', method='DELETE')
    assert status == 200 and r['cleanedCount'] == 0
    status, r = sbx.api('/api/process/kill-all?signal=BOGUS', method='DELETE')
    assert status == 400


@pytest.mark.parametrize('signal', ['TERM', 'INT', 'KILL'])
def test_process_tree_dies_with_the_kill(sbx, signal):
    n = random.randrange(10 ** 6)
    # GNU sleep takes fractions: the odd durations mark these processes on the host
    child, parent = 'sleep 1000.%06d' % n, 'sleep 1001.%06d' % n
    pid = start(sbx, '%s & %s; wait' % (child, parent))
    assert wait_for(lambda: pgrep(child) and pgrep(parent), 10 * SLOW), 'not started'
    status, r = kill(sbx, pid, signal)
    assert status == 200, r
    wait_done(sbx, pid)
    assert wait_for(lambda: not pgrep(child) and not pgrep(parent), 5 * SLOW), \
        'left behind: %s %s' % (pgrep(child), pgrep(parent))
    assert get(sbx, pid)['status'] == 'killed'


def test_process_tree_dies_with_its_leader(sbx):
    n = random.randrange(10 ** 6)
    child = 'sleep 1000.%06d' % n
    pid = start(sbx, '%s & echo started' % child)
    p = wait_done(sbx, pid)
    assert (p['status'], p['exitCode']) == ('completed', 0)
    assert wait_for(lambda: not pgrep(child), 5 * SLOW), 'left behind: %s' % pgrep(child)


def test_bad_cwd_ends_with_status_error(sbx):
    for cwd in ('/workspace/no/such/dir', '/no-such-dir-' + uid()):
        pid = start(sbx, 'echo never', cwd=cwd)
        ev = stream(sbx, pid)
        assert ev[-1]['type'] == 'exit'
        p = get(sbx, pid)
        assert p['status'] == 'error'
        assert ev[-1]['exitCode'] == p['exitCode'] != 0
        lg = logs(sbx, pid)
        assert lg['stdout'] == '' and cwd in lg['stderr'], lg


def test_cwd_and_env_per_process(sbx):
    os.makedirs(os.path.join(sbx.workspace, 'pdir', 'sub'), exist_ok=True)
    pid = start(sbx, 'pwd; echo "$A-$B"', cwd='/workspace/pdir/sub', env={'A': 'x', 'B': 2})
    wait_done(sbx, pid)
    assert logs(sbx, pid)['stdout'] == '/workspace/pdir/sub\nx-2\n'
    pid = start(sbx, 'pwd', cwd='pdir')   # relative to /workspace
    wait_done(sbx, pid)
    assert logs(sbx, pid)['stdout'] == '/workspace/pdir\n'
    pid = start(sbx, 'pwd', cwd='/tmp')   # outside /workspace: the sandbox's /tmp
    p = wait_done(sbx, pid)
    assert p['status'] == 'completed' and logs(sbx, pid)['stdout'] == '/tmp\n'
    status, r = sbx.api('/api/process/start', {'command': 'true', 'env': {'BAD-NAME': 'x'}})
    assert status == 400


def test_logs_offset(sbx):
    pid = start(sbx, 'printf 0123456789; printf abcdef >&2')
    wait_done(sbx, pid)
    lg = logs(sbx, pid, 4)
    assert (lg['stdout'], lg['stderr']) == ('456789', 'ef')
    assert (lg['stdoutSize'], lg['stderrSize']) == (10, 6)
    lg = logs(sbx, pid, 8)
    assert (lg['stdout'], lg['stderr']) == ('89', '')
    lg = logs(sbx, pid, 1000)
    assert (lg['stdout'], lg['stderr'], lg['stdoutSize']) == ('', '', 10)
    for bad in ('-1', 'x', ''):
        status, r = sbx.api('/api/process/%s/logs?offset=%s' % (pid, bad))
        assert status == 400, bad


def test_logs_follow_a_running_process(sbx):
    pid = start(sbx, 'echo one; sleep 0.5; echo two; sleep 100')
    assert wait_for(lambda: logs(sbx, pid)['stdout'] == 'one\n', 10 * SLOW)
    size = logs(sbx, pid)['stdoutSize']
    assert wait_for(lambda: logs(sbx, pid, size)['stdout'] == 'two\n', 10 * SLOW)
    kill(sbx, pid, 'KILL')


def test_remove(sbx):
    pid = start(sbx, 'sleep 100')
    status, r = sbx.api('/api/x/process/remove', {'processId': pid})
    assert status == 409 and r['errno'] == 'EBUSY'
    kill(sbx, pid, 'KILL')
    wait_done(sbx, pid)
    status, r = sbx.api('/api/x/process/remove', {'processId': pid})
    assert status == 200 and r['processId'] == pid
    status, r = sbx.api('/api/process/' + pid)
    assert status == 404 and r['code'] == 'PROCESS_NOT_FOUND'
    status, r = sbx.api('/api/process/list')
    assert pid not in [x['id'] for x in r['processes']]
    status, r = sbx.api('/api/x/process/remove', {'processId': pid})
    assert status == 404 and r['errno'] == 'ENOENT'


def test_duplicate_id(sbx):
    pid = 'dup-' + uid()
    start(sbx, 'echo first; sleep 100', processId=pid)
    status, r = sbx.api('/api/process/start', {'command': 'echo second', 'processId': pid})
    assert status == 409 and r['errno'] == 'EEXIST'
    assert get(sbx, pid)['command'] == 'echo first; sleep 100'
    kill(sbx, pid, 'KILL')
    wait_done(sbx, pid)
    start(sbx, 'echo second', processId=pid)    # a finished record is replaced
    wait_done(sbx, pid)
    assert logs(sbx, pid)['stdout'] == 'second\n'
    for bad in ('', 'a/b', 'list', 'kill-all', '.hidden', 'x' * 200):
        status, r = sbx.api('/api/process/start', {'command': 'true', 'processId': bad})
        assert status == 400, bad


def test_errors_and_routes(sbx):
    for cmd in ('', '   ', None):
        status, r = sbx.api('/api/process/start', {'command': cmd})
        assert status == 400 and r['code'] == 'INVALID_COMMAND'
    for route in ('/api/process/nope', '/api/process/nope/logs', '/api/process/nope/stream'):
        status, r = sbx.api(route)
        assert status == 404 and r['code'] == 'PROCESS_NOT_FOUND', route
    status, r = sbx.api('/api/process/x/bogus')
    assert status == 404 and r['code'] == 'UNKNOWN_ERROR'


def test_execute_background(sbx):
    status, r = sbx.api('/api/execute', {'command': 'echo in the background',
                                         'background': True})
    assert status == 200 and r['success'] and r['processId'].startswith('proc_'), r
    wait_done(sbx, r['processId'])
    assert logs(sbx, r['processId'])['stdout'] == 'in the background\n'


def test_timeout(sbx):
    pid = start(sbx, 'sleep 100', timeoutMs=300)
    p = wait_done(sbx, pid)
    assert (p['status'], p['exitCode']) == ('failed', 124)
    assert 'timed out after 300ms' in logs(sbx, pid)['stderr']


# ---- environment ----

def test_env_store(sbx):
    name = 'SBX_T_' + uid()
    sbx.execute('true')     # the default session has saved state from here on
    status, r = sbx.api('/api/x/env', {'set': {name: 'hello world', 'SBX_T_OTHER': 'o'}})
    assert status == 200 and r['env'][name] == 'hello world'
    status, r = sbx.api('/api/x/env')
    assert status == 200 and r['env'][name] == 'hello world'

    pid = start(sbx, 'echo "[$%s]"' % name)
    wait_done(sbx, pid)
    assert logs(sbx, pid)['stdout'] == '[hello world]\n'
    pid = start(sbx, 'echo "[$%s]"' % name, env={name: 'mine'})   # the process's own wins
    wait_done(sbx, pid)
    assert logs(sbx, pid)['stdout'] == '[mine]\n'
    assert sbx.execute('echo "[$%s]"' % name)['stdout'] == '[hello world]\n'
    status, r = sbx.api('/api/execute', {'command': 'echo "[$%s]"' % name,
                                         'sessionId': '__DISABLE_SESSION__'})
    assert r['stdout'] == '[hello world]\n'
    status, r = sbx.api('/api/execute', {'command': 'echo "[$%s]"' % name,
                                         'env': {name: 'req'}})
    assert r['stdout'] == '[req]\n'

    status, r = sbx.api('/api/x/env', {'unset': [name]})
    assert status == 200 and name not in r['env'] and r['env']['SBX_T_OTHER'] == 'o'
    assert sbx.execute('echo "[${%s-unset}]"' % name)['stdout'] == '[unset]\n'
    pid = start(sbx, 'echo "[${%s-unset}]"' % name)
    wait_done(sbx, pid)
    assert logs(sbx, pid)['stdout'] == '[unset]\n'
    sbx.api('/api/x/env', {'unset': ['SBX_T_OTHER']})

    for bad in ({'set': {'A-B': 'x'}}, {'set': {'A': 1}}, {'set': []}, {'unset': 'A'},
                {'unset': ['1A']}, {'set': {'__SBX_CMD': 'x'}}):
        status, r = sbx.api('/api/x/env', bad)
        assert status == 400 and r['errno'] in ('EINVAL', 'E2BIG'), bad


# ---- git ----

@pytest.fixture(scope='module')
def git_server(tmp_path_factory):
    """A repository (branches main and feature, 3 commits on feature) served by git daemon
    on loopback."""
    base = str(tmp_path_factory.mktemp('gitd'))
    work = os.path.join(base, 'work')
    g = 'git -c user.name=t -c user.email=t@example.com -c init.defaultBranch=main '
    sh('mkdir %s && cd %s && %s init -q && echo hello > README && %s add README && '
       '%s commit -qm one && %s checkout -qb feature && for i in 2 3; do '
       'echo $i > f$i.txt && %s add . && %s commit -qm c$i; done && %s checkout -q main'
       % ((work, work) + (g,) * 7))
    sh('git clone -q --bare %s %s/repo.git' % (work, base))
    port = free_port()
    d = subprocess.Popen(['git', 'daemon', '--export-all', '--base-path=' + base,
                          '--port=%d' % port, '--listen=127.0.0.1', '--reuseaddr',
                          '--enable=upload-pack'],
                         stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = 'git://127.0.0.1:%d/repo.git' % port
    try:
        ok = wait_for(lambda: sh('git ls-remote %s' % url, check=False).returncode == 0,
                      10 * SLOW)
        assert ok, 'git daemon did not start'
        yield url
    finally:
        d.terminate()
        d.wait(10)
        shutil.rmtree(base, ignore_errors=True)


def checkout(sbx, **body):
    return sbx.api('/api/git/checkout', body, timeout=120)


def test_git_clone(sbx, git_server):
    status, r = checkout(sbx, repoUrl=git_server, branch='feature',
                         targetDir='/workspace/clones/one', depth=1)
    assert status == 200 and r['success'], r
    assert (r['branch'], r['targetDir'], r['repoUrl']) == \
        ('feature', '/workspace/clones/one', git_server)
    d = os.path.join(sbx.workspace, 'clones', 'one')
    assert sorted(os.listdir(d)) == ['.git', 'README', 'f2.txt', 'f3.txt']
    with open(os.path.join(d, 'f3.txt')) as f:
        assert f.read() == '3\n'
    # depth 1: one commit in the history
    r2 = sbx.execute('git -C /workspace/clones/one rev-list --count HEAD')
    assert r2['stdout'].strip() == '1', r2

    # defaults: the remote's HEAD branch, /workspace/<repo name>
    status, r = checkout(sbx, repoUrl=git_server)
    assert status == 200, r
    assert (r['branch'], r['targetDir']) == ('main', '/workspace/repo')
    assert sorted(os.listdir(os.path.join(sbx.workspace, 'repo'))) == ['.git', 'README']

    # the target exists: git's reason
    status, r = checkout(sbx, repoUrl=git_server, targetDir='/workspace/clones/one')
    assert status == 500 and r['code'] == 'GIT_OPERATION_FAILED', r
    assert 'already exists and is not an empty directory' in r['message']
    assert r['errno'] == 'EEXIST' and r['context']['exitCode'] == 128


def test_git_clone_failures(sbx, git_server):
    bad = git_server.replace('repo.git', 'nope.git')
    status, r = checkout(sbx, repoUrl=bad, targetDir='/workspace/clones/bad')
    assert status == 500 and r['code'] == 'GIT_OPERATION_FAILED', r
    assert 'fatal:' in r['message'] and 'nope.git' in r['message']
    assert not os.path.exists(os.path.join(sbx.workspace, 'clones', 'bad'))
    status, r = checkout(sbx, repoUrl=git_server, branch='no-such-branch',
                         targetDir='/workspace/clones/nobranch')
    assert status == 500 and 'no-such-branch' in r['message'], r

    # credentials never come back
    status, r = checkout(sbx, repoUrl='http://user:s3cr3t@127.0.0.1:%d/x.git' % free_port(),
                         targetDir='/workspace/clones/cred')
    assert status == 500 and 's3cr3t' not in json.dumps(r), r
    assert 'http://***@127.0.0.1' in r['message']

    status, r = checkout(sbx, repoUrl='')
    assert status == 400 and r['code'] == 'INVALID_GIT_URL'
    status, r = checkout(sbx, repoUrl=git_server, targetDir='/etc/clone')
    assert status == 403 and r['errno'] == 'EACCES'
    status, r = checkout(sbx, repoUrl=git_server, timeoutMs=0)
    assert status == 400 and r['code'] == 'VALIDATION_FAILED'
    status, r = checkout(sbx, repoUrl=git_server, depth=-1)
    assert status == 400


def test_git_clone_timeout(sbx):
    # a listener that never answers: git waits until the clone's deadline
    import socket
    s = socket.socket()
    s.bind(('127.0.0.1', 0))
    s.listen(1)
    try:
        t0 = time.monotonic()
        status, r = checkout(sbx, repoUrl='git://127.0.0.1:%d/x.git' % s.getsockname()[1],
                             targetDir='/workspace/clones/slow', timeoutMs=1000)
        assert status == 502 and r['code'] == 'GIT_NETWORK_ERROR', r
        assert time.monotonic() - t0 < 10 * SLOW
    finally:
        s.close()


# ---- shutdown ----

def test_shutdown_kills_processes(build_dir):
    s = Sandbox(build_dir, 'ext')
    try:
        s.start_server()
        marker = 'sleep 1002.%06d' % random.randrange(10 ** 6)
        status, r = s.api('/api/process/start', {'command': marker + ' & ' + marker})
        assert status == 200
        assert wait_for(lambda: len(pgrep(marker)) >= 2, 10 * SLOW)
        s.stop_server()
        assert not s.problems, s.problems
        assert wait_for(lambda: not pgrep(marker), 5 * SLOW), pgrep(marker)
    finally:
        problems = s.close()
        s.remove()
    assert not problems, problems
