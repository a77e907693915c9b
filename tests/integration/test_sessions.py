"""sessions/: execution sessions through the mount, with the shell one-liners of
docs/sessions.md, in both modes (fallback: a plain container's session routes; its code
contexts know no sessions, so sessions/ID/ctx/new fails with EOPNOTSUPP there)."""
import errno
import os
import shlex
import time

import pytest

from util import SLOW, sh, wait_for

ENDED = ('completed', 'failed', 'killed', 'error')


def shell(sbx, script, check=True):
    """A bash script run in the mount point; its stdout."""
    r = sh('cd %s && %s' % (shlex.quote(sbx.mnt), script), check=check)
    return r.stdout.decode() if check else r


def new_session(sbx, *options):
    """The documented one-liner: option lines in, the id out."""
    lines = ''.join(o + '\n' for o in options)
    sid = shell(sbx, 'exec 3<>sessions/new; printf %%s %s >&3; head -1 <&3'
                % shlex.quote(lines)).strip()
    assert sid and '/' not in sid
    return sid


def start(sbx, sid, command):
    pid = shell(sbx, 'exec 3<>sessions/%s/proc/new; echo %s >&3; head -1 <&3' % (
        sid, shlex.quote(command))).strip()
    assert pid and '/' not in pid
    return pid


def read(sbx, *parts):
    with open(os.path.join(sbx.mnt, *parts)) as f:
        return f.read()


def wait_output(sbx, pid, lines=1):
    out = wait_for(lambda: read(sbx, 'proc', pid, 'stdout').count('\n') >= lines and
                   read(sbx, 'proc', pid, 'stdout'), 15 * SLOW, 0.1)
    assert out, 'process %s printed nothing' % pid
    return out


@pytest.fixture
def apps(sbx):
    for name in ('app-a', 'app-b'):
        os.makedirs(os.path.join(sbx.ws, name), exist_ok=True)


def test_two_sessions_keep_their_env_and_cwd_apart_for_processes(sbx, apps):
    a = new_session(sbx, 'cwd=app-a', 'env.WHO=alice')
    b = new_session(sbx, 'cwd=/workspace/app-b', 'env.WHO=bob')
    assert {a, b} <= set(os.listdir(os.path.join(sbx.mnt, 'sessions')))
    assert read(sbx, 'sessions', a, 'cwd') == '/workspace/app-a\n'
    assert read(sbx, 'sessions', b, 'cwd') == '/workspace/app-b\n'
    assert 'WHO=alice\n' in read(sbx, 'sessions', a, 'env')
    # a change written to one session's env lasts there, and only there
    shell(sbx, 'echo EXTRA="x y" > sessions/%s/env' % a)
    pa = start(sbx, a, 'echo "$WHO [$EXTRA] $PWD"; sleep 60')
    pb = start(sbx, b, 'echo "$WHO [$EXTRA] $PWD"; sleep 60')
    assert wait_output(sbx, pa) == 'alice [x y] /workspace/app-a\n'
    assert wait_output(sbx, pb) == 'bob [] /workspace/app-b\n'
    # so does a cd written to cwd
    shell(sbx, 'echo /workspace > sessions/%s/cwd' % b)
    assert read(sbx, 'sessions', b, 'cwd') == '/workspace\n'
    assert read(sbx, 'sessions', a, 'cwd') == '/workspace/app-a\n'
    pb2 = start(sbx, b, 'pwd')
    assert wait_output(sbx, pb2) == '/workspace\n'
    # each session lists its own processes; proc/ lists them all
    assert pa in os.listdir(os.path.join(sbx.mnt, 'sessions', a, 'proc'))
    assert pa not in os.listdir(os.path.join(sbx.mnt, 'sessions', b, 'proc'))
    assert {pa, pb} <= set(os.listdir(os.path.join(sbx.mnt, 'proc')))
    # deleting a session stops what it started, and nothing else
    os.rmdir(os.path.join(sbx.mnt, 'sessions', a))
    assert a not in os.listdir(os.path.join(sbx.mnt, 'sessions'))
    st = wait_for(lambda: read(sbx, 'proc', pa, 'status').split()[0] in ENDED and
                  read(sbx, 'proc', pa, 'status'), 10 * SLOW, 0.1)
    assert st and st.split()[0] in ('killed', 'error'), st
    assert read(sbx, 'proc', pb, 'status') == 'running\n'
    os.rmdir(os.path.join(sbx.mnt, 'sessions', b))
    assert wait_for(lambda: read(sbx, 'proc', pb, 'status').split()[0] in ENDED,
                    10 * SLOW, 0.1)


