"""sbxd's shell sessions through its HTTP API (no mount): /api/session/create, list and delete,
and sessionId on /api/execute and /api/execute/stream, as an SDK user sees them (§6.1 of
shared/protocol/container-api.md, with the differences listed in docs/protocol.md: every
command is a fresh bash that restores the session's saved state, so `exit` ends only the
command, and a timeout kills the command)."""
import json
import os
import random
import re
import threading
import time
import urllib.error
import urllib.request

import pytest

from util import SLOW


@pytest.fixture(scope='module')
def sbx(api_server):
    """sbxd alone (the routes are the same with and without extensions: both are run)."""
    return api_server


def uid(prefix='s'):
    return '%s-%d%06d' % (prefix, os.getpid(), random.randrange(10 ** 6))


def api_bytes(sbx, route, data, method='POST', headers=None):
    """route called with the bytes data as they are (not a JSON value of ours)."""
    return sbx.api(route, data=data, method=method, headers=headers, timeout=30)


def create(sbx, **body):
    status, r = sbx.api('/api/session/create', body)
    assert status == 200 and r['success'], r
    return r['data']['id']


def run(sbx, command, session=None, **kw):
    """POST /api/execute in a session; the 200 reply."""
    body = dict(command=command, **kw)
    if session is not None:
        body['sessionId'] = session
    status, r = sbx.api('/api/execute', body)
    assert status == 200, r
    return r


def out(sbx, command, session=None, **kw):
    r = run(sbx, command, session, **kw)
    assert r['exitCode'] == 0 and r['success'], r
    return r['stdout']


def sessions(sbx):
    status, r = sbx.api('/api/session/list')
    assert status == 200 and r['success'], r
    return r['data']


def delete(sbx, session):
    return sbx.api('/api/session/delete', {'sessionId': session})


def stream(sbx, body, timeout=30):
    """The events of POST /api/execute/stream."""
    req = urllib.request.Request(sbx.url + '/api/execute/stream',
                                 data=json.dumps(body).encode(), method='POST')
    req.add_header('Authorization', 'Bearer ' + sbx.token)
    events = []
    with urllib.request.urlopen(req, timeout=timeout * SLOW) as r:
        assert r.headers['Content-Type'].startswith('text/event-stream')
        for line in r:
            if line.startswith(b'data: '):
                events.append(json.loads(line[6:]))
    return events


def stream_output(events):
    assert events[0]['type'] == 'start' and events[-1]['type'] == 'complete', events
    return (''.join(e['data'] for e in events if e['type'] == 'stdout'),
            events[-1]['exitCode'])


class Background(threading.Thread):
    """A request in a thread: .result is (status, reply), .done the monotonic end time."""

    def __init__(self, fn, *args, **kw):
        super().__init__(daemon=True)
        self.fn, self.args, self.kw = fn, args, kw
        self.result = self.done = None
        self.start()

    def run(self):
        try:
            self.result = self.fn(*self.args, **self.kw)
        finally:
            self.done = time.monotonic()

    def wait(self, timeout=60):
        self.join(timeout * SLOW)
        assert not self.is_alive(), 'request still running'
        return self.result


def assert_error(status, r, http, code):
    assert status == http and isinstance(r, dict), (status, r)
    assert r['code'] == code and r['httpStatus'] == http and r['message'], r


# ---- create ----

def test_create_with_env_and_cwd(sbx):
    a, b = uid('a'), uid('b')
    status, r = sbx.api('/api/session/create', {'id': a, 'env': {'SESS_FOO': 'bar baz'},
                                                'cwd': '/tmp'})
    assert status == 200 and r['success'] and r['data']['id'] == a, r
    assert 'containerPlacementId' in r and r['timestamp'], r
    assert out(sbx, 'pwd; echo "$SESS_FOO"', a) == '/tmp\nbar baz\n'
    # in the process environment (a child sees it), with LANG as in the container
    env = out(sbx, 'bash -c env', a).splitlines()
    assert 'SESS_FOO=bar baz' in env and 'LANG=C.UTF-8' in env, env
    # another session sees neither
    create(sbx, id=b)
    assert out(sbx, 'pwd; echo "[$SESS_FOO]"', b) == '/workspace\n[]\n'
    assert out(sbx, 'pwd; echo "[$SESS_FOO]"', '__DISABLE_SESSION__') == '/workspace\n[]\n'
    assert out(sbx, 'pwd; echo "[$SESS_FOO]"') == '/workspace\n[]\n'


