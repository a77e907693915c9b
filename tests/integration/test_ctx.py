"""ctx/: code contexts through the mount, driven with the shell one-liners of docs/ctx.md, in
both modes (fallback: the standard context routes of a plain container, where interrupting is
absent). Every read of an out file happens in a child process with a time limit, so a hang is
a failure, not a wedged test run."""
import errno
import json
import os
import shlex
import signal
import struct
import subprocess
import sys
import time

import pytest

from util import BACKEND_DOWN_ERRNOS, SLOW, default_sigint, fs_op, sh, wait_for

# each test starts interpreters; allow for a loaded machine
pytestmark = pytest.mark.timeout(240 * SLOW)

LANGS = ('python', 'javascript', 'typescript')


def ctx(sbx, *parts):
    return os.path.join(sbx.mnt, 'ctx', *parts)


def new(sbx, options=None):
    """A new context by the documented one-liners; returns its id."""
    if options is None:
        cmd = 'cat ctx/new'
    else:
        cmd = 'id=$(exec 3<>ctx/new; echo %s >&3; head -1 <&3) && echo "$id"' % (
            shlex.quote(options))
    r = sh('cd %s && %s' % (shlex.quote(sbx.mnt), cmd), timeout=90)
    cid = r.stdout.decode().strip()
    assert cid and '/' not in cid and '\n' not in cid, r
    return cid


def send(sbx, cid, code):
    """Runs code: `cat FILE > ctx/ID/in`, whose close() reports whether it started."""
    path = os.path.join(sbx.tmp, 'code-%d' % os.getpid())
    with open(path, 'w') as f:
        f.write(code)
    return sh('cat %s > %s' % (shlex.quote(path), shlex.quote(ctx(sbx, cid, 'in'))),
              check=False)


def out(sbx, cid, timeout=60):
    """cat ctx/ID/out: the events of the latest execution."""
    r = sh('cat %s' % shlex.quote(ctx(sbx, cid, 'out')), timeout=timeout)
    return [json.loads(line) for line in r.stdout.decode().splitlines()]


def run(sbx, cid, code, timeout=60):
    r = send(sbx, cid, code)
    assert r.returncode == 0, r.stderr
    return out(sbx, cid, timeout)


def texts(events, kind):
    return ''.join(e.get('text', '') for e in events if e['type'] == kind)


def results(events, field):
    return [e[field] for e in events if e['type'] == 'result' and field in e]


def png_size(data):
    assert data[:8] == b'\x89PNG\r\n\x1a\n' and data[12:16] == b'IHDR', data[:16]
    return struct.unpack('>II', data[16:24])


@pytest.fixture(scope='module')
def py(sbx):
    return new(sbx)


def test_new_gives_a_python_context(sbx):
    cid = new(sbx)
    assert cid in os.listdir(ctx(sbx))
    assert 'new' in os.listdir(ctx(sbx))
    assert sorted(os.listdir(ctx(sbx, cid))) == ['cwd', 'in', 'interrupt', 'language', 'out',
                                                 'results']
    with open(ctx(sbx, cid, 'language')) as f:
        assert f.read() == 'python\n'
    with open(ctx(sbx, cid, 'cwd')) as f:
        assert f.read() == '/workspace\n'


def test_out_before_any_execution_is_empty(sbx):
    cid = new(sbx)
    t0 = time.monotonic()
    assert out(sbx, cid) == []
    assert time.monotonic() - t0 < 5 * SLOW
    assert os.listdir(ctx(sbx, cid, 'results')) == []


