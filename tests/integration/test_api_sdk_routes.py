"""The container routes the Sandbox SDK's own client calls and sbxd used to lack or answer
differently (issue #15): POST /api/port-watch (Process.waitForPort), POST /api/watch/check
(watch.checkChanges), the error of /api/mkdir for a missing parent, and processes and code
contexts started in a session, all with the container's request and answer shapes
(shared/protocol/container-api.md §6.1, §7.6, §9, §12). No mount: sbxd alone, with and
without extensions (the routes are standard ones)."""
import json
import os
import random
import socket
import time
import urllib.request

import pytest

from util import SLOW, free_port, wait_for


@pytest.fixture(scope='module')
def sbx(api_server):
    return api_server


def uid(prefix):
    return '%s-%d%06d' % (prefix, os.getpid(), random.randrange(10 ** 6))


class Events:
    """An SSE response read one event at a time."""

    def __init__(self, sbx, route, body, timeout=30):
        req = urllib.request.Request(sbx.url + route, data=json.dumps(body).encode(),
                                     method='POST')
        req.add_header('Authorization', 'Bearer ' + sbx.token)
        req.add_header('Content-Type', 'application/json')
        self.r = urllib.request.urlopen(req, timeout=timeout * SLOW)
        assert self.r.status == 200
        assert self.r.headers['Content-Type'].startswith('text/event-stream')

    def next(self):
        for line in self.r:
            if line.startswith(b'data: '):
                return json.loads(line[6:])
        return None

    def close(self):
        self.r.close()


def start_process(sbx, command, **kw):
    status, r = sbx.api('/api/process/start', dict(command=command, **kw))
    assert status == 200 and r['success'], r
    return r['processId']


def process(sbx, pid):
    status, r = sbx.api('/api/process/' + pid)
    assert status == 200, r
    return r['process']


def logs(sbx, pid):
    status, r = sbx.api('/api/process/%s/logs' % pid)
    assert status == 200, r
    return r['stdout']


# ---- /api/port-watch ----

def test_port_watch_reports_a_port_that_starts_listening(sbx):
    port = free_port()
    ev = Events(sbx, '/api/port-watch', {'port': port, 'mode': 'http', 'path': '/',
                                         'statusMin': 200, 'statusMax': 399, 'interval': 100})
    try:
        assert ev.next() == {'type': 'watching', 'port': port}
        # the service comes up only after the watch has started: sleep in the sandbox
        pid = start_process(sbx, 'sleep 0.5; exec python3 -m http.server %d' % port)
        t0 = time.monotonic()
        ready = ev.next()
        assert ready == {'type': 'ready', 'port': port, 'statusCode': 200}, ready
        assert time.monotonic() - t0 < 15 * SLOW
        assert ev.next() is None    # the terminal event ends the stream
    finally:
        ev.close()
    sbx.api('/api/process/' + pid, method='DELETE')


def test_port_watch_tcp_mode(sbx):
    # a listener that answers no HTTP is ready in tcp mode
    lst = socket.socket()
    lst.bind(('127.0.0.1', 0))
    lst.listen(1)
    port = lst.getsockname()[1]
    try:
        ev = Events(sbx, '/api/port-watch', {'port': port, 'mode': 'tcp'})
        assert [ev.next(), ev.next(), ev.next()] == [
            {'type': 'watching', 'port': port}, {'type': 'ready', 'port': port}, None]
        ev.close()
    finally:
        lst.close()


def test_port_watch_events_for_exits_and_unknown_processes(sbx):
    port = free_port()
    pid = start_process(sbx, 'sleep 0.3; exit 3')
    ev = Events(sbx, '/api/port-watch', {'port': port, 'mode': 'tcp', 'processId': pid,
                                         'interval': 100})
    assert ev.next() == {'type': 'watching', 'port': port}
    assert ev.next() == {'type': 'process_exited', 'port': port, 'exitCode': 3}
    assert ev.next() is None
    ev.close()
    ev = Events(sbx, '/api/port-watch', {'port': port, 'mode': 'http',
                                         'processId': 'no-such-process'})
    assert [ev.next(), ev.next(), ev.next()] == [
        {'type': 'watching', 'port': port},
        {'type': 'error', 'port': port, 'error': 'Process not found'}, None]
    ev.close()


def test_port_watch_rejects_what_it_cannot_probe(sbx):
    for body in ({}, {'port': 0}, {'port': 70000}, {'port': 'x'},
                 {'port': 8080, 'path': 'no-slash'}, {'port': 8080, 'path': '/a b'}):
        status, r = sbx.api('/api/port-watch', body)
        assert status == 400 and r['code'] == 'VALIDATION_FAILED', (body, status, r)


# ---- /api/watch/check ----

def check(sbx, **body):
    status, r = sbx.api('/api/watch/check', body)
    return status, r


def test_watch_check_reports_changed_and_unchanged(sbx):
    d = uid('check')
    sbx.execute('mkdir -p /workspace/%s' % d)
    status, r = check(sbx, path='/workspace/' + d)
    assert status == 200 and r['success'] and r['status'] == 'unchanged', r
    v0 = r['version']
    watch_id, cursor = v0.rsplit(':', 1)
    assert watch_id.startswith('watch-') and cursor.isdigit()
    status, r = check(sbx, path='/workspace/' + d, since=v0)
    assert (status, r['status'], r['version']) == (200, 'unchanged', v0), r
    sbx.execute('echo x > /workspace/%s/f' % d)
    r = wait_for(lambda: (lambda s, r: r if r['status'] == 'changed' else None)(
        *check(sbx, path='/workspace/' + d, since=v0)), 5 * SLOW)
    assert r, 'no change seen'
    assert r['version'].startswith(watch_id + ':') and r['version'] != v0
    v1 = r['version']
    # nothing since v1; changes elsewhere do not count
    sbx.execute('echo y > /workspace/elsewhere-%s' % d)
    time.sleep(0.2)   # give an event that should not count the time to arrive
    status, r = check(sbx, path='/workspace/' + d, since=v1)
    assert (r['status'], r['version']) == ('unchanged', v1), r
    # the same path with other parameters is another watch
    status, r = check(sbx, path='/workspace/' + d, recursive=False, since=v1)
    assert r['status'] == 'resync' and r['reason'] == 'expired', r
    assert not r['version'].startswith(watch_id + ':')


