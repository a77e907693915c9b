"""watch: changes under /workspace as JSON lines through the mount (docs/sessions.md, "watch"), in both
modes: made inside the sandbox and through the mount, they arrive in order and within a
second; filters by subtree and kind; Ctrl-C, poll, and bad options."""
import errno
import json
import os
import queue
import select
import shlex
import signal
import subprocess
import threading
import time

import pytest

from util import SLOW, default_sigint, sh, wait_for


class Reader:
    """A reader of the watch file: open() has returned when this does, so the watch is
    established; lines arrive in a queue with the time they came. It polls, so that close()
    leaves no read behind."""

    def __init__(self, sbx, options=None):
        path = os.path.join(sbx.mnt, 'watch')
        self.fd = os.open(path, os.O_RDONLY if options is None else os.O_RDWR)
        if options is not None:
            # the line starts the watch: the write returns once it is established
            os.write(self.fd, options.encode() + b'\n')
        self.q = queue.Queue()
        self.stop = threading.Event()
        self.t = threading.Thread(target=self._run, daemon=True)
        self.t.start()

    def _run(self):
        buf = b''
        p = select.poll()
        p.register(self.fd, select.POLLIN)
        try:
            while not self.stop.is_set():
                if not p.poll(50):
                    continue
                chunk = os.read(self.fd, 65536)
                if not chunk:
                    break
                buf += chunk
                while b'\n' in buf:
                    line, buf = buf.split(b'\n', 1)
                    self.q.put((time.monotonic(), json.loads(line)))
        except (OSError, ValueError) as e:
            self.q.put((time.monotonic(), e))

    def take(self, n, timeout=10):
        """The next n changes (the overflow notices too)."""
        out = []
        deadline = time.monotonic() + timeout * SLOW
        while len(out) < n:
            try:
                out.append(self.q.get(timeout=max(0.01, deadline - time.monotonic())))
            except queue.Empty:
                break
        return out

    def take_until(self, last, timeout=10):
        """Changes up to and including the first one for which last(change) is true."""
        out = []
        deadline = time.monotonic() + timeout * SLOW
        while not out or isinstance(out[-1][1], Exception) or not last(out[-1][1]):
            try:
                out.append(self.q.get(timeout=max(0.01, deadline - time.monotonic())))
            except queue.Empty:
                break
        return out

    def close(self):
        self.stop.set()
        self.t.join(5 * SLOW)
        os.close(self.fd)


def compact(events):
    return [(e['kind'], e['path'], e.get('oldPath'), e['isDirectory']) for _, e in events]


def test_changes_arrive_in_order_within_a_second(sbx, d):
    w = Reader(sbx)
    try:
        ws = '/workspace/' + d.rel
        # inside the sandbox
        t0 = time.monotonic()
        d.execute('echo one > a.txt && mv a.txt b.txt && mkdir sub && rm b.txt')
        inside = w.take_until(lambda e: e['path'] == ws + '/b.txt' and e['kind'] == 'delete')
        # through the mount
        t1 = time.monotonic()
        d.sh('echo two > c.txt && mv c.txt sub/d.txt && rm sub/d.txt && rmdir sub')
        mounted = w.take_until(lambda e: e['path'] == ws + '/sub' and e['kind'] == 'delete')
    finally:
        w.close()
    # a burst of writes may be one modify or several: compare without repeats
    want_inside = [('create', ws + '/a.txt', None, False),
                   ('modify', ws + '/a.txt', None, False),
                   ('rename', ws + '/b.txt', ws + '/a.txt', False),
                   ('create', ws + '/sub', None, True),
                   ('delete', ws + '/b.txt', None, False)]
    assert compact(inside) == want_inside, inside
    want_mounted = [('create', ws + '/c.txt', None, False),
                    ('modify', ws + '/c.txt', None, False),
                    ('rename', ws + '/sub/d.txt', ws + '/c.txt', False),
                    ('delete', ws + '/sub/d.txt', None, False),
                    ('delete', ws + '/sub', None, True)]
    got = compact(mounted)
    assert [e for i, e in enumerate(got) if i == 0 or e != got[i - 1]] == want_mounted, mounted
    # within a second of the changes (the commands that made them included)
    assert inside[-1][0] - t0 < 1.0 * SLOW, inside[-1][0] - t0
    assert mounted[-1][0] - t1 < 1.0 * SLOW, mounted[-1][0] - t1
    for _, e in inside + mounted:
        assert e['timestamp'].endswith('Z')


def test_a_subtree_and_kinds(sbx, d):
    os.mkdir(os.path.join(d.m, 'src'))
    w = Reader(sbx, 'path=%s/src kind=rename,delete' % d.rel)
    try:
        d.sh('echo x > src/a && mv src/a src/b && echo y > other && rm other && rm src/b')
        got = compact(w.take(2))
        assert w.take(1, timeout=0.3) == []
    finally:
        w.close()
    ws = '/workspace/' + d.rel
    assert got == [('rename', ws + '/src/b', ws + '/src/a', False),
                   ('delete', ws + '/src/b', None, False)]


def test_poll_and_ctrl_c(sbx, d):
    fd = os.open(os.path.join(sbx.mnt, 'watch'), os.O_RDONLY)
    try:
        p = select.poll()
        p.register(fd, select.POLLIN)
        assert p.poll(200) == []       # nothing changed yet: not readable
        d.sh('touch polled')
        assert p.poll(5000 * SLOW), 'a change did not make the watch readable'
        line = json.loads(os.read(fd, 65536).split(b'\n')[0])
        assert line['path'].endswith('/polled') and line['kind'] == 'create'
    finally:
        os.close(fd)
    # Ctrl-C on a blocked `cat watch` returns at once
    cat = subprocess.Popen(['cat', os.path.join(sbx.mnt, 'watch')], stdout=subprocess.PIPE,
                           preexec_fn=default_sigint)
    try:
        # blocked in its read (sleeping), not still opening
        assert wait_for(lambda: open('/proc/%d/stat' % cat.pid).read().rsplit(')', 1)[1]
                        .split()[0] == 'S', 5 * SLOW)
        assert cat.poll() is None
        t0 = time.monotonic()
        cat.send_signal(signal.SIGINT)
        cat.wait(5 * SLOW)
        assert time.monotonic() - t0 < 2 * SLOW
    finally:
        if cat.poll() is None:
            cat.kill()
            cat.wait()
        cat.stdout.close()


@pytest.mark.expect_errors
def test_bad_options_fail_the_write(sbx, d):
    for opts, err in (('kind=moved', errno.EINVAL), ('colour=red', errno.EINVAL),
                      ('path=%s/missing' % d.rel, errno.ENOENT),
                      ('path=/etc', errno.EACCES)):
        fd = os.open(os.path.join(sbx.mnt, 'watch'), os.O_RDWR)
        try:
            with pytest.raises(OSError) as e:
                os.write(fd, opts.encode() + b'\n')
            assert e.value.errno == err, (opts, e.value)
        finally:
            os.close(fd)
    # the documented one-liner: bash's echo reports it
    r = sh("cd %s && exec 3<>watch && echo kind=nope >&3 && cat <&3" % shlex.quote(sbx.mnt),
           check=False)
    assert r.returncode != 0 and b'Invalid argument' in r.stderr, r
