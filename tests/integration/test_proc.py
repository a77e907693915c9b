"""proc/: background processes through the mount, driven with the shell one-liners of
docs/proc.md, in both modes (fallback: the standard process routes of a plain container, where
signals other than TERM and removing records fail with EOPNOTSUPP)."""
import errno
import json
import os
import shlex
import subprocess
import sys
import time

import pytest

from util import BACKEND_DOWN_ERRNOS, SLOW, Sandbox, default_sigint, fs_op, sh, wait_for

ENDED = ('completed', 'failed', 'killed', 'error')


def proc(sbx, *parts):
    return os.path.join(sbx.mnt, 'proc', *parts)


def start(sbx, command):
    """The documented race-free one-liner; returns the new id."""
    r = sh("cd %s && id=$(exec 3<>proc/new; echo %s >&3; head -1 <&3) && echo \"$id\"" % (
        shlex.quote(sbx.mnt), shlex.quote(command)))
    pid = r.stdout.decode().strip()
    assert pid and '/' not in pid, r
    return pid


def read(sbx, pid, name):
    with open(proc(sbx, pid, name)) as f:
        return f.read()


def status(sbx, pid):
    return read(sbx, pid, 'status').strip()


def wait_ended(sbx, pid, timeout=20):
    s = wait_for(lambda: status(sbx, pid).split()[0] in ENDED and status(sbx, pid),
                 timeout * SLOW, 0.1)
    assert s, 'process %s still %r after %d s' % (pid, status(sbx, pid), timeout)
    return s


def write(path, text):
    """echo TEXT > path, as a user would; returns (exit status, stderr)."""
    r = sh('echo %s > %s' % (shlex.quote(text), shlex.quote(path)), check=False)
    return r.returncode, r.stderr.decode()


def errno_of(fn, *args):
    with pytest.raises(OSError) as e:
        fn(*args)
    return 'EOPNOTSUPP' if e.value.errno == errno.EOPNOTSUPP else errno.errorcode.get(
        e.value.errno, e.value.errno)


def test_start_learn_id_and_inspect(sbx):
    pid = start(sbx, 'echo hello; echo oops >&2')
    assert pid in os.listdir(proc(sbx))
    assert sorted(os.listdir(proc(sbx, pid))) == sorted(
        ['cmd', 'status', 'info', 'stdout', 'stderr', 'follow', 'kill'])
    assert wait_ended(sbx, pid) == 'completed 0'
    assert read(sbx, pid, 'cmd') == 'echo hello; echo oops >&2\n'
    assert read(sbx, pid, 'stdout') == 'hello\n'
    assert read(sbx, pid, 'stderr') == 'oops\n'
    info = json.loads(read(sbx, pid, 'info'))
    assert info['id'] == pid and info['status'] == 'completed' and info['exitCode'] == 0
    # as cat sees them
    r = sh('cat %s' % shlex.quote(proc(sbx, pid, 'status')))
    assert r.stdout == b'completed 0\n'


def test_echo_starts_without_the_id(sbx, d):
    assert write(proc(sbx, 'new'), 'echo started > /workspace/%s/flag' % d.rel)[0] == 0
    assert wait_for(lambda: os.path.exists(os.path.join(d.h, 'flag')), 10 * SLOW)


def test_cwd_and_env_lines(sbx, d):
    os.mkdir(os.path.join(d.m, 'sub'))
    r = sh("cd %s && id=$(exec 3<>proc/new; printf 'cwd=%s/sub\\nenv.GREETING=hi there\\n"
           "pwd; echo \"$GREETING\"\\n' >&3; head -1 <&3) && echo $id" % (
               shlex.quote(sbx.mnt), d.rel))
    pid = r.stdout.decode().strip()
    assert wait_ended(sbx, pid) == 'completed 0'
    assert read(sbx, pid, 'stdout') == '/workspace/%s/sub\nhi there\n' % d.rel
    assert read(sbx, pid, 'cmd') == 'pwd; echo "$GREETING"\n'


