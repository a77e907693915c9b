# The Node.js side of a code context (follows mux.py): this Python process owns sbxd's pipes and
# runs node as its child. Node has no dup2(), so it cannot hide sbxd's pipes from the code it
# runs; here node gets /dev/null as stdin, our output pipes as stdout and stderr (so console.log
# and child processes with inherited stdio reach the stream alike), requests on fd 3 and a
# message pipe back on fd 4. Its messages are passed on after the output that preceded them.
#
# Interrupts: sbxd's interrupt goes to node both as SIGINT (which breaks synchronous code run
# with breakOnSigint) and as a message (which settles an await, and cancels an execution node
# has not started yet). When node dies, so does this process, with node's status.
import signal
import sys

JS_BOOT = r'''
const fs = require('fs');
const n = Number(process.argv[1]);
const buf = Buffer.alloc(n);
for (let got = 0; got < n; ) {
	const r = fs.readSync(3, buf, got, n - got, null);
	if (r === 0) process.exit(70);
	got += r;
}
require('vm').runInThisContext(buf.toString('utf8'), { filename: 'sbx-kernel.js' })(require);
'''

mux = Mux()
js = read_exact(mux.requests, int(sys.argv[2]))
running = None  # seq of the execution node is running, as far as we know

to_node_r, to_node = os.pipe()
from_node, from_node_w = os.pipe()
try:
    node = os.posix_spawnp('node', ['node', '--expose-internals', '-e', JS_BOOT, str(len(js))],
                           os.environ, file_actions=[(os.POSIX_SPAWN_DUP2, to_node_r, 3),
                                                     (os.POSIX_SPAWN_DUP2, from_node_w, 4)],
                           setsigdef=(signal.SIGINT,))
except OSError as e:
    mux.complain('cannot start node: %s\n' % e.strerror)
    os._exit(127)
os.close(to_node_r)
os.close(from_node_w)
node_lock = threading.Lock()


def to_node_write(data):
    with node_lock:
        view = memoryview(data)
        while view:
            view = view[os.write(to_node, view):]


def forward_requests():
    global running
    f = os.fdopen(mux.requests, 'rb')
    for line in f:
        try:
            msg = json.loads(line)
        except ValueError:
            mux.complain('sbx node host: bad request %r\n' % line[:200])
            continue
        kind = msg.get('type')
        if kind == 'execute':
            running = msg.get('seq')
        elif kind == 'interrupt' and running is not None and running == msg.get('seq'):
            try:
                os.kill(node, signal.SIGINT)
            except OSError:
                pass
        try:
            to_node_write(line)
        except OSError:
            break
    os.kill(node, signal.SIGKILL)   # sbxd went away


def forward_messages():
    global running
    for line in os.fdopen(from_node, 'rb'):
        if line.startswith(b'{"type":"done"'):
            running = None
        mux.send_line(line)


to_node_write(js)
threading.Thread(target=forward_requests, daemon=True).start()
messages = threading.Thread(target=forward_messages, daemon=True)
messages.start()
signal.signal(signal.SIGINT, signal.SIG_IGN)
while True:
    try:
        pid, status = os.waitpid(node, 0)
        break
    except InterruptedError:
        pass
# what node said last (a child of node may hold its pipe open: do not wait for that)
messages.join(1.0)
mux.flush()
code = os.waitstatus_to_exitcode(status)
os._exit(code if code >= 0 else 128 - code)
