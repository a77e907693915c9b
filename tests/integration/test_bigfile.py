"""A file of hundreds of MiB written through the mount and read back."""
import hashlib
import os
import subprocess

import pytest

from util import SLOW, sh

MIB = 1024 * 1024
BIG = 200 * MIB
# Without the extensions sbxfs writes a whole file with one /api/write (base64 in a 128 MiB
# request body): docs/protocol.md, "Fallback". Larger files fail with EFBIG.
FALLBACK_WRITE_MAX = 96 * MIB


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
def test_200mib_write_and_read_back(d, mode):
    path = os.path.join(d.m, 'big.bin')
    rc, err, want = dd_random_to(path, BIG)
    if mode == 'fallback':
        # beyond what one /api/write can carry: a clean EFBIG, never a silently short file
        assert rc != 0 and 'File too large' in err, (rc, err)
        host = os.path.join(d.h, 'big.bin')
        assert not os.path.exists(host) or os.path.getsize(host) < BIG
        os.unlink(path)
        return
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
    through /api/read/stream)."""
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


@pytest.mark.timeout(300 * SLOW)
def test_largest_fallback_file(d, mode):
    """Just under the fallback limit works in both modes; in ext mode it is simply a big
    file rewritten in place."""
    size = FALLBACK_WRITE_MAX - MIB
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
