"""tar, vim and git on workspace/, driven as a user would drive them."""
import os
import stat

import pytest

from conftest import REPO
from util import SLOW, sh, wait_for

SHARED_TREE = os.path.join(os.environ.get('SBXFS_SHARED', os.path.join(REPO, '..', 'shared')),
                           'bench', 'data', 'src-tree.tar.gz')


@pytest.fixture(scope='module')
def source_tarball(tmp_path_factory, mode):
    """(tarball, members to extract): the benchmark's source tree (2,662 files) when
    ../shared is there, else /usr/include/linux (about 800 files). In fallback mode, where
    every file costs several commands in the sandbox, a part of it (150-200 files)."""
    if os.path.exists(SHARED_TREE):
        return SHARED_TREE, ('src/python3.11/encodings src/python3.11/asyncio'
                             if mode == 'fallback' else '')
    out = tmp_path_factory.mktemp('tree') / 'tree.tar.gz'
    sh("tar -C /usr/include -czf '%s' linux" % out)
    return str(out), ('linux/netfilter linux/netfilter_ipv4 linux/netfilter_ipv6 linux/usb'
                      ' linux/tc_act linux/tc_ematch' if mode == 'fallback' else '')


@pytest.mark.timeout(600 * SLOW)
def test_tar_x_and_diff_r(d, tmp_path, source_tarball):
    tarball, members = source_tarball
    orig = tmp_path / 'orig'
    orig.mkdir()
    sh("tar -C '%s' -xzf '%s' %s" % (orig, tarball, members))
    d.sh("tar -xzf '%s' %s" % (tarball, members), timeout=600)
    sh("diff -r '%s' '%s'" % (orig, d.m), timeout=300)
    sh("diff -r '%s' '%s'" % (orig, d.h), timeout=300)
    # tar restores modes and modification times: compare every entry's
    nfiles = 0
    for root, dirs, files in os.walk(orig):
        for name in dirs + files:
            o = os.path.join(root, name)
            rel = os.path.relpath(o, orig)
            so, sm = os.lstat(o), os.lstat(os.path.join(d.m, rel))
            assert stat.S_IFMT(so.st_mode) == stat.S_IFMT(sm.st_mode), rel
            assert stat.S_IMODE(so.st_mode) == stat.S_IMODE(sm.st_mode), rel
            if not stat.S_ISDIR(so.st_mode):
                assert so.st_size == sm.st_size, rel
                assert int(so.st_mtime) == int(sm.st_mtime), rel
            nfiles += 1
    assert nfiles > 150
    # tar c of the mounted tree reads back what went in, once the mount shows the sandbox's
    # change times (uploads give files a new ctime: docs/writeback.md, "Caveats")
    def settled():
        for root, dirs, files in os.walk(d.h):
            for name in files:
                rel = os.path.relpath(os.path.join(root, name), d.h)
                if os.lstat(os.path.join(d.m, rel)).st_ctime_ns != \
                        os.lstat(os.path.join(root, name)).st_ctime_ns:
                    return False
        return True
    assert wait_for(settled, 30 * SLOW)
    listed = sh("tar -C '%s' -cf - . | tar -tf - | wc -l" % d.m, timeout=300).stdout
    assert int(listed) == nfiles + 1
    d.sh('rm -rf ./*')
    assert os.listdir(d.h) == []


VIM = ['vim', '-Nu', 'NONE', '-i', 'NONE', '-es']


@pytest.mark.parametrize('how', ['default', 'backupcopy=no', 'backupcopy=yes', 'nowritebackup'])
def test_vim_saves_file(d, how):
    p = os.path.join(d.m, 'notes.txt')
    with open(p, 'w') as f:
        f.write('first line\nsecond line\n')
    opts = [] if how == 'default' else ['-c', 'set ' + how]
    cmd = VIM + ['-c', 'set backup backupskip='] + opts + [
        '-c', '%s/second/2nd/', '-c', 'normal Goappended by vim', '-c', 'wq', 'notes.txt']
    d.sh(' '.join("'%s'" % a for a in cmd))
    want = b'first line\n2nd line\nappended by vim\n'
    with open(os.path.join(d.h, 'notes.txt'), 'rb') as f:
        assert f.read() == want
    with open(p, 'rb') as f:
        assert f.read() == want
    # vim cleaned up its swap file; with 'backup' it left notes.txt~ holding the old text
    names = sorted(os.listdir(d.m))
    assert names == ['notes.txt', 'notes.txt~'], names
    with open(os.path.join(d.m, 'notes.txt~'), 'rb') as f:
        assert f.read() == b'first line\nsecond line\n'
    # and again, onto the file it just wrote (the backup exists now)
    d.sh(' '.join("'%s'" % a for a in VIM + ['-c', 'normal ggdd', '-c', 'wq', 'notes.txt']))
    with open(os.path.join(d.h, 'notes.txt'), 'rb') as f:
        assert f.read() == b'2nd line\nappended by vim\n'