def test_create_env_values_and_bad_names(sbx):
    a = create(sbx, id=uid(), env={'N': 42, 'T': True, 'Z': None, '_u': ''})
    assert out(sbx, 'echo "$N $T ${Z-unset} [${_u}]"', a) == '42 true unset []\n'
    for env in ({'BAD-NAME': 'x'}, {'1X': 'x'}, {'__SBX_CMD': 'x'}):
        status, r = sbx.api('/api/session/create', {'id': uid(), 'env': env})
        assert_error(status, r, 400, 'VALIDATION_FAILED')
    status, r = sbx.api('/api/session/create', {'id': uid(), 'env': 'A=1'})
    assert_error(status, r, 400, 'VALIDATION_FAILED')


def test_create_missing_cwd_falls_back_to_home(sbx):
    a = create(sbx, id=uid(), cwd='/nonexistent/dir')
    assert out(sbx, 'pwd', a) == '/root\n'


def test_create_default_id(sbx):
    before = time.time() * 1000
    ids = []
    for _ in range(2):
        status, r = api_bytes(sbx, '/api/session/create', b'')
        assert status == 200 and r['success'], r
        ids.append(r['data']['id'])
    status, r = sbx.api('/api/session/create', {})
    assert status == 200, r
    ids.append(r['data']['id'])
    status, r = sbx.api('/api/session/create', {'id': '', 'env': {'DFLT': 'y'}})
    assert status == 200, r
    ids.append(r['data']['id'])
    after = time.time() * 1000
    for i in ids:
        m = re.fullmatch(r'session_(\d+)_([0-9a-f]{12})', i)
        assert m, i
        assert before - 1000 <= int(m.group(1)) <= after + 1000, (i, before, after)
    assert len(set(ids)) == len(ids)
    listed = sessions(sbx)
    assert all(i in listed for i in ids)
    assert out(sbx, 'echo $DFLT; pwd', ids[-1]) == 'y\n/workspace\n'


def test_create_unparseable_body(sbx):
    # the container uses the defaults; sbxd answers every malformed body with 400
    # (docs/protocol.md), so a client learns it sent garbage
    for body in (b'{nope', b'[1]', b'null'):
        status, r = api_bytes(sbx, '/api/session/create', body)
        assert_error(status, r, 400, 'VALIDATION_FAILED')


def test_create_duplicate(sbx):
    a = create(sbx, id=uid(), env={'FIRST': '1'})
    status, r = sbx.api('/api/session/create', {'id': a, 'env': {'FIRST': '2'}})
    assert_error(status, r, 409, 'SESSION_ALREADY_EXISTS')
    assert r['context']['sessionId'] == a and a in r['message'], r
    assert 'containerPlacementId' in r['context'], r
    # the first one is untouched
    assert out(sbx, 'echo $FIRST', a) == '1\n'
    # an implicitly created session counts as existing too
    b = uid()
    out(sbx, 'true', b)
    status, r = sbx.api('/api/session/create', {'id': b})
    assert_error(status, r, 409, 'SESSION_ALREADY_EXISTS')


def test_create_bad_fields(sbx):
    for body in ({'id': 5}, {'cwd': 7}, {'commandTimeoutMs': -1},
                 {'commandTimeoutMs': 'soon'}, {'commandTimeoutMs': 1e300},
                 {'commandTimeoutMs': True}, {'id': '   '}, {'id': '\t\n'},
                 {'id': '__DISABLE_SESSION__'}):
        status, r = sbx.api('/api/session/create', body)
        assert_error(status, r, 400, 'VALIDATION_FAILED')


# ---- timeouts ----

