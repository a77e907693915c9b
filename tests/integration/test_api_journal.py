"""POST /api/x/journal (docs/protocol.md, "The journal") against a real sbxd over HTTP: a
batch of a journal's operations is applied in order and exactly once, whether the client sends
it again with the same Idempotency-Key, without one, or to an sbxd that was restarted in
between; each op gets its own result, in the shapes of the other /api/x/ routes."""
import base64
import json
import os
import secrets
import urllib.parse
import urllib.request
from concurrent.futures import ThreadPoolExecutor

import pytest

from util import SLOW, Sandbox


@pytest.fixture(autouse=True)
def ext_only(mode):
    """The journal is an extension of sbxd's API, whatever the mount does: one run (ext)."""
    if mode != 'ext':
        pytest.skip('sbxd API tests run in ext mode only')


def b64(text):
    return base64.b64encode(text.encode()).decode()


def put(seq, path, text, mode=0o644, **kw):
    return dict(seq=seq, op='put', path=path, mode=mode, data=b64(text), **kw)


def journal(sbx, jid, ops, key=None):
    headers = {'Idempotency-Key': key} if key else None
    return sbx.api('/api/x/journal', {'journal': jid, 'ops': ops}, headers=headers)


def host_file(sbx, name):
    """The content of a workspace file, read on the host (None when absent)."""
    try:
        with open(os.path.join(sbx.workspace, name)) as f:
            return f.read()
    except FileNotFoundError:
        return None


def outcomes(reply):
    return [('ok' if r.get('ok') else 'skipped' if r.get('skipped') else
             r['error']['errno'] if 'error' in r else '?') for r in reply['results']]


# put a; rename a -> b; put a: applied twice, b would end up with the second content
SEQUENCE = [
    put(1, '/workspace/a', 'first'),
    dict(seq=2, op='rename', **{'from': '/workspace/a', 'to': '/workspace/b'}),
    put(3, '/workspace/a', 'second'),
]


def test_repeats_apply_nothing_twice(server):
    jid = 'test-' + secrets.token_hex(4)
    key = 'journal-test-' + secrets.token_hex(4)
    status, r = journal(server, jid, SEQUENCE, key=key)
    assert status == 200 and r['success'], r
    assert r['journal'] == jid and r['applied'] == 3
    assert outcomes(r) == ['ok', 'ok', 'ok']
    assert [x['seq'] for x in r['results']] == [1, 2, 3]
    assert (host_file(server, 'a'), host_file(server, 'b')) == ('second', 'first')

    # the same request with the same key (a lost answer): the first answer, nothing done
    status, again = journal(server, jid, SEQUENCE, key=key)
    assert status == 200 and again == r
    assert (host_file(server, 'a'), host_file(server, 'b')) == ('second', 'first')

    # without the key (or with a new one) the watermark skips every op
    for k in (None, key + '-new'):
        status, again = journal(server, jid, SEQUENCE, key=k)
        assert status == 200 and again['applied'] == 3, again
        assert outcomes(again) == ['skipped'] * 3
        assert all(set(x) == {'seq', 'skipped'} for x in again['results'])
        assert (host_file(server, 'a'), host_file(server, 'b')) == ('second', 'first')

    # a restarted sbxd read its watermarks back: still nothing applied twice
    server.stop_server()
    server.start_server()
    status, again = journal(server, jid, SEQUENCE + [put(4, '/workspace/c', 'new')])
    assert status == 200 and again['applied'] == 4, again
    assert outcomes(again) == ['skipped'] * 3 + ['ok']
    assert (host_file(server, 'a'), host_file(server, 'b'), host_file(server, 'c')) == \
        ('second', 'first', 'new')

    # another journal has a watermark of its own
    status, other = journal(server, jid + '-2', [put(1, '/workspace/d', 'd')])
    assert status == 200 and outcomes(other) == ['ok'] and other['applied'] == 1


