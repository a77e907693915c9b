"""sbxfs against a server that says what sbxd never would (issue #10).

A hostile or buggy server, or a plain container whose sandboxed code names its files, can send
names with '/', empty names, '.', '..', names longer than NAME_MAX, duplicates, control
characters, and attributes out of any range. sbxfs must keep the directory usable: a bad entry
is dropped (or its attributes brought into range), the good ones are listed once, and one
warning per listing says what was dropped. The server is tests/integration/hostile.py; the
checks are what a user would run: ls -la, find, stat, readlink.
"""
import json
import os
import re
import shlex

import pytest

from hostile import HostileServer, entry
from util import Sandbox, sh

EVIL = '/workspace/evil'
LONGEST = 'n' * 255     # NAME_MAX: still a name
INT64_MAX = 2**63 - 1


@pytest.fixture
def hostile(build_dir, mode):
    """hostile(dirs) starts a HostileServer in the test's mode and mounts it; returns the
    Sandbox (its mount and log) and the server."""
    made = []

    def start(dirs):
        srv = HostileServer(mode, dirs)
        sbx = Sandbox(build_dir, mode)
        made.append((sbx, srv))
        sbx.url = srv.url
        with open(sbx.token_file, 'w') as f:
            f.write('hostile-test-token\n')
        sbx.mount()
        return sbx, srv
    yield start
    problems = []
    for sbx, srv in made:
        problems += sbx.log_complaints()    # warnings are the point, error lines are not
        problems += sbx.close()     # unmounts: sbxfs must exit cleanly, without sanitizer reports
        srv.stop()
        sbx.remove()
    if problems:
        pytest.fail('\n\n'.join(problems), pytrace=False)


def listed(path):
    """The names find lists in path (each as often as it is listed)."""
    out = sh('find %s -mindepth 1 -maxdepth 1 -printf "%%P\\0"' % shlex.quote(path)).stdout
    return [n.decode(errors='surrogateescape') for n in out.split(b'\0')[:-1]]


def lstat_all(path, names):
    """os.lstat of each name, in a child (a hung request must not wedge the test)."""
    script = ('import json, os, sys\n'
              'out = {}\n'
              'for n in json.loads(sys.argv[2]):\n'
              '    st = os.lstat(os.path.join(sys.argv[1], n))\n'
              '    out[n] = dict(mode=st.st_mode, ino=st.st_ino, nlink=st.st_nlink, '
              'uid=st.st_uid, gid=st.st_gid, size=st.st_size, blocks=st.st_blocks, '
              'atime=st.st_atime_ns, mtime=st.st_mtime_ns, ctime=st.st_ctime_ns)\n'
              'print(json.dumps(out))\n')
    return json.loads(sh('python3 -c %s %s %s' % (shlex.quote(script), shlex.quote(path),
                                                  shlex.quote(json.dumps(names)))).stdout)


def listing_warnings(sbx, path):
    log = sbx.read_log(sbx.sbxfs_log)
    return [l for l in log.splitlines() if ': warning: readdir %s: ' % path in l]


def assert_one_warning_per_listing(sbx, srv, path):
    warns = listing_warnings(sbx, path)
    assert srv.listed(path) >= 1
    assert len(warns) == srv.listed(path), (
        'expected one warning per listing of %s (%d listings), got:\n%s' % (
            path, srv.listed(path), '\n'.join(warns)))
    return warns


NAMES = [
    entry('good.txt', size=5),
    entry('a/b'),
    entry(''),
    entry('.', kind='d'),
    entry('..', kind='d'),
    entry('sub', kind='d'),
    entry('good.txt', size=7),              # a duplicate: the first one counts
    entry('link', kind='l', target='good.txt', size=8),
    entry('tab\there'),                     # control characters are legal in a name
    entry('esc\x1b[31mred\x07'),
    entry('n' * 256),                       # beyond NAME_MAX
    entry(LONGEST),
    entry('sub', kind='f'),                 # a duplicate of another type
    entry('/'),
    entry('esc\x1b[31mred\x07', size=9),    # shown in the warning, escaped
]
KEPT = ['good.txt', 'sub', 'link', 'tab\there', 'esc\x1b[31mred\x07', LONGEST]