@pytest.mark.parametrize('lang', LANGS)
def test_state_persists(sbx, lang):
    cid = new(sbx, 'language=%s' % lang)
    with open(ctx(sbx, cid, 'language')) as f:
        assert f.read() == lang + '\n'
    first = {'python': 'x = 41\ndef f(y):\n    return y + 1\n',
             'javascript': 'var x = 41; function f(y) { return y + 1 }',
             'typescript': 'var x: number = 41; function f(y: number): number { return y + 1 }'}
    ev = run(sbx, cid, first[lang])
    assert ev[-1]['type'] == 'execution_complete', ev
    ev = run(sbx, cid, 'f(x)')
    assert ev[-1]['type'] == 'execution_complete', ev
    assert results(ev, 'text') == ['42'], ev


@pytest.mark.parametrize('lang', ('javascript', 'typescript'))
def test_top_level_await(sbx, lang):
    cid = new(sbx, 'language=%s' % lang)
    ev = run(sbx, cid, 'const v = await new Promise(r => setTimeout(() => r(6 * 7), 100));\n'
                       'console.log("got", v)')
    assert texts(ev, 'stdout') == 'got 42\n', ev
    assert ev[-1]['type'] == 'execution_complete'


def test_cwd_and_env_options(sbx):
    os.makedirs(os.path.join(sbx.workspace, 'app'), exist_ok=True)
    cid = new(sbx, 'language=javascript cwd=/workspace/app env.FOO=bar '
                   'env.GREETING="hello world"')
    with open(ctx(sbx, cid, 'cwd')) as f:
        assert f.read() == '/workspace/app\n'
    ev = run(sbx, cid, 'console.log(process.cwd(), process.env.FOO, process.env.GREETING)')
    assert texts(ev, 'stdout') == '/workspace/app bar hello world\n', ev
    # a relative cwd is under /workspace
    cid = new(sbx, 'cwd=app')
    ev = run(sbx, cid, 'import os; print(os.getcwd())')
    assert texts(ev, 'stdout') == '/workspace/app\n', ev


def test_stdout_stderr_result_error(sbx, py):
    ev = run(sbx, py, 'import sys\nprint("to out")\nprint("to err", file=sys.stderr)\n6 * 7')
    assert texts(ev, 'stdout') == 'to out\n'
    assert texts(ev, 'stderr') == 'to err\n'
    assert results(ev, 'text') == ['42']
    assert ev[-1] == {'type': 'execution_complete', 'execution_count': ev[-1]['execution_count']}
    with open(ctx(sbx, py, 'results', '1.txt')) as f:
        assert f.read() == '42'
    ev = run(sbx, py, 'print("before")\n1 / 0')
    assert texts(ev, 'stdout') == 'before\n'
    assert ev[-1]['type'] == 'error' and ev[-1]['ename'] == 'ZeroDivisionError', ev
    assert 'division by zero' in ev[-1]['evalue'] and isinstance(ev[-1]['traceback'], list)
    # one event a line, compact JSON
    raw = sh('cat %s' % shlex.quote(ctx(sbx, py, 'out'))).stdout.decode()
    assert all(line.startswith('{"type":"') for line in raw.splitlines()), raw


def test_events_stream_as_they_happen(sbx, py):
    r = send(sbx, py, 'import time\nfor i in range(3):\n    print(i)\n    time.sleep(1)\n')
    assert r.returncode == 0, r.stderr
    t0 = time.monotonic()
    p = subprocess.Popen(['cat', ctx(sbx, py, 'out')], stdout=subprocess.PIPE)
    first = json.loads(p.stdout.readline())
    took = time.monotonic() - t0
    rest = p.stdout.read()
    assert p.wait(30) == 0
    total = time.monotonic() - t0
    assert first['type'] == 'stdout' and first['text'].startswith('0'), first
    assert took < 1.5, 'the first event came after %.1f s' % took
    assert total > 2, 'the whole run took only %.1f s' % total
    assert json.loads(rest.splitlines()[-1])['type'] == 'execution_complete'


