"""sbxfs installed like a system tool, and sbxd for a user who is not root.

`meson install --destdir` into a scratch directory; then, in a private mount namespace where
the scratch copy is the system's (bound over the prefix, and its mount.fuse.sbxfs shown in
/sbin, the only place mount(8) looks for helpers), `mount` mounts the README's fstab line as
the system would: through the installed helper, and, as a default /usr/local install gets it,
through fuse3's mount.fuse finding sbxfs on PATH. The systemd units are checked by
systemd-analyze, and sbxd is run as sbxd.service runs it (another user, no new privileges, no
capabilities) and as a user of a login without XDG_RUNTIME_DIR (su, ssh, cron).
"""
import json
import os
import re
import shutil
import stat
import subprocess
import tempfile

import pytest

from util import SLOW, Sandbox, wait_for

pytestmark = pytest.mark.timeout(300 * SLOW)

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
USER = 61000 + os.getpid() % 1000       # a scratch user: no passwd entry needed


@pytest.fixture(autouse=True)
def ext_only(mode):
    """Nothing here depends on the mode the suite runs in: one run (ext) is enough."""
    if mode != 'ext':
        pytest.skip('runs in ext mode only')


def needs_root():
    if os.geteuid() != 0:
        pytest.skip('needs root (mount namespaces, other users)')


def run(argv, **kw):
    kw.setdefault('timeout', 120 * SLOW)
    return subprocess.run(argv, capture_output=True, text=True, **kw)


@pytest.fixture(scope='module')
def installed(build_dir):
    """(destdir, options): the build installed into a scratch directory."""
    dest = tempfile.mkdtemp(prefix='sbxfs-install-')
    try:
        p = run(['meson', 'install', '-C', build_dir, '--destdir', dest, '--no-rebuild'])
        assert p.returncode == 0, 'meson install failed:\n' + p.stdout + p.stderr
        p = run(['meson', 'introspect', build_dir, '--buildoptions'])
        opts = {o['name']: o['value'] for o in json.loads(p.stdout)}
        yield dest, opts
    finally:
        shutil.rmtree(dest, ignore_errors=True)


def path(opts, name):
    return os.path.join(opts['prefix'], opts[name])


def test_install_puts_everything_in_place(installed):
    dest, opts = installed
    bindir, sbindir = path(opts, 'bindir'), path(opts, 'sbindir')
    for exe in ('sbxd', 'sbxfs'):
        assert os.access(dest + os.path.join(bindir, exe), os.X_OK)
    helper = dest + os.path.join(sbindir, 'mount.fuse.sbxfs')
    assert os.readlink(helper) == os.path.join(bindir, 'sbxfs')
    units = dest + os.path.join(opts['prefix'], 'lib', 'systemd', 'system')
    with open(os.path.join(units, 'sbxd.service')) as f:
        assert 'ExecStart=%s/sbxd ' % bindir in f.read()
    with open(os.path.join(units, 'sbxfs@.service')) as f:
        assert 'ExecStart=%s/sbxfs ' % bindir in f.read()
    for page in ('sbxd.1', 'sbxfs.1'):
        assert os.path.exists(dest + os.path.join(path(opts, 'mandir'), 'man1', page))


def readme_fstab_options():
    """The options of README.md's fstab line."""
    with open(os.path.join(REPO, 'README.md')) as f:
        m = re.search(r'^http://\S+\s+/mnt/sandbox\s+fuse\.sbxfs\s+(\S+)\s+0\s+0$', f.read(),
                      re.M)
    assert m, "README.md has no fstab line for fuse.sbxfs"
    return m.group(1)


# Runs in a private mount namespace: the installed tree becomes the system's (only there),
# then the fstab line is mounted, used and unmounted.
AS_INSTALLED = r'''
set -eu
mount --bind "$DEST$PREFIX" "$PREFIX"
if [ "$ROUTE" = helper ]; then
	mount -t overlay sbxfs-helpers -o "lowerdir=$DEST$SBINDIR:/usr/sbin" /usr/sbin
fi
trap 'umount -l "$MNT" 2>/dev/null || true' EXIT
LIBMOUNT_DEBUG=cxt mount -T "$FSTAB" "$MNT" 2>"$TMP/libmount.log"
grep -o 'executing helper [^ ]*' "$TMP/libmount.log"
grep " $MNT " /proc/self/mounts
echo written-through-fstab > "$MNT/workspace/fstab.txt"
cat "$MNT/workspace/fstab.txt"
umount "$MNT"
# the README's other way, at once
mount -t fuse.sbxfs -o "token_file=$TOKEN_FILE" "$URL" "$MNT"
grep -c " $MNT fuse.sbxfs " /proc/self/mounts
umount "$MNT"
# and again: each mount starts sbxfs in the background (the way a helper must), which the
# other tests, always in the foreground, do not
for i in 2 3 4 5 6 7 8 9 10; do
	mount -T "$FSTAB" "$MNT"
	test -f "$MNT/workspace/fstab.txt"
	umount "$MNT"
done
'''


