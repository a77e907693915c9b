"""Exactly-once over a faulty network: real work through a mount whose requests pass a fault
proxy (tests/integration/faultproxy.py) on their way to sbxd.

Unless a test says otherwise, 10 % of the API requests are answered 503 by the proxy, 10 %
are reset before they reach sbxd, and 10 % reach sbxd but lose their reply (the case that
makes a resent request run twice). A user must not notice: every command succeeds, nothing
happens twice, the final state is what the commands asked for. sbxd stopped (SIGSTOP) must
make operations fail within the mount's timeout, the next ones at once, and the mount work
again when sbxd continues. Handles sbxd holds for a client that died, or whose close was
lost, must be freed within the lease.

Fallback mode (sbxd --no-extensions, a plain container) has no idempotency keys: a mutation
whose reply was lost cannot be repeated safely, so sbxfs may report that its outcome is
unknown (FALLBACK_OUTCOME_UNKNOWN). There the tests collect the failures, allow that one
documented error, and still demand no duplicates and no wrong final state. The assertions
that hold in ext mode only are marked EXT ONLY.

$SBXFS_NETFAULTS_PCT sets the percentage of each fault (default 10; 0 checks that a test
passes without faults). Every test prints one line "NETFAULTS test mode | faults ... |
failed N | duplicates N" (see with -s; $SBXFS_NETFAULTS_REPORT names a file that collects
them as JSON lines): the measurements of issue #11.
"""
import collections
import errno
import json
import os
import random
import re
import signal
import subprocess
import sys
import time
from concurrent.futures import FIRST_COMPLETED, ThreadPoolExecutor, wait

import pytest

from util import BACKEND_DOWN_ERRNOS, SLOW, sh, wait_for

# The faults of every test unless it says otherwise: percentages of the API requests.
# $SBXFS_NETFAULTS_PCT changes them all (0: the same work without faults, to check a test).
_PCT = float(os.environ.get('SBXFS_NETFAULTS_PCT', 10))
FAULTS = dict(p503=_PCT, reset=_PCT, drop_reply=_PCT)
SEED = 11
# -o timeout= of these mounts: the deadline of one request to the sandbox, retries included.
TIMEOUT_S = 10
# An operation that meets a stopped sbxd returns within its timeout and this much more.
TIMEOUT_SLACK_S = 2
# Once sbxd is known to be down, a new operation fails within this (fail fast).
FAST_FAIL_S = 1.5
# How long sbxd stays stopped in the SIGSTOP test: longer than the first operations' bound,
# so that later ones meet a server known to be down (the first ones are waited for anyway).
STOP_S = 30
# Handles: sbxd frees the handles of a client that died or lost its close within the lease
# (docs/protocol.md, "Leases"). The mounts here run with a lease of HANDLE_LEASE_S (sbxd's
# --lease-seconds, 30 by default), and the tests wait HANDLE_WAIT_S for the descriptors to go.
HANDLE_LEASE_S = 10
HANDLE_WAIT_S = 3 * HANDLE_LEASE_S
SBXD_LEASE_ARGS = ['--lease-seconds', str(HANDLE_LEASE_S)]
# Fallback mode: the errors (as strerror prints them) that docs/protocol.md ("Lost answers"
# in "Fallback") allows there, for a request sent once whose answer was lost. Any other
# failure fails the test.
FALLBACK_OUTCOME_UNKNOWN = tuple(os.strerror(e) for e in (errno.ENOTCONN, errno.ETIMEDOUT,
                                                         errno.EIO))