def test_command_timeout_ms(sbx):
    a = create(sbx, id=uid(), commandTimeoutMs=int(500 * SLOW))
    t0 = time.monotonic()
    r = run(sbx, 'echo before; sleep 30; echo after', a)
    took = time.monotonic() - t0
    # sbxd kills the command and answers as the container does sessionless (the container
    # answers 500 COMMAND_EXECUTION_ERROR and leaves the command running in the shell)
    assert r['exitCode'] == 124 and not r['success'], r
    assert r['stdout'] == 'before\n', r
    assert r['stderr'].endswith('Command timed out after %dms' % int(500 * SLOW)), r
    assert r['sessionId'] == a
    assert took < 10 * SLOW, took
    # the killed command did not block the session, and a fast one is not affected
    t0 = time.monotonic()
    assert out(sbx, 'echo fast', a) == 'fast\n'
    assert time.monotonic() - t0 < 2 * SLOW
    # a request's own timeoutMs wins over the session's
    r = run(sbx, 'sleep 1; echo slow', a, timeoutMs=int(10000 * SLOW))
    assert r['exitCode'] == 0 and r['stdout'] == 'slow\n', r
    # the session default does not reach other sessions
    assert out(sbx, 'sleep 1; echo other', uid()) == 'other\n'


def test_timed_out_command_keeps_old_state(sbx):
    a = create(sbx, id=uid(), commandTimeoutMs=int(500 * SLOW))
    out(sbx, 'export KEEP=old; cd /tmp', a)
    r = run(sbx, 'export KEEP=new; cd /; sleep 5', a)
    assert r['exitCode'] == 124, r
    assert out(sbx, 'echo $KEEP; pwd', a) == 'old\n/tmp\n'


def test_command_timeout_counts_while_queued(sbx):
    a = create(sbx, id=uid(), commandTimeoutMs=int(1000 * SLOW))
    marker = '/tmp/sess-queued-default-%s' % a
    # the first outlasts the second's whole timeout by far, sanitizers or not
    first = Background(run, sbx, 'sleep %d; echo first' % (4 * SLOW), a,
                       timeoutMs=int(20000 * SLOW))
    time.sleep(0.3)
    second = Background(run, sbx, 'touch %s' % marker, a)
    r = second.wait()
    assert r['exitCode'] == 124 and 'timed out after %dms' % int(1000 * SLOW) in \
        r['stderr'], r
    assert first.wait()['stdout'] == 'first\n'
    # it gave up while the first was still running, and never ran
    assert second.done < first.done
    assert out(sbx, 'test -e %s || echo absent' % marker, a) == 'absent\n'


def test_command_timeout_ms_not_for_streams(sbx):
    # commandTimeoutMs is for foreground commands; a stream is a background command in the
    # container, which also ignores a stream's timeoutMs (sbxd honours that one)
    a = create(sbx, id=uid(), commandTimeoutMs=int(300 * SLOW))
    events = stream(sbx, {'command': 'sleep 1; echo done', 'sessionId': a})
    assert stream_output(events) == ('done\n', 0)
    events = stream(sbx, {'command': 'sleep 5; echo done', 'sessionId': a,
                          'timeoutMs': int(300 * SLOW)})
    assert stream_output(events) == ('', 124)
    assert ''.join(e['data'] for e in events if e['type'] == 'stderr') == \
        'Command timed out after %dms\n' % int(300 * SLOW)


# ---- state ----

def test_state_persists_between_commands(sbx):
    a = create(sbx, id=uid())
    out(sbx, 'mkdir -p /tmp/sess-cd && cd /tmp/sess-cd && export PERSIST="a b\'c"', a)
    out(sbx, 'greet() { echo "hello $1"; }; alias ll="echo aliased"', a)
    assert out(sbx, 'pwd; echo "$PERSIST"; greet you; ll', a) == \
        "/tmp/sess-cd\na b'c\nhello you\naliased\n"
    # a child process sees the exported variable
    assert out(sbx, 'bash -c \'echo "$PERSIST"\'', a) == "a b'c\n"
    # functions that shadow builtins the wrapper uses do not break the session
    out(sbx, 'cd() { echo no; }; printf() { echo no; }; export() { echo no; }', a)
    assert out(sbx, 'echo ok', a) == 'ok\n'
    out(sbx, 'unset -f cd printf export; builtin cd /', a)
    assert out(sbx, 'pwd', a) == '/\n'
    # documented: only exported variables persist (no long-lived shell)
    out(sbx, 'PLAIN=1', a)
    assert out(sbx, 'echo "[$PLAIN]"', a) == '[]\n'
    # nothing of it leaked into a second session
    assert out(sbx, 'pwd; echo "[$PERSIST]"; type greet ll 2>&1 | grep -c "not found"',
               uid()) == '/workspace\n[]\n2\n'