def test_results(api_server):
    sbx = api_server
    jid = 'results-' + secrets.token_hex(4)
    os.makedirs(os.path.join(sbx.workspace, 'r'), exist_ok=True)
    ops = [
        dict(seq=10, op='mkdir', path='/workspace/r/dir', mode=0o750),
        put(11, '/workspace/r/f', 'hello', mode=0o600,
            mtime=[1700000000, 5], expect={'absent': True}),
        dict(seq=12, op='rename', **{'from': '/workspace/r/missing', 'to': '/workspace/r/x'}),
        put(13, '/workspace/r/f', 'changed', expect={'absent': True}),
        dict(seq=14, op='symlink', target='f', path='/workspace/r/lnk'),
        dict(seq=15, op='link', **{'from': '/workspace/r/f', 'to': '/workspace/r/hard'}),
        dict(seq=16, op='write', path='/workspace/r/f', offset=7, data=b64('!')),
        dict(seq=17, op='setattr', path='/workspace/r/f', mode=0o640, size=3),
        dict(seq=18, op='unlink', path='/workspace/r/never'),
        dict(seq=19, op='rmdir', path='/workspace/r/dir'),
        put(20, '/workspace/../etc/x', 'escape'),
        dict(seq=21, op='mkdir', path='/workspace/r/dir', mode=0o755),
    ]
    status, r = journal(sbx, jid, ops)
    assert status == 200, r
    res = r['results']
    assert outcomes(r) == ['ok', 'ok', 'ENOENT', 'ok', 'ok', 'ok', 'ok', 'ok', 'ok', 'ok',
                           'EACCES', 'ok']
    assert r['applied'] == 21
    assert res[0]['stat']['mode'] == 0o40750
    assert res[1]['stat']['mode'] == 0o100600 and res[1]['stat']['size'] == 5
    assert res[1]['stat']['mtime'] == [1700000000, 5]
    assert 'conflict' not in res[1]

    # an error is the error body of the other routes
    err = res[2]['error']
    assert err['code'] == 'FILE_NOT_FOUND' and err['errno'] == 'ENOENT'
    assert err['httpStatus'] == 404
    assert err['context'] == {'from': '/workspace/r/missing', 'to': '/workspace/r/x'}
    assert '/workspace/r/missing' in err['message']
    assert res[10]['error']['code'] == 'PERMISSION_DENIED'
    assert res[10]['error']['context'] == {'path': '/workspace/../etc/x'}

    # a put over what its client did not know of: applied, and says what it found
    assert res[3]['conflict'] is True
    assert res[3]['before']['size'] == 5 and res[3]['before']['mtime'] == [1700000000, 5]
    assert res[3]['stat']['ino'] == res[1]['stat']['ino']   # in place
    assert res[4]['stat']['target'] == 'f'
    assert res[5]['stat']['nlink'] == 2
    assert res[6]['stat']['size'] == 8
    assert 'stat' not in res[8] and 'stat' not in res[9]

    # the stat objects are /api/x/stat's (before anything reads the file: a read may change
    # its atime)
    status, st = sbx.api('/api/x/stat', {'path': '/workspace/r/f'})
    assert status == 200 and st['stat'] == res[7]['stat']
    status, st = sbx.api('/api/x/stat', {'path': '/workspace/r/lnk'})
    # (reading a symlink's target, as every stat of one does, sets its atime)
    assert status == 200 and dict(st['stat'], atime=0) == dict(res[4]['stat'], atime=0)
    assert host_file(sbx, 'r/hard') == 'cha'
    assert not os.path.exists(os.path.join(sbx.workspace, 'r/x'))

    # ops that add or remove names say how they left the directory (its times, its links);
    # the last one's is the directory as it is now
    assert all('parent' in res[i] for i in (0, 1, 3, 4, 5, 8, 9, 11))
    assert 'parent' not in res[6] and 'parent' not in res[7]    # write, setattr
    assert res[11]['parent']['ino'] == os.stat(os.path.join(sbx.workspace, 'r')).st_ino
    status, st = sbx.api('/api/x/stat', {'path': '/workspace/r'})
    assert status == 200 and st['stat'] == res[11]['parent']
    assert res[0]['parent']['nlink'] == 3 and res[9]['parent']['nlink'] == 2


