"""Code contexts (/api/contexts, /api/execute/code, /api/x/interrupt) against a real sbxd.

Every test talks HTTP to sbxd; no mount is needed. Events are read as they arrive, with the
time each one came, so streaming is checked as well as content.
"""
import base64
import json
import struct
import threading
import time
import urllib.error
import urllib.request

import pytest

from util import SLOW, Sandbox

# each of these tests starts interpreters; allow for a loaded machine
pytestmark = pytest.mark.timeout(180 * SLOW)


@pytest.fixture(scope='module')
def server(build_dir):
    s = Sandbox(build_dir, 'ext')
    s.start_server()
    yield s
    problems = s.close()
    s.remove()
    assert not problems, problems


def create(server, language='python', **extra):
    body = dict(extra, language=language)
    status, r = server.api('/api/contexts', body, timeout=90)
    assert status == 200, (status, r)
    assert r['success'] and r['contextId']
    return r['contextId']


def run(server, ctx, code, timeout_ms=None, started=None, on_event=None):
    """Executes code; returns [(seconds since the request, event)], the last one terminal.
    started (an Event) is set once the stream is open; on_event(event) is called as each
    event arrives."""
    body = {'context_id': ctx, 'code': code}
    if timeout_ms is not None:
        body['timeout_ms'] = timeout_ms
    req = urllib.request.Request(server.url + '/api/execute/code',
                                 data=json.dumps(body).encode(), method='POST')
    req.add_header('Authorization', 'Bearer ' + server.token)
    t0 = time.monotonic()
    events = []
    with urllib.request.urlopen(req, timeout=120 * SLOW) as resp:
        assert resp.status == 200
        assert resp.headers['Content-Type'].startswith('text/event-stream')
        if started:
            started.set()
        for line in resp:
            if not line.startswith(b'data: '):
                continue
            ev = json.loads(line[6:])
            events.append((time.monotonic() - t0, ev))
            if on_event:
                on_event(ev)
    assert events, 'the stream ended without events'
    assert events[-1][1]['type'] in ('execution_complete', 'error'), events[-1]
    assert [e for _, e in events[:-1] if e['type'] in ('execution_complete', 'error')] == []
    return events


def evs(server, ctx, code, **kw):
    return [e for _, e in run(server, ctx, code, **kw)]


def stdout(events):
    return ''.join(e['text'] for e in events if e['type'] == 'stdout')


def stderr(events):
    return ''.join(e['text'] for e in events if e['type'] == 'stderr')


def results(events):
    return [e for e in events if e['type'] == 'result']


def state_of(server, ctx):
    status, r = server.api('/api/contexts')
    assert status == 200
    return {c['id']: c for c in r['contexts']}[ctx]['state']


def code_error(server, body):
    status, r = server.api('/api/execute/code', body)
    return status, r


@pytest.fixture(scope='module')
def py(server):
    return create(server, 'python')


@pytest.fixture(scope='module')
def js(server):
    return create(server, 'javascript')


@pytest.fixture(scope='module')
def ts(server):
    return create(server, 'typescript')


# ---- Python ----

def test_python_state_persists(server, py):
    e = evs(server, py, 'x = 41\ndef f(v):\n    return v + 1')
    assert e == [{'type': 'execution_complete', 'execution_count': e[-1]['execution_count']}]
    e = evs(server, py, 'f(x)')
    assert results(e) == [{'type': 'result', 'text': '42', 'metadata': {}}]
    assert e[-1]['type'] == 'execution_complete'


def test_python_output_kinds(server, py):
    e = evs(server, py, 'import sys, os\nprint("out")\nprint("err", file=sys.stderr)\n'
                        'os.system("echo from-a-child; echo child-err >&2")\n{"a": [1, 2]}')
    assert stdout(e) == 'out\nfrom-a-child\n'
    assert stderr(e) == 'err\nchild-err\n'
    assert results(e) == [{'type': 'result', 'json': {'a': [1, 2]}, 'metadata': {}}]


def test_python_errors(server, py):
    e = evs(server, py, '1/0')
    assert e[-1]['type'] == 'error'
    assert e[-1]['ename'] == 'ZeroDivisionError' and e[-1]['evalue'] == 'division by zero'
    assert any('1/0' in line for line in e[-1]['traceback'])
    e = evs(server, py, 'def broken(:\n    pass')
    assert e[-1]['type'] == 'error' and e[-1]['ename'] == 'SyntaxError'
    # the context still works
    assert results(evs(server, py, '6*7'))[0]['text'] == '42'


