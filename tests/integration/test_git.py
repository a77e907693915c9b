"""git/ through the mount, with the one-liners of docs/ports-git-env.md: clones from a git
daemon on loopback, in both modes (POST /api/git/checkout is a standard route)."""
import os
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import time

import pytest

from util import SLOW, free_port, sh, wait_for


@pytest.fixture(scope='module')
def repo(tmp_path_factory):
    """git://... of a repository with branches main and feature (3 commits on feature)."""
    base = str(tmp_path_factory.mktemp('gitd'))
    work = os.path.join(base, 'work')
    g = 'git -c user.name=t -c user.email=t@example.com -c init.defaultBranch=main '
    sh('mkdir %s && cd %s && %s init -q && echo hello > README && %s add README && '
       '%s commit -qm one && %s checkout -qb feature && for i in 2 3; do '
       'echo $i > f$i.txt && %s add . && %s commit -qm c$i; done && %s checkout -q main'
       % ((work, work) + (g,) * 7))
    sh('git clone -q --bare %s %s/demo.git' % (work, base))
    port = free_port()
    d = subprocess.Popen(['git', 'daemon', '--export-all', '--base-path=' + base,
                          '--port=%d' % port, '--listen=127.0.0.1', '--reuseaddr'],
                         stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = 'git://127.0.0.1:%d/demo.git' % port
    try:
        assert wait_for(lambda: sh('git ls-remote %s' % url, check=False).returncode == 0,
                        10 * SLOW), 'git daemon did not start'
        yield url
    finally:
        d.terminate()
        d.wait(10)
        shutil.rmtree(base, ignore_errors=True)


def clone(sbx, line):
    """echo LINE > git/clone as typed; returns (exit status, stderr, git/result)."""
    r = sh('cd %s && echo %s > git/clone' % (shlex.quote(sbx.mnt), shlex.quote(line)),
           check=False, timeout=120)
    with open(os.path.join(sbx.mnt, 'git', 'result')) as f:
        return r.returncode, r.stderr.decode(), f.read()


def test_listing(sbx):
    assert sorted(os.listdir(os.path.join(sbx.mnt, 'git'))) == ['clone', 'result']


def test_clone_default(sbx, repo):
    rc, err, result = clone(sbx, repo)
    assert rc == 0, err
    assert result == 'ok /workspace/demo main\n'
    # the files show up through the mount
    assert sorted(os.listdir(os.path.join(sbx.ws, 'demo'))) == ['.git', 'README']
    with open(os.path.join(sbx.ws, 'demo', 'README')) as f:
        assert f.read() == 'hello\n'


def test_clone_branch_dir_depth(sbx, repo):
    rc, err, result = clone(sbx, repo + ' branch=feature dir=clones/one depth=1')
    assert rc == 0, err
    assert result == 'ok /workspace/clones/one feature\n'
    assert wait_for(lambda: os.path.exists(os.path.join(sbx.ws, 'clones', 'one', 'f3.txt')),
                    5 * SLOW)
    assert sorted(os.listdir(os.path.join(sbx.ws, 'clones', 'one'))) == \
        ['.git', 'README', 'f2.txt', 'f3.txt']
    r = sbx.execute('git -C /workspace/clones/one rev-list --count HEAD')
    assert r['stdout'].strip() == '1', r
    # an absolute dir is taken as it is
    rc, err, result = clone(sbx, repo + ' dir=/workspace/clones/abs')
    assert rc == 0 and result == 'ok /workspace/clones/abs main\n', (err, result)


def test_existing_target(sbx, repo):
    os.makedirs(os.path.join(sbx.workspace, 'taken'))
    with open(os.path.join(sbx.workspace, 'taken', 'x'), 'w') as f:
        f.write('x')
    rc, err, result = clone(sbx, repo + ' dir=taken')
    assert rc == 1 and 'File exists' in err, err
    assert result.startswith('error: ') and 'already exists' in result and \
        result.endswith('\n') and result.count('\n') == 1, result
    assert os.listdir(os.path.join(sbx.workspace, 'taken')) == ['x']


def test_missing_repository_and_branch(sbx, repo):
    rc, err, result = clone(sbx, repo.replace('demo.git', 'nope.git') + ' dir=nope')
    assert rc == 1 and 'No such file or directory' in err, err
    assert result.startswith('error: ') and 'nope.git' in result, result
    assert not os.path.exists(os.path.join(sbx.workspace, 'nope'))
    rc, err, result = clone(sbx, repo + ' branch=no-such-branch dir=nobranch')
    assert rc == 1 and 'No such file or directory' in err, err
    assert 'no-such-branch' in result, result


def test_bad_lines(sbx, repo):
    for line, why in ((repo + ' bogus=1', "unknown option 'bogus'"),
                      (repo + ' depth=0', 'depth=0'),
                      (repo + ' depth=x', 'depth=x'),
                      (repo + ' branch', "'branch' is not NAME=VALUE"),
                      (repo + ' timeout=-3', 'timeout=-3'),
                      ('   ', 'no repository URL')):
        rc, err, result = clone(sbx, line)
        assert rc == 1 and 'Invalid argument' in err, (line, err)
        assert result.startswith('error: ') and why in result, (line, result)
    # two clones in one write (cat writes what it read at once; bash's printf would write
    # line by line)
    r = sh("cd %s && printf '%%s\\n%%s\\n' %s %s | cat > git/clone" % (
        shlex.quote(sbx.mnt), repo, repo), check=False)
    assert r.returncode == 1 and b'Invalid argument' in r.stderr


def test_close_reports_a_line_without_newline(sbx, repo):
    """Without a newline the clone runs at close, and close() fails."""
    fd = os.open(os.path.join(sbx.mnt, 'git', 'clone'), os.O_WRONLY | os.O_TRUNC)
    os.write(fd, (repo + ' dir=taken').encode())
    with pytest.raises(OSError) as e:
        os.close(fd)
    assert e.value.strerror == 'File exists'


def test_timeout(sbx):
    s = socket.socket()
    s.bind(('127.0.0.1', 0))
    s.listen(1)
    try:
        t0 = time.monotonic()
        rc, err, result = clone(sbx, 'git://127.0.0.1:%d/x.git timeout=1 dir=slow' %
                                s.getsockname()[1])
        assert rc == 1 and 'timed out' in err, err
        assert time.monotonic() - t0 < 15 * SLOW
        assert result.startswith('error: ') and 'timed out' in result, result
    finally:
        s.close()


def _git_clones_of(url):
    found = []
    for pid in os.listdir('/proc'):
        try:
            with open('/proc/%s/cmdline' % pid, 'rb') as f:
                args = f.read().split(b'\0')
        except OSError:
            continue
        if url.encode() in args and any(a.endswith(b'git') for a in args[:1]):
            found.append(int(pid))
    return found


# A program interrupted with Ctrl-C: SIGINT with a handler (as in an interactive shell or
# Python), so the kernel asks sbxfs to interrupt the write instead of killing the caller.
_INTERRUPTED_WRITER = r'''
import os, signal, sys
def on_int(*a):
    raise KeyboardInterrupt
signal.signal(signal.SIGINT, on_int)
fd = os.open(sys.argv[1], os.O_WRONLY)
print('writing', flush=True)
try:
    os.write(fd, sys.argv[2].encode())
    print('done')
except KeyboardInterrupt:
    print('interrupted')
'''


def test_ctrl_c_stops_a_clone(sbx, repo):
    s = socket.socket()
    s.bind(('127.0.0.1', 0))
    s.listen(1)     # accepts nothing: git waits for an answer that never comes
    url = 'git://127.0.0.1:%d/stalled.git' % s.getsockname()[1]
    try:
        p = subprocess.Popen([sys.executable, '-c', _INTERRUPTED_WRITER,
                              os.path.join(sbx.mnt, 'git', 'clone'), url + ' dir=stalled\n'],
                             stdout=subprocess.PIPE)
        assert p.stdout.readline() == b'writing\n'
        assert wait_for(lambda: _git_clones_of(url), 20 * SLOW), 'git never started'
        t0 = time.monotonic()
        p.send_signal(signal.SIGINT)
        out = p.communicate(timeout=20 * SLOW)[0]
        assert out == b'interrupted\n', out
        assert time.monotonic() - t0 < 3 * SLOW, 'the write outlived Ctrl-C'
        # sbxd saw the client go and stopped git, which removed its half-made directory
        assert wait_for(lambda: not _git_clones_of(url), 15 * SLOW), 'git still runs'
        assert not os.path.exists(os.path.join(sbx.workspace, 'stalled'))
        with open(os.path.join(sbx.mnt, 'git', 'result')) as f:
            assert f.read().startswith('error: interrupted')
    finally:
        s.close()
    # the mount and the clone file go on working
    rc, err, result = clone(sbx, repo + ' dir=after-interrupt')
    assert rc == 0 and result == 'ok /workspace/after-interrupt main\n', (err, result)


def test_unreachable(sbx):
    rc, err, result = clone(sbx, 'git://127.0.0.1:%d/x.git dir=down' % free_port())
    assert rc == 1, err
    assert result.startswith('error: ') and 'fatal' in result, result


def test_clone_visible_at_once_with_late_events(faulty_sbx, repo):
    """Right after git/clone returns, the clone is there through the mount, also when the
    sandbox's change events come late (the container sends them in batches) and the mount had
    just listed the workspace without it (issue #14: `cat DIR/file` failed with ENOENT)."""
    s = faulty_sbx()
    assert s.wait_watching(), 'the change events never flowed'
    s.proxy.set(event_delay_ms=3000)
    assert 'late' not in os.listdir(s.ws)       # a listing without it, cached
    rc, err, result = clone(s, '%s dir=late' % repo)
    assert rc == 0, err
    assert result == 'ok /workspace/late main\n'
    with open(os.path.join(s.ws, 'late', 'README')) as f:
        assert f.read() == 'hello\n'
    assert 'late' in os.listdir(s.ws)
