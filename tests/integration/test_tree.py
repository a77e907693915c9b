"""Subtrees listed in one request (POST /api/x/tree, issue 13): a walk of a tree costs a few
requests, not one per directory, and the listings it caches, which outlive the kernel's
(drop_caches), still show what the sandbox changes within the event delay."""
import os

import pytest

from util import SLOW, sh, wait_for


def drop_caches():
    """The kernel forgets every dentry and inode of the mount (root only: else a no-op, and
    the tests below then check the warm case only)."""
    try:
        os.sync()
        with open('/proc/sys/vm/drop_caches', 'w') as f:
            f.write('3')
    except OSError:
        pass


def read(p):
    with open(p, 'rb') as f:
        return f.read()


def fs_requests(proxy):
    """Requests sbxfs made for files since the last reset (the change stream and the lease's
    heartbeat left out)."""
    return {k: v.get('requests', 0) for k, v in proxy.by_request().items()
            if '/api/x/' in k and 'lease' not in k}


# ---- the route ----

def test_tree_route(api_server, mode):
    s = api_server
    if mode != 'ext':
        assert s.api('/api/x/tree', {'path': '/workspace'})[0] == 404
        return
    r = s.execute('mkdir -p t/a/b t/c && echo 1 > t/f && echo 22 > t/a/g && ln -s ../f t/a/l')
    assert r['exitCode'] == 0, r
    st, j = s.api('/api/x/tree', {'path': '/workspace/t/'})
    assert st == 200 and j['truncated'] is False, j
    dirs = {d['path']: sorted(e['name'] for e in d['entries']) for d in j['dirs']}
    assert dirs == {'/workspace/t': ['a', 'c', 'f'], '/workspace/t/a': ['b', 'g', 'l'],
                    '/workspace/t/a/b': [], '/workspace/t/c': []}, dirs
    assert [d['path'] for d in j['dirs']][0] == '/workspace/t'
    link = [e for e in j['dirs'][1]['entries'] + j['dirs'][2]['entries']
            if e['name'] == 'l'][0]
    assert link['stat']['target'] == '../f'
    # bounded: the first listing always, then only whole listings that fit
    st, j = s.api('/api/x/tree', {'path': 't', 'max_entries': 4})
    assert st == 200 and j['truncated'] is True, j
    got = {d['path']: len(d['entries']) for d in j['dirs']}
    assert j['dirs'][0]['path'] == '/workspace/t' and '/workspace/t/a' not in got, got
    assert got['/workspace/t'] == 3 and sum(got.values()) <= 4, got
    assert s.api('/api/x/tree', {'path': 't', 'max_entries': 0})[0] == 400
    assert s.api('/api/x/tree', {'path': 't', 'max_entries': 'all'})[0] == 400
    assert s.api('/api/x/tree', {'path': 't/f'})[1]['errno'] == 'ENOTDIR'
    assert s.api('/api/x/tree', {'path': 't/nope'})[1]['errno'] == 'ENOENT'
    assert s.api('/api/x/tree', {'path': '/workspace/../etc'})[0] == 403
    # a symlink to a directory is not listed through
    assert s.api('/api/x/tree', {'path': 't/a/l'})[1]['errno'] in ('ENOTDIR', 'ELOOP')
    _, caps = s.api('/api/x/capabilities')
    assert 'tree' in caps['extensions']


# ---- through the mount ----

def test_walk_of_a_tree_made_in_the_sandbox_costs_few_requests(faulty_sbx, mode):
    s = faulty_sbx()
    assert s.wait_watching()
    r = s.execute('mkdir -p w && cd w && for i in $(seq 30); do mkdir -p d$i/e/f && '
                  'echo x > d$i/e/f/g && echo y > d$i/h; done')
    assert r['exitCode'] == 0, r
    w = os.path.join(s.ws, 'w')
    assert wait_for(lambda: os.path.exists(os.path.join(w, 'd30/e/f/g')), 10 * SLOW)
    drop_caches()
    s.proxy.reset_counts()
    out = sh('find . -type f -exec stat -c %s {} +', cwd=w).stdout.split()
    assert len(out) == 60
    cold = fs_requests(s.proxy)
    # the second walk, after the kernel forgot everything again: the listings stayed
    drop_caches()
    s.proxy.reset_counts()
    assert len(sh('find . -type f -exec stat -c %s {} +', cwd=w).stdout.split()) == 60
    again = fs_requests(s.proxy)
    if mode == 'ext':
        # 91 directories: one listing each before /api/x/tree
        assert sum(cold.values()) <= 5, cold
        assert sum(again.values()) <= 3, again


