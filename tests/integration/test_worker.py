"""The Cloudflare Worker of worker/ under workerd, in front of a real sbxd (worker.py): what a
user of a Cloudflare sandbox sees through it, in both modes (ext: an image with sbxd; fallback:
a plain image, the SDK's server on port 3000). The mount tests that run through the Worker as
well are run-tests' --via-worker pass; this module checks what only the Worker does: the
bearer token, sandbox ids, errors, streaming, headers, preview URLs and its configuration."""
import json
import os
import re
import secrets
import shlex
import subprocess
import time
import urllib.error
import urllib.request

import pytest

from util import SLOW, Sandbox, curl, free_port, is_mounted, shell, wait_for
from worker import NODE22, WORKER_DIR, WorkerProcess, missing, wrangler_build

pytestmark = pytest.mark.skipif(missing() is not None, reason=missing() or '')

BOX = 'box'


@pytest.fixture(scope='module')
def sbx(build_dir, mode):
    """sbxd, the Worker before it, and sbxfs mounted through the Worker as sandbox 'box'."""
    s = Sandbox(build_dir, mode)
    try:
        s.start_server()
        s.worker = WorkerProcess(build_dir, s.tmp, mode, s.url, s.token)
        s.mount(url=s.worker.sandbox_url(BOX), env=dict(os.environ, SBXFS_TOKEN=s.worker.token),
                token_file=False)
    except BaseException:
        s.close()
        raise
    yield s
    problems = s.close()
    if problems:
        pytest.fail('\n\n'.join(problems), pytrace=False)
    s.remove()


def call(url, body=None, token=None, method=None, headers=None, timeout=30):
    """(status, headers, decoded JSON or raw bytes) of one request."""
    data = json.dumps(body).encode() if body is not None else None
    req = urllib.request.Request(url, data=data, method=method)
    if body is not None:
        req.add_header('Content-Type', 'application/json')
    if token:
        req.add_header('Authorization', 'Bearer ' + token)
    for k, v in (headers or {}).items():
        req.add_header(k, v)
    try:
        with urllib.request.urlopen(req, timeout=timeout * SLOW) as r:
            status, hdrs, raw = r.status, r.headers, r.read()
    except urllib.error.HTTPError as e:
        status, hdrs, raw = e.code, e.headers, e.read()
    try:
        return status, hdrs, json.loads(raw)
    except ValueError:
        return status, hdrs, raw


def api(sbx, route, body=None, sandbox=BOX, **kw):
    kw.setdefault('token', sbx.worker.token)
    return call(sbx.worker.sandbox_url(sandbox) + route, body, **kw)


def started(sbx, sandbox_id):
    """How often the test double started the container of sandbox_id."""
    return sbx.worker.read_log().count('container of sandbox %s started' % sandbox_id)


def refused_mount(sbx, url, token):
    """sbxfs's stderr after it refused to mount url with token (None: no token at all)."""
    env = {k: v for k, v in os.environ.items() if k != 'SBXFS_TOKEN'}
    if token is not None:
        env['SBXFS_TOKEN'] = token
    mnt = os.path.join(sbx.tmp, 'refused')
    os.makedirs(mnt, exist_ok=True)
    p = subprocess.run([sbx.sbxfs_bin, url, mnt, '-f'], capture_output=True, env=env,
                       timeout=60 * SLOW)
    assert not is_mounted(mnt), 'sbxfs mounted %s anyway' % url
    assert p.returncode != 0
    return p.stderr.decode(errors='replace')


def test_files_and_change_events_through_the_worker(sbx):
    with open(os.path.join(sbx.ws, 'from-mount'), 'w') as f:
        f.write('written through sbxfs, workerd and sbxd\n')
    with open(os.path.join(sbx.workspace, 'from-mount')) as f:
        assert f.read() == 'written through sbxfs, workerd and sbxd\n'
    r = sbx.execute('echo made inside > from-inside')
    assert r['exitCode'] == 0
    # the watch stream, through the Worker, brings the change without a lookup of the name
    assert wait_for(lambda: 'from-inside' in os.listdir(sbx.ws), 5 * SLOW), os.listdir(sbx.ws)
    assert shell(sbx, 'cat workspace/from-inside')[1] == 'made inside\n'


