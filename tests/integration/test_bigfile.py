"""A file of hundreds of MiB written through the mount and read back."""
import hashlib
import os
import stat
import subprocess

import pytest

from util import SLOW, sh, wait_for

MIB = 1024 * 1024
BIG = 200 * MIB
# Without the extensions sbxfs sends a file of up to 16 MiB with one /api/write, a larger one
# in parts that one command joins in the sandbox (docs/protocol.md, "Fallback"); the
# container's read limit is 32 MiB, beyond it reads go in ranges.
FALLBACK_ONE_WRITE = 16 * MIB
FALLBACK_READ_MAX = 32 * MIB


def sha256_file(path):
    h = hashlib.sha256()
    with open(path, 'rb') as f:
        for chunk in iter(lambda: f.read(MIB), b''):
            h.update(chunk)
    return h.hexdigest()


def drop_caches():
    """So that the read back goes to the backend, not to the page cache (root only)."""
    try:
        os.sync()
        with open('/proc/sys/vm/drop_caches', 'w') as f:
            f.write('3')
    except OSError:
        pass


def dd_random_to(path, size):
    """dd bs=1M conv=fsync of random data into path; returns (dd's result, sha256 of the data
    it was given)."""
    dd = subprocess.Popen(['dd', 'of=' + path, 'bs=1M', 'iflag=fullblock', 'conv=fsync',
                           'status=none'], stdin=subprocess.PIPE, stderr=subprocess.PIPE)
    h = hashlib.sha256()
    try:
        for _ in range(size // MIB):
            chunk = os.urandom(MIB)
            h.update(chunk)
            dd.stdin.write(chunk)
        dd.stdin.close()
    except BrokenPipeError:
        pass
    err = dd.stderr.read()
    dd.wait(timeout=300 * SLOW)
    return dd.returncode, err.decode(errors='replace'), h.hexdigest()


@pytest.mark.timeout(600 * SLOW)
def test_200mib_write_and_read_back(d):
    path = os.path.join(d.m, 'big.bin')
    rc, err, want = dd_random_to(path, BIG)
    assert rc == 0, err
    host = os.path.join(d.h, 'big.bin')
    assert os.path.getsize(host) == BIG
    assert sha256_file(host) == want, 'the file on the host differs from what dd wrote'
    drop_caches()
    assert os.path.getsize(path) == BIG
    assert sha256_file(path) == want, 'reading back through the mount gives other bytes'
    out = sh("dd if='%s' bs=1M status=none | sha256sum" % path, timeout=300).stdout
    assert out.split()[0].decode() == want


@pytest.mark.timeout(600 * SLOW)
def test_big_host_file_read_through_mount(d):
    """Reads a 200 MiB file made on the host (in fallback mode: beyond /api/read's 32 MiB,
    in ranges by commands)."""
    host = os.path.join(d.h, 'big.bin')
    h = hashlib.sha256()
    with open(host, 'wb') as f:
        for _ in range(BIG // MIB):
            chunk = os.urandom(MIB)
            h.update(chunk)
            f.write(chunk)
    drop_caches()
    path = os.path.join(d.m, 'big.bin')
    assert os.path.getsize(path) == BIG
    assert sha256_file(path) == h.hexdigest()


def read_in_order(fd, start, end, step=256 * 1024):
    """Reads [start, end) of fd the way cat does: in order, step bytes a read."""
    out = []
    for off in range(start, end, step):
        out.append(os.pread(fd, min(step, end - off), off))
    return b''.join(out)


@pytest.mark.timeout(300 * SLOW)
def test_read_ahead_shows_later_changes(d, mode):
    """A file read in order is read ahead, several ranges at once (docs/performance.md,
    "Reading large files"): a change the sandbox makes to a range already fetched, and one
    made through the mount by another handle, show in the reads after them."""
    if mode == 'fallback':
        pytest.skip('without the extensions an open file is a local copy made at its first '
                    'read (sbxfs(1), CAVEATS): there is no read-ahead')
    size = 24 * MIB + 12345
    data = bytearray(os.urandom(size))
    host = os.path.join(d.h, 'f.bin')
    with open(host, 'wb') as f:
        f.write(data)
    path = os.path.join(d.m, 'f.bin')
    assert wait_for(lambda: os.path.getsize(path) == size, 30 * SLOW)
    drop_caches()
    fd = os.open(path, os.O_RDONLY)
    try:
        assert read_in_order(fd, 0, 4 * MIB) == data[:4 * MIB]
        # the sandbox changes a range ahead of the reader, which was asked for by now
        with open(host, 'r+b') as f:
            f.seek(6 * MIB + 100)
            f.write(b'S' * 5000)
        data[6 * MIB + 100:6 * MIB + 5100] = b'S' * 5000
        mtime = os.stat(host).st_mtime_ns
        assert wait_for(lambda: os.stat(path).st_mtime_ns == mtime, 30 * SLOW), \
            'the change never showed through the mount'
        assert read_in_order(fd, 4 * MIB, 8 * MIB) == data[4 * MIB:8 * MIB], \
            'a read after the change gave what was read ahead before it'
        # another handle of the mount writes further on (not whole pages, so that the
        # kernel asks for them again)
        with open(path, 'r+b') as w:
            w.seek(12 * MIB + 100)
            w.write(b'M' * 5000)
        data[12 * MIB + 100:12 * MIB + 5100] = b'M' * 5000
        d.sbx.sync()
        assert read_in_order(fd, 8 * MIB, size) == data[8 * MIB:], \
            'a read after a write through the mount gave what was read ahead before it'
        # out of order, then in order again from elsewhere
        assert os.pread(fd, 1000, 3) == data[3:1003]
        assert read_in_order(fd, 20 * MIB, size) == data[20 * MIB:]
    finally:
        os.close(fd)


@pytest.mark.timeout(600 * SLOW)
def test_100mib_round_trip_byte_exact(d):
    """100 MiB of random bytes: in fallback mode seven parts, joined in the sandbox, and read
    back in ranges; nothing of the parts stays behind (issue #14)."""
    size = 100 * MIB
    path = os.path.join(d.m, 'hundred.bin')
    rc, err, want = dd_random_to(path, size)
    assert rc == 0, err
    assert os.listdir(d.h) == ['hundred.bin'], 'left beside it: %s' % os.listdir(d.h)
    assert os.path.getsize(os.path.join(d.h, 'hundred.bin')) == size
    assert sha256_file(os.path.join(d.h, 'hundred.bin')) == want
    drop_caches()
    assert sha256_file(path) == want, 'reading back through the mount gives other bytes'
    assert sorted(os.listdir(d.m)) == ['hundred.bin']
    # rewritten in place, it keeps its inode and mode
    os.chmod(path, 0o640)
    ino = os.stat(os.path.join(d.h, 'hundred.bin')).st_ino
    with open(path, 'r+b') as f:
        f.seek(size - 7)
        f.write(b'THE END')
    with open(os.path.join(d.h, 'hundred.bin'), 'rb') as f:
        f.seek(size - 7)
        assert f.read() == b'THE END'
    st = os.stat(os.path.join(d.h, 'hundred.bin'))
    assert st.st_ino == ino and stat.S_IMODE(st.st_mode) == 0o640


@pytest.mark.timeout(300 * SLOW)
def test_file_at_the_fallback_limits(d):
    """Around the sizes where the fallback changes how it moves data: one write and parts,
    one read and ranges."""
    for size in (FALLBACK_ONE_WRITE, FALLBACK_ONE_WRITE + 1, FALLBACK_READ_MAX,
                 FALLBACK_READ_MAX + 1):
        name = 'f%d.bin' % size
        with open(os.path.join(d.m, name), 'wb') as f:
            data = os.urandom(size)
            f.write(data)
        with open(os.path.join(d.h, name), 'rb') as f:
            assert f.read() == data, size
        drop_caches()
        with open(os.path.join(d.m, name), 'rb') as f:
            assert f.read() == data, size
        os.unlink(os.path.join(d.m, name))
    assert os.listdir(d.h) == []


@pytest.mark.timeout(300 * SLOW)
def test_largest_fallback_file(d, mode):
    """What was once the fallback's limit (96 MiB, one /api/write) works in both modes;
    in ext mode it is simply a big file rewritten in place."""
    size = 96 * MIB - MIB
    path = os.path.join(d.m, 'f.bin')
    rc, err, want = dd_random_to(path, size)
    assert rc == 0, err
    assert sha256_file(os.path.join(d.h, 'f.bin')) == want
    # a small change in the middle is written back too
    with open(path, 'r+b') as f:
        f.seek(size // 2)
        f.write(b'CHANGED')
    with open(os.path.join(d.h, 'f.bin'), 'rb') as f:
        f.seek(size // 2)
        assert f.read(7) == b'CHANGED'