def test_sandbox_changes_show_after_cold_listing(d):
    r = d.execute('mkdir -p deep/a/b/c/d old/x && echo one > deep/a/b/c/d/f && '
                  'echo gone > z && echo k > old/x/k')
    assert r['exitCode'] == 0, r
    f = os.path.join(d.m, 'deep/a/b/c/d/f')
    assert wait_for(lambda: os.path.exists(f), 10 * SLOW)
    d.sh('find . -type f -exec stat {} + > /dev/null && ls -lR > /dev/null')
    drop_caches()
    assert d.sh('find . -type f | sort').stdout.decode().split() == [
        './deep/a/b/c/d/f', './old/x/k', './z']
    r = d.execute('echo two-two > deep/a/b/c/d/f && echo new > deep/a/b/c/d/n && '
                  'mv old moved && rm z')
    assert r['exitCode'] == 0, r
    assert wait_for(lambda: read(f) == b'two-two\n', 10 * SLOW), read(f)
    assert wait_for(lambda: sorted(os.listdir(d.m)) == ['deep', 'moved'], 10 * SLOW), \
        os.listdir(d.m)
    # and after the kernel forgot it all again, from what sbxfs kept
    drop_caches()
    assert os.stat(f).st_size == 8
    assert sorted(os.listdir(os.path.dirname(f))) == ['f', 'n']
    assert read(os.path.join(d.m, 'deep/a/b/c/d/n')) == b'new\n'
    assert not os.path.exists(os.path.join(d.m, 'old'))
    assert not os.path.exists(os.path.join(d.m, 'z'))
    assert read(os.path.join(d.m, 'moved/x/k')) == b'k\n'
    assert d.sh('find . -type f | sort').stdout.decode().split() == [
        './deep/a/b/c/d/f', './deep/a/b/c/d/n', './moved/x/k']


def test_tree_larger_than_one_answer_lists_completely(d):
    # 2 x 12000 names: past the 20000 entries one answer holds by default
    r = d.execute('mkdir -p big/a big/b/c && (cd big/a && seq 12000 | xargs touch) && '
                  '(cd big/b && seq 12000 | xargs touch) && touch big/b/c/last', timeout=120)
    assert r['exitCode'] == 0, r
    assert wait_for(lambda: os.path.exists(os.path.join(d.m, 'big/b/c/last')), 20 * SLOW)
    drop_caches()
    names = d.sh('find big', timeout=300).stdout.decode().split()
    assert len(names) == 1 + 3 + 12000 + 12000 + 1, len(names)
    assert 'big/b/c/last' in names and 'big/a/12000' in names and 'big/b/1' in names


def test_a_second_grep_reads_nothing_again_though_attributes_expired(faulty_sbx, mode):
    """grep -r twice, the first longer than attr_timeout: the second reads the kernel's pages
    (no change event touched the files), even for files whose attributes had expired when
    the first opened them."""
    s = faulty_sbx('attr_timeout=0')  # every open finds them expired
    assert s.wait_watching()
    r = s.execute('mkdir -p g && cd g && for i in $(seq 40); do echo "line $i TODO" > f$i; '
                  'done')
    assert r['exitCode'] == 0, r
    g = os.path.join(s.ws, 'g')
    assert wait_for(lambda: os.path.exists(os.path.join(g, 'f40')), 10 * SLOW)
    drop_caches()
    assert len(sh('grep -rn TODO .', cwd=g).stdout.split(b'\n')) == 41
    s.proxy.reset_counts()
    assert len(sh('grep -rn TODO .', cwd=g).stdout.split(b'\n')) == 41
    reads = fs_requests(s.proxy)
    if mode == 'ext':
        assert not {k: v for k, v in reads.items() if 'pread' in k}, reads