@pytest.mark.parametrize('route,helper', [('helper', '/sbin/mount.fuse.sbxfs'),
                                          ('path', '/sbin/mount.fuse')])
def test_fstab_line_mounts_through_the_installed_helper(build_dir, installed, route, helper):
    needs_root()
    dest, opts = installed
    if not os.path.exists('/sbin/mount.fuse') and route == 'path':
        pytest.skip('fuse3 has no /sbin/mount.fuse here')
    s = Sandbox(build_dir, 'ext')
    try:
        s.start_server()
        fstab = os.path.join(s.tmp, 'fstab')
        options = readme_fstab_options().replace('token_file=/etc/sbxfs/token',
                                                 'token_file=' + s.token_file)
        with open(fstab, 'w') as f:
            f.write('%s  %s  fuse.sbxfs  %s  0 0\n' % (s.url, s.mnt, options))
        env = dict(os.environ, DEST=dest, PREFIX=opts['prefix'], SBINDIR=path(opts, 'sbindir'),
                   ROUTE=route, FSTAB=fstab, MNT=s.mnt, TMP=s.tmp, URL=s.url,
                   TOKEN_FILE=s.token_file,
                   PATH=path(opts, 'bindir') + ':/usr/sbin:/usr/bin:/sbin:/bin')
        p = run(['unshare', '--mount', '--propagation', 'private', 'sh', '-c', AS_INSTALLED],
                env=env)
        assert p.returncode == 0, p.stdout + p.stderr + s.read_log(s.sbxd_log) + \
            s.read_log(os.path.join(s.tmp, 'libmount.log'))[-3000:]
        lines = p.stdout.splitlines()
        assert lines[0] == 'executing helper ' + helper, p.stdout
        assert lines[1].split()[:3] == [s.url, s.mnt, 'fuse.sbxfs'], p.stdout
        assert lines[2:] == ['written-through-fstab', '1'], p.stdout
        with open(os.path.join(s.workspace, 'fstab.txt')) as f:
            assert f.read() == 'written-through-fstab\n'
    finally:
        problems = s.close()
        s.remove()
    assert not problems, problems


def test_units_are_valid_and_hardened(installed, tmp_path):
    needs_root()
    if not shutil.which('systemd-analyze'):
        pytest.skip('no systemd-analyze')
    dest, opts = installed
    units = os.path.join(opts['prefix'], 'lib', 'systemd', 'system')
    # a template is verified as an instance of it
    shutil.copy(dest + os.path.join(units, 'sbxfs@.service'), tmp_path / 'sbxfs@mnt-sbx.service')
    script = ('mount --bind "$DEST$PREFIX" "$PREFIX" && systemd-analyze verify --man=no '
              '"$PREFIX/lib/systemd/system/sbxd.service" "$T/sbxfs@mnt-sbx.service" && '
              'systemd-analyze security --offline=true --threshold=50 '
              '"$PREFIX/lib/systemd/system/sbxd.service"')
    env = dict(os.environ, DEST=dest, PREFIX=opts['prefix'], T=str(tmp_path))
    p = run(['unshare', '--mount', '--propagation', 'private', 'sh', '-c', script], env=env)
    assert p.returncode == 0, p.stdout + p.stderr
    assert re.search(r'Overall exposure level for sbxd.service: [0-4]\.\d', p.stdout), p.stdout


# ---- sbxd as another user ----

class AsUser(Sandbox):
    """sbxd run as USER (setpriv, with more restrictions in setpriv_opts) with env as its whole
    environment; its token file and workspace are the user's."""

    def __init__(self, build_dir, env, sbxd_bin=None, setpriv_opts=(), args=()):
        super().__init__(build_dir, 'ext')
        self.sbxd_bin = sbxd_bin or self.sbxd_bin
        self.env, self.setpriv_opts, self.args = dict(env), list(setpriv_opts), list(args)
        os.chmod(self.tmp, 0o755)
        self.home = os.path.join(self.tmp, 'home')
        os.mkdir(self.home)
        for d in (self.home, self.workspace):
            os.chown(d, USER, USER)
        self.token_file = os.path.join(self.home, 'token')

    def start_server(self):
        argv = ['setpriv', '--reuid=%d' % USER, '--regid=%d' % USER, '--clear-groups',
                *self.setpriv_opts, 'env', '-i', *('%s=%s' % kv for kv in self.env.items()),
                self.sbxd_bin, '--listen', '127.0.0.1:%d' % self.port,
                '--workspace', self.workspace, '--token-file', self.token_file, *self.args]
        log = open(self.sbxd_log, 'ab')
        self.sbxd = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=log, stderr=log)
        log.close()
        ok = wait_for(lambda: self.sbxd.poll() is not None or self.ping(), 20 * SLOW)
        if not ok or self.sbxd.poll() is not None:
            return False
        with open(self.token_file) as f:
            self.token = f.read().strip()
        return True