def test_python_streams_as_it_runs(server, py):
    events = run(server, py, 'import time\nfor i in range(6):\n    print(i, flush=True)\n'
                             '    time.sleep(0.5)')
    assert stdout([e for _, e in events]) == ''.join('%d\n' % i for i in range(6))
    first = next(t for t, e in events if e['type'] == 'stdout')
    last = events[-1][0]
    assert last >= 2.5
    assert first < 1.2, 'the first line came at %.2f s, the end at %.2f s' % (first, last)


def test_python_cwd_and_env(server):
    server.execute('mkdir -p /workspace/sub')
    ctx = create(server, 'python', cwd='/workspace/sub', env_vars={'SBX_TEST_VAR': 'hello'})
    e = evs(server, ctx, 'import os, subprocess\nprint(os.getcwd(), os.environ["SBX_TEST_VAR"])\n'
                         'subprocess.run("echo $SBX_TEST_VAR; pwd", shell=True)')
    assert stdout(e) == '/workspace/sub hello\nhello\n/workspace/sub\n'
    status, r = server.api('/api/contexts')
    assert {'id': ctx, 'language': 'python', 'cwd': '/workspace/sub',
            'state': 'ready'} in r['contexts']
    assert server.api('/api/contexts/' + ctx, method='DELETE')[0] == 200


def formats(events):
    """The result events, each as the set of formats it carries."""
    return [set(r) - {'type', 'metadata'} for r in results(events)]


def test_python_dataframe_html(server, py):
    e = evs(server, py, 'import pandas as pd\npd.DataFrame({"a": [1, 2], "b": ["x", "y"]})')
    assert e[-1]['type'] == 'execution_complete', e[-1]
    # one display, one result with every format it has
    assert formats(e) == [{'text', 'html'}], e
    html = results(e)[0]['html']
    assert '<table' in html and '<td>x</td>' in html
    assert results(e)[0]['text'].split() == ['a', 'b', '0', '1', 'x', '1', '2', 'y']


def png_size(b64):
    data = base64.b64decode(b64)
    assert data[:8] == b'\x89PNG\r\n\x1a\n' and data[12:16] == b'IHDR'
    return struct.unpack('>II', data[16:24])


def test_python_matplotlib_png(server, py):
    e = evs(server, py, 'import matplotlib.pyplot as plt\n'
                        'fig = plt.figure(figsize=(4, 3), dpi=100)\n'
                        'plt.plot([1, 3, 2])\nplt.show()')
    assert e[-1]['type'] == 'execution_complete', e[-1]
    assert formats(e) == [{'text', 'png', 'chart'}], e
    assert results(e)[0]['text'] == '<Figure size 400x300 with 1 Axes>'
    assert png_size(results(e)[0]['png']) == (400, 300)
    # a figure as the last expression: displayed once, not again when the execution ends
    e = evs(server, py, 'fig2, ax = plt.subplots(figsize=(2, 5), dpi=50)\nax.bar([1, 2], [3, 4])'
                        '\nfig2')
    assert formats(e) == [{'text', 'png', 'chart'}], e
    assert png_size(results(e)[0]['png']) == (100, 250)


def test_python_other_mime_types(server, py):
    e = evs(server, py, 'from IPython.display import display, SVG, HTML, Markdown, Latex, JSON\n'
                        'display(SVG(\'<svg xmlns="http://www.w3.org/2000/svg" width="1" '
                        'height="1"/>\'))\ndisplay(Markdown("# T"))\ndisplay(HTML("<b>hi</b>"))\n'
                        'display(JSON({"k": 1}))\nLatex("$x^2$")')
    assert formats(e) == [{'svg', 'text'}, {'markdown', 'text'}, {'html', 'text'},
                          {'json', 'text'}, {'latex', 'text'}], e
    assert results(e)[0]['svg'].startswith('<svg')
    assert results(e)[4]['latex'] == '$x^2$'
    # metadata by MIME type, as IPython gives it
    assert results(e)[3]['json'] == {'k': 1}
    assert results(e)[3]['metadata'] == {'application/json': {'expanded': False,
                                                              'root': 'root'}}


