"""Failing calls on workspace/ fail with the errno a local filesystem gives, and shell tools
print the usual message."""
import errno
import os

import pytest


def errno_of(fn, *args):
    with pytest.raises(OSError) as e:
        fn(*args)
    return errno.errorcode.get(e.value.errno, e.value.errno)


@pytest.fixture
def t(d):
    """d with a file f (contents 'x'), an empty dir e and a non-empty dir n holding n/g."""
    os.mkdir(os.path.join(d.m, 'e'))
    os.mkdir(os.path.join(d.m, 'n'))
    for p in ('f', 'n/g'):
        with open(os.path.join(d.m, p), 'w') as f:
            f.write('x')
    d.p = lambda *parts: os.path.join(d.m, *parts)
    return d


def test_enoent(t):
    p = t.p
    assert errno_of(os.stat, p('nope')) == 'ENOENT'
    assert errno_of(open, p('nope')) == 'ENOENT'
    assert errno_of(os.listdir, p('nope')) == 'ENOENT'
    assert errno_of(os.unlink, p('nope')) == 'ENOENT'
    assert errno_of(os.rmdir, p('nope')) == 'ENOENT'
    assert errno_of(os.rename, p('nope'), p('other')) == 'ENOENT'
    assert errno_of(os.mkdir, p('nope', 'sub')) == 'ENOENT'
    assert errno_of(open, p('nope', 'file'), 'w') == 'ENOENT'
    assert errno_of(os.readlink, p('nope')) == 'ENOENT'
    assert errno_of(os.chmod, p('nope'), 0o644) == 'ENOENT'
    r = t.sh('cat nope', check=False)
    assert r.returncode == 1 and b'No such file or directory' in r.stderr


def test_eexist(t):
    p = t.p
    assert errno_of(os.mkdir, p('e')) == 'EEXIST'
    assert errno_of(os.mkdir, p('f')) == 'EEXIST'
    assert errno_of(os.open, p('f'), os.O_CREAT | os.O_EXCL | os.O_WRONLY) == 'EEXIST'
    assert errno_of(os.symlink, 'x', p('f')) == 'EEXIST'
    assert errno_of(os.link, p('f'), p('n', 'g')) == 'EEXIST'
    r = t.sh('mkdir e', check=False)
    assert r.returncode == 1 and b'File exists' in r.stderr
    # the failed calls changed nothing
    with open(p('f')) as f:
        assert f.read() == 'x'


def test_enotempty(t):
    p = t.p
    assert errno_of(os.rmdir, p('n')) == 'ENOTEMPTY'
    assert errno_of(os.rename, p('e'), p('n')) == 'ENOTEMPTY'
    r = t.sh('rmdir n', check=False)
    assert r.returncode == 1 and b'Directory not empty' in r.stderr
    assert os.listdir(p('n')) == ['g']


def test_eisdir(t):
    p = t.p
    assert errno_of(open, p('e'), 'w') == 'EISDIR'
    assert errno_of(os.open, p('e'), os.O_RDWR) == 'EISDIR'
    assert errno_of(os.unlink, p('e')) == 'EISDIR'
    assert errno_of(os.rename, p('f'), p('e')) == 'EISDIR'
    fd = os.open(p('e'), os.O_RDONLY | os.O_DIRECTORY)
    try:
        assert errno_of(os.read, fd, 10) == 'EISDIR'
    finally:
        os.close(fd)
    r = t.sh('echo x > e', check=False)
    assert r.returncode != 0 and b'Is a directory' in r.stderr


def test_enotdir(t):
    p = t.p
    assert errno_of(os.listdir, p('f')) == 'ENOTDIR'
    assert errno_of(os.rmdir, p('f')) == 'ENOTDIR'
    assert errno_of(os.mkdir, p('f', 'sub')) == 'ENOTDIR'
    assert errno_of(os.stat, p('f', 'x')) == 'ENOTDIR'
    assert errno_of(open, p('f', 'x'), 'w') == 'ENOTDIR'
    assert errno_of(os.rename, p('e'), p('f')) == 'ENOTDIR'
    r = t.sh('ls f/', check=False)
    assert r.returncode != 0 and b'Not a directory' in r.stderr


def test_long_name(t):
    assert errno_of(open, t.p('x' * 256), 'w') == 'ENAMETOOLONG'
    with open(t.p('y' * 255), 'w') as f:
        f.write('max length name')
    assert 'y' * 255 in os.listdir(t.h)


def test_errors_leave_mount_usable(t):
    for _ in range(50):
        errno_of(os.stat, t.p('nope'))
    assert sorted(os.listdir(t.m)) == ['e', 'f', 'n']
    assert t.sh('cat f').stdout == b'x'