def test_missing_or_wrong_token_is_refused(sbx):
    url = sbx.worker.sandbox_url('anon-' + secrets.token_hex(4))
    # sbxd's own token is not the Worker's: it opens nothing either
    for token in (None, 'wrong', sbx.worker.token[:-1], sbx.token):
        for route, body in (('/api/ping', None), ('/api/x/capabilities', None),
                            ('/api/execute', {'command': 'touch /workspace/pwned'})):
            status, headers, r = call(url + route, body, token=token)
            assert status == 401, (token, route, status, r)
            assert r['code'] == 'UNAUTHORIZED' and r['errno'] == 'EACCES', r
            assert headers['WWW-Authenticate'] == 'Bearer'
            assert 'application/json' in headers['Content-Type']
    assert not os.path.exists(os.path.join(sbx.workspace, 'pwned'))
    # nobody without the token even started a container
    assert 'container of sandbox anon-' not in sbx.worker.read_log()
    for token in (None, 'wrong'):
        err = refused_mount(sbx, url, token)
        assert 'token refused' in err, err
    status, _, r = call(url + '/api/ping', token=sbx.worker.token)
    assert status == 200


def test_unknown_sandbox_id_is_created(sbx):
    new = 'fresh-' + secrets.token_hex(4)
    assert started(sbx, new) == 0
    status, _, r = api(sbx, '/api/execute', {'command': 'echo hello from a new sandbox'},
                       sandbox=new)
    assert status == 200 and r['stdout'] == 'hello from a new sandbox\n', r
    assert started(sbx, new) == 1
    # what the deployed class would start its container with: start-sbxd's settings with sbxd
    # (docs/container.md), nothing for the SDK's plain image
    line = re.search(r'container of sandbox %s started.*' % new, sbx.worker.read_log()).group(0)
    if sbx.mode == 'ext':
        want = (' with SBXD_PORT=7070 SBXD_TOKEN=(set) SBXD_SANDBOX_ID=%s '
                'SBXD_PREVIEW_BASE=https://localhost:%d' % (new, sbx.worker.port))
        assert line.endswith(want), line
    else:
        assert line.endswith(' started'), line
    # ids are case-insensitive (they name preview hosts too): the same sandbox, not a new one
    status, _, r = api(sbx, '/api/ping', sandbox=new.upper())
    assert status == 200 and started(sbx, new) == 1, r
    # and the already running one was not started again
    assert started(sbx, BOX) == 1


@pytest.mark.parametrize('bad', ['-box', 'box-', 'a_b', 'a.b', 'x' * 64, '%41b', 'www', ''])
def test_bad_sandbox_ids(sbx, bad):
    status, _, r = api(sbx, '/api/ping', sandbox=bad)
    assert status == 400 and r['code'] == 'INVALID_SANDBOX_ID' and r['errno'] == 'EINVAL', r
    assert 'sandbox id' in r['message']


def test_routes_outside_the_sandboxes(sbx):
    for path in ('/', '/api/ping', '/sandboxes/box/api/ping', '/sandbox'):
        status, _, r = call(sbx.worker.url + path, token=sbx.worker.token)
        assert status == 404 and r['code'] == 'NOT_FOUND', (path, r)
        assert '/sandbox/<id>/' in r['message']
    # a mount of the Worker's root is refused with a reason, not mistaken for a sandbox
    err = refused_mount(sbx, sbx.worker.url, sbx.worker.token)
    assert 'not a sandbox API' in err, err


def test_streams_are_not_buffered(sbx):
    """An SSE answer passes event by event: the first one long before the command ends."""
    req = urllib.request.Request(
        sbx.worker.sandbox_url(BOX) + '/api/execute/stream',
        data=json.dumps({'command': 'for i in 1 2 3; do echo line-$i; sleep 1; done'}).encode(),
        headers={'Authorization': 'Bearer ' + sbx.worker.token,
                 'Content-Type': 'application/json'})
    t0 = time.monotonic()
    seen = []
    with urllib.request.urlopen(req, timeout=30 * SLOW) as r:
        assert r.headers['Content-Type'].startswith('text/event-stream')
        for line in r:
            if line.startswith(b'data: '):
                seen.append((time.monotonic() - t0, json.loads(line[6:])))
    events = [e for _, e in seen]
    assert [e['data'] for e in events if e['type'] == 'stdout'] == [
        'line-1\n', 'line-2\n', 'line-3\n'], events
    first = next(t for t, e in seen if e['type'] == 'stdout')
    assert first < 1.5, 'the first line came after %.1f s' % first
    assert seen[-1][0] > 2, 'the whole stream took only %.1f s' % seen[-1][0]


