"""Fixtures: a real sbxd and a real sbxfs mount per test module and mode.

Every test that uses them is run in both modes unless --mode says otherwise:
  ext       sbxd with its /api/x extensions (the normal case)
  fallback  sbxd --no-extensions, as a plain Cloudflare container; sbxfs finds out by itself
A test fails when sbxd or sbxfs print an error line or a sanitizer report while it runs, and
the module's last test fails when either exits uncleanly at teardown.

With --via-worker every mount goes through the Cloudflare Worker of worker/ under workerd
(worker.py: sbxfs -> workerd -> sbxd), as a user mounts a Cloudflare sandbox; the tests' own
API calls still go to sbxd directly.
"""
import os
import re
import signal

import pytest

from faultproxy import ProxyProcess
from util import Sandbox, sh
from worker import WorkerProcess

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
MODES = ('ext', 'fallback')
WORKER_SANDBOX_ID = 'test-box'
_via_worker = False


def pytest_addoption(parser):
    parser.addoption('--build-dir', default=os.environ.get('SBXFS_BUILD_DIR',
                                                           os.path.join(REPO, 'build')),
                     help='meson build directory holding src/sbxd and src/sbxfs')
    parser.addoption('--mode', default='all', choices=MODES + ('all',),
                     help='backend mode to test (default: both)')
    parser.addoption('--via-worker', action='store_true',
                     help='mount through the Cloudflare Worker (worker/) under workerd')


def pytest_configure(config):
    global _via_worker
    _via_worker = config.getoption('--via-worker')
    config.addinivalue_line('markers',
                            'expect_errors: the test provokes error lines in the logs')


def pytest_generate_tests(metafunc):
    if 'mode' in metafunc.fixturenames:
        m = metafunc.config.getoption('--mode')
        metafunc.parametrize('mode', MODES if m == 'all' else (m,), scope='module')


@pytest.fixture(scope='session')
def build_dir(request):
    return os.path.abspath(request.config.getoption('--build-dir'))


def _start(build_dir, mode, *mount_opts, mount=True, server_args=(), proxy_seed=None):
    sbx = Sandbox(build_dir, mode)
    sbx.server_args = list(server_args)
    try:
        sbx.start_server()
        if proxy_seed is not None:
            sbx.proxy = ProxyProcess(sbx.url, seed=proxy_seed)
        backend = sbx.proxy.url if sbx.proxy else sbx.url
        if mount and _via_worker:
            sbx.worker = WorkerProcess(build_dir, sbx.tmp, mode, backend, sbx.token)
            sbx.mount(*mount_opts, url=sbx.worker.sandbox_url(WORKER_SANDBOX_ID),
                      env=dict(os.environ, SBXFS_TOKEN=sbx.worker.token), token_file=False)
        elif mount:
            sbx.mount(*mount_opts, url=backend)
    except BaseException:
        _stop_proxy(sbx)
        sbx.close()     # stops the Worker too
        raise
    return sbx


def _stop_proxy(sbx):
    if sbx.proxy is not None:
        sbx.proxy.stop()
        sbx.proxy = None


def _finish(sbx):
    proxy_problems = []
    if sbx.proxy is not None:       # no faults while unmounting
        try:
            sbx.proxy.set(p503=0, reset=0, drop_reply=0, latency_ms=0, event_delay_ms=0)
            sbx.proxy.resume()
            sbx.proxy.restore()
        except (RuntimeError, ValueError, OSError) as e:
            proxy_problems.append('the fault proxy: %s' % e)
    if sbx.sbxd is not None and sbx.sbxd.poll() is None:
        sbx.sbxd.send_signal(signal.SIGCONT)    # a test that stopped it and failed
    try:
        problems = proxy_problems + sbx.close()
    finally:
        _stop_proxy(sbx)
    if problems:
        pytest.fail('\n\n'.join(problems), pytrace=False)
    sbx.remove()