# Sizes, per mode: big enough that each test meets every fault kind many times over, small
# enough for the file to run in about 4 minutes per mode on a 2-core machine (fallback mode
# costs a command in the sandbox per operation, so it gets smaller ones). Under sanitizers
# (SLOW) a third of that: still hundreds of requests, every fault kind met many times.
SIZES = {mode: {k: max(1, v // SLOW) for k, v in sizes.items()} for mode, sizes in {
    'ext': dict(tree_files=800, git_files=120, appends=1000, procs=200, rounds=150),
    'fallback': dict(tree_files=250, git_files=60, appends=400, procs=200, rounds=80),
}.items()}
HELD_OPEN = 50              # files a process holds open when sbxfs is killed
FAILED_CLOSES = 20          # files whose close fails
# Requests that only ask whether sbxd is up (a circuit breaker's probes): the failed-closes
# test does not wait for these to stop while the network is stalled.
# The lease's heartbeat goes on too.
PROBE_REQUESTS = {'GET /api/ping', 'GET /api/x/capabilities', 'POST /api/x/lease'}

DOWN = {errno.errorcode[e] for e in BACKEND_DOWN_ERRNOS}


# -- helpers --

def start(faulty_sbx, *mount_opts, **faults):
    """sbxd behind the fault proxy, mounted with -o timeout=TIMEOUT_S (and mount_opts); then
    the faults (FAULTS unless given) are switched on."""
    s = faulty_sbx('timeout=%d' % TIMEOUT_S, *mount_opts, server_args=SBXD_LEASE_ARGS,
                   seed=SEED)
    s.proxy.set(**(faults if faults else FAULTS))
    s.proxy.reset_counts()
    return s


def calm(s):
    """Faults off: for checking the outcome through the mount without new faults; and what
    the mount wrote is in the sandbox (sync)."""
    s.proxy.set(p503=0, reset=0, drop_reply=0, latency_ms=0)
    s.sync()


def record(s, test, failed, duplicates, **more):
    """Prints (and appends to $SBXFS_NETFAULTS_REPORT) what this test measured."""
    c = s.proxy.counts()
    rec = dict(test=test, mode=s.mode, faults=c['faults'], p503=c.get('p503', 0),
               reset=c.get('reset', 0), drop_reply=c.get('drop_reply', 0),
               api_requests=c.get('api', 0), failed=failed, duplicates=duplicates, **more)
    print('NETFAULTS %s %s | faults %d (p503 %d, reset %d, drop_reply %d) of %d API '
          'requests | failed %d | duplicates %d%s' % (
              test, s.mode, rec['faults'], rec['p503'], rec['reset'], rec['drop_reply'],
              rec['api_requests'], failed, duplicates,
              ''.join(' | %s %s' % kv for kv in sorted(more.items()))))
    path = os.environ.get('SBXFS_NETFAULTS_REPORT')
    if path:
        with open(path, 'a') as f:
            f.write(json.dumps(rec) + '\n')
    return rec


def examples(items, n=8):
    items = list(items)
    return '; '.join(str(i) for i in items[:n]) + (' ... (%d in all)' % len(items)
                                                   if len(items) > n else '')


def undocumented(s, failures):
    """The failures a mode does not allow: all of them in ext mode; in fallback those that
    do not carry FALLBACK_OUTCOME_UNKNOWN."""
    if s.mode == 'ext':
        return list(failures)
    return [f for f in failures if not any(e in str(f) for e in FALLBACK_OUTCOME_UNKNOWN)]


def workdir(s, name):
    """A fresh directory: (path through the mount, path on the host)."""
    m, h = os.path.join(s.ws, name), os.path.join(s.workspace, name)
    os.mkdir(h)
    return m, h


def journal_workdir(faulty_sbx, mode, name):
    """For a test of the journal's uploads through the proxy: sbxd with its extensions (the
    test is skipped in fallback mode), no faults, and a fresh directory (workdir)."""
    if mode == 'fallback':
        pytest.skip('without the extensions writes go through synchronously (writeback off)')
    s = start(faulty_sbx, p503=0, reset=0, drop_reply=0)
    m, h = workdir(s, name)
    calm(s)
    return s, m, h


def make_tree(root, nfiles, seed):
    """A deterministic source-like tree: nested directories, text and binary files of
    varied sizes (a few large), executables, empty files and directories, symlinks (one
    dangling) and hard links."""
    rng = random.Random(seed)
    words = ('static int void return struct const char size_t include define if else for '
             'while break the of to and a in is it you that was for on are with as').split()
    dirs = ['']
    files = []
    os.makedirs(root)
    for i in range(nfiles):
        if len(dirs) < 4 or rng.random() < 0.1:
            parent = rng.choice(dirs)
            if parent.count('/') < 5:
                d = os.path.join(parent, 'dir%03d' % len(dirs))
                os.mkdir(os.path.join(root, d))
                dirs.append(d)
        kind = rng.random()
        if kind < 0.03:
            data = b''
        elif kind < 0.75:       # source text, up to ~8 KiB
            n = rng.randint(1, 200)
            data = ''.join(' '.join(rng.choice(words) for _ in range(rng.randint(1, 12)))
                           + '\n' for _ in range(n)).encode()
        elif kind < 0.97:       # binary, up to 48 KiB
            data = rng.randbytes(rng.randint(1, 48 * 1024))
        else:                   # a few large ones
            data = rng.randbytes(rng.randint(256 * 1024, 1024 * 1024))
        f = os.path.join(rng.choice(dirs), 'file%04d.%s' % (i, rng.choice('c h txt bin'.split())))
        with open(os.path.join(root, f), 'wb') as out:
            out.write(data)
        if rng.random() < 0.05:
            os.chmod(os.path.join(root, f), 0o755)
        files.append(f)
    for i in range(12):
        d = rng.choice(dirs)
        target = os.path.relpath(rng.choice(files), d or '.')
        os.symlink(target, os.path.join(root, d, 'link%02d' % i))
    os.symlink('nowhere/at/all', os.path.join(root, 'dangling'))
    for i in range(4):
        f = rng.choice(files)
        os.link(os.path.join(root, f), os.path.join(root, f + '.hardlink%d' % i))
    for i in range(5):
        os.makedirs(os.path.join(root, rng.choice(dirs), 'empty%d' % i), exist_ok=True)
    return len(files)


def script(cmd, cwd, timeout, env=None):
    """Runs a bash script that prints one line per failure; returns (lines, process)."""
    p = sh(cmd, cwd=cwd, timeout=timeout, check=False, env=env)
    return [ln for ln in p.stdout.decode(errors='replace').splitlines() if ln], p


# -- real work under faults --

@pytest.mark.timeout(600 * SLOW)
def test_untar_and_diff(faulty_sbx, tmp_path):
    """tar xzf of a source tree through the mount, then diff -r against a local copy."""
    s = start(faulty_sbx)
    src = tmp_path / 'src'
    nfiles = make_tree(str(src / 'tree'), SIZES[s.mode]['tree_files'], seed=SEED)
    tgz = str(tmp_path / 'tree.tgz')
    sh('tar czf %s -C %s tree' % (tgz, src))
    m, h = workdir(s, 'untar')
    t0 = time.monotonic()
    p = sh('tar xzf %s' % tgz, cwd=m, timeout=900, check=False)
    took = time.monotonic() - t0
    errors = [ln for ln in p.stderr.decode(errors='replace').splitlines()
              if ln and not ln.startswith('tar: Exiting with failure status')]
    calm(s)
    # what the user sees through the mount, and what landed in the sandbox
    seen = sh('diff -r --no-dereference %s/tree tree' % src, cwd=m, timeout=300,
              check=False).stdout.decode(errors='replace').splitlines()
    landed = sh('diff -r --no-dereference %s/tree %s/tree' % (src, h), timeout=300,
                check=False).stdout.decode(errors='replace').splitlines()
    bad = undocumented(s, errors)
    if s.mode == 'fallback':
        # A path tar reported with the documented error may differ, and so may what lies
        # beneath it (tar then fails on those too: a cascade, not a failure of its own);
        # every other path must be right.
        reported = [re.match(r'tar: (.*?): ', e).group(1) for e in errors
                    if e not in bad and re.match(r'tar: (.*?): ', e)]

        def explained(ln):      # a diff line about a reported path or what lies beneath
            return any(fp in ln or '%s: %s' % os.path.split(fp) in ln for fp in reported)
        bad = [e for e in bad if not any(e.startswith('tar: %s/' % fp) for fp in reported)]
        seen = [ln for ln in seen if not explained(ln)]
        landed = [ln for ln in landed if not explained(ln)]
    record(s, 'untar', failed=len(errors), duplicates=0, files=nfiles,
           tar_exit=p.returncode, differences=len(landed), seconds=round(took, 1))
    assert not bad and (p.returncode == 0 or s.mode == 'fallback'), (
        'tar xzf of %d files exited %d with %d errors: %s\nproxy: %s' % (
            nfiles, p.returncode, len(bad), examples(bad), s.proxy.summary()))
    assert not seen, 'diff -r through the mount: %d differences: %s' % (
        len(seen), examples(seen))
    assert not landed, 'diff -r of the sandbox\'s copy: %d differences: %s' % (
        len(landed), examples(landed))


@pytest.mark.timeout(600 * SLOW)
def test_a_large_file_arrives_whole(faulty_sbx):
    """A file of several upload parts (4 MiB each; with sbxd, several on their way at once,
    each applied after the one before it: docs/protocol.md, "after"), written with fsync
    under faults and a delay, then rewritten shorter: the sandbox has every byte, once."""
    s = start(faulty_sbx, latency_ms=20, **FAULTS)
    m, h = workdir(s, 'large')
    rng = random.Random(SEED)
    for name, size in (('big.bin', 26 * 1024 * 1024 + 4321), ('big.bin', 9 * 1024 * 1024)):
        data = rng.randbytes(size)
        fd = os.open(os.path.join(m, name), os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        try:
            for off in range(0, size, 1024 * 1024):
                os.write(fd, data[off:off + 1024 * 1024])
            os.fsync(fd)
        finally:
            os.close(fd)
        calm(s)
        with open(os.path.join(h, name), 'rb') as f:
            assert f.read() == data, 'the sandbox has other bytes than were written'
        s.proxy.set(latency_ms=20, **FAULTS)
    record(s, 'large_file', 0, 0)
    assert s.proxy.counts()['faults'] > 0


@pytest.mark.timeout(600 * SLOW)
def test_writers_saving_at_once(faulty_sbx, mode):
    """Eight writers each save their file 25 times as editors do (a temporary file written and
    fsynced, then renamed over the file), all at once, under faults and a delay: their
    changes are journaled and uploaded in the order they were made, whatever requests the
    faults cost (docs/writeback.md); the sandbox ends with every file's last version and no
    temporary file, and every fsync and rename succeeded."""
    if mode == 'fallback':
        pytest.skip('without the extensions writes go through synchronously (writeback off): '
                    'test_appends_exactly_once_in_order covers faults there')
    s = start(faulty_sbx, latency_ms=20, **FAULTS)
    m, h = workdir(s, 'saves')

    def writer(k):
        for i in range(25):
            data = ('writer %d version %d\n' % (k, i)).encode() * (1 + 40 * i)
            tmp = os.path.join(m, '.f%d.tmp' % k)
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
            try:
                os.write(fd, data)
                os.fsync(fd)
            finally:
                os.close(fd)
            os.rename(tmp, os.path.join(m, 'f%d' % k))
        return data

    with ThreadPoolExecutor(8) as pool:
        want = list(pool.map(writer, range(8)))
    calm(s)
    assert sorted(os.listdir(h)) == ['f%d' % k for k in range(8)]
    for k in range(8):
        with open(os.path.join(h, 'f%d' % k), 'rb') as f:
            assert f.read() == want[k], 'f%d is not its last version in the sandbox' % k
    record(s, 'saving_at_once', 0, 0)
    assert s.proxy.counts()['faults'] > 0


@pytest.mark.timeout(300 * SLOW)
def test_fsync_goes_past_the_batch_on_its_way(faulty_sbx, mode):
    """An fsync does not queue behind a batch of changes already on its way: its own batch goes
    at once, after it (docs/writeback.md, "Order and exactly once"), so at a distance it waits
    one round trip, not two. Seen through a stalled proxy: while the first batch is held,
    the fsync's batch arrives too; once both pass, both files are in the sandbox, in order."""
    s, m, h = journal_workdir(faulty_sbx, mode, 'window')
    # both made before the stall (a path walk may ask the sandbox for the directory's
    # attributes); then written while requests are held
    first = os.open(os.path.join(m, 'first'), os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    second = os.open(os.path.join(m, 'second'), os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)

    def journal_held():
        return s.proxy.held_requests().get('POST /api/x/journal', 0)

    def save():
        os.write(second, b'second\n')
        os.fsync(second)

    s.proxy.stall()
    try:
        os.write(first, b'first\n')
        os.close(first)                 # no fsync: its upload goes after 200 ms
        first = None
        assert wait_for(lambda: journal_held() == 1, 20 * SLOW), (
            'the first change never left: %s' % s.proxy.held_requests())
        with ThreadPoolExecutor(1) as pool:
            saving = pool.submit(save)
            went = wait_for(lambda: journal_held() == 2, 20 * SLOW)
            held = s.proxy.held_requests()
            s.proxy.resume()
            assert went, 'the fsync waited for the batch on its way: held %s' % held
            saving.result(timeout=120 * SLOW)
    finally:
        s.proxy.resume()
        for fd in (first, second):
            if fd is not None:
                os.close(fd)
    calm(s)
    for name in ('first', 'second'):
        with open(os.path.join(h, name)) as f:
            assert f.read() == name + '\n', '%s in the sandbox' % name


@pytest.mark.timeout(300 * SLOW)
def test_a_save_goes_past_a_large_upload_on_its_way(faulty_sbx, mode):
    """A large file's upload holds back neither a change made after it that does not depend
    on it nor one made after a change that does (docs/writeback.md, "The lane"): while the
    proxy holds the large file's data, another file's fsyncs return, before and after the
    large file's rename, and that file is in the sandbox; the rename waits for the upload:
    once the proxy lets go, the sandbox has the whole file under its new name."""
    s, m, h = journal_workdir(faulty_sbx, mode, 'lane')
    small = os.open(os.path.join(m, 'small'), os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    data = random.Random(SEED).randbytes(12 << 20)   # more than one 4 MiB part
    lines = [b'small\n', b'saved again\n', b'after the rename\n']

    def parts_held():
        return s.proxy.held_requests().get('PUT /api/x/journal', 0)

    def save(line):
        os.write(small, line)
        os.fsync(small)

    def saved(upto):
        with open(os.path.join(h, 'small'), 'rb') as f:
            return f.read() == b''.join(lines[:upto])

    s.proxy.stall(only=['PUT /api/x/journal'])    # a large put's parts after its first
    try:
        with open(os.path.join(m, 'big.bin'), 'wb') as f:
            f.write(data)
        assert wait_for(lambda: parts_held() >= 1, 30 * SLOW), (
            'the large upload never left: %s' % s.proxy.held_requests())
        with ThreadPoolExecutor(1) as pool:
            for k in (0, 1):                    # the second passes the first too
                done, _ = wait([pool.submit(save, lines[k])], timeout=60 * SLOW)
                assert done, 'the fsync waited for the large upload: held %s' % (
                    s.proxy.held_requests())
            assert saved(2)
            # its first part is not held: it is there, in part
            wait_for(lambda: os.path.exists(os.path.join(h, 'big.bin')), 30 * SLOW)
            assert os.path.getsize(os.path.join(h, 'big.bin')) < len(data), (
                'the large file was in the sandbox before its parts')
            # made while the upload is on its way: applied after it, and passed
            os.rename(os.path.join(m, 'big.bin'), os.path.join(m, 'moved.bin'))
            done, _ = wait([pool.submit(save, lines[2])], timeout=60 * SLOW)
            assert done, 'the fsync after the rename waited for the large upload'
            assert saved(3)
            assert os.path.exists(os.path.join(h, 'big.bin')), 'renamed before its upload'
    finally:
        s.proxy.resume()
        os.close(small)
    calm(s)
    assert not os.path.exists(os.path.join(h, 'big.bin'))
    with open(os.path.join(h, 'moved.bin'), 'rb') as f:
        assert f.read() == data, 'the renamed file in the sandbox is not what was written'


@pytest.mark.timeout(300 * SLOW)
def test_a_plain_container_takes_independent_uploads_several_at_once(faulty_sbx, mode):
    """With the journal on a plain container, the uploads of independent files are calls
    on their way at once (docs/writeback.md, "Caveats"), and a change that depends on one
    waits for it: a file renamed right after it was written arrives under its new name."""
    if mode != 'fallback':
        pytest.skip('with the extensions uploads are batches (the tests above)')
    s = start(faulty_sbx, 'writeback=on', p503=0, reset=0, drop_reply=0)
    m, h = workdir(s, 'several')
    calm(s)
    os.listdir(m)                       # its names are the mount's: creating asks nothing

    def uploads_held():                 # not the liveness probe's ping
        return sum(n for k, n in s.proxy.held_requests().items() if k != 'GET /api/ping')

    s.proxy.stall()
    try:
        for i in range(6):
            with open(os.path.join(m, 'f%d' % i), 'w') as f:
                f.write('file %d\n' % i)
        os.rename(os.path.join(m, 'f0'), os.path.join(m, 'renamed'))
        assert wait_for(lambda: uploads_held() >= 2, 30 * SLOW), (
            'one upload at a time: held %s' % s.proxy.held_requests())
    finally:
        s.proxy.resume()
    calm(s)
    assert sorted(os.listdir(h)) == ['f1', 'f2', 'f3', 'f4', 'f5', 'renamed']
    for i in range(1, 6):
        with open(os.path.join(h, 'f%d' % i)) as f:
            assert f.read() == 'file %d\n' % i
    with open(os.path.join(h, 'renamed')) as f:
        assert f.read() == 'file 0\n'


@pytest.mark.timeout(300 * SLOW)
def test_kill_9_during_a_large_upload_then_the_next_mount_finishes_it(faulty_sbx, mode):
    """sbxfs killed while a large file's data is held, after a later change went past it:
    the next mount sends the large file's rest, does not make the later change again (a
    change the sandbox made since stays), and renames the large file after its upload."""
    s, m, h = journal_workdir(faulty_sbx, mode, 'lane9')
    small = os.open(os.path.join(m, 'small'), os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    data = random.Random(SEED + 9).randbytes(12 << 20)
    s.proxy.stall(only=['PUT /api/x/journal'])
    try:
        with open(os.path.join(m, 'big.bin'), 'wb') as f:
            f.write(data)
        assert wait_for(lambda: s.proxy.held_requests().get('PUT /api/x/journal', 0) >= 1,
                        30 * SLOW), s.proxy.held_requests()
        os.write(small, b'from the mount\n')
        os.fsync(small)
        os.close(small)
        small = None
        os.rename(os.path.join(m, 'big.bin'), os.path.join(m, 'moved.bin'))
        with open(os.path.join(h, 'small'), 'w') as f:   # the sandbox changes it since
            f.write('from the sandbox\n')
        s.sbxfs.kill()
        s.sbxfs.wait()
    finally:
        s.proxy.resume()
        if small is not None:
            os.close(small)
    s.sbxfs = None              # killed on purpose
    s.unmount()
    s.mount('timeout=%d' % TIMEOUT_S, url=s.proxy.url)
    s.sync()
    with open(os.path.join(h, 'small')) as f:
        assert f.read() == 'from the sandbox\n', 'the next mount made a done change again'
    assert not os.path.exists(os.path.join(h, 'big.bin'))
    with open(os.path.join(h, 'moved.bin'), 'rb') as f:
        assert f.read() == data, 'the renamed file in the sandbox is not what was written'


@pytest.mark.timeout(600 * SLOW)
def test_git_init_add_commit_fsck(faulty_sbx, tmp_path):
    s = start(faulty_sbx)
    m, h = workdir(s, 'repo')
    calm(s)
    git_files = SIZES[s.mode]['git_files']
    make_tree(str(tmp_path / 'src'), git_files, seed=SEED + 1)
    sh('cp -a %s/. .' % (tmp_path / 'src'), cwd=m, timeout=300)
    s.proxy.set(**FAULTS)
    s.proxy.reset_counts()
    env = dict(os.environ, GIT_AUTHOR_NAME='t', GIT_AUTHOR_EMAIL='t@example.com',
               GIT_COMMITTER_NAME='t', GIT_COMMITTER_EMAIL='t@example.com',
               GIT_CONFIG_NOSYSTEM='1', HOME=str(tmp_path))
    steps = ['git init -q', 'git add -A', 'git commit -q -m first', 'git fsck --full --strict',
             'git status --porcelain']
    failures = []
    status_out = ''
    for cmd in steps:               # as a user would: stop at the first that fails
        p = sh(cmd, cwd=m, timeout=600, check=False, env=env)
        if p.returncode != 0:
            failures.append('%s: exit %d: %s' % (cmd, p.returncode,
                                                 p.stderr.decode(errors='replace').strip()[-500:]))
            break
        if cmd.startswith('git status'):
            status_out = p.stdout.decode(errors='replace')
    calm(s)
    # the repository as the sandbox has it
    initialized = not failures or not failures[0].startswith('git init')
    host_fsck = sh('git fsck --full --strict', cwd=h, timeout=300, check=False, env=env)
    host_files = sh('git ls-files | wc -l', cwd=h, timeout=300, check=False,
                    env=env).stdout.decode().strip()
    tree_files = sh("find . -path ./.git -prune -o \\( -type f -o -type l \\) -print | wc -l",
                    cwd=h, timeout=300).stdout.decode().strip()
    record(s, 'git', failed=len(failures), duplicates=0, files=git_files,
           failed_step=failures[0].split(':')[0] if failures else None,
           host_fsck_exit=host_fsck.returncode)
    bad = undocumented(s, failures)
    assert not bad, 'git in the mount: %d of %d steps failed: %s\nproxy: %s' % (
        len(bad), len(steps), examples(bad, 5), s.proxy.summary())
    if not failures:
        assert status_out == '', 'git status after the commit: %s' % status_out[:2000]
        assert host_files == tree_files, (
            'the commit has %s files, the tree %s' % (host_files, tree_files))
    if initialized:
        assert host_fsck.returncode == 0, 'git fsck of the sandbox\'s copy: %s' % (
            host_fsck.stderr.decode(errors='replace')[-2000:])


@pytest.mark.timeout(600 * SLOW)
def test_appends_exactly_once_in_order(faulty_sbx):
    s = start(faulty_sbx)
    m, h = workdir(s, 'appends')
    n_appends = SIZES[s.mode]['appends']
    # coreutils' echo, not the builtin: bash ignores the error of closing a redirection,
    # and close() is where sbxfs sends what was written (a failure there must count)
    lines, p = script('for i in $(seq 1 %d); do /bin/echo line$i >> f || echo "FAIL $i"; done'
                      % n_appends, cwd=m, timeout=900)
    failed = {int(ln.split()[1]) for ln in lines if ln.startswith('FAIL ')}
    calm(s)
    with open(os.path.join(h, 'f')) as f:
        got = f.read().splitlines()
    with open(os.path.join(m, 'f')) as f:
        through_mount = f.read().splitlines()
    want = ['line%d' % i for i in range(1, n_appends + 1)]
    counts = {}
    for ln in got:
        counts[ln] = counts.get(ln, 0) + 1
    dups = sorted((ln for ln, n in counts.items() if n > 1), key=lambda x: int(x[4:]))
    extra = sum(n - 1 for n in counts.values() if n > 1)
    missing = [w for i, w in enumerate(want, 1) if w not in counts and i not in failed]
    firsts = [int(ln[4:]) for ln in dict.fromkeys(got) if re.fullmatch(r'line\d+', ln)]
    out_of_order = [(a, b) for a, b in zip(firsts, firsts[1:]) if b < a]
    foreign = [ln for ln in got if not re.fullmatch(r'line\d+', ln)]
    record(s, 'appends', failed=len(failed), duplicates=extra, appends=n_appends,
           lines=len(got), missing=len(missing))
    errs = p.stderr.decode(errors='replace').splitlines()
    bad = undocumented(s, errs) if s.mode == 'fallback' else ['append %d' % i
                                                                for i in sorted(failed)]
    assert not bad, '%d of %d appends failed: %s' % (len(failed), n_appends, examples(errs))
    assert not dups, '%d lines appended more than once (%d extra lines): %s' % (
        len(dups), extra, examples(dups))
    assert not missing, '%d acknowledged appends are missing: %s' % (
        len(missing), examples(missing))
    assert not out_of_order and not foreign, 'lines out of order %s, unexpected lines %s' % (
        examples(out_of_order), examples(foreign))
    if not failed:                                                  # EXT ONLY in effect
        assert got == want
    assert through_mount == got, 'the mount shows another file than the sandbox has'


def process_records(s, marker):
    """The sandbox's processes whose command contains marker (asked from sbxd directly)."""
    status, r = s.api('/api/process/list', method='GET')
    assert status == 200, 'process list: HTTP %d %r' % (status, r)
    return [p for p in r['processes'] if marker in p.get('command', '')]


@pytest.mark.timeout(600 * SLOW)
def test_proc_new_runs_each_command_once(faulty_sbx):
    s = start(faulty_sbx)
    m, h = workdir(s, 'procs')
    n_procs = SIZES[s.mode]['procs']
    marker = 'netfaults-proc'
    lines, p = script(
        'for i in $(seq 1 %d); do echo "echo run$i >> /workspace/procs/runs # %s" '
        '> proc/new || echo "FAIL $i"; done' % (n_procs, marker), cwd=s.mnt, timeout=900)
    failed = {int(ln.split()[1]) for ln in lines if ln.startswith('FAIL ')}
    calm(s)

    def settled():
        recs = process_records(s, marker)
        return recs if all(r['status'] != 'running' for r in recs) else None
    recs = wait_for(settled, 60 * SLOW, interval=0.2)
    assert recs is not None, 'processes still running 60 s after the last start'
    try:
        with open(os.path.join(h, 'runs')) as f:
            runs = f.read().splitlines()
    except FileNotFoundError:
        runs = []
    counts = {}
    for ln in runs:
        counts[ln] = counts.get(ln, 0) + 1
    dups = sorted((ln for ln, n in counts.items() if n > 1), key=lambda x: int(x[3:]))
    extra_runs = sum(n - 1 for n in counts.values() if n > 1)
    missing = [i for i in range(1, n_procs + 1) if 'run%d' % i not in counts and i not in failed]
    record(s, 'proc_new', failed=len(failed), duplicates=extra_runs, commands=n_procs,
           runs=len(runs), processes=len(recs), missing=len(missing))
    errs = p.stderr.decode(errors='replace').splitlines()
    bad = undocumented(s, errs) if s.mode == 'fallback' else ['proc/new %d' % i
                                                                for i in sorted(failed)]
    assert not bad, '%d of %d writes to proc/new failed: %s' % (len(failed), n_procs,
                                                                 examples(errs))
    assert not dups, '%d commands ran more than once (%d extra runs, %d processes for %d ' \
        'commands): %s' % (len(dups), extra_runs, len(recs), n_procs, examples(dups))
    assert not missing, '%d acknowledged commands never ran: %s' % (len(missing),
                                                                   examples(missing))
    assert len(recs) <= n_procs, '%d processes started for %d commands' % (len(recs), n_procs)
    if not failed:                                                  # EXT ONLY in effect
        assert len(runs) == n_procs and len(recs) == n_procs


# One round: each operation is checked; when one fails, the host tells whether it happened
# anyway (its precondition held before and its effect is there after): DONE-ANYWAY, the
# worst case, the user is told no and the sandbox says yes.
ROUND_SCRIPT = r'''
H=$1; N=$2
op() {
	local name=$1 i=$2 before=$3 after=$4; shift 4
	local err pre=0
	eval "$before" && pre=1
	if ! err=$("$@" 2>&1); then
		if [ $pre = 1 ] && eval "$after"; then echo "DONE-ANYWAY $name $i: $err"
		else echo "FAIL $name $i: $err"; fi
	fi
}
for i in $(seq 1 $N); do
	op mkdir $i "[ ! -e $H/a$i ]" "[ -d $H/a$i ]" mkdir a$i
	op mv-dir $i "[ -d $H/a$i ] && [ ! -e $H/b$i ]" "[ -d $H/b$i ] && [ ! -e $H/a$i ]" \
		mv -T a$i b$i
	op rmdir $i "[ -d $H/b$i ]" "[ ! -e $H/b$i ]" rmdir b$i
	op touch $i "[ ! -e $H/f$i ]" "[ -f $H/f$i ]" touch f$i
	op mv-file $i "[ -f $H/f$i ] && [ ! -e $H/g$i ]" "[ -f $H/g$i ] && [ ! -e $H/f$i ]" \
		mv -T f$i g$i
	op rm $i "[ -f $H/g$i ]" "[ ! -e $H/g$i ]" rm g$i
done
'''


@pytest.mark.timeout(600 * SLOW)
def test_mkdir_rename_unlink_rounds(faulty_sbx):
    s = start(faulty_sbx)
    m, h = workdir(s, 'rounds')
    n_rounds = SIZES[s.mode]['rounds']
    lines, p = script('bash -c %s _ %s %d' % (shquote(ROUND_SCRIPT), h, n_rounds), cwd=m,
                      timeout=900)
    fails = [ln for ln in lines if ln.startswith(('FAIL ', 'DONE-ANYWAY '))]
    anyway = [ln for ln in fails if ln.startswith('DONE-ANYWAY ')]
    failed_rounds = {int(ln.split()[2].rstrip(':')) for ln in fails}
    calm(s)
    left_host = sorted(os.listdir(h))
    left_mount = sorted(os.listdir(m))
    # a round whose every operation was acknowledged leaves nothing behind
    wrong = [n for n in left_host if int(n[1:]) not in failed_rounds]
    record(s, 'mkdir_rename_unlink', failed=len(fails), duplicates=len(anyway),
           operations=6 * n_rounds, left_behind=len(left_host))
    bad = undocumented(s, fails)
    assert not bad, '%d of %d operations failed (%d of them happened anyway): %s' % (
        len(fails), 6 * n_rounds, len(anyway), examples(bad))
    assert not anyway, '%d operations reported failure but happened: %s' % (
        len(anyway), examples(anyway))
    assert not wrong, 'left behind by rounds that succeeded: %s' % examples(wrong)
    assert left_mount == left_host, 'the mount lists %s, the sandbox has %s' % (
        examples(left_mount), examples(left_host))
    if s.mode == 'ext':                                             # EXT ONLY
        assert left_host == []


def shquote(s):
    return "'" + s.replace("'", "'\\''") + "'"


# -- sbxd stopped --

# A child performs one operation and prints its result (OK or the errno's name) and how long
# the operation itself took, so interpreter start-up does not count.
_TIMED_OP = r'''
import errno, os, sys, time
op, path = sys.argv[1], sys.argv[2]
t0 = time.monotonic()
try:
    if op == "stat": os.stat(path)
    elif op == "listdir": os.listdir(path)
    elif op == "read": open(path, "rb").read()
    elif op == "create": os.close(os.open(path, os.O_CREAT | os.O_WRONLY | os.O_EXCL, 0o644))
    elif op == "write":
        fd = os.open(path, os.O_WRONLY)
        try:
            os.write(fd, b"y" * 4096); os.fsync(fd)
        finally:
            os.close(fd)
    elif op == "mkdir": os.mkdir(path)
    else: raise SystemExit("unknown op " + op)
    r = "OK"
except OSError as e:
    r = errno.errorcode.get(e.errno, str(e.errno))
print(r, time.monotonic() - t0, flush=True)
'''


def timed_op(op, path, limit):
    """(result, seconds the operation took, seconds since the call) of one operation in a
    child; 'HANG' when the child had to be killed after limit s."""
    t0 = time.monotonic()
    try:
        p = subprocess.run([sys.executable, '-c', _TIMED_OP, op, path], capture_output=True,
                           timeout=limit)
        out = p.stdout.decode().split()
        if len(out) == 2:
            return out[0], float(out[1]), time.monotonic() - t0
        return 'exit %d: %s' % (p.returncode, p.stderr.decode()[-300:]), None, \
            time.monotonic() - t0
    except subprocess.TimeoutExpired:
        return 'HANG', None, time.monotonic() - t0


def run_ops(ops, limit):
    """Runs (op, path) pairs at once, each in its own child; returns their timed_op()s."""
    with ThreadPoolExecutor(len(ops)) as ex:
        return list(ex.map(lambda a: timed_op(a[0], a[1], limit), ops))


@pytest.mark.expect_errors
@pytest.mark.timeout(600 * SLOW)
def test_sbxd_stopped_fails_in_time_then_recovers(faulty_sbx):
    """sbxd frozen (SIGSTOP) for STOP_S: each operation fails within its timeout, then new
    ones at once; after SIGCONT the same mount works again. No proxy faults here. Without
    the write-back journal, with which creates and writes succeed while sbxd is stopped
    (test_writeback.py)."""
    # sbxfs keeps no listings here: a listing brings those of its whole subtree (both
    # modes), and so would answer for the names below, which must need the stopped server
    s = start(faulty_sbx, 'writeback=off', 'dir_cache_timeout=0', p503=0, reset=0,
              drop_reply=0)
    seen = os.path.join(s.ws, 'seen')
    with open(seen, 'w') as f:
        f.write('seen\n')
    # names the mount has never looked up, so no cache can answer for them
    for i in range(12):
        os.makedirs(os.path.join(s.workspace, 'u%d' % i, 'dir'))
        with open(os.path.join(s.workspace, 'u%d' % i, 'file'), 'w') as f:
            f.write('unseen %d\n' % i)
    assert wait_for(lambda: {'u%d' % i for i in range(12)} <= set(os.listdir(s.ws)),
                    10 * SLOW), 'the mount does not show what the sandbox made'
    ws = s.ws
    wave1 = [('stat', ws + '/u0/file'), ('stat', ws + '/u1/dir'), ('listdir', ws + '/u2/dir'),
             ('read', ws + '/u3/file'),
             ('stat', ws + '/u4/file'), ('stat', ws + '/u4/file'),         # the same name
             ('read', ws + '/u5/file'), ('read', ws + '/u5/file'),         # the same file
             ('create', ws + '/created'), ('write', seen)]
    bound = (TIMEOUT_S + TIMEOUT_SLACK_S) * SLOW
    fast = FAST_FAIL_S * SLOW
    # long enough to see how late the last of them comes when they queue behind each other
    limit = (len(wave1) + 2) * TIMEOUT_S * SLOW + 10
    report = []
    problems = []

    def took_text(took, wall):
        return '%.1f' % took if took is not None else '>%.0f' % wall

    s.sbxd.send_signal(signal.SIGSTOP)
    stopped_at = time.monotonic()
    try:
        with ThreadPoolExecutor(len(wave1)) as ex:
            futures = [ex.submit(timed_op, op, path, limit) for op, path in wave1]
            wait(futures, timeout=limit + 10, return_when=FIRST_COMPLETED)
            # new operations, once the first have failed: at once, again and again until
            # sbxd has been stopped for STOP_S (at least one round)
            i = 6
            while True:
                ops = [('stat', ws + '/u%d/file' % i), ('create', ws + '/late%d' % i)]
                at = time.monotonic() - stopped_at
                for (op, path), (r, took, wall) in zip(ops, run_ops(ops, limit)):
                    name = '%s %s' % (op, os.path.relpath(path, s.mnt))
                    report.append('later %s, started %.0f s after the stop: %s after %s s' % (
                        name, at, r, took_text(took, wall)))
                    if r not in DOWN:
                        problems.append('%s (%.0f s after the stop) gave %s' % (name, at, r))
                    elif took > fast:
                        problems.append('%s (%.0f s after the stop) failed after %.1f s, not '
                                        'at once (bound %.1f s)' % (name, at, took, fast))
                i = 6 + (i - 5) % 6
                left = STOP_S - (time.monotonic() - stopped_at)
                if left <= 0:
                    break
                # pacing, not synchronisation: sbxd stays stopped for STOP_S whatever we do
                time.sleep(min(5, left))
            res = [f.result() for f in futures]
        first, first_problems = [], []
        for (op, path), (r, took, wall) in zip(wave1, res):
            name = '%s %s' % (op, os.path.relpath(path, s.mnt))
            first.append('first %s: %s after %s s' % (name, r, took_text(took, wall)))
            if r not in DOWN:
                first_problems.append('%s with sbxd stopped gave %s (want one of %s)' % (
                    name, r, '/'.join(sorted(DOWN))))
            elif took > bound:
                first_problems.append('%s failed after %.1f s (bound %.0f s)' % (
                    name, took, bound))
        report[:0], problems[:0] = first, first_problems
    finally:
        s.sbxd.send_signal(signal.SIGCONT)
    record(s, 'sigstop', failed=len(problems), duplicates=0, timings=report)
    # the same mount works again, without a remount
    ok = wait_for(lambda: timed_op('stat', ws + '/u11/file', limit)[0] == 'OK',
                  30 * SLOW, interval=0.5)
    after = []
    if not ok:
        after.append('stat of an unseen name still gives %s 30 s after SIGCONT' %
                     timed_op('stat', ws + '/u11/file', limit)[0])
    else:
        for op, path in [('read', ws + '/u10/file'), ('listdir', ws + '/u9/dir'),
                         ('write', seen), ('create', ws + '/after'), ('mkdir', ws + '/afterdir')]:
            r = timed_op(op, path, limit)[0]
            if r != 'OK':
                after.append('%s %s after SIGCONT: %s' % (op, os.path.relpath(path, s.mnt), r))
        if not (os.path.isfile(os.path.join(s.workspace, 'after'))
                and os.path.isdir(os.path.join(s.workspace, 'afterdir'))):
            after.append('the create and mkdir after SIGCONT did not reach the sandbox')
    print('\n'.join(report))
    assert not problems and not after, (
        'with sbxd stopped, %d operations failed late or not at all:\n  %s\nafter SIGCONT, '
        '%d problems:\n  %s\ntimings (from each operation\'s start):\n  %s' % (
            len(problems), '\n  '.join(problems), len(after), '\n  '.join(after),
            '\n  '.join(report)))


# -- handles --

_HOLDER = r'''
import os, sys, threading
paths = sys.argv[1:]
fds = []
for i, p in enumerate(paths):
    fds.append(os.open(p, os.O_RDWR | os.O_CREAT, 0o644))
    os.write(fds[-1], b"held %d\n" % i)
print("READY", flush=True)
sys.stdin.readline()                    # "close"
results = [None] * len(fds)
def close(i):
    try:
        os.close(fds[i]); results[i] = "OK"
    except OSError as e:
        results[i] = os.strerror(e.errno)
ts = [threading.Thread(target=close, args=(i,)) for i in range(len(fds))]
for t in ts: t.start()
for t in ts: t.join()
print("CLOSED", " | ".join(results), flush=True)
'''


def hold_open(paths):
    """A child that opens paths (O_RDWR, created if missing), writes a line to each and
    holds them open until told to close them all at once."""
    p = subprocess.Popen([sys.executable, '-c', _HOLDER] + paths, stdin=subprocess.PIPE,
                         stdout=subprocess.PIPE, text=True)
    line = p.stdout.readline()
    if line.strip() != 'READY':
        p.kill()
        p.wait()
        raise AssertionError('could not open the %d files: %r' % (len(paths), line))
    return p


def extra_files(s, baseline):
    """What sbxd has open under the workspace beyond the baseline list."""
    left = collections.Counter(s.open_files())
    left.subtract(collections.Counter(baseline))
    return sorted(left.elements())


@pytest.mark.expect_errors
@pytest.mark.timeout(600 * SLOW)
def test_handles_freed_after_sbxfs_killed(faulty_sbx):
    """kill -9 sbxfs while a process holds HELD_OPEN files open through it: sbxd closes
    their handles within the lease. No proxy faults here. Without the write-back journal,
    which holds no handles in sbxd for what it writes."""
    s = start(faulty_sbx, 'writeback=off', p503=0, reset=0, drop_reply=0)
    m, h = workdir(s, 'held')
    for i in range(HELD_OPEN // 2):
        with open(os.path.join(h, 'old%d' % i), 'w') as f:
            f.write('old\n')
    baseline = s.open_files()
    paths = [os.path.join(m, 'new%d' % i if i % 2 == 0 else 'old%d' % (i // 2))
             for i in range(HELD_OPEN)]
    holder = hold_open(paths)
    try:
        held = len(extra_files(s, baseline))
        if s.mode == 'ext':                                         # EXT ONLY
            assert held >= HELD_OPEN, 'sbxd holds %d descriptors for the %d open files' % (
                held, HELD_OPEN)
        s.sbxfs.kill()
        s.sbxfs.wait()
        killed_at = time.monotonic()
    finally:
        holder.kill()
        holder.wait()
    s.sbxfs = None              # killed on purpose: not a problem for teardown
    s.unmount()
    ok = wait_for(lambda: not extra_files(s, baseline), HANDLE_WAIT_S * SLOW, interval=0.5)
    left = extra_files(s, baseline)
    took = time.monotonic() - killed_at
    record(s, 'handles_sbxfs_killed', failed=0, duplicates=0, held=held,
           still_open=len(left), waited_s=round(took))
    assert ok, ('%d of the %d handles of a killed sbxfs still open in sbxd %.0f s after the '
                'kill (lease at most %d s): %s' % (len(left), held, took, HANDLE_LEASE_S,
                                                  examples(left, 4)))


@pytest.mark.expect_errors
@pytest.mark.timeout(600 * SLOW)
def test_handles_freed_after_failed_closes(faulty_sbx):
    """FAILED_CLOSES files, written and open, are closed while the proxy holds every
    request (the closes fail); once the network is back, sbxd frees their handles within
    the lease. No other faults here. Without the write-back journal, which holds no handles
    in sbxd for what it writes."""
    s = start(faulty_sbx, 'writeback=off', p503=0, reset=0, drop_reply=0)
    m, h = workdir(s, 'closes')
    baseline = s.open_files()
    holder = hold_open([os.path.join(m, 'c%d' % i) for i in range(FAILED_CLOSES)])
    try:
        held = len(extra_files(s, baseline))
        if s.mode == 'ext':                                         # EXT ONLY
            assert held >= FAILED_CLOSES, 'sbxd holds %d descriptors for %d open files' % (
                held, FAILED_CLOSES)
        s.proxy.stall()
        holder.stdin.write('close\n')
        holder.stdin.flush()
        assert wait_for(lambda: holder.poll() is not None, 6 * TIMEOUT_S * SLOW), (
            'close() of %d files still hangs %d s after the stall began' % (
                FAILED_CLOSES, 6 * TIMEOUT_S * SLOW))
        closed = holder.stdout.read().split(None, 1)
        results = closed[1].strip().split(' | ') if len(closed) == 2 else ['?']

        # every close sbxfs sends reaches the stalled proxy and is given up on: wait until
        # nothing but a probe of sbxd's health has been held for a while
        quiet = {'since': time.monotonic()}

        def quiescent():
            if set(s.proxy.held_requests()) - PROBE_REQUESTS:
                quiet['since'] = time.monotonic()
            return time.monotonic() - quiet['since'] > 2
        assert wait_for(quiescent, 6 * TIMEOUT_S * SLOW, interval=0.1), (
            'sbxfs still waits on %r %d s after the closes' % (
                s.proxy.held_requests(), 6 * TIMEOUT_S * SLOW))
    finally:
        if holder.poll() is None:
            holder.kill()
            holder.wait()
        s.proxy.resume()
    restored_at = time.monotonic()
    stalled = s.proxy.counts().get('stalled', 0)
    # the mount works again
    assert wait_for(lambda: timed_op('stat', m, 60)[0] == 'OK', 30 * SLOW, interval=0.5), \
        'the mount did not recover after the stall'
    ok = wait_for(lambda: not extra_files(s, baseline), HANDLE_WAIT_S * SLOW, interval=0.5)
    left = extra_files(s, baseline)
    took = time.monotonic() - restored_at
    failed_closes = [r for r in results if r != 'OK']
    record(s, 'handles_failed_closes', failed=len(failed_closes), duplicates=0, held=held,
           requests_stalled=stalled, still_open=len(left), waited_s=round(took))
    assert ok, ('%d of the %d handles whose close failed (close() gave: %s) still open in '
                'sbxd %.0f s after the network came back (lease at most %d s): %s' % (
                    len(left), held, examples(sorted(set(results))), took, HANDLE_LEASE_S,
                    examples(left, 4)))