def test_missing_cwd(sbx, d, mode):
    """A plain container never starts a process whose cwd does not exist, nor says so: its
    process start hangs. In fallback mode sbxfs refuses it first, and the write fails with
    ENOENT (ENOTDIR for a file); sbxd with its extensions starts it and reports the error in
    its status."""
    with open(os.path.join(d.m, 'file'), 'w') as f:
        f.write('x\n')
    for cwd, text in (('nope', 'No such file or directory'), ('file', 'Not a directory')):
        t0 = time.monotonic()
        r = sh("cd %s && id=$(exec 3<>proc/new; printf 'cwd=%s/%s\\ntrue\\n' >&3; "
               "head -1 <&3) && echo \"$id\"" % (shlex.quote(sbx.mnt), d.rel, cwd),
               check=False, timeout=30)
        if mode == 'fallback':
            assert text in r.stderr.decode() and not r.stdout.strip(), (cwd, r)
            assert time.monotonic() - t0 < 5 * SLOW
        else:
            pid = r.stdout.decode().strip()
            assert r.returncode == 0 and pid, r
            assert wait_ended(sbx, pid).startswith('error'), cwd


def test_two_shells_at_once_get_their_own_ids(sbx):
    cmds = ['echo first-%d' % i for i in range(4)]
    line = "cd %s && id=$(exec 3<>proc/new; echo %s >&3; head -1 <&3) && echo \"$id\""
    ps = [subprocess.Popen(['bash', '-c', line % (shlex.quote(sbx.mnt), shlex.quote(c))],
                           stdout=subprocess.PIPE) for c in cmds]
    ids = [p.communicate(timeout=30 * SLOW)[0].decode().strip() for p in ps]
    assert all(p.returncode == 0 for p in ps)
    assert len(set(ids)) == len(ids) and all(ids)
    for c, pid in zip(cmds, ids):
        assert read(sbx, pid, 'cmd') == c + '\n'
        wait_ended(sbx, pid)
        assert read(sbx, pid, 'stdout') == c[5:] + '\n'


def test_follow_is_live_and_ends_at_exit(sbx):
    pid = start(sbx, 'for i in 1 2 3; do echo $i; sleep 0.5; done')
    t0 = time.monotonic()
    p = subprocess.Popen(['cat', proc(sbx, pid, 'follow')], stdout=subprocess.PIPE)
    first = p.stdout.readline()
    t_first = time.monotonic() - t0
    rest = p.stdout.read()
    t_eof = time.monotonic() - t0
    assert p.wait(10) == 0
    assert first + rest == b'1\n2\n3\n'
    assert t_eof - t_first > 0.6, 'the first line came only at the end (%.2f s, %.2f s)' % (
        t_first, t_eof)
    assert status(sbx, pid) == 'completed 0'


def test_follow_interleaves_and_replays_a_finished_process(sbx):
    pid = start(sbx, 'echo a; sleep 0.2; echo b >&2; sleep 0.2; echo c')
    wait_ended(sbx, pid)
    r = sh('cat %s' % shlex.quote(proc(sbx, pid, 'follow')), timeout=20)
    if sbx.mode == 'ext':
        assert r.stdout == b'a\nb\nc\n'
    else:
        # the container's replay: all of stdout, then all of stderr
        assert sorted(r.stdout.splitlines()) == [b'a', b'b', b'c']


def test_follow_ctrl_c_returns_at_once(sbx):
    pid = start(sbx, 'echo up; sleep 60')
    t0 = time.monotonic()
    p = subprocess.Popen(['cat', proc(sbx, pid, 'follow')], stdout=subprocess.PIPE,
                         preexec_fn=default_sigint)
    assert p.stdout.readline() == b'up\n'
    p.send_signal(2)
    assert p.wait(5) != 0
    assert time.monotonic() - t0 < 5 * SLOW
    assert status(sbx, pid) == 'running'
    assert write(proc(sbx, pid, 'kill'), '')[0] == 0
    assert wait_ended(sbx, pid).startswith('killed')


def test_exit_statuses(sbx):
    ok = start(sbx, 'true')
    bad = start(sbx, 'exit 3')
    slow = start(sbx, 'sleep 60')
    assert wait_ended(sbx, ok) == 'completed 0'
    assert wait_ended(sbx, bad) == 'failed 3'
    assert status(sbx, slow) == 'running'
    # empty write: TERM
    assert sh(': > %s' % shlex.quote(proc(sbx, slow, 'kill'))).returncode == 0
    assert wait_ended(sbx, slow) == 'killed 143'