def test_request_cwd_and_env_do_not_persist(sbx):
    a = create(sbx, id=uid(), env={'LAYER': 'session'})
    out(sbx, 'cd /tmp; export MINE=kept', a)
    assert out(sbx, 'pwd; echo $LAYER $MINE $ONCE', a, cwd='/',
               env={'LAYER': 'request', 'MINE': 'req', 'ONCE': '1'}) == '/\nrequest req 1\n'
    assert out(sbx, 'pwd; echo $LAYER $MINE "[$ONCE]"', a) == '/tmp\nsession kept []\n'
    # a cd inside a command with a request cwd is taken back too
    out(sbx, 'cd /usr', a, cwd='/')
    assert out(sbx, 'pwd', a) == '/tmp\n'
    # a bad request cwd: exit 1 and the container's message, the session unchanged
    r = run(sbx, 'pwd', a, cwd='/nonexistent')
    assert r['exitCode'] == 1 and "Failed to change directory to '/nonexistent'" in \
        r['stderr'], r
    assert out(sbx, 'pwd; echo $MINE', a) == '/tmp\nkept\n'
    # bad request env names are refused before anything runs
    status, r = sbx.api('/api/execute', {'command': 'export MINE=changed', 'sessionId': a,
                                         'env': {'BAD-NAME': 'x'}})
    assert status == 400 and r['code'] == 'VALIDATION_FAILED', r
    assert out(sbx, 'echo $MINE', a) == 'kept\n'


def test_unset_stays_unset(sbx):
    a = create(sbx, id=uid(), env={'FROM_CREATE': 'c'})
    out(sbx, 'export GONE=1', a)
    out(sbx, 'unset GONE FROM_CREATE', a)
    assert out(sbx, 'echo "[${GONE-unset}] [${FROM_CREATE-unset}]"', a) == \
        '[unset] [unset]\n'
    assert 'FROM_CREATE' not in out(sbx, 'env', a)
    # an unset in a command with a request cwd/env is kept as well
    out(sbx, 'export BACK=1', a)
    out(sbx, 'unset BACK', a, cwd='/', env={'OTHER': 'x'})
    assert out(sbx, 'echo "[${BACK-unset}]"', a) == '[unset]\n'


def test_stream_inherits_but_does_not_save(sbx):
    a = create(sbx, id=uid())
    out(sbx, 'cd /tmp; export INHERIT=yes; f() { echo func; }', a)
    events = stream(sbx, {'command': 'pwd; echo $INHERIT; f; cd /; export INHERIT=changed;'
                          ' export STREAMED=1', 'sessionId': a})
    assert stream_output(events) == ('/tmp\nyes\nfunc\n', 0)
    assert out(sbx, 'pwd; echo $INHERIT "[$STREAMED]"', a) == '/tmp\nyes []\n'
    # a stream's request cwd and env apply to it
    events = stream(sbx, {'command': 'pwd; echo $INHERIT', 'sessionId': a, 'cwd': '/',
                          'env': {'INHERIT': 'req'}})
    assert stream_output(events) == ('/\nreq\n', 0)
    # exit in a stream ends the stream, with its status
    assert stream_output(stream(sbx, {'command': 'echo x; exit 4', 'sessionId': a})) == \
        ('x\n', 4)
    assert out(sbx, 'echo $INHERIT', a) == 'yes\n'


def test_exit_ends_only_the_command(sbx):
    # documented difference: no long-lived shell, so `exit 3` is the command's exit status
    # (the container answers 410 SESSION_TERMINATED and drops the session); what the
    # command changed before exiting is kept, as for any other command
    a = create(sbx, id=uid(), env={'CREATED': 'c'}, cwd='/tmp')
    r = run(sbx, 'echo x; export BEFORE_EXIT=1; cd /; exit 3', a)
    assert r['exitCode'] == 3 and not r['success'] and r['stdout'] == 'x\n', r
    assert r['sessionId'] == a
    assert a in sessions(sbx)
    assert out(sbx, 'pwd; echo $CREATED $BEFORE_EXIT', a) == '/\nc 1\n'
    # exit from a function, in a subshell, with a trap of the user's own
    assert run(sbx, 'f() { exit 5; }; f; echo not', a)['exitCode'] == 5
    assert run(sbx, '(exit 6)', a)['exitCode'] == 6
    r = run(sbx, "trap 'echo bye' EXIT; export WITH_TRAP=1; exit 7", a)
    assert r['exitCode'] == 7 and r['stdout'] == 'bye\n', r
    # the user's EXIT trap replaced the one that saves the state: the old state stays
    assert out(sbx, 'echo "[$WITH_TRAP]"; pwd', a) == '[]\n/\n'


