"""workspace/ with the everyday shell tools, compared with what lands on the host."""
import hashlib
import os
import stat
import subprocess
import sys
import threading
import time

import pytest

from util import SLOW, sh, wait_for

TREE = {
    'a.txt': b'alpha\n',
    'sub/b.txt': b'beta\n' * 1000,
    'sub/deeper/c.bin': bytes(range(256)) * 64,
    'sub/deeper/empty': b'',
    'sp ace/na\tme\n.txt': b'odd names survive\n',
    'sub/\u00fcml\u00e4ut-\u65e5\u672c.txt': 'utf-8 names\n'.encode(),
}


def make_tree(root, tree=TREE):
    for rel, data in tree.items():
        p = os.path.join(root, rel)
        os.makedirs(os.path.dirname(p), exist_ok=True)
        with open(p, 'wb') as f:
            f.write(data)


def read(p):
    with open(p, 'rb') as f:
        return f.read()


def write(p, data):
    with open(p, 'wb') as f:
        f.write(data)


def test_ls_cat_on_files_made_through_mount(d):
    d.sh("mkdir -p x/y/z && echo hello > x/y/z/f && printf 'no newline' > g")
    assert read(os.path.join(d.h, 'x/y/z/f')) == b'hello\n'
    assert d.sh('cat x/y/z/f g').stdout == b'hello\nno newline'
    out = d.sh('ls -la').stdout.decode()
    assert ' x\n' in out and ' g\n' in out and ' .\n' in out and ' ..\n' in out
    ls = d.sh('ls -l g').stdout.decode().split()
    assert ls[0].startswith('-rw') and ls[4] == '10', ls


def test_mkdir_p_and_ls_R(d):
    d.sh('mkdir -p a/b/c a/b/d && mkdir -p a/b/c')
    assert sorted(os.listdir(os.path.join(d.h, 'a/b'))) == ['c', 'd']
    out = d.sh('ls -R a').stdout.decode()
    assert 'a/b/c:' in out and 'a/b/d:' in out


def test_cp_r_into_mount_and_back(d, tmp_path):
    src = tmp_path / 'src'
    make_tree(str(src))
    d.sh("cp -r '%s' copy" % src)
    sh("diff -r '%s' '%s'" % (src, os.path.join(d.h, 'copy')))
    sh("diff -r '%s' '%s'" % (src, os.path.join(d.m, 'copy')))
    d.sh('cp -r copy copy2')
    sh("diff -r '%s' '%s'" % (src, os.path.join(d.h, 'copy2')))
    back = tmp_path / 'back'
    sh("cp -r '%s' '%s'" % (os.path.join(d.m, 'copy2'), back))
    sh("diff -r '%s' '%s'" % (src, back))


# Against a plain container the mode and times of a file the mount made reach the sandbox in
# a batch, moments after close() (docs/protocol.md, "Fallback"): the mount shows them at once.
SETTLE_S = 2


def test_cp_a_preserves_mode_and_times(d, tmp_path, mode):
    src = tmp_path / 'f'
    src.write_bytes(b'data')
    os.chmod(src, 0o640)
    os.utime(src, ns=(1_600_000_000_123_456_789, 1_500_000_000_987_654_321))
    d.sh("cp -a '%s' f" % src)
    st = os.stat(os.path.join(d.m, 'f'))
    assert stat.S_IMODE(st.st_mode) == 0o640
    assert st.st_mtime_ns == 1_500_000_000_987_654_321
    host = os.path.join(d.h, 'f')
    if mode == 'fallback':
        wait_for(lambda: os.stat(host).st_mtime_ns == 1_500_000_000_987_654_321, SETTLE_S)
    assert os.stat(host).st_mtime_ns == 1_500_000_000_987_654_321
    assert stat.S_IMODE(os.stat(host).st_mode) == 0o640


def test_mv_file_and_dir(d):
    make_tree(d.m)
    d.sh('mv a.txt renamed.txt && mv sub moved && mkdir target && mv renamed.txt moved target/')
    assert sorted(os.listdir(d.h)) == ['sp ace', 'target']
    assert sorted(os.listdir(os.path.join(d.h, 'target'))) == ['moved', 'renamed.txt']
    assert read(os.path.join(d.m, 'target/moved/deeper/c.bin')) == TREE['sub/deeper/c.bin']
    assert not os.path.exists(os.path.join(d.m, 'a.txt'))
    assert not os.path.exists(os.path.join(d.m, 'sub'))