def test_kill_with_sigint_and_sigkill(sbx):
    script = "trap 'echo got-int; exit 7' INT; echo ready; while :; do sleep 0.1; done"
    pid = start(sbx, script)
    assert wait_for(lambda: read(sbx, pid, 'stdout') == 'ready\n', 10 * SLOW, 0.1)
    rc, err = write(proc(sbx, pid, 'kill'), 'INT')
    if sbx.mode == 'fallback':
        assert rc != 0 and 'Operation not supported' in err
        assert status(sbx, pid) == 'running'
        rc, err = write(proc(sbx, pid, 'kill'), 'TERM')
        assert rc == 0, err
        assert wait_ended(sbx, pid) == 'killed 143'
        return
    assert rc == 0, err
    s = wait_ended(sbx, pid)
    assert read(sbx, pid, 'stdout') == 'ready\ngot-int\n'
    assert json.loads(read(sbx, pid, 'info'))['exitCode'] == 7, s

    pid = start(sbx, "trap '' TERM INT; echo ready; while :; do sleep 0.1; done")
    assert wait_for(lambda: read(sbx, pid, 'stdout') == 'ready\n', 10 * SLOW, 0.1)
    t0 = time.monotonic()
    assert write(proc(sbx, pid, 'kill'), 'SIGKILL')[0] == 0
    assert wait_ended(sbx, pid) == 'killed 137'
    assert time.monotonic() - t0 < 4 * SLOW      # KILL does not wait for TERM's grace time
    # numbers work too
    pid = start(sbx, 'sleep 60')
    assert write(proc(sbx, pid, 'kill'), '9')[0] == 0
    assert wait_ended(sbx, pid) == 'killed 137'


def test_kill_all(sbx):
    ids = [start(sbx, 'sleep 60') for _ in range(3)]
    done = start(sbx, 'true')
    wait_ended(sbx, done)
    assert all(status(sbx, i) == 'running' for i in ids)
    rc, err = write(proc(sbx, 'kill-all'), '')
    assert rc == 0, err
    for i in ids:
        assert wait_ended(sbx, i) == 'killed 143'
    assert status(sbx, done) == 'completed 0'
    if sbx.mode == 'ext':
        ids = [start(sbx, "trap '' TERM; sleep 60") for _ in range(2)]
        assert write(proc(sbx, 'kill-all'), 'KILL')[0] == 0
        for i in ids:
            assert wait_ended(sbx, i).startswith('killed')


def test_process_tree_dies_with_its_parent(sbx, d):
    beat = os.path.join(d.h, 'beat')
    pid = start(sbx, '(while :; do date +%%s%%N > /workspace/%s/beat; sleep 0.1; done) & '
                'sleep 60 & wait' % d.rel)
    assert wait_for(lambda: os.path.exists(beat), 10 * SLOW)
    assert write(proc(sbx, pid, 'kill'), '')[0] == 0
    wait_ended(sbx, pid)
    time.sleep(0.5)
    with open(beat) as f:
        last = f.read()
    time.sleep(1)
    with open(beat) as f:
        assert f.read() == last, 'a child of the killed process is still running'


@pytest.mark.expect_errors
def test_rmdir(sbx):
    done = start(sbx, 'echo bye')
    wait_ended(sbx, done)
    running = start(sbx, 'sleep 60')
    if sbx.mode == 'fallback':
        assert errno_of(os.rmdir, proc(sbx, done)) == 'EOPNOTSUPP'
        assert done in os.listdir(proc(sbx))
    else:
        os.rmdir(proc(sbx, done))
        assert done not in os.listdir(proc(sbx))
        assert errno_of(os.stat, proc(sbx, done)) == 'ENOENT'
        assert errno_of(os.rmdir, proc(sbx, running)) == 'EBUSY'
        r = sh('rmdir %s' % shlex.quote(proc(sbx, running)), check=False)
        assert r.returncode != 0 and b'busy' in r.stderr
    assert errno_of(os.rmdir, proc(sbx, 'no-such-process')) == 'ENOENT'
    assert write(proc(sbx, running, 'kill'), '')[0] == 0
    wait_ended(sbx, running)


