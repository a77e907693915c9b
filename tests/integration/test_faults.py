"""Real faults: sbxd killed or frozen under a live mount, then brought back.

Every operation runs in a child process with a hard time limit, so a hang shows up as a
failure ('HANG') instead of wedging the test run.
"""
import errno
import os
import re
import signal
import subprocess
import time

import pytest

from util import BACKEND_DOWN_ERRNOS, SLOW, fs_op, is_mounted, program, wait_for

DOWN = {errno.errorcode[e] for e in BACKEND_DOWN_ERRNOS}
# The bound for a failing call: sbxfs's request timeout when it has -o timeout=, else the
# bound the issue allows.
TIMEOUT_OPT = 5


def sbxfs_timeout_opts(sbxfs_bin):
    out = subprocess.run([sbxfs_bin, '--help'], capture_output=True, timeout=10)
    text = (out.stdout + out.stderr).decode(errors='replace')
    return ['timeout=%d' % TIMEOUT_OPT] if re.search(r'-o timeout=', text) else []


def bound(opts):
    return (3 * TIMEOUT_OPT + 5 if opts else 40) * SLOW


@pytest.fixture
def faulty(fresh_sbx, build_dir):
    opts = sbxfs_timeout_opts(program(build_dir, 'sbxfs'))
    s = fresh_sbx(*opts)
    s.bound = bound(opts)
    # entries and contents the mount has never seen, so no cache can answer for them
    for i in range(3):
        os.makedirs(os.path.join(s.workspace, 'unseen%d' % i, 'dir'))
        with open(os.path.join(s.workspace, 'unseen%d' % i, 'file'), 'w') as f:
            f.write('unseen %d\n' % i)
    with open(os.path.join(s.ws, 'seen'), 'w') as f:
        f.write('seen\n')
    return s


def assert_fails_fast(s, op, path):
    res, took = fs_op(op, path, timeout=s.bound + 30)
    assert res in DOWN, '%s %s with the backend down gave %s after %.1f s' % (op, path, res, took)
    assert took < s.bound, '%s %s took %.1f s to fail (bound %d s)' % (op, path, took, s.bound)


def assert_works_again(s, i):
    ok = wait_for(lambda: fs_op('listdir', os.path.join(s.ws, 'unseen%d' % i), 30)[0] == 'OK',
                  30 * SLOW, interval=0.5)
    assert ok, 'the mount did not recover: listdir gives %s' % fs_op(
        'listdir', os.path.join(s.ws, 'unseen%d' % i), 30)[0]
    assert fs_op('read', os.path.join(s.ws, 'unseen%d' % i, 'file'), 30)[0] == 'OK'
    assert fs_op('write', os.path.join(s.ws, 'after%d' % i), 30)[0] == 'OK'
    with open(os.path.join(s.workspace, 'after%d' % i), 'rb') as f:
        assert f.read() == b'x' * 4096
    with open(os.path.join(s.ws, 'seen')) as f:
        assert f.read() == 'seen\n'


@pytest.mark.expect_errors
@pytest.mark.timeout(600 * SLOW)
def test_sbxd_killed_then_restarted(faulty):
    s = faulty
    for round_ in range(2):
        s.stop_server(signal.SIGKILL)
        assert_fails_fast(s, 'listdir', os.path.join(s.ws, 'unseen%d' % round_, 'dir'))
        assert_fails_fast(s, 'read', os.path.join(s.ws, 'unseen%d' % round_, 'file'))
        assert_fails_fast(s, 'create', os.path.join(s.ws, 'new-while-down'))
        assert_fails_fast(s, 'mkdir', os.path.join(s.ws, 'dir-while-down'))
        assert is_mounted(s.mnt), 'the mount went away when sbxd died'
        assert s.sbxfs.poll() is None, 'sbxfs exited when sbxd died'
        # same port, workspace, state and token
        s.start_server()
        assert_works_again(s, round_)
        assert not os.path.exists(os.path.join(s.workspace, 'new-while-down'))


@pytest.mark.expect_errors
@pytest.mark.timeout(600 * SLOW)
def test_sbxd_frozen_then_resumed(faulty):
    """A backend that accepts connections but never answers (SIGSTOP): calls time out."""
    s = faulty
    s.stop_server(signal.SIGSTOP)
    try:
        assert_fails_fast(s, 'read', os.path.join(s.ws, 'unseen0', 'file'))
        # a create is the write-back journal's when the mount knows the name is free (its
        # listing of the directory): it succeeds at once and reaches the sandbox later;
        # else the lookup of the name needs the sandbox and fails in time
        res, took = fs_op('create', os.path.join(s.ws, 'new-while-frozen'),
                          timeout=s.bound + 30)
        assert res in DOWN | {'OK'}, 'create with the backend down gave %s after %.1f s' % (
            res, took)
        assert is_mounted(s.mnt)
    finally:
        s.sbxd.send_signal(signal.SIGCONT)
    assert_works_again(s, 1)
    if res == 'OK':
        assert os.path.exists(os.path.join(s.workspace, 'new-while-frozen'))


@pytest.mark.expect_errors
@pytest.mark.timeout(300 * SLOW)
def test_unmount_while_backend_down(faulty):
    s = faulty
    s.stop_server(signal.SIGKILL)
    # fusermount3 -u works and sbxfs exits by itself, status 0
    t0 = time.monotonic()
    s.unmount()
    assert not is_mounted(s.mnt)
    assert not s.problems, s.problems
    assert time.monotonic() - t0 < 30 * SLOW