def test_watch_check_errors_have_the_containers_shape(sbx):
    d = uid('check')
    sbx.execute('mkdir -p /workspace/%s' % d)
    status, r = check(sbx, path='/workspace/' + d)
    v = r['version']
    status, r = check(sbx, path='/workspace/' + d, since='not-a-version')
    assert status == 400 and r['code'] == 'VALIDATION_FAILED', r
    assert r['message'] == 'since must be a version returned by checkChanges()'
    status, r = check(sbx, path='/workspace/' + d, since=v.rsplit(':', 1)[0] + ':999999')
    assert status == 400 and r['message'] == \
        'since refers to a newer version than the current watch state', r
    assert r['context']['currentVersion'] == v
    status, r = check(sbx, path='/workspace/' + d, since='watch-0-1:0')
    assert status == 200 and r['status'] == 'resync' and r['reason'] == 'restarted', r
    status, r = check(sbx, path='/workspace/nope-' + d)
    assert status == 404 and r['code'] == 'FILE_NOT_FOUND', r
    status, r = check(sbx, path='/etc')
    assert status == 403 and r['code'] == 'PERMISSION_DENIED', r


# ---- /api/mkdir ----

def test_mkdir_errors_are_the_containers_filesystem_error(sbx):
    d = uid('mk')
    for path, why in (('/workspace/%s/missing/child' % d, 'No such file or directory'),
                      ('/workspace', 'File exists')):
        status, r = sbx.api('/api/mkdir', {'path': path})
        assert status == 500 and r['code'] == 'FILESYSTEM_ERROR', r
        assert r['message'] == 'mkdir operation failed with exit code 1'
        assert r['context']['exitCode'] == 1 and r['context']['path'] == path
        assert r['context']['stderr'] == \
            'mkdir: cannot create directory \u2018%s\u2019: %s' % (path, why), r
    status, r = sbx.api('/api/mkdir', {'path': '/workspace/%s/a/b' % d, 'recursive': True})
    assert status == 200 and r['recursive'] is True, r


# ---- sessions: processes and contexts ----

def test_processes_start_in_their_session_and_stop_with_it(sbx):
    a, b = uid('sa'), uid('sb')
    sbx.execute('mkdir -p /workspace/%s' % a)
    for s, cwd, val in ((a, '/workspace/' + a, 'one'), (b, '/workspace', 'two')):
        status, r = sbx.api('/api/session/create', {'id': s, 'cwd': cwd, 'env': {'V': val}})
        assert status == 200, r
    # what a foreground command leaves in the session counts too
    status, r = sbx.api('/api/execute', {'command': 'export LATER=$V-later', 'sessionId': b})
    assert status == 200 and r['exitCode'] == 0, r
    pa = start_process(sbx, 'echo "$V $LATER $PWD"; sleep 60', sessionId=a)
    pb = start_process(sbx, 'echo "$V $LATER $PWD"; sleep 60', sessionId=b)
    pn = start_process(sbx, 'echo "[$V] $PWD"; sleep 60')
    assert wait_for(lambda: logs(sbx, pa) and logs(sbx, pb) and logs(sbx, pn), 10 * SLOW)
    assert logs(sbx, pa) == 'one  /workspace/%s\n' % a
    assert logs(sbx, pb) == 'two two-later /workspace\n'
    assert logs(sbx, pn) == '[] /workspace\n'
    assert process(sbx, pa)['sessionId'] == a and 'sessionId' not in process(sbx, pn)
    # deleting a stops its process, and only that one
    status, r = sbx.api('/api/session/delete', {'sessionId': a})
    assert status == 200, r
    assert process(sbx, pa)['status'] == 'killed'
    assert process(sbx, pb)['status'] == 'running' and process(sbx, pn)['status'] == 'running'
    sbx.api('/api/session/delete', {'sessionId': b})
    assert process(sbx, pb)['status'] == 'killed'
    sbx.api('/api/process/' + pn, method='DELETE')


def test_contexts_start_in_their_session_and_go_with_it(sbx):
    s = uid('sc')
    sbx.execute('mkdir -p /workspace/%s' % s)
    status, r = sbx.api('/api/session/create', {'id': s, 'cwd': '/workspace/' + s,
                                                 'env': {'V': 'ctx'}})
    assert status == 200, r
    status, r = sbx.api('/api/contexts', {'language': 'python', 'sessionId': s})
    assert status == 200 and r['cwd'] == '/workspace/' + s and r['sessionId'] == s, r
    cid = r['contextId']
    ev = Events(sbx, '/api/execute/code', {
        'context_id': cid, 'code': 'import os; print(os.getcwd(), os.environ["V"])'})
    events = []
    while (e := ev.next()) is not None:
        events.append(e)
    ev.close()
    assert {'type': 'stdout', 'text': '/workspace/%s ctx\n' % s} in events, events
    status, r = sbx.api('/api/contexts')
    assert [c['sessionId'] for c in r['contexts'] if c['id'] == cid] == [s]
    sbx.api('/api/session/delete', {'sessionId': s})
    status, r = sbx.api('/api/contexts')
    assert cid not in [c['id'] for c in r['contexts']]