def test_poll_on_out(sbx, py):
    import select
    r = send(sbx, py, 'import time; time.sleep(1.5); print("late")')
    assert r.returncode == 0
    fd = os.open(ctx(sbx, py, 'out'), os.O_RDONLY)
    try:
        assert select.select([fd], [], [], 0.5)[0] == []
        assert select.select([fd], [], [], 10)[0] == [fd]
        assert b'late' in os.read(fd, 65536)
    finally:
        os.close(fd)


# ---- rich results: one result per display, every format in it; charts ----

def shown(events):
    """The result events, each as the set of formats it carries."""
    return [set(e) - {'type', 'metadata'} for e in events if e['type'] == 'result']


def test_a_display_is_one_result_with_all_its_formats(sbx, py):
    ev = run(sbx, py, 'import matplotlib.pyplot as plt\nimport pandas as pd\n'
                      'fig, ax = plt.subplots(figsize=(4, 3), dpi=100)\n'
                      'ax.plot([1, 3, 2])\nplt.show()\n'
                      'pd.DataFrame({"a": [1, 2], "b": [3, 4]})\n')
    assert ev[-1]['type'] == 'execution_complete', ev
    assert shown(ev) == [{'text', 'png', 'chart'}, {'text', 'html'}], ev
    assert results(ev, 'text')[0] == '<Figure size 400x300 with 1 Axes>'
    assert sorted(os.listdir(ctx(sbx, py, 'results'))) == [
        '1.chart.json', '1.png', '1.txt', '2.html', '2.txt']
    path = ctx(sbx, py, 'results', '1.png')
    with open(path, 'rb') as f:
        data = f.read()
    assert os.stat(path).st_size == len(data)
    assert png_size(data) == (400, 300)
    with open(ctx(sbx, py, 'results', '2.html')) as f:
        html = f.read()
    assert '<table' in html and '</table>' in html
    with open(ctx(sbx, py, 'results', '2.txt')) as f:
        assert f.read().split() == ['a', 'b', '0', '1', '3', '1', '2', '4']
    # an ordinary program opens it by name (an image viewer would)
    r = sh('file -b %s' % shlex.quote(path))
    assert r.stdout.startswith(b'PNG image data, 400 x 300')


FIGURES = {
    # a script written for servers: no show(), a backend of its own
    'agg': 'import matplotlib\nmatplotlib.use("Agg")\nimport matplotlib.pyplot as plt\n'
           'plt.plot([1, 2])\nprint("end")',
    'show': 'import matplotlib.pyplot as plt\nplt.plot([1, 2])\nplt.show()\nprint("end")',
    'display': 'import matplotlib.pyplot as plt\nfig, ax = plt.subplots()\nax.plot([1, 2])\n'
               'display(fig)\nprint("end")',
    'last': 'import matplotlib.pyplot as plt\nfig, ax = plt.subplots()\nax.plot([1, 2])\n'
            'print("end")\nfig',
    # a notebook's habit
    'inline': '%matplotlib inline\nimport matplotlib.pyplot as plt\nfig, ax = plt.subplots()\n'
              'ax.plot([1, 2])\ndisplay(fig)\nprint("end")',
}


@pytest.mark.parametrize('how', sorted(FIGURES))
def test_each_figure_is_one_result_however_it_is_made(sbx, how):
    cid = new(sbx)
    ev = run(sbx, cid, FIGURES[how])
    assert ev[-1]['type'] == 'execution_complete', ev
    assert texts(ev, 'stdout') == 'end\n'
    assert shown(ev) == [{'text', 'png', 'chart'}], ev
    with open(ctx(sbx, cid, 'results', '1.png'), 'rb') as f:
        assert png_size(f.read()) == (640, 480)
    # shown and closed: the next execution starts without figures
    assert results(run(sbx, cid, 'plt.get_fignums()'), 'json') == [[]]


