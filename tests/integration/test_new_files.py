"""New files and trees made through the mount: what the mount shows and what the sandbox has,
and when (docs/protocol.md, "Fallback": against a plain container a new file reaches the
sandbox with its first flush, and the times, and modes that only give group and others more,
of what the mount made follow in a batch moments after close). In both modes."""
import errno
import os
import stat
import tarfile

import pytest

from util import SLOW, sh, wait_for

# the most the sandbox may lag behind for a batched change (it is about 0.1 s)
SETTLE_S = 5 * SLOW
T_FILE = 1_500_000_000_000_000_000  # whole seconds: what a tar archive keeps
T_DIR = 1_400_000_000_000_000_000


def make_source(root):
    """A tree with what tar sets: modes that take away, give and make executable, times,
    a symlink and a hard link. Returns {relative path: (mode, mtime_ns)} of its entries."""
    want = {}
    os.makedirs(os.path.join(root, 'pub/deep'))
    os.makedirs(os.path.join(root, 'private'))
    files = {'pub/a.txt': (b'alpha\n', 0o644), 'pub/deep/run.sh': (b'#!/bin/sh\necho ran\n', 0o755),
             'private/key': (b'secret\n', 0o600), 'pub/ro.txt': (b'read only\n', 0o444),
             'pub/group.txt': (b'group\n', 0o664), 'empty': (b'', 0o640)}
    for rel, (data, mode) in files.items():
        p = os.path.join(root, rel)
        with open(p, 'wb') as f:
            f.write(data)
        os.chmod(p, mode)
        os.utime(p, ns=(T_FILE, T_FILE))
        want[rel] = (mode, T_FILE)
    os.symlink('a.txt', os.path.join(root, 'pub/link'))
    # tar makes an empty placeholder for a link with '..' first and replaces it at the end
    # only if the placeholder still has the inode number it had when made
    os.symlink('../a.txt', os.path.join(root, 'pub/deep/up'))
    os.link(os.path.join(root, 'pub/a.txt'), os.path.join(root, 'pub/hard'))
    want['pub/hard'] = want['pub/a.txt']
    for rel, mode in (('pub/deep', 0o755), ('pub', 0o755), ('private', 0o700)):
        p = os.path.join(root, rel)
        os.chmod(p, mode)
        os.utime(p, ns=(T_DIR, T_DIR))
        want[rel] = (mode, T_DIR)
    return want


def attrs(root, rel):
    st = os.lstat(os.path.join(root, rel))
    return stat.S_IMODE(st.st_mode), st.st_mtime_ns


def content(root, rel):
    with open(os.path.join(root, rel), 'rb') as f:
        return f.read()


def test_untar_modes_and_times(d, tmp_path):
    src = tmp_path / 'src'
    want = make_source(str(src))
    tgz = str(tmp_path / 't.tgz')
    with tarfile.open(tgz, 'w:gz') as t:
        t.add(str(src), arcname='t')
    d.sh('tar xpzf %s' % tgz)
    m, h = os.path.join(d.m, 't'), os.path.join(d.h, 't')
    # through the mount: everything, at once
    for rel, (mode, mtime) in want.items():
        assert attrs(m, rel) == (mode, mtime), rel
    assert os.readlink(os.path.join(m, 'pub/link')) == 'a.txt'
    assert os.readlink(os.path.join(m, 'pub/deep/up')) == '../a.txt'
    assert os.readlink(os.path.join(h, 'pub/deep/up')) == '../a.txt'
    assert os.stat(os.path.join(m, 'pub/a.txt')).st_nlink == 2
    # in the sandbox at once: the data, what group and others must not have, what the owner
    # may do (group and others may get more, and the owner less, a moment later)
    for rel in ('pub/a.txt', 'pub/deep/run.sh', 'private/key', 'pub/hard', 'empty'):
        assert content(h, rel) == content(str(src), rel), rel
    for rel, (mode, _) in want.items():
        assert attrs(h, rel)[0] & 0o077 & ~mode == 0, rel
        assert mode & 0o700 & ~attrs(h, rel)[0] == 0, rel
    r = d.execute('t/pub/deep/run.sh')
    assert r['exitCode'] == 0 and r['stdout'] == 'ran\n', r
    # the rest moments later
    def settled():
        return all(attrs(h, rel) == w for rel, w in want.items())
    assert wait_for(settled, SETTLE_S), {rel: (attrs(h, rel), w) for rel, w in want.items()
                                         if attrs(h, rel) != w}
    assert os.stat(os.path.join(h, 'pub/hard')).st_ino == os.stat(
        os.path.join(h, 'pub/a.txt')).st_ino