# ---- list and delete ----

def test_list_includes_created_and_implicit(sbx):
    a, imp, imp_cwd, streamed = uid('a'), uid('imp'), uid('impcwd'), uid('st')
    create(sbx, id=a)
    out(sbx, 'true', imp)
    # a session created by a request starts in that request's cwd
    out(sbx, 'true', imp_cwd, cwd='/tmp')
    assert out(sbx, 'pwd', imp_cwd) == '/tmp\n'
    stream(sbx, {'command': 'true', 'sessionId': streamed})
    out(sbx, 'true')   # no id: the session named default
    listed = sessions(sbx)
    for i in (a, imp, imp_cwd, streamed, 'default'):
        assert i in listed, (i, listed)
    assert listed.index(a) < listed.index(imp) < listed.index(imp_cwd) < \
        listed.index(streamed)
    assert '__DISABLE_SESSION__' not in listed
    # never the bearer token (the container would take it as the session id)
    assert sbx.token not in listed
    assert len(listed) == len(set(listed))


def test_session_from_header_and_query(sbx):
    h, q = uid('hdr'), uid('qry')
    status, r = api_bytes(sbx, '/api/execute', json.dumps({'command': 'export HDR=1'}).encode(),
                    headers={'X-Session-Id': h})
    assert status == 200 and r['exitCode'] == 0 and r['sessionId'] == h, r
    assert out(sbx, 'echo $HDR', h) == '1\n'
    status, r = api_bytes(sbx, '/api/execute?session=' + q,
                    json.dumps({'command': 'export QRY=1'}).encode())
    assert status == 200 and r['sessionId'] == q, r
    assert out(sbx, 'echo $QRY', q) == '1\n'
    # the body wins; an empty body id counts as absent
    status, r = api_bytes(sbx, '/api/execute', json.dumps({'command': 'echo $HDR',
                                                     'sessionId': q}).encode(),
                    headers={'X-Session-Id': h})
    assert status == 200 and r['sessionId'] == q and r['stdout'] == '\n', r
    status, r = api_bytes(sbx, '/api/execute', json.dumps({'command': 'echo $HDR',
                                                     'sessionId': ''}).encode(),
                    headers={'X-Session-Id': h})
    assert status == 200 and r['sessionId'] == h and r['stdout'] == '1\n', r
    # sessionId is echoed only when the request named one
    assert 'sessionId' not in run(sbx, 'true')


def test_delete(sbx):
    a = create(sbx, id=uid(), env={'DEL': 'd'}, cwd='/tmp')
    out(sbx, 'export MORE=m; f() { :; }', a)
    status, r = delete(sbx, a)
    assert status == 200 and r['success'] and r['sessionId'] == a and r['timestamp'], r
    assert a not in sessions(sbx)
    # the id is fresh again: implicitly (nothing of the old state) ...
    assert out(sbx, 'pwd; echo "[$DEL$MORE]"; type f >/dev/null 2>&1 || echo nof', a) == \
        '/workspace\n[]\nnof\n'
    assert a in sessions(sbx)
    # ... and explicitly
    assert delete(sbx, a)[0] == 200
    create(sbx, id=a, env={'DEL': 'again'})
    assert out(sbx, 'pwd; echo $DEL', a) == '/workspace\nagain\n'
    assert delete(sbx, a)[0] == 200
    # deleting twice: not found, as for an unknown id (the container's 500)
    for i in (a, uid('never')):
        status, r = delete(sbx, i)
        assert_error(status, r, 500, 'INTERNAL_ERROR')
        assert r['message'] == "Session '%s' not found" % i, r
        assert r['context']['sessionId'] == i, r
    status, r = delete(sbx, '__DISABLE_SESSION__')
    assert_error(status, r, 500, 'INTERNAL_ERROR')