def test_ls_shows_processes_started_through_the_api(sbx):
    st, r = sbx.api('/api/process/start', {'command': 'sleep 30', 'processId': 'from-api'})
    assert st == 200, r
    assert 'from-api' in os.listdir(proc(sbx))
    assert status(sbx, 'from-api') == 'running'
    assert read(sbx, 'from-api', 'cmd') == 'sleep 30\n'
    assert write(proc(sbx, 'from-api', 'kill'), '')[0] == 0
    assert wait_ended(sbx, 'from-api') == 'killed 143'


@pytest.mark.expect_errors
def test_bad_input(sbx):
    # empty and blank commands
    rc, err = write(proc(sbx, 'new'), '')
    assert rc != 0 and 'Invalid argument' in err
    rc, err = write(proc(sbx, 'new'), '   ')
    assert rc != 0 and 'Invalid argument' in err
    r = sh('cat %s' % shlex.quote(proc(sbx, 'new')), check=False)
    assert r.returncode != 0 and b'Invalid argument' in r.stderr
    # unknown ids
    assert errno_of(os.stat, proc(sbx, 'nope')) == 'ENOENT'
    assert errno_of(open, proc(sbx, 'nope', 'status')) == 'ENOENT'
    rc, err = write(proc(sbx, 'nope', 'kill'), '')
    assert rc != 0 and 'No such file' in err
    # bad signals, and a signal for a process that has ended
    pid = start(sbx, 'true')
    wait_ended(sbx, pid)
    for bad in ('FOO', '0', '999', 'INT TERM'):
        rc, err = write(proc(sbx, pid, 'kill'), bad)
        assert rc != 0 and 'Invalid argument' in err, bad
    rc, err = write(proc(sbx, pid, 'kill'), '')
    assert rc != 0 and 'No such process' in err
    # read-only and write-only files
    assert errno_of(open, proc(sbx, pid, 'status'), 'w') == 'EACCES'
    assert errno_of(open, proc(sbx, pid, 'kill')) == 'EACCES'
    assert errno_of(os.mkdir, proc(sbx, 'mine')) == 'EPERM'


def rss_mib(pid):
    with open('/proc/%d/status' % pid) as f:
        for line in f:
            if line.startswith('VmRSS:'):
                return int(line.split()[1]) / 1024
    raise AssertionError('no VmRSS for %d' % pid)


def test_a_stalled_follower_keeps_only_the_stream_buffer(fresh_sbx):
    """A follower that stops reading (a paused pager, a stuck pipe) must not make sbxfs hold
    all of a chatty process's output: it keeps the last stream_buffer MiB, whole lines, and
    the follower skips ahead to them when it reads again. One that stopped in the middle of a
    line gets the rest of that line first, not its first half joined to a later line."""
    sbx = fresh_sbx('stream_buffer=4')
    lines = 600000                              # 64 bytes each: 38 MB
    rss0 = rss_mib(sbx.sbxfs.pid)
    pid = start(sbx, 'seq -f %%063g 1 %d; echo done' % lines)
    with open(proc(sbx, pid, 'follow'), 'rb', buffering=0) as f:
        head = b''
        while len(head) < 100:                  # the first line and a part of the second
            chunk = f.read(100 - len(head))
            assert chunk, 'follow ended after %r' % head
            head += chunk
        wait_ended(sbx, pid, timeout=120)
        assert wait_for(lambda: 'the oldest is dropped' in sbx.read_log(sbx.sbxfs_log),
                        60 * SLOW, 0.2), 'sbxfs did not trim the stalled stream'
        if SLOW == 1:       # sanitizers keep freed memory in quarantine
            grew = rss_mib(sbx.sbxfs.pid) - rss0
            assert grew < 32, 'sbxfs grew by %d MiB for a 4 MiB stream buffer' % grew
        rest = f.read()
    out = head + rest
    assert out.endswith(b'\ndone\n')
    got = out.splitlines()[:-1]
    assert all(len(x) == 63 for x in got), 'a line was cut: %r' % [
        x for x in got if len(x) != 63][:3]
    numbers = [int(x) for x in got]
    assert numbers[:2] == [1, 2], numbers[:3]
    assert len(numbers) < lines, 'nothing was skipped'
    # in order, ending with the last line; more skips than one are allowed (the stream may
    # still have been arriving while the reader caught up)
    assert numbers[-1] == lines and all(a < b for a, b in zip(numbers, numbers[1:]))