def test_vim_new_file(d):
    d.sh(' '.join("'%s'" % a for a in VIM + ['-c', 'normal ihello from vim', '-c', 'wq',
                                             'new.txt']))
    with open(os.path.join(d.h, 'new.txt'), 'rb') as f:
        assert f.read() == b'hello from vim\n'


@pytest.fixture
def git_env(tmp_path):
    env = dict(os.environ)
    env.update(GIT_CONFIG_NOSYSTEM='1', HOME=str(tmp_path), XDG_CONFIG_HOME=str(tmp_path),
               GIT_AUTHOR_NAME='Test', GIT_AUTHOR_EMAIL='test@example.org',
               GIT_COMMITTER_NAME='Test', GIT_COMMITTER_EMAIL='test@example.org',
               GIT_AUTHOR_DATE='2026-01-01T00:00:00Z', GIT_COMMITTER_DATE='2026-01-01T00:00:00Z',
               LC_ALL='C')
    with open(tmp_path / '.gitconfig', 'w') as f:
        f.write('[init]\n\tdefaultBranch = main\n[safe]\n\tdirectory = *\n')
    return env


@pytest.mark.timeout(300 * SLOW)
def test_git_workflow(d, git_env):
    def git(args, **kw):
        return d.sh('git ' + args, env=git_env, **kw).stdout.decode()
    git('init -q')
    for i in range(20):
        os.makedirs(os.path.join(d.m, 'src', 'm%d' % (i % 4)), exist_ok=True)
        with open(os.path.join(d.m, 'src', 'm%d' % (i % 4), 'f%d.c' % i), 'w') as f:
            f.write('int f%d(void) { return %d; }\n' % (i, i))
    with open(os.path.join(d.m, 'run.sh'), 'w') as f:
        f.write('#!/bin/sh\necho run\n')
    os.chmod(os.path.join(d.m, 'run.sh'), 0o755)
    git('add -A')
    git('commit -q -m first')
    assert git('status --porcelain') == ''
    assert git('ls-files -s run.sh').startswith('100755 ')

    git('checkout -q -b feature')
    with open(os.path.join(d.m, 'src/m0/f0.c'), 'a') as f:
        f.write('/* changed on feature */\n')
    os.unlink(os.path.join(d.m, 'src/m1/f1.c'))
    with open(os.path.join(d.m, 'added.txt'), 'w') as f:
        f.write('new\n')
    st = git('status --porcelain')
    assert sorted(st.splitlines()) == [' D src/m1/f1.c', ' M src/m0/f0.c', '?? added.txt'], st
    git('add -A')
    git('commit -q -m second')
    assert git('status --porcelain') == ''

    git('checkout -q main')
    assert not os.path.exists(os.path.join(d.m, 'added.txt'))
    assert os.path.exists(os.path.join(d.m, 'src/m1/f1.c'))
    with open(os.path.join(d.h, 'src/m0/f0.c')) as f:
        assert 'changed' not in f.read()
    git('checkout -q feature')
    assert os.path.exists(os.path.join(d.m, 'added.txt'))
    assert git('log --format=%s') == 'second\nfirst\n'
    assert git('log --oneline main..feature').count('\n') == 1
    git('fsck --strict --no-progress')
    # the repository is intact as the host and the sandbox see it
    sh('git status --porcelain', cwd=d.h, env=git_env)
    r = d.execute('git -c safe.directory="*" log --format=%s')
    assert r['exitCode'] == 0 and r['stdout'] == 'second\nfirst\n', r
    # a commit made inside the sandbox shows up in the mount's git log
    r = d.execute('echo sandbox > s.txt && git add s.txt && git -c safe.directory="*" '
                  '-c user.name=S -c user.email=s@example.org commit -q -m third')
    assert r['exitCode'] == 0, r
    assert wait_for(lambda: git('log -1 --format=%s', check=False) == 'third\n', 5)
