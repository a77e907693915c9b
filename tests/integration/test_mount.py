"""Starting, authenticating and mounting: tokens, refusals, fstab-style mounts."""
import os
import stat
import subprocess
import time

import pytest

from util import SLOW, is_mounted, wait_for


def test_token_file_created(server):
    st = os.stat(server.token_file)
    assert len(server.token) >= 32, 'a fresh token should be long and random'
    assert stat.S_IMODE(st.st_mode) & 0o077 == 0, 'token file readable by others: %o' % \
        st.st_mode


def test_sbxd_requires_token(server):
    assert server.ping()        # /api/ping is open to all
    for token in (None, 'wrong-' + server.token, server.token[:-1]):
        status, body = server.api('/api/list-files', {'path': '/workspace'}, token=token)
        assert status == 401, (token, status, body)
        assert body['code'] == 'UNAUTHORIZED'
        status, body = server.api('/api/execute', {'command': 'touch /workspace/pwned'},
                                  token=token)
        assert status == 401
    assert not os.path.exists(os.path.join(server.workspace, 'pwned'))
    status, body = server.api('/api/execute', {'command': 'echo ok'})
    assert status == 200 and body['stdout'] == 'ok\n', body


def refused_mount(server, *args, env=None):
    p = subprocess.run([server.sbxfs_bin, server.url, server.mnt, '-f'] + list(args),
                       capture_output=True, timeout=60 * SLOW, env=env)
    assert not is_mounted(server.mnt), 'sbxfs mounted anyway'
    return p


@pytest.mark.parametrize('token', ['wrong', 'none'])
def test_sbxfs_refuses_bad_token(server, tmp_path, token):
    env = {k: v for k, v in os.environ.items() if k != 'SBXFS_TOKEN'}
    args = []
    if token == 'wrong':
        bad = tmp_path / 'bad-token'
        bad.write_text('not-the-token\n')
        args = ['-o', 'token_file=%s' % bad]
    p = refused_mount(server, *args, env=env)
    err = p.stderr.decode(errors='replace')
    assert p.returncode != 0, err
    low = err.lower()
    assert 'token' in low or 'unauthori' in low or '401' in low, \
        'no clear reason in the message: %r' % err
    assert 'AddressSanitizer' not in err and 'runtime error' not in err, err


def test_sbxfs_refuses_unreachable_backend(server, tmp_path):
    server.stop_server()
    t0 = time.monotonic()
    p = refused_mount(server, '-o', 'token_file=' + server.token_file)
    assert p.returncode != 0
    assert time.monotonic() - t0 < 40 * SLOW
    assert p.stderr.strip(), 'no message'


def test_sbxfs_bad_arguments(server):
    for args in ([], [server.url], ['not a url', server.mnt],
                 [server.url, os.path.join(server.tmp, 'no-such-dir')]):
        p = subprocess.run([server.sbxfs_bin] + args, capture_output=True, timeout=30 * SLOW)
        assert p.returncode != 0 and p.stderr.strip(), (args, p)
        assert not is_mounted(server.mnt)


def test_token_from_environment(server):
    env = dict(os.environ, SBXFS_TOKEN=server.token)
    server.mount(env=env, token_file=False)
    with open(os.path.join(server.ws, 'via-env'), 'w') as f:
        f.write('ok')
    with open(os.path.join(server.workspace, 'via-env')) as f:
        assert f.read() == 'ok'
    assert sorted(os.listdir(server.mnt)) == ['ctx', 'env', 'git', 'ports', 'proc', 'sessions',
                                              'sync', 'watch', 'workspace']


def test_mount_fuse_helper(server, build_dir):
    """What /etc/fstab and mount -t fuse.sbxfs do: mount.fuse3 runs 'sbxfs URL MNT -o ...',
    without -f, and sbxfs goes to the background."""
    env = dict(os.environ, PATH=os.path.dirname(server.sbxfs_bin) + ':' + os.environ['PATH'])
    src = 'sbxfs#' + server.url
    p = subprocess.run(['mount.fuse3', src, server.mnt, '-o',
                        'token_file=%s,_netdev,noatime' % server.token_file],
                       capture_output=True, timeout=60 * SLOW, env=env)
    assert p.returncode == 0, p.stderr.decode(errors='replace')
    try:
        assert is_mounted(server.mnt)
        with open(os.path.join(server.ws, 'from-fstab'), 'w') as f:
            f.write('ok')
        with open(os.path.join(server.workspace, 'from-fstab')) as f:
            assert f.read() == 'ok'
    finally:
        subprocess.run(['fusermount3', '-u', server.mnt], timeout=30)
    assert not is_mounted(server.mnt)
    # the daemon exits after the unmount
    assert wait_for(lambda: not _daemons_on(server.mnt), 20 * SLOW), 'sbxfs still running'


def _daemons_on(mnt):
    """pids of processes whose command line names mount point mnt."""
    pids = []
    for pid in os.listdir('/proc'):
        if pid.isdigit():
            try:
                with open('/proc/%s/cmdline' % pid, 'rb') as f:
                    if mnt.encode() in f.read().split(b'\0'):
                        pids.append(int(pid))
            except OSError:
                pass
    return pids