def test_rm_rf(d):
    make_tree(d.m)
    d.sh('mkdir -p deep/1/2/3/4/5 && touch deep/1/2/3/4/5/f && ln -s ../a.txt deep/1/l')
    d.sh('rm -rf sub deep "sp ace"')
    assert os.listdir(d.h) == ['a.txt']
    assert os.listdir(d.m) == ['a.txt']
    d.sh('rm -rf ../%s' % os.path.basename(d.m))
    assert not os.path.exists(d.h)
    assert not os.path.exists(d.m)


def test_find_grep_du(d):
    make_tree(d.m)
    found = d.sh('find . -type f -print0').stdout.decode().split('\0')[:-1]
    assert sorted(found) == sorted('./' + k for k in TREE)
    assert d.sh('find . -type d | sort').stdout.decode().splitlines() == \
        ['.', './sp ace', './sub', './sub/deeper']
    assert d.sh('grep -rl beta .').stdout.decode().split() == ['./sub/b.txt']
    assert d.sh('grep -rc alpha . | grep -c ":1$"').stdout.strip() == b'1'
    du = int(d.sh('du -sb .').stdout.split()[0])
    assert du >= sum(len(v) for v in TREE.values())
    du_k = int(d.sh('du -sk sub').stdout.split()[0])
    assert du_k >= 20       # st_blocks are filled in: 5000 + 16384 bytes of data


def test_df_statfs(sbx, d):
    out = d.sh('df -P .').stdout.decode().splitlines()
    assert len(out) == 2
    blocks, used, avail = (int(x) for x in out[1].split()[1:4])
    assert blocks > 0 and avail > 0
    st = os.statvfs(d.m)
    assert st.f_bsize > 0 and st.f_namemax >= 255


def test_touch_d_and_stat(d):
    d.sh("touch -d '2001-02-03 04:05:06.789 UTC' f && touch -m -d '@1234567890' g")
    st = os.stat(os.path.join(d.m, 'f'))
    assert st.st_mtime_ns == 981173106_789000000
    assert st.st_atime_ns == 981173106_789000000
    assert os.stat(os.path.join(d.h, 'f')).st_mtime_ns == 981173106_789000000
    assert os.stat(os.path.join(d.m, 'g')).st_mtime == 1234567890
    assert d.sh("stat -c %Y g").stdout.strip() == b'1234567890'
    # touch on an existing file moves its mtime to now
    d.sh('touch f')
    assert abs(os.stat(os.path.join(d.m, 'f')).st_mtime - time.time()) < 60