def test_two_sessions_keep_their_env_and_cwd_apart_for_contexts(sbx, mode, apps):
    a = new_session(sbx, 'cwd=app-a', 'env.WHO=alice')
    b = new_session(sbx, 'cwd=app-b', 'env.WHO=bob')
    if mode == 'fallback':
        r = shell(sbx, 'cat sessions/%s/ctx/new' % a, check=False)
        assert r.returncode != 0 and b'Operation not supported' in r.stderr, r
        return
    ids = {}
    for s in (a, b):
        ids[s] = shell(sbx, 'cat sessions/%s/ctx/new' % s).strip()
        shell(sbx, "echo 'import os; print(os.environ[\"WHO\"], os.getcwd())' > "
                   "sessions/%s/ctx/%s/in" % (s, ids[s]))
    for s, who in ((a, 'alice'), (b, 'bob')):
        out = shell(sbx, 'cat sessions/%s/ctx/%s/out' % (s, ids[s]))
        assert '"text":"%s /workspace/app-%s\\n"' % (who, who[0]) in out, out
        assert sorted(os.listdir(os.path.join(sbx.mnt, 'sessions', s, 'ctx'))) == \
            sorted(['new', ids[s]])
    assert {ids[a], ids[b]} <= set(os.listdir(os.path.join(sbx.mnt, 'ctx')))
    os.rmdir(os.path.join(sbx.mnt, 'sessions', a))
    assert ids[a] not in os.listdir(os.path.join(sbx.mnt, 'ctx'))
    assert ids[b] in os.listdir(os.path.join(sbx.mnt, 'ctx'))
    os.rmdir(os.path.join(sbx.mnt, 'sessions', b))
    assert ids[b] not in os.listdir(os.path.join(sbx.mnt, 'ctx'))


def test_mkdir_names_a_session_and_rmdir_deletes_it(sbx):
    name = 'named-%d' % os.getpid()
    path = os.path.join(sbx.mnt, 'sessions', name)
    os.mkdir(path)
    assert name in os.listdir(os.path.join(sbx.mnt, 'sessions'))
    assert read(sbx, 'sessions', name, 'cwd') == '/workspace\n'
    with pytest.raises(OSError) as e:
        os.mkdir(path)
    assert e.value.errno == errno.EEXIST
    os.rmdir(path)
    assert not os.path.exists(path)
    with pytest.raises(OSError) as e:
        os.rmdir(path)
    assert e.value.errno == errno.ENOENT


@pytest.mark.expect_errors
def test_bad_input_fails_clearly(sbx):
    r = shell(sbx, 'id=$(exec 3<>sessions/new; echo colour=blue >&3; head -1 <&3)',
              check=False)
    assert r.returncode != 0 and b'Invalid argument' in r.stderr, r
    sid = new_session(sbx)
    r = shell(sbx, 'echo /workspace/no-such-dir > sessions/%s/cwd' % sid, check=False)
    assert r.returncode != 0 and b'No such file or directory' in r.stderr, r
    r = shell(sbx, 'echo "NOT A LINE" > sessions/%s/env' % sid, check=False)
    assert r.returncode != 0 and b'Invalid argument' in r.stderr, r
    assert not os.path.exists(os.path.join(sbx.mnt, 'sessions', 'no-such-session'))
    os.rmdir(os.path.join(sbx.mnt, 'sessions', sid))