@pytest.mark.expect_errors
def test_backend_down_is_bounded(fresh_sbx):
    sbx = fresh_sbx('timeout=3')
    pid = start(sbx, 'sleep 60')
    follower = subprocess.Popen(['cat', proc(sbx, pid, 'follow')], stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE)
    time.sleep(0.5)
    sbx.stop_server()
    for op, path in (('listdir', proc(sbx)), ('read', proc(sbx, pid, 'status')),
                     ('stat', proc(sbx, 'other'))):
        res, took = fs_op(op, path, 30 * SLOW)
        assert res != 'HANG' and took < 20 * SLOW, (op, res, took)
        assert res in {errno.errorcode[e] for e in BACKEND_DOWN_ERRNOS} | {'ENOENT'}, (op, res)
    # the follower is told, and does not hang
    follower.wait(30 * SLOW)
    assert os.listdir(sbx.mnt)


# A proxy in front of sbxd that cuts every process output stream after CUT_AFTER seconds, as
# the container does to an idle stream after ~255 s: follow must reopen it by itself and
# deliver each byte once.
CUT_AFTER = 1.0

_PROXY = r'''
import http.client, re, sys, time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
UP, CUT, LOG = int(sys.argv[1]), float(sys.argv[2]), sys.argv[3]
STREAM = re.compile(r'^/api/process/[^/]+/stream')

class H(BaseHTTPRequestHandler):
    def log_message(self, *a):
        pass

    def relay(self):
        n = int(self.headers.get('Content-Length') or 0)
        body = self.rfile.read(n) if n else None
        up = http.client.HTTPConnection('127.0.0.1', UP, timeout=300)
        hdrs = {k: v for k, v in self.headers.items() if k.lower() not in ('connection',)}
        up.request(self.command, self.path, body=body, headers=hdrs)
        r = up.getresponse()
        self.send_response(r.status)
        for k, v in r.getheaders():
            if k.lower() not in ('transfer-encoding', 'connection', 'content-length'):
                self.send_header(k, v)
        self.send_header('Connection', 'close')
        self.end_headers()
        t0 = time.monotonic()
        cut = STREAM.match(self.path)
        if cut:
            with open(LOG, 'a') as f:
                f.write(self.path + '\n')
        while True:
            chunk = r.read1(65536)
            if not chunk:
                break
            self.wfile.write(chunk)
            self.wfile.flush()
            if cut and time.monotonic() - t0 > CUT:
                break
        up.close()

    do_GET = do_POST = do_PUT = do_DELETE = relay

s = ThreadingHTTPServer(('127.0.0.1', 0), H)
print(s.server_address[1], flush=True)
s.serve_forever()
'''


def test_follow_reopens_a_cut_stream(build_dir, mode):
    sbx = Sandbox(build_dir, mode)
    proxy = None
    try:
        sbx.start_server()
        streams = os.path.join(sbx.tmp, 'streams')
        proxy = subprocess.Popen([sys.executable, '-c', _PROXY, str(sbx.port), str(CUT_AFTER),
                                  streams], stdout=subprocess.PIPE)
        sbx.url = 'http://127.0.0.1:%d' % int(proxy.stdout.readline())
        sbx.mount()
        pid = start(sbx, 'echo err-1 >&2; for i in $(seq 1 8); do echo $i; sleep 0.4; done')
        t0 = time.monotonic()
        r = sh('cat %s' % shlex.quote(proc(sbx, pid, 'follow')), timeout=30)
        took = time.monotonic() - t0
        assert sorted(r.stdout.decode().splitlines()) == sorted(
            ['err-1'] + [str(i) for i in range(1, 9)])
        assert [l for l in r.stdout.decode().splitlines() if l != 'err-1'] == [
            str(i) for i in range(1, 9)]
        assert took > 2 * CUT_AFTER
        with open(streams) as f:
            assert len(f.read().splitlines()) >= 3     # it really went through cuts
        assert status(sbx, pid) == 'completed 0'
    finally:
        problems = sbx.close()
        if proxy:
            proxy.kill()
            proxy.wait()
        sbx.remove()
    assert not problems, problems