def test_ctx_out_through_the_worker_comes_line_by_line(sbx):
    cid = shell(sbx, 'cat ctx/new')[1].strip()
    assert cid
    code = os.path.join(sbx.tmp, 'slow.py')
    with open(code, 'w') as f:
        f.write('import time\nfor i in range(3):\n    print(i)\n    time.sleep(1)\n')
    assert shell(sbx, 'cat %s > ctx/%s/in' % (shlex.quote(code), cid))[0] == 0
    t0 = time.monotonic()
    p = subprocess.Popen(['cat', os.path.join(sbx.mnt, 'ctx', cid, 'out')],
                         stdout=subprocess.PIPE)
    first = json.loads(p.stdout.readline())
    took = time.monotonic() - t0
    rest = p.stdout.read()
    assert p.wait(30 * SLOW) == 0
    assert first == {'type': 'stdout', 'text': '0\n'}, first
    assert took < 1.5, 'the first event came after %.1f s' % took
    assert json.loads(rest.splitlines()[-1])['type'] == 'execution_complete'
    assert time.monotonic() - t0 > 2


def test_headers_pass_and_the_token_stays_out(sbx):
    # a header that carries the clients' token is dropped (the test double refuses any
    # request that brings the token into the sandbox, so a leak fails here)
    status, _, r = api(sbx, '/api/execute', {'command': 'echo ok'},
                       headers={'X-Forwarded-Secret': 'token=' + sbx.worker.token.upper()})
    assert status == 200 and r['stdout'] == 'ok\n', r
    if sbx.mode == 'fallback':
        return
    # Idempotency-Key reaches sbxd: the second copy is its stored answer
    key = {'Idempotency-Key': 'worker-test-' + secrets.token_hex(4)}
    answers = [api(sbx, '/api/x/mkdir', {'path': '/workspace/once', 'mode': 0o755},
                   headers=key) for _ in range(2)]
    assert [a[0] for a in answers] == [200, 200], answers
    assert answers[1][1]['Idempotent-Replayed'] == 'true'
    assert answers[0][2]['stat'] == answers[1][2]['stat']


@pytest.fixture(scope='module')
def echo_app(sbx):
    """A web server in the sandbox that answers with the request's method, path and headers
    as JSON; yields its port."""
    port = free_port()
    with open(os.path.join(sbx.workspace, 'echo_app.py'), 'w') as f:
        f.write('''import http.server, json, sys
class H(http.server.BaseHTTPRequestHandler):
    def answer(self):
        body = json.dumps({"method": self.command, "path": self.path,
                           "headers": dict(self.headers.items())}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)
    do_GET = do_POST = answer
http.server.ThreadingHTTPServer(("127.0.0.1", int(sys.argv[1])), H).serve_forever()
''')
    status, r = sbx.api('/api/process/start', {'command': 'exec python3 echo_app.py %d' % port})
    assert status == 200, r
    assert wait_for(lambda: curl('http://127.0.0.1:%d/' % port)[0] == 200, 20 * SLOW)
    yield port
    sbx.api('/api/process/%s' % r['processId'], method='DELETE')