def finish(s):
    problems = s.close()
    s.remove()
    assert not problems, problems


def user_env(s, **more):
    env = {'PATH': '/usr/bin:/bin', 'HOME': s.home, 'TMPDIR': s.home}
    env.update(more)
    return {k: v for k, v in env.items() if v is not None}


@pytest.mark.parametrize('runtime_dir', ['unset', 'another user\'s'])
def test_user_without_a_runtime_dir_gets_a_private_state_dir(build_dir, runtime_dir):
    """A login without XDG_RUNTIME_DIR (su, ssh, cron), or su keeping the one of the user
    before: sbxd falls back to a private directory of the user's ($TMPDIR/sbxd-UID)."""
    needs_root()
    s = AsUser(build_dir, {})
    s.env = user_env(s, XDG_RUNTIME_DIR=None if runtime_dir == 'unset' else s.tmp)
    try:
        assert s.start_server(), s.read_log(s.sbxd_log)
        base = os.path.join(s.home, 'sbxd-%d' % USER)
        state = os.path.join(base, str(s.port))
        for d in (base, state):
            st = os.lstat(d)
            assert stat.S_ISDIR(st.st_mode) and st.st_uid == USER and \
                stat.S_IMODE(st.st_mode) == 0o700, (d, st)
        r = s.execute('id -u; echo made > made.txt')
        assert (r['exitCode'], r['stdout']) == (0, '%d\n' % USER), r
        assert os.stat(os.path.join(s.workspace, 'made.txt')).st_uid == USER
    finally:
        finish(s)


@pytest.mark.expect_errors
@pytest.mark.parametrize('squat', ['directory of root', 'directory open to all', 'symlink'])
def test_a_squatted_state_parent_is_refused(build_dir, squat):
    needs_root()
    s = AsUser(build_dir, {})
    s.env = user_env(s)
    base = os.path.join(s.home, 'sbxd-%d' % USER)
    if squat == 'symlink':
        os.symlink(s.workspace, base)
    else:
        os.mkdir(base)
        os.chmod(base, 0o777)
        if squat == 'directory open to all':
            os.chown(base, USER, USER)
    try:
        assert not s.start_server()
        assert s.sbxd.returncode == 1
        assert '%s is not a private directory of this user\'s' % base in \
            s.read_log(s.sbxd_log)
        assert os.listdir(s.workspace) == []
    finally:
        s.close()
        s.remove()


def test_sbxd_runs_as_its_unit_runs_it(build_dir, installed):
    """The installed sbxd as sbxd.service starts it: a user of its own (DynamicUser=), no new
    privileges, no capabilities even in the bounding set, the token a read-only credential.
    bubblewrap still isolates each command (in a user namespace)."""
    needs_root()
    dest, opts = installed
    os.chmod(dest, 0o755)
    sbxd = dest + os.path.join(path(opts, 'bindir'), 'sbxd')
    s = AsUser(build_dir, {}, sbxd_bin=sbxd,
               setpriv_opts=['--no-new-privs', '--bounding-set=-all', '--inh-caps=-all'])
    s.env = user_env(s)
    creds = os.path.join(s.tmp, 'credentials')
    os.mkdir(creds)
    s.token_file = os.path.join(creds, 'token')
    with open(s.token_file, 'w') as f:
        f.write('%064x\n' % int.from_bytes(os.urandom(32), 'big'))
    os.chmod(s.token_file, 0o400)
    os.chown(s.token_file, USER, USER)
    os.chmod(creds, 0o500)
    os.chown(creds, USER, USER)
    s.args = ['--state-dir', os.path.join(s.home, 'run-sbxd')]
    try:
        assert s.start_server(), s.read_log(s.sbxd_log)
        r = s.execute('id -u; grep -E "^Cap(Eff|Bnd)" /proc/self/status; ls -A /home; '
                      'echo unit > unit.txt')
        assert r['exitCode'] == 0, r
        lines = r['stdout'].split('\n')
        assert lines[0] == str(USER), r
        assert lines[1:3] == ['CapEff:\t0000000000000000', 'CapBnd:\t0000000000000000'], r
        assert lines[3:] == [''], r     # the sandbox's /home: empty
        assert os.stat(os.path.join(s.workspace, 'unit.txt')).st_uid == USER
    finally:
        finish(s)