@pytest.mark.parametrize('body, field', [
    ({'journal': 'bad id', 'ops': [put(1, 'a', 'x')]}, 'journal'),
    ({'journal': 'x' * 65, 'ops': [put(1, 'a', 'x')]}, 'journal'),
    ({'ops': [put(1, 'a', 'x')]}, 'journal'),
    ({'journal': 'j', 'ops': []}, 'ops'),
    ({'journal': 'j', 'ops': [put(1, 'a', 'x')] * 4097}, 'ops'),
    ({'journal': 'j', 'ops': [put(2, 'a', 'x'), put(2, 'b', 'x')]}, 'ops'),
    ({'journal': 'j', 'ops': [put(0, 'a', 'x')]}, 'ops'),
    ({'journal': 'j', 'ops': [put(2 ** 53 + 2, 'a', 'x')]}, 'ops'),
    ({'journal': 'j', 'ops': [dict(seq=1, op='chmod', path='a')]}, 'ops'),
    ({'journal': 'j', 'ops': [dict(seq=1, op='put', path='a', mode=420)]}, 'ops'),
    ({'journal': 'j', 'ops': [dict(seq=1, op='put', path='a', mode=420, data='**')]}, 'ops'),
    ({'journal': 'j', 'ops': [put(1, 'a', 'x', mtime={'sec': 1, 'nsec': 2})]}, 'ops'),
    ({'journal': 'j', 'ops': [dict(seq=1, op='rename', flags='both',
                                   **{'from': 'a', 'to': 'b'})]}, 'ops'),
    ({'journal': 'j', 'after': 2, 'ops': [put(2, 'a', 'x')]}, 'after'),
    ({'journal': 'j', 'after': -1, 'ops': [put(1, 'a', 'x')]}, 'after'),
])
def test_bad_batches_are_refused_whole(api_server, body, field):
    sbx = api_server
    # a valid op before the bad one: not applied either
    jid = 'bad-' + secrets.token_hex(4)
    if 'journal' in body and body['journal'] == 'j':
        body = dict(body, journal=jid)
        if body['ops'] and body['ops'][0]['seq'] > 1:
            body['ops'] = [put(1, '/workspace/bad-' + jid, 'x')] + body['ops']
    status, r = sbx.api('/api/x/journal', body)
    assert status == 400, r
    assert r['code'] == 'VALIDATION_FAILED' and r['errno'] == 'EINVAL'
    assert r['context']['field'] == field, r
    assert host_file(sbx, 'bad-' + jid) is None
    status, ok = journal(sbx, jid, [put(1, '/workspace/bad-' + jid, 'x')])
    assert status == 200 and outcomes(ok) == ['ok']   # the watermark did not move


def test_a_batch_after_another_is_applied_after_it(api_server):
    """"after" (docs/protocol.md): a batch naming the last seq of the batch before it, sent
    on another connection, is applied after that one, even when it comes first; when that one
    never comes it is refused whole (409, EAGAIN) and can be sent again."""
    sbx = api_server
    jid = 'after-' + secrets.token_hex(4)
    a, b = '/workspace/after-a-' + jid, '/workspace/after-b-' + jid
    second = dict(journal=jid, after=2, ops=[dict(seq=3, op='rename', **{'from': a, 'to': b})])
    # nothing before it ever comes: refused, nothing applied
    status, r = sbx.api('/api/x/journal', second)
    assert status == 409, r
    assert r['code'] == 'JOURNAL_OUT_OF_ORDER' and r['errno'] == 'EAGAIN', r
    assert host_file(sbx, os.path.basename(b)) is None
    # sent first on its own connection, it waits for the batch before it
    with ThreadPoolExecutor(1) as pool:
        later = pool.submit(sbx.api, '/api/x/journal', second)
        status, first = journal(sbx, jid, [put(1, a, 'one'), put(2, a, 'two')])
        assert status == 200 and outcomes(first) == ['ok', 'ok'], first
        status, r = later.result(timeout=60 * SLOW)
    assert status == 200 and outcomes(r) == ['ok'] and r['applied'] == 3, r
    assert (host_file(sbx, os.path.basename(a)), host_file(sbx, os.path.basename(b))) == \
        (None, 'two')
    # a repeat of either applies nothing
    status, r = sbx.api('/api/x/journal', second)
    assert status == 200 and outcomes(r) == ['skipped'], r