def test_python_figure_that_cannot_be_drawn(server, py):
    e = evs(server, py, 'import matplotlib.pyplot as plt\nplt.plot([1, 2])\n'
                        'plt.title("$x^$")\nprint("drawn at the end")')
    assert e[-1]['type'] == 'execution_complete', e[-1]
    assert stdout(e) == 'drawn at the end\n'
    # the formats that could be made go out; why the image could not is on stderr
    assert formats(e) == [{'text', 'chart'}], e
    assert results(e)[0]['chart']['title'] == '$x^$'
    assert 'ValueError' in stderr(e) and 'x^' in stderr(e)


def test_python_figure_with_too_much_data_for_a_chart(server, py):
    e = evs(server, py, 'import matplotlib.pyplot as plt\nplt.plot(range(200001))\nplt.show()')
    assert formats(e) == [{'text', 'png'}], e
    assert stderr(e) == 'sbx: a figure plots more than 200000 values, too many for a chart: ' \
                        'its result has only its images\n'


def test_python_interrupted_figures_are_closed_unshown(server, py):
    e = evs(server, py, 'import matplotlib.pyplot as plt, time\nplt.plot([1, 2])\n'
                        'time.sleep(60)', timeout_ms=1000)
    assert e[-1]['ename'] == 'TimeoutError' and results(e) == [], e
    assert results(evs(server, py, 'plt.get_fignums()')) == [
        {'type': 'result', 'json': [], 'metadata': {}}]


def test_big_stdout_arrives_whole(server, py):
    e = evs(server, py, 'import sys\nfor i in range(10):\n'
                        '    sys.stdout.write(chr(97 + i) * (1 << 20))')
    assert e[-1]['type'] == 'execution_complete'
    out = stdout(e)
    assert len(out) == 10 << 20
    assert out == ''.join(chr(97 + i) * (1 << 20) for i in range(10))


# ---- JavaScript and TypeScript ----

def test_js_state_and_results(server, js):
    assert evs(server, js, 'const a = 1; let b = 2; var c = 3; function f(v) { return v * 2 }'
               )[-1]['type'] == 'execution_complete'
    e = evs(server, js, 'console.log("sum", a + b + c); console.error("oops"); f(a + b + c)')
    assert stdout(e) == 'sum 6\n' and stderr(e) == 'oops\n'
    assert results(e) == [{'type': 'result', 'text': '12', 'metadata': {}}]
    e = evs(server, js, '({k: [1, "x"], n: null})')
    assert results(e) == [{'type': 'result', 'json': {'k': [1, 'x'], 'n': None},
                           'metadata': {}}]
    assert results(evs(server, js, '[1, 2]'))[0]['json'] == [1, 2]
    assert results(evs(server, js, 'new Map([[1, 2]])'))[0]['text'] == 'Map(1) { 1 => 2 }'


def test_js_top_level_await(server, js):
    e = evs(server, js, 'const v = await new Promise(r => setTimeout(() => r(21), 100)); v * 2')
    assert results(e)[0]['text'] == '42'
    assert results(evs(server, js, 'v + 1'))[0]['text'] == '22'


def test_js_errors(server, js):
    e = evs(server, js, 'throw new TypeError("boom")')
    assert e[-1]['type'] == 'error' and e[-1]['ename'] == 'TypeError'
    assert e[-1]['evalue'] == 'boom'
    e = evs(server, js, 'function (')
    assert e[-1]['type'] == 'error' and e[-1]['ename'] == 'SyntaxError'
    e = evs(server, js, 'await Promise.reject(new RangeError("later"))')
    assert e[-1]['ename'] == 'RangeError'


def test_js_streams_and_children(server, js):
    events = run(server, js, 'for (let i = 0; i < 5; i++) { console.log(i); '
                             'await new Promise(r => setTimeout(r, 500)); }\n'
                             'require("child_process").execSync("echo child", '
                             '{stdio: "inherit"})')
    e = [ev for _, ev in events]
    assert stdout(e) == '0\n1\n2\n3\n4\nchild\n'
    first = next(t for t, ev in events if ev['type'] == 'stdout')
    assert events[-1][0] >= 2.0 and first < 1.0