def chart_of(sbx, cid, code):
    """Runs code that makes one figure; returns its chart, checked against
    results/N.chart.json (N: its result's place among the results)."""
    ev = run(sbx, cid, 'import matplotlib.pyplot as plt\n' + code)
    assert ev[-1]['type'] == 'execution_complete', ev
    charts = [(n, e['chart']) for n, e in enumerate(
        [e for e in ev if e['type'] == 'result'], 1) if 'chart' in e]
    assert len(charts) == 1, ev
    n, chart = charts[0]
    with open(ctx(sbx, cid, 'results', '%d.chart.json' % n)) as f:
        assert json.load(f) == chart
    return chart


def test_chart_of_a_line_plot(sbx, py):
    c = chart_of(sbx, py, 'fig, ax = plt.subplots()\n'
                          'ax.plot([0, 1, 2], [0, 1, 4], label="squares")\n'
                          'ax.plot([0, 1, 2], [0, 1, 8], label="cubes")\n'
                          'ax.set_title("Powers")\nax.set_xlabel("Time (s)")\n'
                          'ax.set_ylabel("Size [m]")\n'
                          'ax.set_xticks([0, 1, 2], ["zero", "one", "two"])\nplt.show()')
    assert {k: v for k, v in c.items() if not k.startswith('y_tick')} == {
        'type': 'line', 'title': 'Powers', 'x_label': 'Time (s)', 'y_label': 'Size [m]',
        'x_unit': 's', 'y_unit': 'm', 'x_ticks': [0, 1, 2],
        'x_tick_labels': ['zero', 'one', 'two'], 'x_scale': 'linear', 'y_scale': 'linear',
        'elements': [{'label': 'squares', 'points': [[0, 0], [1, 1], [2, 4]]},
                     {'label': 'cubes', 'points': [[0, 0], [1, 1], [2, 8]]}]}
    assert len(c['y_ticks']) == len(c['y_tick_labels']) > 2
    assert c['y_ticks'][0] <= 0 and c['y_ticks'][-1] >= 8
    assert [float(t.replace('\u2212', '-')) for t in c['y_tick_labels']] == c['y_ticks']


def test_chart_of_bars(sbx, py):
    c = chart_of(sbx, py, 'plt.bar(["A", "B", "C"], [3, 1, 2.5], label="sales")\n'
                          'plt.title("Sales")\nplt.xlabel("Shop")\nplt.ylabel("Units")')
    assert c == {'type': 'bar', 'title': 'Sales', 'x_label': 'Shop', 'y_label': 'Units',
                 'x_unit': None, 'y_unit': None,
                 'elements': [{'label': 'A', 'group': 'sales', 'value': 3},
                              {'label': 'B', 'group': 'sales', 'value': 1},
                              {'label': 'C', 'group': 'sales', 'value': 2.5}]}
    # grouped bars beside their ticks; sideways bars name the category axis x
    c = chart_of(sbx, py, 'import numpy as np\nfig, ax = plt.subplots()\nx = np.arange(2)\n'
                          'ax.bar(x - 0.2, [1, 2], 0.4, label="men")\n'
                          'ax.bar(x + 0.2, [3, 4], 0.4, label="women")\n'
                          'ax.set_xticks(x, ["2023", "2024"])')
    assert [(e['label'], e['group'], e['value']) for e in c['elements']] == [
        ('2023', 'men', 1), ('2024', 'men', 2), ('2023', 'women', 3), ('2024', 'women', 4)]
    c = chart_of(sbx, py, 'plt.barh(["x", "y"], [5, 6])\nplt.xlabel("Count")\n'
                          'plt.ylabel("Kind")')
    assert (c['x_label'], c['y_label']) == ('Kind', 'Count')
    assert c['elements'] == [{'label': 'x', 'group': 'Group 0', 'value': 5},
                             {'label': 'y', 'group': 'Group 0', 'value': 6}]