def test_a_write_with_its_bytes_raw(api_server):
    """PUT /api/x/journal (docs/protocol.md): one write whose bytes are the body, numbered
    and ordered like the ops of a batch: applied once, after the batch it names."""
    sbx = api_server
    jid = 'raw-' + secrets.token_hex(4)
    name = 'raw-' + jid
    path = urllib.parse.quote('/workspace/' + name, safe='')

    def write(seq, offset, data, after=None):
        q = 'journal=%s&seq=%d&path=%s&offset=%d' % (jid, seq, path, offset)
        if after is not None:
            q += '&after=%d' % after
        return sbx.api('/api/x/journal?' + q, data=data, method='PUT',
                       headers={'Content-Type': 'application/octet-stream'})

    status, r = journal(sbx, jid, [put(1, '/workspace/' + name, 'aaaa')])
    assert status == 200 and outcomes(r) == ['ok'], r
    raw = bytes(range(256)) * 3
    status, r = write(2, 2, raw, after=1)
    assert status == 200 and outcomes(r) == ['ok'] and r['applied'] == 2, r
    assert r['results'][0]['stat']['size'] == 2 + len(raw)
    with open(os.path.join(sbx.workspace, name), 'rb') as f:
        assert f.read() == b'aa' + raw
    # a repeat is skipped; one whose batch before it never comes is refused
    status, r = write(2, 2, b'other', after=1)
    assert status == 200 and outcomes(r) == ['skipped'], r
    status, r = write(4, 0, b'x', after=3)
    assert status == 409 and r['code'] == 'JOURNAL_OUT_OF_ORDER', r
    with open(os.path.join(sbx.workspace, name), 'rb') as f:
        assert f.read() == b'aa' + raw
    for bad in ('journal=%s&seq=5&offset=0' % jid, 'journal=%s&seq=0&path=%s&offset=0' % (jid, path),
                'journal=%s&seq=5&path=%s&offset=-1' % (jid, path),
                'journal=%s&seq=5&path=%s&offset=0&after=5' % (jid, path),
                'journal=bad%%20id&seq=5&path=%s&offset=0' % path):
        status, r = sbx.api('/api/x/journal?' + bad, data=b'x', method='PUT')
        assert status == 400 and r['errno'] == 'EINVAL', (bad, r)


def test_capability_and_no_extensions(api_server, build_dir):
    status, caps = api_server.api('/api/x/capabilities')
    assert status == 200 and 'journal' in caps['extensions']
    assert 'pipeline' in caps['extensions']
    s = Sandbox(build_dir, 'fallback')
    s.start_server()
    try:
        status, r = journal(s, 'j', [put(1, '/workspace/a', 'x')])
        assert status == 404, r
        assert host_file(s, 'a') is None
    finally:
        problems = s.close()
        s.remove()
    assert not problems, problems


def test_listing_a_directory_while_a_batch_empties_it(api_server):
    """A name removed between sbxd's readdir and its stat of it is left out of the listing,
    not the listing's failure (ENOENT for a directory that exists made rm -rf through the
    journal fail at random: its emptiness check lists while the unlinks are applied)."""
    import threading
    sbx = api_server
    failures = []
    for rnd in range(500):
        name = 'emptied-%s' % secrets.token_hex(3)
        d = os.path.join(sbx.workspace, name)
        os.mkdir(d)
        for i in range(20):
            with open(os.path.join(d, 'f%d' % i), 'w') as f:
                f.write('x')
        done = threading.Event()

        def lister():
            while not done.is_set():
                status, r = sbx.api('/api/x/readdir', {'path': '/workspace/' + name})
                if status != 200:
                    failures.append((status, r))
        t = threading.Thread(target=lister)
        t.start()
        try:
            # in the order a listing gives them, as rm -rf removes them: the last names
            # listed are the ones going away while the listing is read
            ops = [dict(seq=i + 1, op='unlink', path='/workspace/%s/%s' % (name, f))
                   for i, f in enumerate(os.listdir(d))]
            status, r = journal(sbx, 'emptied-' + secrets.token_hex(4), ops)
            assert status == 200, r
        finally:
            done.set()
            t.join()
    assert not failures, failures[:3]