def test_bad_names_are_dropped_not_the_directory(hostile, mode):
    sbx, srv = hostile({'/workspace': [entry('evil', kind='d')], EVIL: NAMES,
                        EVIL + '/sub': [entry('inside', size=1)]})
    d = os.path.join(sbx.ws, 'evil')
    p = sh('ls -la %s' % shlex.quote(d), check=False)
    assert p.returncode == 0 and not p.stderr, 'ls -la failed (exit %d): %s' % (
        p.returncode, p.stderr.decode(errors='replace'))
    names = listed(d)
    assert sorted(names) == sorted(KEPT), 'find lists %r' % names
    # the first of two entries of the same name is the one shown
    assert sh('stat -c "%%s %%F" %s' % shlex.quote(os.path.join(d, 'good.txt'))
              ).stdout.decode() == '5 regular file\n'
    assert sh('stat -c %%F %s' % shlex.quote(os.path.join(d, 'sub'))).stdout.decode() == \
        'directory\n'
    assert sh('readlink %s' % shlex.quote(os.path.join(d, 'link'))).stdout.decode() == \
        'good.txt\n'
    # the whole tree walks without an error
    sh('find %s > /dev/null' % shlex.quote(sbx.ws))
    assert sbx.sbxfs.poll() is None, 'sbxfs died'
    warns = assert_one_warning_per_listing(sbx, srv, EVIL)
    # the fallback's listing names entries by their path below the directory: 'a/b' among
    # the directory's own entries is below no directory listed, '/' has empty parts
    slashes = ("'/'",) if mode == 'ext' else ('"a/b": a path below no directory', '"/": a path')
    for why in slashes + ('empty', '"."', '".."', 'longer than 255', 'duplicate'):
        assert why in warns[0], '%r not in the warning: %s' % (why, warns[0])
    log = sbx.read_log(sbx.sbxfs_log)
    assert '\x1b' not in log and '\x07' not in log, 'control characters reached the log'


def test_attributes_out_of_range(hostile, mode):
    fb = mode == 'fallback'
    ents = [
        entry('ok', size=3),
        entry('negsize', size=-1),
        entry('hugesize', size=10**30),
        entry('fracsize', size=1.5, raw={'size': b'1.5'}),
        entry('badtype', mode=0o170644, kind='x'),
        entry('ino0', ino=0),
        entry('longtarget', kind='l', target='t' * 5000, size=5000),
        entry('emptytarget', kind='l', target='', size=0),
        # kept, brought into range:
        entry('nsbig', mtime=(1700000000, 2 * 10**9), raw={'mtime': b'17x'}),
        entry('nsneg', atime=(1700000000, -1), raw={'atime': b''}),
        entry('hugetime', mtime=(10**30, 0), raw={'mtime': b'1' + b'0' * 30 + b'.5'}),
        entry('nlink0', nlink=0),               # as it is: an open file's name may be gone
        entry('nlinkneg', nlink=-3),
        entry('hugeuid', uid=2**40, gid=-5),
        entry('badblocks', size=4097, blocks=-8),
        entry('filetarget', target='ignored'),
    ]
    # unlisted is in its parent's listing (the fallback takes a listing's word that a name
    # is absent while change events flow), its own content is never listed
    sbx, srv = hostile({'/workspace': [entry('evil', kind='d'), entry('unlisted', kind='d')],
                        EVIL: ents, '/workspace/unlisted': ents})
    # asked for by name, in a directory never listed: the server's stat of it is judged
    u = os.path.join(sbx.ws, 'unlisted')
    p = sh('stat %s' % shlex.quote(os.path.join(u, 'negsize')), check=False)
    assert p.returncode == 1 and b'Protocol error' in p.stderr, p.stderr
    assert any(': warning: stat /workspace/unlisted/negsize: ' in l and 'size -1' in l
               for l in sbx.read_log(sbx.sbxfs_log).splitlines())
    assert lstat_all(u, ['hugeuid'])['hugeuid']['uid'] == 65534

    d = os.path.join(sbx.ws, 'evil')
    p = sh('ls -la %s' % shlex.quote(d), check=False)
    assert p.returncode == 0 and not p.stderr, 'ls -la failed (exit %d): %s' % (
        p.returncode, p.stderr.decode(errors='replace'))
    kept = ['ok', 'nsbig', 'nsneg', 'hugetime', 'nlink0', 'nlinkneg', 'hugeuid', 'badblocks',
            'filetarget']
    assert sorted(listed(d)) == sorted(kept)
    st = lstat_all(d, kept)
    assert st['ok']['size'] == 3 and st['ok']['mode'] == 0o100644
    # a time that is not a number is 0 (1970); nanoseconds out of range are 0
    assert st['nsbig']['mtime'] == (0 if fb else 1700000000 * 10**9)
    assert st['nsneg']['atime'] == (0 if fb else 1700000000 * 10**9)
    assert st['hugetime']['mtime'] == INT64_MAX * 10**9 + (5 * 10**8 if fb else 0)
    assert st['nlink0']['nlink'] == 0 and st['nlinkneg']['nlink'] == 1
    assert st['hugeuid']['uid'] == 65534 and st['hugeuid']['gid'] == 65534
    assert st['badblocks']['blocks'] == 9
    warns = assert_one_warning_per_listing(sbx, srv, EVIL)
    for name in ('negsize', 'hugesize', 'fracsize', 'badtype', 'ino0', 'longtarget',
                 'emptytarget', 'nsbig', 'nsneg', 'hugetime', 'nlinkneg', 'hugeuid',
                 'badblocks'):
        assert '"%s"' % name in warns[0], '%s not in the warning: %s' % (name, warns[0])
    # a bad entry asked for by name: an error, not a crash; the good ones still work
    p = sh('stat %s' % shlex.quote(os.path.join(d, 'negsize')), check=False)
    assert p.returncode != 0
    assert sbx.sbxfs.poll() is None, 'sbxfs died'
