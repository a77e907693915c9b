"""The env control file through the mount, with the one-liners of docs/ports-git-env.md:
variables written there reach everything started afterwards. In fallback mode (a plain
container keeps no environment) reading and writing fail with EOPNOTSUPP."""
import os
import shlex

import pytest

from util import SLOW, shell, wait_for


def env_lines(sbx):
    with open(os.path.join(sbx.mnt, 'env')) as f:
        return f.read().splitlines()


def in_sandbox(sbx, expr):
    return sbx.execute('printf %%s "%s"' % expr)['stdout']


@pytest.fixture
def ext_only(sbx):
    if sbx.mode == 'fallback':
        pytest.skip('a plain container keeps no environment (test_fallback_refuses)')


def test_set_read_and_reach_commands(sbx, ext_only):
    rc, _, err = shell(sbx, 'echo FOO=bar > env')
    assert rc == 0, err
    assert 'FOO=bar' in env_lines(sbx)
    assert in_sandbox(sbx, '$FOO') == 'bar'
    # >> and > both add or replace; the value is literal to the end of the line
    rc, _, err = shell(sbx, "printf 'A=1\\nB=two words=x\\n# comment\\n\\n' >> env")
    assert rc == 0, err
    rc, _, err = shell(sbx, 'echo A=2 > env')
    assert rc == 0, err
    lines = env_lines(sbx)
    assert {'FOO=bar', 'A=2', 'B=two words=x'} <= set(lines), lines
    assert in_sandbox(sbx, '$FOO|$A|$B') == 'bar|2|two words=x'


def test_processes_see_it(sbx, ext_only):
    assert shell(sbx, 'echo GREETING=hello-process >> env')[0] == 0
    status, r = sbx.api('/api/process/start', {
        'command': 'echo "$GREETING" > /workspace/env-proc.out'})
    assert status == 200, r
    path = os.path.join(sbx.workspace, 'env-proc.out')
    assert wait_for(lambda: os.path.exists(path) and os.path.getsize(path), 10 * SLOW)
    with open(path) as f:
        assert f.read() == 'hello-process\n'


def test_unset(sbx, ext_only):
    assert shell(sbx, "printf 'GONE=1\\nKEPT=1\\n' > env")[0] == 0
    rc, _, err = shell(sbx, 'echo -GONE >> env')
    assert rc == 0, err
    lines = env_lines(sbx)
    assert 'KEPT=1' in lines and not any(l.startswith('GONE=') for l in lines), lines
    assert in_sandbox(sbx, '${GONE-unset}') == 'unset'
    # the last line about a name wins, within one write
    assert shell(sbx, "printf 'Z=1\\n-Z\\nY=1\\n-Y\\nY=2\\n' > env")[0] == 0
    lines = env_lines(sbx)
    assert 'Y=2' in lines and not any(l.startswith('Z=') for l in lines), lines
    # unsetting what is not set is fine
    assert shell(sbx, 'echo -NEVER_SET > env')[0] == 0


def test_malformed_lines(sbx, ext_only):
    before = env_lines(sbx)
    for text in ('bad line', '1X=3', '=x', 'A-B=1', '-', '-1A', 'B C=1'):
        rc, _, err = shell(sbx, 'echo %s > env' % shlex.quote(text))
        assert rc == 1 and 'Invalid argument' in err, (text, err)
    # a write applies whole or not at all (cat writes what it read at once)
    rc, _, err = shell(sbx, "printf 'PARTIAL=1\\nnot a line\\n' | cat > env")
    assert rc == 1 and 'Invalid argument' in err, err
    assert env_lines(sbx) == before
    # bash's builtins write line by line: the lines before the bad one are applied
    rc, _, err = shell(sbx, "printf 'EARLIER=1\\nnot a line\\nLATER=1\\n' > env")
    assert rc == 1 and 'Invalid argument' in err, err
    lines = env_lines(sbx)
    assert 'EARLIER=1' in lines and 'LATER=1' not in lines, lines
    # the reason is in the log (a warning, not an error)
    assert "'not a line' is neither NAME=VALUE nor -NAME" in sbx.read_log(sbx.sbxfs_log)


def test_close_reports_a_line_without_newline(sbx, ext_only):
    fd = os.open(os.path.join(sbx.mnt, 'env'), os.O_WRONLY | os.O_APPEND)
    os.write(fd, b'no-equals-sign')
    with pytest.raises(OSError) as e:
        os.close(fd)
    assert e.value.strerror == 'Invalid argument'
    fd = os.open(os.path.join(sbx.mnt, 'env'), os.O_WRONLY | os.O_APPEND)
    os.write(fd, b'NONL=ok')
    os.close(fd)
    assert 'NONL=ok' in env_lines(sbx)


def test_fallback_refuses(sbx):
    if sbx.mode == 'ext':
        pytest.skip('sbxd keeps an environment')
    log = os.path.getsize(sbx.sbxfs_log)
    rc, _, err = shell(sbx, 'cat env')
    assert rc == 1 and 'Operation not supported' in err, err
    rc, _, err = shell(sbx, 'echo FOO=bar > env')
    assert rc == 1 and 'Operation not supported' in err, err
    assert 'no environment route' in sbx.read_log(sbx.sbxfs_log, log)
    assert sbx.execute('printf %s "${FOO-unset}"')['stdout'] == 'unset'
    # the file is still listed, with its mode
    assert oct(os.stat(os.path.join(sbx.mnt, 'env')).st_mode & 0o777) == '0o644'