class Watch:
    """POST /api/watch of the whole workspace, every event type, nothing excluded: the
    change events as a mount's cache watcher gets them."""

    def __init__(self, sbx):
        body = {'path': '/workspace', 'recursive': True, 'exclude': [],
                'events': ['create', 'modify', 'delete', 'move_from', 'move_to', 'attrib']}
        req = urllib.request.Request(sbx.url + '/api/watch', data=json.dumps(body).encode(),
                                     method='POST')
        req.add_header('Authorization', 'Bearer ' + sbx.token)
        req.add_header('Content-Type', 'application/json')
        self.r = urllib.request.urlopen(req, timeout=30 * SLOW)
        assert self.next()['type'] == 'watching'

    def next(self):
        for line in self.r:
            if line.startswith(b'data: '):
                return json.loads(line[6:])
        return None

    def until(self, path, event_type):
        """The events up to the first of event_type on path."""
        seen = []
        while True:
            e = self.next()
            assert e is not None, seen
            seen.append(e)
            if e.get('path') == path and e.get('eventType') == event_type:
                return seen

    def close(self):
        self.r.close()


def test_change_events_name_the_journal_that_caused_them(api_server):
    """sbxd tags the change events of a journal's own ops with its id (docs/protocol.md,
    "Echoes"), so a mount can skip the echoes of what it wrote; a change made in the sandbox
    afterwards, even to the same file and within the same second, is never tagged."""
    sbx = api_server
    jid = 'echo-' + secrets.token_hex(4)
    d = 'echo-' + secrets.token_hex(3)
    w = Watch(sbx)
    try:
        ops = [dict(seq=1, op='mkdir', path='/workspace/' + d, mode=0o755),
               put(2, '/workspace/%s/a' % d, 'one'),
               put(3, '/workspace/%s/tmp' % d, 'two'),
               dict(seq=4, op='link', **{'from': '/workspace/%s/tmp' % d,
                                         'to': '/workspace/%s/b' % d}),
               dict(seq=5, op='unlink', path='/workspace/%s/tmp' % d),
               dict(seq=6, op='setattr', path='/workspace/%s/a' % d, mode=0o600)]
        status, r = journal(sbx, jid, ops)
        assert status == 200 and outcomes(r) == ['ok'] * 6, r
        # a marker made in the sandbox after the batch: every event of the batch comes first
        with open(os.path.join(sbx.workspace, d, 'marker'), 'w') as f:
            f.write('m')
        seen = w.until('/workspace/%s/marker' % d, 'create')
        mine = [e for e in seen if e.get('path', '').startswith('/workspace/' + d + '/') or
                e.get('path') == '/workspace/' + d]
        batch = [e for e in mine if not e['path'].endswith('/marker')]
        # (tmp came and went within the batch: its events may be gone with it)
        assert {e['path'].rsplit('/', 1)[1] for e in batch} >= {d, 'a', 'b'}, batch
        assert all(e.get('journal') == jid for e in batch), batch
        assert 'journal' not in mine[-1]

        # the sandbox changes a's content right after the journal's chmod: not an echo
        with open(os.path.join(sbx.workspace, d, 'a'), 'a') as f:
            f.write('+sandbox')
        seen = w.until('/workspace/%s/a' % d, 'modify')
        assert 'journal' not in seen[-1], seen[-1]
    finally:
        w.close()