def test_chart_of_a_scatter(sbx, py):
    c = chart_of(sbx, py, 'plt.scatter([1, 2, 3], [4, 5, 6.5], label="samples")\n'
                          'plt.xlabel("x [cm]")')
    assert (c['type'], c['title'], c['x_label'], c['x_unit']) == ('scatter', None, 'x [cm]',
                                                                  'cm')
    assert c['elements'] == [{'label': 'samples', 'points': [[1, 4], [2, 5], [3, 6.5]]}]
    assert c['x_scale'] == 'linear' and len(c['x_ticks']) == len(c['x_tick_labels'])


def test_chart_of_a_pie(sbx, py):
    c = chart_of(sbx, py, 'plt.pie([1, 3], labels=["tea", "coffee"])\nplt.title("Cups")')
    assert c == {'type': 'pie', 'title': 'Cups',
                 'elements': [{'label': 'tea', 'angle': 90, 'radius': 1},
                              {'label': 'coffee', 'angle': 270, 'radius': 1}]}


def test_chart_of_a_box_plot(sbx, py):
    c = chart_of(sbx, py, 'plt.boxplot([[85, 90, 78, 92, 88], [95, 89, 76, 91, 84, 87]],\n'
                          '            labels=["A", "B"])\nplt.ylabel("Score")')
    assert (c['type'], c['x_label'], c['y_label']) == ('box_and_whisker', None, 'Score')
    assert c['elements'] == [
        {'label': 'A', 'min': 78, 'first_quartile': 85, 'median': 88, 'third_quartile': 90,
         'max': 92, 'outliers': []},
        {'label': 'B', 'min': 84, 'first_quartile': 84.75, 'median': 88,
         'third_quartile': 90.5, 'max': 95, 'outliers': [76]}]


def test_chart_of_subplots_is_a_superchart(sbx, py):
    c = chart_of(sbx, py, 'fig, (left, right, image) = plt.subplots(1, 3)\n'
                          'fig.suptitle("All")\n'
                          'left.plot([1, 2], [3, 4], label="rise")\nleft.set_title("L")\n'
                          'right.bar(["p", "q"], [5, 6])\nright.set_title("R")\n'
                          'image.imshow([[1, 2], [3, 4]])\nimage.set_title("I")')
    assert (c['type'], c['title']) == ('superchart', 'All')
    assert [(e['type'], e['title']) for e in c['elements']] == [('line', 'L'), ('bar', 'R'),
                                                                ('unknown', 'I')]
    assert c['elements'][2]['elements'] == []
    assert c['elements'][0]['elements'] == [{'label': 'rise', 'points': [[1, 3], [2, 4]]}]
    assert [(e['label'], e['value']) for e in c['elements'][1]['elements']] == [('p', 5),
                                                                              ('q', 6)]


def test_a_figure_of_no_chart_type_has_only_images(sbx, py):
    ev = run(sbx, py, 'import matplotlib.pyplot as plt\nplt.imshow([[1, 2], [3, 4]])\n'
                      'plt.show()')
    assert shown(ev) == [{'text', 'png'}], ev
    assert sorted(os.listdir(ctx(sbx, py, 'results'))) == ['1.png', '1.txt']


def test_results_one_liners_of_the_guide(sbx, py):
    """docs/ctx.md's jq and shell lines, as written there."""
    run(sbx, py, 'import matplotlib.pyplot as plt\n'
                 'plt.plot([0, 1, 2], [1, 3, 2], label="a")\nplt.show()\n6 * 7')
    d = 'cd %s && id=%s && ' % (shlex.quote(sbx.mnt), shlex.quote(py))
    r = sh(d + 'jq -c \'select(.type=="result") | keys\' ctx/$id/out')
    assert r.stdout.decode().splitlines() == ['["chart","metadata","png","text","type"]',
                                              '["metadata","text","type"]']
    r = sh(d + 'jq -r \'select(.chart) | .chart.type\' ctx/$id/out')
    assert r.stdout == b'line\n'
    r = sh(d + 'jq -c \'.elements[] | [.label, .points]\' ctx/$id/results/1.chart.json')
    assert r.stdout == b'["a",[[0,1],[1,3],[2,2]]]\n'
    r = sh(d + 'jq -r \'select(.png) | .png\' ctx/$id/out | base64 -d | cmp - '
               'ctx/$id/results/1.png && cat ctx/$id/results/2.txt')
    assert r.stdout == b'42'