def test_new_file_while_it_is_open(d):
    path = os.path.join(d.m, 'new')
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
    try:
        os.write(fd, b'0123456789')
        # the mount knows it at once, and its size
        assert 'new' in os.listdir(d.m)
        assert os.stat(path).st_size == 10
        assert content(d.m, 'new') == b'0123456789'
        with pytest.raises(OSError) as e:
            os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        assert e.value.errno == errno.EEXIST
        ino = os.stat(path).st_ino
    finally:
        os.close(fd)
    # the sandbox has it when close returns
    assert content(d.h, 'new') == b'0123456789'
    assert os.stat(path).st_size == 10
    # an inode number the mount made up for it meanwhile may change once the sandbox has it;
    # it does not change again
    assert os.stat(path).st_ino == os.stat(path).st_ino
    del ino


def test_unlink_new_file_while_open(d):
    path = os.path.join(d.m, 'tmp')
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        os.write(fd, b'scratch')
        os.unlink(path)
        assert not os.path.exists(path)
        os.write(fd, b' more')
        assert os.pread(fd, 100, 0) == b'scratch more'
    finally:
        os.close(fd)
    assert not os.path.exists(path)
    assert not os.path.exists(os.path.join(d.h, 'tmp'))
    assert os.listdir(d.h) == []


def test_new_secret_file_is_private_at_once(d):
    d.sh('umask 077 && echo secret > key')
    assert attrs(d.h, 'key')[0] == 0o600
    assert content(d.h, 'key') == b'secret\n'


def test_fsync_applies_the_times(d):
    path = os.path.join(d.m, 'f')
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
    try:
        os.write(fd, b'data')
        os.utime(fd, ns=(T_FILE, T_FILE))
        os.fchmod(fd, 0o664)
        os.fsync(fd)
        # fsync is where a program asks for everything to be in the sandbox
        assert attrs(d.h, 'f') == (0o664, T_FILE)
        assert content(d.h, 'f') == b'data'
    finally:
        os.close(fd)


def test_times_then_data_keep_the_new_mtime(d):
    """A time set before more data: the data's mtime wins, as on a local disk."""
    path = os.path.join(d.m, 'f')
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
    try:
        os.write(fd, b'one')
        os.utime(fd, ns=(T_FILE, T_FILE))
        os.write(fd, b'two')
    finally:
        os.close(fd)
    assert os.stat(path).st_mtime_ns > T_FILE
    assert wait_for(lambda: content(d.h, 'f') == b'onetwo', SETTLE_S)
    # no late batch puts the old time back
    sh('sleep 0.5')
    assert os.stat(os.path.join(d.h, 'f')).st_mtime_ns > T_FILE


def test_walk_sees_changes_made_in_the_sandbox(d):
    """A walk lists whole subtrees at once (fallback mode): what the sandbox changes in them
    afterwards shows all the same."""
    os.makedirs(os.path.join(d.h, 'a/b/c'))
    with open(os.path.join(d.h, 'a/b/c/f'), 'w') as f:
        f.write('x\n')
    found = sh('find a -type f', cwd=d.m).stdout.decode().split()
    assert found == ['a/b/c/f']
    r = d.execute('echo y > a/b/g && mkdir a/b/c/d && echo z > a/b/c/d/h && rm a/b/c/f')
    assert r['exitCode'] == 0, r

    def walk():
        return sorted(sh('find a -type f', cwd=d.m).stdout.decode().split())
    assert wait_for(lambda: walk() == ['a/b/c/d/h', 'a/b/g'], SETTLE_S), walk()
    assert content(d.m, 'a/b/c/d/h') == b'z\n'


def test_chown_to_the_owner_it_has(d):
    d.sh('echo x > f && chmod 2755 f && mkdir dd')
    st = os.stat(os.path.join(d.h, 'f'))
    d.sh('chown %d:%d f dd' % (st.st_uid, st.st_gid))
    assert os.stat(os.path.join(d.m, 'f')).st_uid == st.st_uid
    # chown clears set-id bits even when the owner stays: that is a change
    assert attrs(d.h, 'f')[0] & 0o7000 == attrs(d.m, 'f')[0] & 0o7000


def test_symlink_read_back_after_the_kernel_forgot_it(d):
    d.sh('ln -s some/target l && mkdir dd && ln -s ../l dd/up')
    os.sync()
    try:
        with open('/proc/sys/vm/drop_caches', 'w') as f:
            f.write('2')                # dentries and inodes: the kernel asks again
    except OSError:
        pytest.skip('cannot drop the kernel caches (not root)')
    assert os.readlink(os.path.join(d.m, 'l')) == 'some/target'
    assert os.readlink(os.path.join(d.m, 'dd/up')) == '../l'
