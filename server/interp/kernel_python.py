# The Python kernel of a code context (follows mux.py and charts.py): one IPython
# InteractiveShell, so state persists between executions and rich values go through IPython's
# display formatter; each display is one result event with all its formats.
#
# Threads: the main thread runs the user's code; a reader thread takes sbxd's requests off the
# private request pipe and queues them, so an interrupt is seen while code runs. An interrupt
# names the execution it is for ("seq"): it becomes SIGINT to the main thread (KeyboardInterrupt
# in the user's code) only while that execution runs, cancels it if it has not started yet,
# and is dropped otherwise (it came too late). Outside executions SIGINT does nothing.
import base64
import errno
import importlib.abc
import importlib.util
import io
import queue
import signal
import sys
import traceback

mux = Mux()
# Line-buffered, as on a terminal: print() writes its text and its newline separately, and
# each write would otherwise become an event of its own. What is left without a newline goes
# out at the end of the execution (or at sys.stdout.flush()).
sys.stdout = sys.__stdout__ = io.TextIOWrapper(open(1, 'wb', buffering=0, closefd=False),
                                               encoding='utf-8', errors='surrogateescape',
                                               line_buffering=True)
sys.stderr = sys.__stderr__ = io.TextIOWrapper(open(2, 'wb', buffering=0, closefd=False),
                                               encoding='utf-8', errors='backslashreplace',
                                               line_buffering=True)
sys.stdin = sys.__stdin__ = open(0, 'r', closefd=False)
sys.argv = ['']


class State:
    lock = threading.Lock()
    running = None      # seq of the execution in progress
    cancelled = None    # seq of a queued execution interrupted before it started
    done = 0            # highest seq finished


main_thread = threading.main_thread().ident
requests = queue.Queue()


def on_sigint(signum, frame):
    if State.running is not None:
        raise KeyboardInterrupt


signal.signal(signal.SIGINT, on_sigint)


def read_requests():
    f = os.fdopen(mux.requests, 'rb')
    for line in f:
        try:
            msg = json.loads(line)
        except ValueError:
            mux.complain('sbx kernel: bad request %r\n' % line[:200])
            continue
        if msg.get('type') == 'interrupt':
            seq = msg.get('seq')
            with State.lock:
                if State.running == seq:
                    signal.pthread_kill(main_thread, signal.SIGINT)
                elif isinstance(seq, int) and seq > State.done:
                    State.cancelled = seq
        else:
            requests.put(msg)
    os._exit(0)     # sbxd went away


# ---- matplotlib: every figure becomes one display, with its chart ----
#
# plt.show() displays the open figures at once (our backend's show), and whatever is left open
# at the end of an execution is displayed then, whichever backend the code chose
# (matplotlib.use("Agg") included), and closed, as Cloudflare's interpreter does. A figure
# already displayed in that execution (display(fig), a figure as the last expression) is only
# closed, so each gives one result.

BACKEND = '_sbx_mpl_backend'
BACKEND_SOURCE = '''
from matplotlib.backends.backend_agg import FigureCanvasAgg as FigureCanvas
from matplotlib._pylab_helpers import Gcf

def show(*args, **kwargs):
    from IPython.display import display
    for manager in Gcf.get_all_fig_managers():
        display(manager.canvas.figure)
    Gcf.destroy_all()
'''