def test_ten_megabytes_of_stdout(sbx, py):
    n = 10 * 1024 * 1024 // 10
    ev = run(sbx, py, 'import sys\nsys.stdout.write("".join("%%09d\\n" %% i for i in range(%d)))'
             % n, timeout=120)
    assert ev[-1]['type'] == 'execution_complete', ev[-1]
    text = texts(ev, 'stdout')
    assert len(text) == n * 10
    assert text == ''.join('%09d\n' % i for i in range(n))


def test_out_keeps_the_last_stream_buffer_of_events(fresh_sbx):
    """An execution that prints more than the stream buffer: a reader that comes late gets
    the newest events, whole lines, still ending with the execution's end."""
    sbx = fresh_sbx('stream_buffer=2')
    cid = new(sbx)
    n = 100000
    code = ('for i in range(%d):\n    print("%%0120d" %% i)\n'
            'open("/workspace/printed", "w").close()\n' % n)
    assert send(sbx, cid, code).returncode == 0
    assert wait_for(lambda: os.path.exists(os.path.join(sbx.workspace, 'printed')),
                    120 * SLOW, 0.2)
    events = out(sbx, cid, timeout=120)
    assert events[-1]['type'] == 'execution_complete', events[-1]
    printed = texts(events, 'stdout').split()
    assert 0 < len(printed) < n and printed[-1] == '%0120d' % (n - 1), len(printed)
    assert all(len(x) == 120 for x in printed), 'an event was cut'
    numbers = [int(x) for x in printed]
    assert all(a < b for a, b in zip(numbers, numbers[1:])), 'events out of order'
    assert 'the oldest is dropped' in sbx.read_log(sbx.sbxfs_log)
    # the next execution starts a fresh out
    assert texts(run(sbx, cid, 'print("again")'), 'stdout') == 'again\n'


def test_two_contexts_run_in_parallel(sbx):
    a, b = new(sbx), new(sbx)
    t0 = time.monotonic()
    for cid in (a, b):
        assert send(sbx, cid, 'import time; time.sleep(2); print("done")').returncode == 0
    for cid in (a, b):
        assert texts(out(sbx, cid), 'stdout') == 'done\n'
    took = time.monotonic() - t0
    assert took < 3.8 * SLOW, 'two 2-second runs took %.1f s' % took


def test_a_big_script(sbx, py):
    code = 'data = [\n' + ''.join('    %d,\n' % i for i in range(400000)) + ']\nlen(data)'
    assert len(code) > 4 * 1024 * 1024
    ev = run(sbx, py, code)
    assert results(ev, 'text') == ['400000'], ev[-1]


@pytest.mark.expect_errors
def test_unknown_context(sbx):
    fake = '00000000-0000-4000-8000-000000000000'
    with pytest.raises(OSError) as e:
        open(ctx(sbx, fake, 'in'), 'w')
    assert e.value.errno == errno.ENOENT
    r = sh('echo 1 > %s' % ctx(sbx, fake, 'in'), check=False)
    assert r.returncode != 0 and b'No such file' in r.stderr
    # deleted while its in file is open: close() fails
    cid = new(sbx)
    fd = os.open(ctx(sbx, cid, 'in'), os.O_WRONLY)
    status, _ = sbx.api('/api/contexts/' + cid, method='DELETE')
    assert status == 200
    os.write(fd, b'print(1)\n')
    with pytest.raises(OSError) as e:
        os.close(fd)
    assert e.value.errno == errno.ENOENT