# ---- small files whole, with their listing ----

def test_readdir_with_contents_route(api_server, mode):
    s = api_server
    if mode != 'ext':
        return
    r = s.execute('mkdir -p rc/sub && printf one > rc/a && printf two2 > rc/b && '
                  'head -c 5000 /dev/zero > rc/big && ln -s a rc/l && mkfifo rc/fifo')
    assert r['exitCode'] == 0, r
    st, j = s.api('/api/x/readdir', {'path': '/workspace/rc', 'content_max': 4096})
    assert st == 200, j
    by = {e['name']: e for e in j['entries']}
    assert sorted(by) == ['a', 'b', 'big', 'fifo', 'l', 'sub']
    assert by['a']['data'] == 'b25l' and by['b']['data'] == 'dHdvMg=='
    # too large, not a regular file: the listing only
    assert all('data' not in by[n] for n in ('big', 'fifo', 'l', 'sub'))
    # the budget bounds the whole answer: whatever fits, in listing order
    st, j = s.api('/api/x/readdir', {'path': '/workspace/rc', 'content_max': 4096,
                                     'content_budget': 3})
    assert st == 200 and sum('data' in e for e in j['entries']) == 1, j
    # without content_max: no contents
    st, j = s.api('/api/x/readdir', {'path': '/workspace/rc'})
    assert st == 200 and not any('data' in e for e in j['entries'])
    assert s.api('/api/x/readdir', {'path': 'rc', 'content_max': 0})[0] == 400
    assert s.api('/api/x/readdir', {'path': 'rc', 'content_max': 'x'})[0] == 400
    _, caps = s.api('/api/x/capabilities')
    assert 'content' in caps['extensions']


def test_a_cold_grep_fetches_a_directorys_small_files_at_once(faulty_sbx, mode):
    """The first small file of a directory read from the sandbox brings the others whole:
    a cold grep of a directory costs a request or two, not one per file; and what the
    sandbox changes afterwards, in files read or not yet read, shows."""
    s = faulty_sbx()
    assert s.wait_watching()
    r = s.execute('mkdir -p /workspace/pf && cd /workspace/pf && for i in $(seq 40); do '
                  'echo "line $i TODO" > f$i; done && head -c 200000 /dev/zero > big && '
                  'echo old > unread')
    assert r['exitCode'] == 0, r
    pf = os.path.join(s.ws, 'pf')
    assert wait_for(lambda: os.path.exists(os.path.join(pf, 'big')), 10 * SLOW)
    drop_caches()
    s.proxy.reset_counts()
    out = sh("grep -rn --include='f*' TODO .", cwd=pf).stdout.decode().splitlines()
    assert sorted(out) == sorted('./f%d:1:line %d TODO' % (i, i) for i in range(1, 41))
    reads = fs_requests(s.proxy)
    if mode == 'ext':
        # the listing with the contents, and big on its own
        assert sum(v for k, v in reads.items() if 'pread' in k or 'readdir' in k) <= 4, reads
    # changed in the sandbox: a file already read, and one whose copy came but was not read
    with open(os.path.join(pf, 'g1'), 'w') as f:   # (a new name through the mount, too)
        f.write('mine\n')
    r = s.execute('cd /workspace/pf && echo changed > f1 && echo new > unread && rm f3')
    assert r['exitCode'] == 0, r
    assert wait_for(lambda: read(os.path.join(pf, 'f1')) == b'changed\n', 10 * SLOW)
    assert wait_for(lambda: read(os.path.join(pf, 'unread')) == b'new\n', 10 * SLOW)
    assert wait_for(lambda: not os.path.exists(os.path.join(pf, 'f3')), 10 * SLOW)
    drop_caches()
    assert read(os.path.join(pf, 'f1')) == b'changed\n'
    assert read(os.path.join(pf, 'f4')) == b'line 4 TODO\n'
    assert read(os.path.join(pf, 'g1')) == b'mine\n'