class MatplotlibHook(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    """Sets matplotlib up as its modules are first imported (importing it up front would slow
    every start), and serves our backend module."""

    after_import = {
        'matplotlib': lambda module: module.use('module://' + BACKEND),
        'matplotlib.axes': lambda module: record_boxplots(module.Axes),
    }

    def find_spec(self, name, path, target=None):
        if name == BACKEND:
            return importlib.util.spec_from_loader(name, self)
        setup = self.after_import.get(name)
        if setup is None or name in sys.modules:
            return None
        for finder in sys.meta_path:
            if finder is self or not hasattr(finder, 'find_spec'):
                continue
            spec = finder.find_spec(name, path, target)
            if spec is not None:
                break
        else:
            return None
        if spec.loader is None:
            return spec
        real_exec = spec.loader.exec_module

        def exec_module(module):
            real_exec(module)
            setup(module)
        spec.loader.exec_module = exec_module
        return spec

    def create_module(self, spec):
        return None

    def exec_module(self, module):
        exec(BACKEND_SOURCE, module.__dict__)


sys.meta_path.insert(0, MatplotlibHook())


class Figures:
    displayed = set()   # figures displayed in the running execution


def figure_png(fig):
    buf = io.BytesIO()
    fig.canvas.print_figure(buf, format='png')
    return buf.getvalue()


def show_open_figures(interrupted):
    """At the end of an execution: displays the figures left open (unless the execution was
    interrupted: drawing them could be what took too long), and closes them."""
    pyplot = sys.modules.get('matplotlib.pyplot')
    try:
        if pyplot is not None and not interrupted:
            from IPython.display import display
            from matplotlib._pylab_helpers import Gcf
            for manager in Gcf.get_all_fig_managers():
                if manager.canvas.figure not in Figures.displayed:
                    display(manager.canvas.figure)
    except Exception:
        traceback.print_exc()   # the user's stderr: it is about their figures
    finally:
        if pyplot is not None:
            pyplot.close('all')
        Figures.displayed.clear()


# ---- IPython ----

from traitlets.config import Config
from IPython.core.displayhook import DisplayHook
from IPython.core.displaypub import DisplayPublisher
from IPython.core.error import UsageError
from IPython.core.interactiveshell import InteractiveShell

CHART_MIME = 'application/vnd.sbx.chart+json'   # ours: a figure's chart (charts.py)

MIME_FIELDS = {
    'text/plain': 'text', 'text/html': 'html', 'image/png': 'png', 'image/jpeg': 'jpeg',
    'image/svg+xml': 'svg', 'text/latex': 'latex', 'text/markdown': 'markdown',
    'application/json': 'json', 'application/javascript': 'javascript', CHART_MIME: 'chart',
}


def jsonable(value):
    try:
        json.dumps(value, allow_nan=False)
    except (TypeError, ValueError):
        return False
    return True


def send_result(data, metadata, last_value):
    """One display, with every format it has, is one result event (as the SDK's Result)."""
    # output printed before the result, even without a newline, comes before it
    sys.stdout.flush()
    sys.stderr.flush()
    # a dict or list is JSON data; its text form would only repeat it
    if last_value and 'application/json' in data and set(data) <= {'application/json',
                                                                    'text/plain'}:
        data = {'application/json': data['application/json']}
    event = {'type': 'result'}
    for mime, value in data.items():
        field = MIME_FIELDS.get(mime)
        if field in ('png', 'jpeg') and isinstance(value, bytes):
            value = base64.b64encode(value).decode('ascii')
        if field and (isinstance(value, str) or field in ('json', 'chart') and jsonable(value)):
            event[field] = value
    if len(event) == 1:
        return      # no format we can carry
    # by MIME type, as IPython gives it: {"image/png": {"width": 100}}
    event['metadata'] = metadata if isinstance(metadata, dict) and jsonable(metadata) else {}
    mux.send(event)


class ResultHook(DisplayHook):
    """The value of the last expression: a result, no "Out[n]:" in stdout."""

    def write_output_prompt(self):
        pass

    def write_format_data(self, format_dict, md_dict=None):
        send_result(format_dict, md_dict, True)

    def finish_displayhook(self):
        sys.stdout.flush()


class ResultPublisher(DisplayPublisher):
    """display(...) and shown figures: results."""

    def publish(self, data, metadata=None, source=None, *, transient=None, update=False,
                **kwargs):
        send_result(data, metadata, False)

    def clear_output(self, wait=False):
        pass


def json_data(obj):
    return obj if jsonable(obj) else None


config = Config()
config.HistoryManager.enabled = False
config.HistoryManager.hist_file = ':memory:'
shell = InteractiveShell.instance(config=config, displayhook_class=ResultHook,
                                  display_pub_class=ResultPublisher, colors='NoColor',
                                  autocall=0)
formatters = shell.display_formatter.formatters
formatters['application/json'].for_type(dict, json_data)
formatters['application/json'].for_type(list, json_data)
formatters['image/png'].for_type_by_name('matplotlib.figure', 'Figure', figure_png)


class Formatting:
    """Whether a display is being formatted (a failing format is then reported on stderr, and
    the display goes out with the formats that worked)."""
    depth = 0


def format_display(obj, include=None, exclude=None):
    """IPython's formats of obj, and a figure's chart. Every display of a figure passes here
    (whatever formatters IPython's select_figure_formats left it), so this is where it is
    noted as displayed."""
    Formatting.depth += 1
    try:
        data, metadata = real_format_display(obj, include=include, exclude=exclude)
    finally:
        Formatting.depth -= 1
    figure = sys.modules.get('matplotlib.figure')
    if figure and isinstance(obj, figure.Figure) and data:
        Figures.displayed.add(obj)
        if (not include or CHART_MIME in include) and CHART_MIME not in (exclude or ()):
            try:
                chart = figure_chart(obj)
            except Exception:
                traceback.print_exc()   # a bug of ours: the images still go out
                chart = None
            if chart:
                data[CHART_MIME] = chart
    return data, metadata


real_format_display = shell.display_formatter.format
shell.display_formatter.format = format_display


def enable_matplotlib(gui=None):
    """%matplotlib [inline] (and %pylab): our backend, which shows figures inline already (and
    each once, which IPython's inline backend would not promise); a GUI has no display here."""
    if gui not in (None, 'auto', 'inline'):
        raise UsageError('%%matplotlib %s: there is no display for a GUI here; figures are '
                         'shown inline' % gui)
    import matplotlib
    matplotlib.use('module://' + BACKEND)
    return 'inline', matplotlib.get_backend()


shell.enable_matplotlib = enable_matplotlib

last_error = None


def capture_traceback(etype, evalue, stb):
    global last_error
    if Formatting.depth:
        sys.stderr.write('\n'.join(str(entry) for entry in stb) + '\n')
        return
    last_error = {'ename': getattr(etype, '__name__', str(etype)), 'evalue': str(evalue),
                  'traceback': [line for entry in stb for line in str(entry).split('\n')]}


shell._showtraceback = capture_traceback


def execute(seq, code):
    global last_error
    last_error = None
    error = None
    with State.lock:
        if State.cancelled == seq:
            error = {'ename': 'KeyboardInterrupt', 'evalue': '', 'traceback': []}
        else:
            State.running = seq
    if error is None:
        Figures.displayed.clear()
        try:
            try:
                result = shell.run_cell(code, store_history=True)
                show_open_figures(isinstance(result.error_in_exec, KeyboardInterrupt))
            finally:
                with State.lock:
                    State.running = None
            if not result.success:
                exc = result.error_before_exec or result.error_in_exec
                error = last_error or {'ename': type(exc).__name__, 'evalue': str(exc),
                                       'traceback': []}
        except KeyboardInterrupt:
            # the interrupt reached IPython's own code, before the user's code began or after
            # it ended: the execution still reports that it was interrupted
            error = last_error or {'ename': 'KeyboardInterrupt', 'evalue': '',
                                   'traceback': []}
    sys.stdout.flush()
    sys.stderr.flush()
    with State.lock:
        State.done = seq
    mux.send({'type': 'done', 'seq': seq, 'execution_count': shell.execution_count - 1,
              'error': error})


def initialise(msg):
    try:
        os.chdir(msg.get('cwd') or '/workspace')
    except OSError as e:
        mux.send({'type': 'init_done', 'errno': errno.errorcode.get(e.errno, 'EIO'),
                  'error': 'cwd %s: %s' % (msg.get('cwd'), e.strerror)})
        return
    env = msg.get('env')
    if isinstance(env, dict):
        os.environ.clear()
        os.environ.update({str(k): str(v) for k, v in env.items()})
    mux.send({'type': 'init_done', 'error': None})


threading.Thread(target=read_requests, daemon=True).start()
mux.send({'type': 'ready'})
while True:
    try:
        msg = requests.get()
        kind = msg.get('type')
        if kind == 'execute' and isinstance(msg.get('seq'), int):
            try:
                execute(msg['seq'], str(msg.get('code', '')))
            except Exception:
                # every execution ends with "done", whatever went wrong in here
                mux.complain('sbx kernel: ' + traceback.format_exc())
                mux.send({'type': 'done', 'seq': msg['seq'], 'execution_count': 0,
                          'error': {'ename': 'KernelError', 'evalue': 'the kernel failed',
                                    'traceback': traceback.format_exc().split('\n')}})
        elif kind == 'init':
            initialise(msg)
        else:
            mux.complain('sbx kernel: unknown request %r\n' % kind)
    except KeyboardInterrupt:
        pass
    except Exception:
        mux.complain('sbx kernel: ' + traceback.format_exc())