@pytest.mark.expect_errors
def test_bad_language_and_options(sbx):
    for opts in ('language=cobol', 'langauge=python', 'cwd', 'env.1X=2', "env.A='unclosed"):
        r = sh('cd %s && (exec 3<>ctx/new; echo %s >&3; head -1 <&3)' % (
            shlex.quote(sbx.mnt), shlex.quote(opts)), check=False)
        assert r.returncode != 0 and b'Invalid argument' in r.stderr, (opts, r)
        assert r.stdout == b''
    fd = os.open(ctx(sbx, 'new'), os.O_RDWR)
    try:
        os.write(fd, b'language=cobol\n')
        with pytest.raises(OSError) as e:
            os.read(fd, 100)
        assert e.value.errno == errno.EINVAL
    finally:
        os.close(fd)
    with open(sbx.sbxfs_log) as f:
        assert "unknown language 'cobol'" in f.read()


def test_interpreter_killed_mid_run(sbx):
    cid = new(sbx)
    ev = run(sbx, cid, 'import os, signal, time\nprint("up", flush=True)\ntime.sleep(0.5)\n'
                       'os.kill(os.getpid(), signal.SIGKILL)')
    assert texts(ev, 'stdout') == 'up\n'
    assert ev[-1]['type'] == 'error' and ev[-1]['ename'] == 'InterpreterDied', ev
    # the dead context refuses further code at close(), and says so in out
    r = send(sbx, cid, 'print(1)')
    assert r.returncode != 0 and b'write error' in r.stderr, r
    ev = json.loads(sh('cat %s' % ctx(sbx, cid, 'out'), check=False).stdout.splitlines()[-1])
    assert ev['type'] == 'error' and 'terminated' in ev['evalue'], ev
    os.rmdir(ctx(sbx, cid))


def test_ctrl_c_on_a_blocked_reader(sbx):
    cid = new(sbx)
    assert send(sbx, cid, 'import time\nprint("up", flush=True)\ntime.sleep(30)').returncode == 0
    p = subprocess.Popen(['cat', ctx(sbx, cid, 'out')], stdout=subprocess.PIPE,
                         preexec_fn=default_sigint)
    try:
        assert json.loads(p.stdout.readline())['text'].startswith('up')
        t0 = time.monotonic()
        p.send_signal(signal.SIGINT)
        assert p.wait(5) != 0
        assert time.monotonic() - t0 < 1 * SLOW
    finally:
        p.kill()
        p.wait()
    os.rmdir(ctx(sbx, cid))  # ends the sleep


def test_interrupt(sbx, mode):
    cid = new(sbx)
    assert send(sbx, cid, 'import time\nprint("up", flush=True)\ntime.sleep(30)').returncode == 0
    if mode != 'fallback':
        # the code runs: an interrupt that came before it started would be lost
        first = sh('head -1 %s' % shlex.quote(ctx(sbx, cid, 'out')), timeout=30).stdout
        assert b'up' in first, first
    r = sh('echo > %s' % ctx(sbx, cid, 'interrupt'), check=False)
    if mode == 'fallback':
        assert r.returncode != 0 and b'not supported' in r.stderr, r
        os.rmdir(ctx(sbx, cid))
        return
    assert r.returncode == 0, r.stderr
    ev = out(sbx, cid, timeout=20)
    assert ev[-1]['type'] == 'error' and ev[-1]['ename'] == 'KeyboardInterrupt', ev
    # the context lives on
    assert results(run(sbx, cid, '1 + 1'), 'text') == ['2']


def test_rmdir_and_contexts_made_elsewhere(sbx):
    status, r = sbx.api('/api/contexts', {'language': 'javascript'}, timeout=90)
    assert status == 200
    other = r['contextId']
    assert other in os.listdir(ctx(sbx))
    with open(ctx(sbx, other, 'language')) as f:
        assert f.read() == 'javascript\n'
    ev = run(sbx, other, '[1, 2]')
    assert results(ev, 'json') == [[1, 2]], ev
    with open(ctx(sbx, other, 'results', '1.json')) as f:
        assert json.load(f) == [1, 2]
    os.rmdir(ctx(sbx, other))
    assert other not in os.listdir(ctx(sbx))
    assert not os.path.exists(ctx(sbx, other))
    status, r = sbx.api('/api/contexts')
    assert other not in [c['id'] for c in r['contexts']]