def test_append(d):
    d.sh('echo one >> log && echo two >> log && printf three >> log')
    assert read(os.path.join(d.h, 'log')) == b'one\ntwo\nthree'
    # two O_APPEND descriptors interleave without overwriting each other
    p = os.path.join(d.m, 'log2')
    f1 = os.open(p, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    f2 = os.open(p, os.O_WRONLY | os.O_APPEND)
    for i in range(50):
        os.write(f1 if i % 2 else f2, b'%02d\n' % i)
    os.close(f1)
    os.close(f2)
    assert read(os.path.join(d.h, 'log2')) == b''.join(b'%02d\n' % i for i in range(50))
    assert d.sh('wc -l < log2').stdout.strip() == b'50'


def test_truncate(d):
    write(os.path.join(d.m, 'f'), b'0123456789' * 1000)
    d.sh('truncate -s 5 f')
    assert read(os.path.join(d.m, 'f')) == b'01234'
    assert read(os.path.join(d.h, 'f')) == b'01234'
    d.sh('truncate -s 1M f')
    assert os.path.getsize(os.path.join(d.m, 'f')) == 1 << 20
    data = read(os.path.join(d.m, 'f'))
    assert data[:5] == b'01234' and data[5:] == bytes((1 << 20) - 5)
    d.sh('truncate -s 0 f')
    assert read(os.path.join(d.m, 'f')) == b''
    assert os.path.getsize(os.path.join(d.h, 'f')) == 0
    # ftruncate through an open descriptor, then write past the end
    with open(os.path.join(d.m, 'g'), 'w+b') as f:
        f.write(b'abcdef')
        f.flush()
        os.ftruncate(f.fileno(), 2)
        f.seek(4)
        f.write(b'Z')
    assert read(os.path.join(d.h, 'g')) == b'ab\0\0Z'
    # shell truncation with >
    d.sh(': > g')
    assert read(os.path.join(d.h, 'g')) == b''


@pytest.mark.parametrize('size', [0, 1, 4095, 4096, 131073, 5 * 1024 * 1024 + 7])
def test_binary_roundtrip(d, size):
    data = os.urandom(size)
    p = os.path.join(d.m, 'blob')
    write(p, data)
    want = hashlib.sha256(data).hexdigest()
    assert hashlib.sha256(read(os.path.join(d.h, 'blob'))).hexdigest() == want
    assert d.sh('sha256sum blob').stdout.split()[0].decode() == want
    # written on the host, read through the mount
    data2 = os.urandom(size)
    write(os.path.join(d.h, 'blob2'), data2)
    assert wait_for(lambda: os.path.exists(os.path.join(d.m, 'blob2')), 5)
    assert hashlib.sha256(read(os.path.join(d.m, 'blob2'))).digest() == \
        hashlib.sha256(data2).digest()


def test_random_access_io(d):
    p = os.path.join(d.m, 'f')
    data = bytearray(os.urandom(300_000))
    write(p, bytes(data))
    with open(p, 'r+b') as f:
        for off in (0, 4095, 65536, 299_990):
            chunk = os.urandom(17)
            f.seek(off)
            f.write(chunk)
            data[off:off + 17] = chunk
        f.flush()
        f.seek(65530)
        assert f.read(30) == bytes(data[65530:65560])
    got = read(os.path.join(d.h, 'f'))
    assert len(got) == len(data) and got == bytes(data)


def test_chmod(d):
    d.sh('echo x > f && chmod 600 f && mkdir dd && chmod 750 dd')
    assert stat.S_IMODE(os.stat(os.path.join(d.h, 'f')).st_mode) == 0o600
    assert stat.S_IMODE(os.stat(os.path.join(d.m, 'f')).st_mode) == 0o600
    assert stat.S_IMODE(os.stat(os.path.join(d.h, 'dd')).st_mode) == 0o750
    d.sh('chmod +x f')
    assert os.access(os.path.join(d.m, 'f'), os.X_OK)
    assert stat.S_IMODE(os.stat(os.path.join(d.h, 'f')).st_mode) == 0o711


def test_chmod_x_script_runs_in_sandbox(d):
    d.sh("printf '#!/bin/sh\\necho \"ran as $0 in $(pwd)\"\\necho args: \"$@\"\\n' > hello.sh")
    d.sh('chmod +x hello.sh')
    r = d.execute('./hello.sh one two')
    assert r['exitCode'] == 0, r
    assert r['stdout'].splitlines() == ['ran as ./hello.sh in /workspace/%s' % d.rel,
                                        'args: one two']
    # and it runs from the mount as well
    assert d.sh('./hello.sh x').stdout.decode().splitlines()[1] == 'args: x'


def test_symlinks(d):
    d.sh('mkdir real && echo target > real/t && ln -s real/t link && ln -s real dlink '
         '&& ln -s nowhere dangling && ln -s /etc/hostname abs')
    assert os.readlink(os.path.join(d.m, 'link')) == 'real/t'
    assert os.readlink(os.path.join(d.h, 'link')) == 'real/t'
    assert d.sh('cat link dlink/t').stdout == b'target\ntarget\n'
    assert d.sh('readlink dangling').stdout == b'nowhere\n'
    assert os.path.islink(os.path.join(d.m, 'dangling'))
    assert not os.path.exists(os.path.join(d.m, 'dangling'))
    # an absolute target is kept verbatim (it means /etc inside the sandbox's view)
    assert os.readlink(os.path.join(d.m, 'abs')) == '/etc/hostname'
    ls = d.sh('ls -l link').stdout.decode()
    assert ls.startswith('l') and ls.rstrip().endswith('link -> real/t')
    st = os.lstat(os.path.join(d.m, 'link'))
    assert stat.S_ISLNK(st.st_mode) and st.st_size == len('real/t')
    # writing through the link writes the target; rm removes only the link
    d.sh('echo more >> link && rm link dlink')
    assert read(os.path.join(d.h, 'real/t')) == b'target\nmore\n'
    assert sorted(os.listdir(d.m)) == ['abs', 'dangling', 'real']
    # symlinks made on the host or inside the sandbox show up too
    r = d.execute('ln -s real/t inbox')
    assert r['exitCode'] == 0, r
    assert wait_for(lambda: os.path.lexists(os.path.join(d.m, 'inbox')), 5)
    assert os.readlink(os.path.join(d.m, 'inbox')) == 'real/t'


def test_hard_link(d):
    d.sh('echo one > a && ln a b')
    assert os.stat(os.path.join(d.m, 'a')).st_nlink == 2
    assert os.stat(os.path.join(d.h, 'b')).st_ino == os.stat(os.path.join(d.h, 'a')).st_ino
    d.sh('echo two >> b')
    assert read(os.path.join(d.m, 'a')) == b'one\ntwo\n'
    d.sh('rm a')
    assert read(os.path.join(d.m, 'b')) == b'one\ntwo\n'
    # a is a name only the sandbox holds: b's link count follows once the unlink is there
    # (docs/writeback.md, "Caveats")
    assert wait_for(lambda: os.stat(os.path.join(d.m, 'b')).st_nlink == 1, 10 * SLOW)
    # renaming another file over one of the names drops a link of the others too
    d.sh('ln b c && echo other > y')
    assert os.stat(os.path.join(d.m, 'b')).st_nlink == 2
    os.rename(os.path.join(d.m, 'y'), os.path.join(d.m, 'c'))
    # b is the sandbox's: its link count is the sandbox's, once the rename is there
    # (docs/writeback.md, "Caveats")
    d.sbx.sync()
    assert wait_for(lambda: os.stat(os.path.join(d.m, 'b')).st_nlink == 1, 10 * SLOW)
    assert read(os.path.join(d.m, 'c')) == b'other\n'


def test_rename_over_existing_file(d):
    write(os.path.join(d.m, 'new'), b'new contents')
    write(os.path.join(d.m, 'old'), b'old contents, longer')
    os.rename(os.path.join(d.m, 'new'), os.path.join(d.m, 'old'))
    assert sorted(os.listdir(d.m)) == ['old']
    assert read(os.path.join(d.m, 'old')) == b'new contents'
    assert read(os.path.join(d.h, 'old')) == b'new contents'
    # mv -f over an existing file, and over an empty directory with rename(2)
    d.sh('echo a > x && echo b > y && mv -f x y && mkdir e1 e2 && touch e1/f')
    assert read(os.path.join(d.m, 'y')) == b'a\n'
    os.rename(os.path.join(d.m, 'e1'), os.path.join(d.m, 'e2'))
    assert os.listdir(os.path.join(d.h, 'e2')) == ['f']


def test_rename_over_open_file(d):
    pa, pb = os.path.join(d.m, 'a'), os.path.join(d.m, 'b')
    write(pa, b'AAAA new')
    write(pb, b'BBBB old')
    with open(pb, 'rb') as held:
        os.rename(pa, pb)
        # the open descriptor still reads the file it opened
        assert held.read() == b'BBBB old'
        assert read(pb) == b'AAAA new'
        assert read(os.path.join(d.h, 'b')) == b'AAAA new'
    # the same while the replaced file is open for writing
    write(pa, b'second')
    fd = os.open(pb, os.O_RDWR)
    try:
        os.rename(pa, pb)
        os.write(fd, b'written to the old, replaced file')
        os.fsync(fd)
    finally:
        os.close(fd)
    assert read(pb) == b'second'
    assert read(os.path.join(d.h, 'b')) == b'second'
    assert sorted(os.listdir(d.h)) == ['b']


def test_unlink_open_file(d):
    p = os.path.join(d.m, 'f')
    write(p, b'still here')
    fd = os.open(p, os.O_RDWR)
    try:
        os.unlink(p)
        assert not os.path.exists(p)
        assert not os.path.exists(os.path.join(d.h, 'f'))
        assert os.pread(fd, 100, 0) == b'still here'
        os.pwrite(fd, b'STILL', 0)
        os.fsync(fd)
        assert os.pread(fd, 100, 0) == b'STILL here'
        assert os.fstat(fd).st_size == 10
    finally:
        os.close(fd)
    # writing to the unlinked file must not bring the name back
    assert os.listdir(d.m) == []
    assert os.listdir(d.h) == []
    # and a new file of the same name is a different file
    write(p, b'new')
    assert read(os.path.join(d.h, 'f')) == b'new'


def test_concurrent_writers_on_different_files(d):
    n, size, chunk = 6, 3 * 1024 * 1024, 64 * 1024
    datas = [os.urandom(size) for _ in range(n)]
    errors = []

    def writer(i):
        try:
            with open(os.path.join(d.m, 'w%d' % i), 'wb') as f:
                for off in range(0, size, chunk):
                    f.write(datas[i][off:off + chunk])
                f.flush()
                os.fsync(f.fileno())
        except Exception as e:  # reported below, in the test's thread
            errors.append('writer %d: %r' % (i, e))
    threads = [threading.Thread(target=writer, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert not errors
    for i in range(n):
        assert hashlib.sha256(read(os.path.join(d.h, 'w%d' % i))).digest() == \
            hashlib.sha256(datas[i]).digest(), 'file w%d differs on the host' % i
        assert hashlib.sha256(read(os.path.join(d.m, 'w%d' % i))).digest() == \
            hashlib.sha256(datas[i]).digest(), 'file w%d differs in the mount' % i


def test_mount_writes_visible_in_sandbox_after_close(d):
    for i in range(20):
        with open(os.path.join(d.m, 'f'), 'w') as f:
            f.write('version %d\n' % i)
        r = d.execute('cat f')
        assert r['stdout'] == 'version %d\n' % i, r
    # after fsync, before close
    with open(os.path.join(d.m, 'g'), 'w') as f:
        f.write('synced\n')
        f.flush()
        os.fsync(f.fileno())
        assert d.execute('cat g')['stdout'] == 'synced\n'


def test_sandbox_writes_visible_in_mount(d):
    r = d.execute('echo made inside > f && mkdir -p sub/dir && echo deep > sub/dir/g')
    assert r['exitCode'] == 0, r
    assert wait_for(lambda: os.path.exists(os.path.join(d.m, 'f')), 5), \
        'a file created in the sandbox is not in the mount after 5 s'
    assert read(os.path.join(d.m, 'f')) == b'made inside\n'
    assert d.sh('cat sub/dir/g').stdout == b'deep\n'
    # changes to a file the mount has already read
    for i in range(3):
        assert d.execute('echo changed %d > f' % i)['exitCode'] == 0
        want = b'changed %d\n' % i
        assert wait_for(lambda: read(os.path.join(d.m, 'f')) == want, 5), \
            'mount still shows %r after 5 s' % read(os.path.join(d.m, 'f'))
    # and removals
    assert d.execute('rm -r f sub')['exitCode'] == 0
    assert wait_for(lambda: os.listdir(d.m) == [], 5), os.listdir(d.m)


def test_host_changes_visible_in_mount(d):
    assert os.listdir(d.m) == []
    write(os.path.join(d.h, 'f'), b'v1')
    assert wait_for(lambda: os.path.exists(os.path.join(d.m, 'f')), 5)
    assert read(os.path.join(d.m, 'f')) == b'v1'
    write(os.path.join(d.h, 'f'), b'version two')
    assert wait_for(lambda: read(os.path.join(d.m, 'f')) == b'version two', 5)
    assert wait_for(lambda: os.path.getsize(os.path.join(d.m, 'f')) == 11, 5)
    os.rename(os.path.join(d.h, 'f'), os.path.join(d.h, 'g'))
    assert wait_for(lambda: os.listdir(d.m) == ['g'], 5), os.listdir(d.m)
    os.unlink(os.path.join(d.h, 'g'))
    assert wait_for(lambda: not os.path.exists(os.path.join(d.m, 'g')), 5)


def test_cwd_survives_change_events(d):
    """A shell sitting in a directory of the mount keeps a working getcwd() while change
    events arrive late (here: behind a burst of sandbox-side events), as git and every shell
    prompt need. A notification must not detach the directory the shell is in."""
    getcwd = [sys.executable, '-c', 'import os, time\nprint(os.getcwd())\ntime.sleep(1.5)\n'
              'print(os.getcwd())']
    for i in range(3):
        r = d.execute('mkdir -p noise && cd noise && seq 3000 | xargs touch && rm -f ./*')
        assert r['exitCode'] == 0, r
        sub = os.path.join(d.m, 'cwd%d' % i)
        os.mkdir(sub)
        p = subprocess.run(getcwd, cwd=sub, capture_output=True, timeout=60)
        assert p.returncode == 0 and p.stdout.decode().split() == [sub, sub], \
            'getcwd in %s failed: %s' % (sub, p.stderr.decode(errors='replace')[-300:])