def test_preview_urls_through_the_worker(sbx, echo_app):
    port = echo_app
    if sbx.mode == 'fallback':
        # ports cannot be exposed on a plain image; a preview URL goes to the SDK's
        # proxyToSandbox, which knows no such port (the double answers as the SDK does)
        rc, _, err = shell(sbx, 'touch ports/%d' % port)
        assert rc == 1 and 'Operation not supported' in err, err
        status, body = curl('http://%d-%s-%s.localhost:%d/' % (port, BOX, 'a' * 16,
                                                               sbx.worker.port))
        assert status == 404 and json.loads(body)['code'] == 'INVALID_TOKEN', body
        return
    rc, url, err = shell(sbx, 'touch ports/%d && cat ports/%d' % (port, port))
    url = url.strip()
    m = re.match(r'^http://(\d+)-box-([a-z0-9_]{16})\.localhost:(\d+)/$', url)
    assert rc == 0 and m and m.group(1) == str(port) and m.group(3) == str(sbx.worker.port), \
        (url, err)
    # the listing through the Worker says the same, sbxd's own says its own address
    status, _, r = api(sbx, '/api/x/ports')
    assert [p['url'] for p in r['ports'] if p['port'] == port] == [url], r
    status, direct = sbx.api('/api/x/ports')
    assert [p['url'] for p in direct['ports'] if p['port'] == port] != [url]

    # through workerd to the server in the sandbox; the clients' token stays out, the app's
    # own Authorization passes
    status, body = curl(url + 'some/path?q=1', '-H', 'Authorization: Basic YXBwOmFwcA==')
    assert status == 200, body
    seen = json.loads(body)
    assert seen['path'] == '/some/path?q=1' and seen['method'] == 'GET'
    headers = {k.lower(): v for k, v in seen['headers'].items()}
    assert headers['authorization'] == 'Basic YXBwOmFwcA=='
    status, body = curl(url, '-H', 'Authorization: Bearer ' + sbx.worker.token,
                        '-H', 'X-Other: ' + sbx.worker.token, '-d', 'posted')
    assert status == 200, body
    seen = json.loads(body)
    assert seen['method'] == 'POST'
    assert sbx.worker.token not in json.dumps(seen), seen
    assert not {'authorization', 'x-other'} & {k.lower() for k in seen['headers']}

    # the token in the URL is the credential
    status, body = curl(url.replace(m.group(2), 'a' * 16))
    assert status == 404 and '"path"' not in body
    # the host's sandbox id picks the sandbox (here every sandbox is the same sbxd)
    assert started(sbx, 'other-box') == 0
    curl(url.replace('-box-', '-other-box-'))
    assert started(sbx, 'other-box') == 1
    rc, _, err = shell(sbx, 'rm ports/%d' % port)
    assert rc == 0, err
    assert curl(url)[0] == 404


def test_misconfigured_worker_says_what_to_set(sbx, build_dir):
    for env, words in (({'SBXFS_TOKEN': None}, 'wrangler secret put SBXFS_TOKEN'),
                       ({'SBXD_PORT': 'abc'}, 'SBXD_PORT is "abc"'),
                       ({'SBXD_PORT': '3000'}, 'SBXD_PORT is "3000"'),
                       ({'SBXD_PORT': '7070', 'SBXD_TOKEN': None},
                        'wrangler secret put SBXD_TOKEN'),
                       ({'PREVIEW_HOST': 'http://x/'}, 'PREVIEW_HOST is')):
        tmp = os.path.join(sbx.tmp, 'misconfigured')
        os.makedirs(tmp, exist_ok=True)
        w = WorkerProcess(build_dir, tmp, sbx.mode, sbx.url, sbx.token, env=env)
        try:
            status, _, r = call(w.sandbox_url(BOX) + '/api/ping', token=w.token)
        finally:
            assert w.stop() == []
        assert status == 500 and r['code'] == 'WORKER_MISCONFIGURED', r
        assert words in r['message'], r


@pytest.mark.skipif(not os.access(NODE22, os.X_OK), reason='wrangler needs Node 22 '
                    '(npm ci installs it on Linux x64 only)')
def test_the_deployed_module_loads_and_refuses_strangers(sbx, build_dir):
    """What `wrangler deploy` uploads (wrangler.jsonc, src/index.ts and the SDK's own Sandbox
    class): it builds, loads in workerd, refuses requests without the token before touching a
    sandbox, and passes the others to the SDK, which says why it cannot start a container
    (workerd here runs none)."""
    tmp = os.path.join(sbx.tmp, 'deployed')
    os.makedirs(tmp, exist_ok=True)
    w = WorkerProcess(build_dir, tmp, sbx.mode, sbx.url, sbx.token,
                      module=wrangler_build(build_dir))
    try:
        status, headers, r = call(w.sandbox_url(BOX) + '/api/ping')
        assert status == 401 and r['code'] == 'UNAUTHORIZED', r
        status, _, r = call(w.sandbox_url('-bad') + '/api/ping', token=w.token)
        assert status == 400 and r['code'] == 'INVALID_SANDBOX_ID', r
        status, _, r = call(w.sandbox_url(BOX) + '/api/ping', token=w.token, timeout=60)
        assert status == 502 and r['code'] == 'SANDBOX_UNREACHABLE', (status, r)
        assert 'Containers have not been enabled' in r['message'], r
    finally:
        assert w.stop() == []


def test_worker_typechecks():
    """The Worker and its test double are well-typed TypeScript (tsc, strict)."""
    p = subprocess.run([os.path.join(WORKER_DIR, 'node_modules', '.bin', 'tsc'), '--noEmit',
                        '-p', WORKER_DIR], capture_output=True, timeout=120 * SLOW)
    assert p.returncode == 0, p.stdout.decode() + p.stderr.decode()