def test_delete_bad_requests(sbx):
    for body in ({}, {'sessionId': ''}, {'sessionId': None}, {'other': 'x'}):
        status, r = sbx.api('/api/session/delete', body)
        assert_error(status, r, 400, 'VALIDATION_FAILED')
        assert r['message'] == 'sessionId is required', r
    for data in (b'', b'{bad'):
        status, r = api_bytes(sbx, '/api/session/delete', data)
        assert_error(status, r, 400, 'VALIDATION_FAILED')


def test_delete_waits_for_running_command(sbx):
    a = create(sbx, id=uid())
    t0 = time.monotonic()
    cmd = Background(run, sbx, 'sleep 1; export LATE=1; echo finished', a)
    time.sleep(0.3)
    status, r = delete(sbx, a)
    deleted = time.monotonic()
    assert status == 200, r
    res = cmd.wait()
    assert res['exitCode'] == 0 and res['stdout'] == 'finished\n', res
    assert deleted - t0 >= 0.9, 'delete did not wait for the command'
    assert out(sbx, 'echo "[$LATE]"', a) == '[]\n'


# ---- concurrency ----

def test_sessions_run_concurrently(sbx, tmp_path):
    a, b = create(sbx, id=uid('a')), create(sbx, id=uid('b'))
    status, r = sbx.api('/api/write', {'path': '/workspace/sess-conc.txt', 'content': 'hi'})
    assert status == 200, r
    slow = Background(run, sbx, 'sleep %d; echo slow' % (5 * SLOW), a)
    time.sleep(0.3)
    t0 = time.monotonic()
    assert out(sbx, 'echo quick', b) == 'quick\n'
    assert out(sbx, 'echo quick') == 'quick\n'          # default session
    assert out(sbx, 'echo quick', '__DISABLE_SESSION__') == 'quick\n'
    stream_output(stream(sbx, {'command': 'echo quick', 'sessionId': b}))
    # file routes are not queued behind the session's command (documented difference)
    status, r = sbx.api('/api/read', {'path': '/workspace/sess-conc.txt', 'sessionId': a})
    assert status == 200 and r['content'] == 'hi', r
    status, r = sbx.api('/api/list-files', {'path': '/workspace', 'sessionId': a})
    assert status == 200 and r['success'], r
    assert slow.is_alive(), 'the other requests waited for the sleeping session'
    assert time.monotonic() - t0 < 4 * SLOW
    assert slow.wait()['stdout'] == 'slow\n'


def test_commands_in_one_session_are_serialised(sbx):
    a = create(sbx, id=uid())
    log = '/tmp/sess-serial-%s' % a
    first = Background(run, sbx, 'echo start1 >> %s; sleep 1; echo end1 >> %s; '
                       'export ORDER=1' % (log, log), a)
    time.sleep(0.3)
    second = Background(run, sbx, 'echo run2 >> %s; echo "$ORDER"' % log, a)
    assert first.wait()['exitCode'] == 0
    r = second.wait()
    # the second ran after the first ended, and saw what it saved
    assert r['exitCode'] == 0 and r['stdout'] == '1\n', r
    assert second.done >= first.done
    assert out(sbx, 'cat %s; rm %s' % (log, log), a) == 'start1\nend1\nrun2\n'


def test_request_timeout_while_queued(sbx):
    a = create(sbx, id=uid())
    first = Background(run, sbx, 'sleep %d' % (2 * SLOW), a)
    time.sleep(0.3)
    t0 = time.monotonic()
    r = run(sbx, 'touch /tmp/sess-queued-%s' % a, a, timeoutMs=int(300 * SLOW))
    assert r['exitCode'] == 124 and 'timed out' in r['stderr'], r
    assert time.monotonic() - t0 < 1.5 * SLOW
    assert first.wait()['exitCode'] == 0
    # it never ran
    assert out(sbx, 'test -e /tmp/sess-queued-%s || echo absent' % a, a) == 'absent\n'


# ---- sessionless and odd ids ----

def test_disable_session(sbx):
    n = '__DISABLE_SESSION__'
    out(sbx, 'cd /tmp; export NOSESS=1; f() { :; }', n)
    assert out(sbx, 'pwd; echo "[$NOSESS]"; type f >/dev/null 2>&1 || echo nof', n) == \
        '/workspace\n[]\nnof\n'
    assert out(sbx, 'pwd; echo $E', n, cwd='/tmp', env={'E': 'e'}) == '/tmp\ne\n'
    r = run(sbx, 'exit 9', n)
    assert r['exitCode'] == 9, r
    assert stream_output(stream(sbx, {'command': 'pwd', 'sessionId': n})) == \
        ('/workspace\n', 0)
    assert n not in sessions(sbx)
    # sessionless commands run side by side
    cmds = [Background(run, sbx, 'sleep 1', n) for _ in range(3)]
    t0 = time.monotonic()
    for c in cmds:
        assert c.wait()['exitCode'] == 0
    assert max(c.done for c in cmds) - t0 < 2.5 * SLOW