def test_ts(server, ts):
    e = evs(server, ts, 'interface P { x: number }\nconst p: P = { x: await Promise.resolve(20) };'
                        '\nenum E { A, B }')
    assert e[-1]['type'] == 'execution_complete', e
    assert results(evs(server, ts, 'p.x + E.B * 2 as number'))[0]['text'] == '22'
    e = evs(server, ts, 'let broken: number = ;')
    assert e[-1]['type'] == 'error' and e[-1]['ename'] == 'SyntaxError'


# ---- concurrency, limits, failures ----

def test_contexts_run_in_parallel(server):
    a, b = create(server, 'python'), create(server, 'python')
    out = {}

    def go(ctx):
        out[ctx] = evs(server, ctx, 'import time\ntime.sleep(2)\nprint("slept")')
    t0 = time.monotonic()
    threads = [threading.Thread(target=go, args=(c,)) for c in (a, b)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    took = time.monotonic() - t0
    assert all(stdout(out[c]) == 'slept\n' for c in (a, b))
    assert took < 3.5 * SLOW, 'two 2 s sleeps in two contexts took %.1f s' % took
    for c in (a, b):
        server.api('/api/contexts/' + c, method='DELETE')


def test_same_context_is_serialised(server, py):
    first_started = threading.Event()
    out = {}

    def slow():
        out['slow'] = run(server, py, 'import time\ntime.sleep(1.5)\nprint("first")',
                          started=first_started)
    t = threading.Thread(target=slow)
    t.start()
    first_started.wait(30)
    time.sleep(0.2)
    assert state_of(server, py) == 'busy'
    e = evs(server, py, 'print("second")')
    t.join()
    assert stdout([ev for _, ev in out['slow']]) == 'first\n' and stdout(e) == 'second\n'
    assert state_of(server, py) == 'ready'


def test_timeout(server):
    ctx = create(server, 'python')
    t0 = time.monotonic()
    e = evs(server, ctx, 'import time\nprint("before", flush=True)\ntime.sleep(30)',
            timeout_ms=1000)
    took = time.monotonic() - t0
    assert stdout(e) == 'before\n'
    assert e[-1]['type'] == 'error' and e[-1]['ename'] == 'TimeoutError'
    assert took < 5 * SLOW
    # interrupted, not killed: state survives
    assert state_of(server, ctx) == 'ready'
    assert results(evs(server, ctx, '1 + 1'))[0]['text'] == '2'
    # a timeout that is not reached changes nothing
    assert evs(server, ctx, 'x = 1', timeout_ms=10000)[-1]['type'] == 'execution_complete'
    server.api('/api/contexts/' + ctx, method='DELETE')


def test_timeout_kills_what_ignores_the_interrupt(server):
    ctx = create(server, 'python')
    e = evs(server, ctx, 'import signal, time\nsignal.signal(signal.SIGINT, signal.SIG_IGN)\n'
                         'time.sleep(30)', timeout_ms=500)
    assert e[-1]['type'] == 'error' and e[-1]['ename'] == 'TimeoutError'
    assert state_of(server, ctx) == 'dead'
    server.api('/api/contexts/' + ctx, method='DELETE')


@pytest.mark.parametrize('language,code', [
    ('python', 'import time\nprint("go", flush=True)\ntime.sleep(60)'),
    ('python', 'print("go", flush=True)\nwhile True:\n    pass'),
    ('javascript', 'console.log("go"); while (true) {}'),
    ('javascript', 'console.log("go"); await new Promise(() => {})'),
])
def test_interrupt(server, language, code):
    ctx = create(server, language)
    answers = []

    def interrupt_once_running(ev):
        if ev['type'] == 'stdout' and not answers:
            time.sleep(0.3)
            answers.append(server.api('/api/x/interrupt', {'context_id': ctx}))
    t0 = time.monotonic()
    e = evs(server, ctx, code, on_event=interrupt_once_running)
    assert time.monotonic() - t0 < 10 * SLOW
    assert answers[0][0] == 200 and answers[0][1]['interrupted'] is True
    assert stdout(e) == 'go\n'
    assert e[-1]['type'] == 'error' and e[-1]['ename'] == 'KeyboardInterrupt', e[-1]
    # the context lives on, with its state
    assert evs(server, ctx, '1')[-1]['type'] == 'execution_complete'
    assert state_of(server, ctx) == 'ready'
    # interrupting an idle context is fine
    status, r = server.api('/api/x/interrupt', {'context_id': ctx})
    assert status == 200 and r['interrupted'] is False
    server.api('/api/contexts/' + ctx, method='DELETE')


@pytest.mark.expect_errors
@pytest.mark.parametrize('language,code', [
    ('python', 'import os\nprint("bye", flush=True)\nos._exit(3)'),
    ('javascript', 'console.log("bye"); process.exit(3)'),
])
def test_interpreter_dies(server, language, code):
    ctx = create(server, language)
    e = evs(server, ctx, code)
    assert e[-1]['type'] == 'error' and e[-1]['ename'] == 'InterpreterDied', e[-1]
    assert 'status 3' in e[-1]['evalue']
    assert state_of(server, ctx) == 'dead'
    status, r = code_error(server, {'context_id': ctx, 'code': '1'})
    assert status == 500 and r['code'] == 'INTERNAL_ERROR'
    assert r['error'] == ('Context executor has terminated. Please delete and recreate the '
                          'context.')
    assert server.api('/api/contexts/' + ctx, method='DELETE')[0] == 200


def test_request_errors(server, py):
    status, r = server.api('/api/contexts', {'language': 'cobol'})
    assert status == 400 and r['code'] == 'VALIDATION_FAILED' and r['errno'] == 'EINVAL'
    status, r = server.api('/api/contexts', {'language': 'python', 'cwd': '/no/such/dir'})
    assert status == 404 and r['errno'] == 'ENOENT'
    status, r = server.api('/api/contexts', {'env_vars': {'A': 1}})
    assert status == 400 and r['code'] == 'VALIDATION_FAILED'

    nope = '00000000-0000-4000-8000-000000000000'
    status, r = code_error(server, {'context_id': nope, 'code': '1'})
    assert status == 404 and r == {'error': 'Context %s not found' % nope,
                                   'code': 'CONTEXT_NOT_FOUND',
                                   'details': {'contextId': nope}, 'errno': 'ENOENT'}
    status, r = code_error(server, {'code': '1'})
    assert status == 404 and r['code'] == 'CONTEXT_NOT_FOUND'
    status, r = code_error(server, {'context_id': py, 'code': '1', 'language': 'javascript'})
    assert status == 500 and r['code'] == 'CODE_EXECUTION_ERROR'
    status, r = code_error(server, {'context_id': py})
    assert status == 400
    status, r = server.api('/api/contexts/' + nope, method='DELETE')
    assert status == 404 and r['code'] == 'CONTEXT_NOT_FOUND'
    status, r = server.api('/api/x/interrupt', {'context_id': nope})
    assert status == 404 and r['code'] == 'CONTEXT_NOT_FOUND'


def test_delete_while_running(server):
    ctx = create(server, 'python')
    started = threading.Event()
    out = {}

    def go():
        out['e'] = evs(server, ctx, 'import time\ntime.sleep(60)', started=started)
    t = threading.Thread(target=go)
    t.start()
    started.wait(30)
    time.sleep(0.3)
    assert server.api('/api/contexts/' + ctx, method='DELETE')[0] == 200
    t.join(30)
    assert not t.is_alive()
    assert out['e'][-1]['type'] == 'error' and out['e'][-1]['ename'] == 'InterpreterDied'
    status, r = server.api('/api/contexts')
    assert ctx not in [c['id'] for c in r['contexts']]


def test_client_leaving_interrupts(server):
    ctx = create(server, 'python')
    body = json.dumps({'context_id': ctx, 'code': 'import time\ntime.sleep(60)'}).encode()
    req = urllib.request.Request(server.url + '/api/execute/code', data=body, method='POST')
    req.add_header('Authorization', 'Bearer ' + server.token)
    resp = urllib.request.urlopen(req, timeout=30)
    time.sleep(0.5)
    assert state_of(server, ctx) == 'busy'
    resp.close()
    deadline = time.monotonic() + 10 * SLOW
    while state_of(server, ctx) != 'ready' and time.monotonic() < deadline:
        time.sleep(0.1)
    assert state_of(server, ctx) == 'ready'
    assert results(evs(server, ctx, '2 + 2'))[0]['text'] == '4'
    server.api('/api/contexts/' + ctx, method='DELETE')
