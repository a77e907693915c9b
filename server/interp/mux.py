# The channel between an interpreter and sbxd (shared by the Python kernel and the Node host;
# sbxd sends this file followed by the kernel's own code).
#
# sbxd talks to the interpreter through the three pipes it was started with: requests arrive
# as JSON lines on stdin, answers and events leave as JSON lines on stdout, and stderr carries
# only the kernel's own diagnostics. The user's code must not see any of them: descriptors 0,
# 1 and 2 are replaced before it runs (0 by /dev/null, 1 and 2 by pipes of our own), so
# whatever writes to them -- print(), C code, os.system('echo x'), child processes -- lands in
# a pipe that a pump thread turns into "stdout"/"stderr" events.
#
# Order: every message goes out under one lock, and a message that ends something (a result,
# "done") first drains both pipes, so output written before it is never reported after it.
import codecs
import json
import os
import select
import threading

_CHUNK = 65536


class Mux:
    def __init__(self):
        # private copies of sbxd's pipes, closed on exec so children never inherit them
        self.requests = os.dup(0)
        self.proto = os.dup(1)
        self.diag = os.dup(2)
        null = os.open('/dev/null', os.O_RDONLY)
        os.dup2(null, 0)
        os.close(null)
        self.lock = threading.Lock()
        self.pipes = {}
        for fd, name in ((1, 'stdout'), (2, 'stderr')):
            r, w = os.pipe()
            os.set_blocking(r, False)
            os.dup2(w, fd)
            os.close(w)
            self.pipes[name] = (r, codecs.getincrementaldecoder('utf-8')('replace'))
            threading.Thread(target=self._pump, args=(name,), daemon=True).start()

    def _write(self, data):
        view = memoryview(data)
        while view:
            n = os.write(self.proto, view)
            view = view[n:]

    def _send(self, msg):
        try:
            line = json.dumps(msg, allow_nan=False)
        except (TypeError, ValueError) as e:
            line = json.dumps({'type': 'stderr', 'text': 'sbx kernel: cannot send %s: %s\n'
                               % (msg.get('type'), e)})
        self._write(line.encode('ascii') + b'\n')

    def _drain(self, name):
        """Sends what the pipe holds now; False at its end (every writer gone)."""
        fd, dec = self.pipes[name]
        while True:
            try:
                data = os.read(fd, _CHUNK)
            except BlockingIOError:
                return True
            # sbxd's JSON strings cannot hold NUL
            text = dec.decode(data, final=not data).replace('\0', '\ufffd')
            if text:
                self._send({'type': name, 'text': text})
            if not data:
                return False

    def _pump(self, name):
        fd = self.pipes[name][0]
        while True:
            select.select([fd], [], [])
            with self.lock:
                if not self._drain(name):
                    return

    def flush(self):
        with self.lock:
            for name in self.pipes:
                self._drain(name)

    def send(self, msg):
        """Sends msg after whatever output is already in the pipes."""
        with self.lock:
            for name in self.pipes:
                self._drain(name)
            self._send(msg)

    def send_line(self, line):
        """Like send for a message that is already a JSON line (bytes, with its newline)."""
        with self.lock:
            for name in self.pipes:
                self._drain(name)
            self._write(line)

    def complain(self, text):
        """The kernel's own trouble, for sbxd's log and for the error of a dying context."""
        try:
            os.write(self.diag, text.encode('utf-8', 'replace'))
        except OSError:
            pass


def read_exact(fd, n):
    """n bytes from fd (no buffering, so nothing after them is consumed)."""
    parts = []
    while n > 0:
        b = os.read(fd, n)
        if not b:
            raise EOFError('sbxd closed the pipe early')
        parts.append(b)
        n -= len(b)
    return b''.join(parts)