@pytest.fixture
def server(build_dir, mode):
    """sbxd alone, not mounted, for one test."""
    s = _start(build_dir, mode, mount=False)
    yield s
    _finish(s)


@pytest.fixture(scope='module')
def api_server(build_dir, mode):
    """sbxd alone, not mounted, shared by the tests of one module and mode."""
    s = _start(build_dir, mode, mount=False)
    yield s
    _finish(s)


@pytest.fixture(scope='module')
def sbx(build_dir, mode):
    """sbxd on a fresh workspace, mounted; shared by the tests of one module and mode."""
    s = _start(build_dir, mode)
    yield s
    _finish(s)


@pytest.fixture
def fresh_sbx(build_dir, mode):
    """Like sbx but for one test only: for tests that kill, stop or restart things.
    Call fresh_sbx(*mount_options) to start it."""
    made = []

    def start(*mount_opts):
        s = _start(build_dir, mode, *mount_opts)
        made.append(s)
        return s
    yield start
    for s in made:
        _finish(s)


@pytest.fixture
def faulty_sbx(build_dir, mode):
    """sbxd, a fault proxy in front of it (sbx.proxy, a faultproxy.ProxyProcess, no faults
    yet) and sbxfs mounted on the proxy's URL, for one test. Call
    faulty_sbx(*mount_options, server_args=(), seed=1) to start it. At teardown the faults
    are turned off (and sbxd continued) before unmounting."""
    made = []

    def start(*mount_opts, server_args=(), seed=1):
        s = _start(build_dir, mode, *mount_opts, server_args=server_args, proxy_seed=seed)
        made.append(s)
        return s
    yield start
    for s in made:
        _finish(s)


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    rep = outcome.get_result()
    if rep.when == 'call':
        item.call_failed = rep.failed


@pytest.fixture(autouse=True)
def check_logs(request):
    """Fails the test when sbxd or sbxfs complain while it runs; shows what they logged
    during a test that failed."""
    names = [n for n in ('sbx',) if n in request.fixturenames]
    sbxs = [request.getfixturevalue(n) for n in names]
    before = [s.log_sizes() for s in sbxs]
    yield
    if getattr(request.node, 'call_failed', False):
        for s, b in zip(sbxs, before):
            for path, start in b.items():
                text = s.read_log(path, start)
                if text:
                    print('--- %s during the test (last 60 lines):' % os.path.basename(path))
                    print('\n'.join(text.splitlines()[-60:]))
    expected = request.node.get_closest_marker('expect_errors') is not None
    complaints = []
    for s, b in zip(sbxs, before):
        complaints += s.log_complaints(since=b, errors_expected=expected)
    if complaints:
        pytest.fail('\n\n'.join(complaints), pytrace=False)


class Dir:
    """A fresh directory for one test, seen three ways: through the mount (m), on the host
    (h) and inside the sandbox (rel, relative to /workspace)."""

    def __init__(self, sbx, name):
        self.sbx = sbx
        self.rel = name
        self.m = os.path.join(sbx.ws, name)
        self._h = os.path.join(sbx._workspace, name)

    @property
    def h(self):
        """The directory on the host, once what was written through the mount is there."""
        self.sbx.sync()
        return self._h

    def sh(self, cmd, **kw):
        """Runs a shell command with the test directory in the mount as cwd."""
        return sh(cmd, cwd=self.m, **kw)

    def execute(self, cmd, **kw):
        """Runs a command inside the sandbox with the test directory as cwd."""
        return self.sbx.execute("cd '/workspace/%s' && %s" % (self.rel, cmd), **kw)


@pytest.fixture
def d(sbx, request):
    name = re.sub(r'[^A-Za-z0-9_.-]+', '_', request.node.name)[:80]
    t = Dir(sbx, name)
    os.mkdir(t.m)
    sbx.sync()  # in the sandbox too, from the start
    return t