def test_whitespace_session_id_refused(sbx):
    for sid in (' ', '   ', '\t\n'):
        status, r = sbx.api('/api/execute', {'command': 'echo hi', 'sessionId': sid})
        assert_error(status, r, 400, 'VALIDATION_FAILED')
        assert 'whitespace' in r['message'], r
        status, r = api_bytes(sbx, '/api/execute/stream',
                        json.dumps({'command': 'echo hi', 'sessionId': sid}).encode())
        assert_error(status, r, 400, 'VALIDATION_FAILED')
    status, r = sbx.api('/api/execute', {'command': 'echo hi', 'sessionId': 5})
    assert_error(status, r, 400, 'VALIDATION_FAILED')


def state_entries(sbx):
    root = os.path.join(sbx.state, 'sessions')
    return {e: os.listdir(os.path.join(root, e)) for e in os.listdir(root)}


def test_odd_session_ids(sbx):
    tag = uid('odd')
    odd = ['../../%s' % tag, '../%s/..' % tag, '/%s' % tag, 'a b/c', 'a/b c', '..', '.',
           'sp ace', 'tab\there', 'new\nline', 'quote\'"`$(touch /tmp/%s)' % tag,
           'ünï©ødé ☃', 'x' * 1024, '-rf', '*']
    before = set(os.listdir(sbx.tmp))
    for i, sid in enumerate(odd):
        assert create(sbx, id=sid, env={'ODD': str(i)}) == sid
        out(sbx, 'export ODD_RUN=%d' % i, sid)
    listed = sessions(sbx)
    for i, sid in enumerate(odd):
        assert sid in listed
        # each kept its own state (ids that clean up to the same name too)
        r = run(sbx, 'echo $ODD $ODD_RUN', sid)
        assert r['stdout'] == '%d %d\n' % (i, i) and r['sessionId'] == sid, r
    # state files stay in the state dir, one directory per session
    assert set(os.listdir(sbx.tmp)) == before
    for name, files in state_entries(sbx).items():
        assert re.fullmatch(r'\d+-[A-Za-z0-9_-]{0,32}', name), name
        assert set(files) <= {'state', 'state.new'}, (name, files)
    for top in (sbx.tmp, '/tmp', '/'):
        assert not any(tag in e for e in os.listdir(top)), top
    for sid in odd:
        assert delete(sbx, sid)[0] == 200
    assert not any(sid in sessions(sbx) for sid in odd)


def test_too_long_and_invalid_ids_refused(sbx):
    long_id = 'y' * 1025
    status, r = sbx.api('/api/session/create', {'id': long_id})
    assert_error(status, r, 400, 'VALIDATION_FAILED')
    status, r = sbx.api('/api/execute', {'command': 'true', 'sessionId': long_id})
    assert_error(status, r, 400, 'VALIDATION_FAILED')
    # bytes that are not UTF-8: refused (answers and lists are JSON, which cannot carry them)
    for route, body in (('/api/session/create', b'{"id":"bad\xff\xfeid"}'),
                        ('/api/execute', b'{"command":"true","sessionId":"bad\xffid"}'),
                        ('/api/execute/stream',
                         b'{"command":"true","sessionId":"bad\xc3(id"}'),
                        ('/api/session/delete', b'{"sessionId":"bad\xffid"}')):
        status, r = api_bytes(sbx, route, body)
        assert_error(status, r, 400, 'VALIDATION_FAILED')
    # a lone surrogate is not a string cJSON accepts
    status, r = api_bytes(sbx, '/api/session/create', b'{"id":"sur\\ud800x"}')
    assert_error(status, r, 400, 'VALIDATION_FAILED')
    status, r = api_bytes(sbx, '/api/session/list', None, method='GET')
    assert status == 200 and isinstance(r, dict), r
    assert not any(i.startswith(('bad', 'yyyy', 'sur')) for i in r['data'])