def test_fifty_parked_readers_do_not_slow_the_mount(sbx):
    def tree(name):
        for i in range(20):
            d = os.path.join(sbx.workspace, name, 'd%02d' % i)
            os.makedirs(d)
            for j in range(15):
                with open(os.path.join(d, 'f%02d' % j), 'w') as f:
                    f.write('x')

    def ls_r(name):
        t0 = time.monotonic()
        r = sh('ls -R %s | wc -l' % shlex.quote(os.path.join(sbx.ws, name)))
        assert int(r.stdout) > 300
        return time.monotonic() - t0

    tree('quiet')
    tree('busy')
    base = ls_r('quiet')
    ids = [new(sbx), new(sbx)]
    for cid in ids:
        assert send(sbx, cid, 'import time; time.sleep(3); print("done")').returncode == 0
    readers = [subprocess.Popen(['cat', ctx(sbx, ids[i % 2], 'out')], stdout=subprocess.PIPE)
               for i in range(50)]
    time.sleep(0.5)
    assert all(p.poll() is None for p in readers), 'readers did not block'
    loaded = ls_r('busy')
    assert loaded < 3 * base + 0.3, 'ls -R took %.2f s with 50 parked readers, %.2f s ' \
        'without' % (loaded, base)
    for p in readers:
        data, _ = p.communicate(timeout=30)
        assert p.returncode == 0
        ev = [json.loads(line) for line in data.splitlines()]
        assert texts(ev, 'stdout') == 'done\n' and ev[-1]['type'] == 'execution_complete'


@pytest.mark.expect_errors
def test_backend_down(fresh_sbx):
    sbx = fresh_sbx('timeout=3')
    cid = new(sbx)
    assert results(run(sbx, cid, '2 + 2'), 'text') == ['4']
    # a reader of a running execution, then sbxd dies under it
    assert send(sbx, cid, 'import time\nprint("up", flush=True)\ntime.sleep(60)').returncode == 0
    reader = subprocess.Popen(['cat', ctx(sbx, cid, 'out')], stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE)
    assert json.loads(reader.stdout.readline())['text'].startswith('up')
    sbx.stop_server(signal.SIGKILL)
    t0 = time.monotonic()
    rest, err = reader.communicate(timeout=30 * SLOW)
    assert time.monotonic() - t0 < 20 * SLOW
    assert reader.returncode != 0, 'the reader of a broken stream saw a clean end'
    last = json.loads(rest.splitlines()[-1])
    assert last['type'] == 'error', last
    assert err.strip(), 'cat said nothing'
    # new code: close() fails within the bound, with a clear error
    t0 = time.monotonic()
    r = send(sbx, cid, 'print(1)')
    took = time.monotonic() - t0
    assert r.returncode != 0, r
    assert took < 20 * SLOW, 'close took %.1f s' % took
    codes = {os.strerror(e).encode() for e in BACKEND_DOWN_ERRNOS}
    assert any(c in r.stderr for c in codes | {b'No such file'}), r.stderr
    # the mount stays usable
    assert 'ctx' in os.listdir(sbx.mnt)
    sbx.start_server()
    ok = wait_for(lambda: fs_op('listdir', sbx.ws, 30)[0] == 'OK', 30 * SLOW, interval=0.5)
    assert ok, 'the workspace did not come back: %s' % fs_op('listdir', sbx.ws, 30)[0]
    cid = new(sbx)
    assert results(run(sbx, cid, '3 + 3'), 'text') == ['6']
