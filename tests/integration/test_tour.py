"""The README's tour of the control files, as one user session: everything started through the
mount (a web server through proc/, exposed through ports/, fetched with curl at its preview
URL; code in Python and JavaScript contexts; a variable through env), with the README's own
one-liners. Each tree has its detailed tests elsewhere; this one checks that they work
together, the way the README promises."""
import json
import shlex
import subprocess

import pytest

from util import SLOW, free_port, sh, wait_for


def shell(sbx, cmd, check=True):
    """stdout of cmd, run in the mount point by bash as a user types it."""
    return sh('cd %s && %s' % (shlex.quote(sbx.mnt), cmd), check=check).stdout.decode()


def events(text):
    return [json.loads(line) for line in text.splitlines()]


def curl(url):
    r = subprocess.run(['curl', '-s', '-m', str(10 * SLOW), '-w', '\n%{http_code}', url],
                       capture_output=True, timeout=20 * SLOW)
    body, _, code = r.stdout.decode(errors='replace').rpartition('\n')
    return int(code or 0), body


def test_web_server_through_proc_and_ports(sbx):
    port = free_port()
    shell(sbx, 'mkdir -p workspace/site && echo hi > workspace/site/from-the-tour.txt')
    pid = shell(sbx, "p=$(exec 3<>proc/new; printf 'cwd=site\\npython3 -m http.server %d "
                     "--bind 127.0.0.1\\n' >&3; head -1 <&3); echo $p" % port).strip()
    assert pid and pid in shell(sbx, 'ls proc').split()
    try:
        assert shell(sbx, 'cat proc/%s/status' % pid).strip() == 'running'
        assert wait_for(lambda: curl('http://127.0.0.1:%d/' % port)[0] == 200, 20 * SLOW), \
            shell(sbx, 'cat proc/%s/stderr' % pid)
        if sbx.mode == 'fallback':
            # a plain container cannot expose ports: the error is clear, nothing else breaks
            r = sh('cd %s && touch ports/%d' % (shlex.quote(sbx.mnt), port), check=False)
            assert r.returncode != 0 and b'not supported' in r.stderr, r
            return
        url = shell(sbx, 'touch ports/%d && cat ports/%d' % (port, port)).strip()
        status, body = curl(url)
        assert status == 200 and 'from-the-tour.txt' in body, (url, status, body)
        shell(sbx, 'rm ports/%d' % port)
        assert curl(url)[0] == 404
    finally:
        # a plain container can only send TERM
        shell(sbx, 'echo %s > proc/%s/kill' % ('INT' if sbx.mode == 'ext' else 'TERM', pid))
    assert wait_for(lambda: shell(sbx, 'cat proc/%s/status' % pid).strip() != 'running',
                    10 * SLOW)
    assert 'GET /' in shell(sbx, 'cat proc/%s/stderr' % pid)


def test_python_and_javascript_contexts(sbx):
    py = shell(sbx, 'cat ctx/new').strip()
    out = events(shell(sbx, "echo 'import math; print(math.pi); 6*7' > ctx/%s/in; "
                            "cat ctx/%s/out" % (py, py)))
    assert out[0] == {'type': 'stdout', 'text': '3.141592653589793\n'}
    assert {'type': 'result', 'text': '42'}.items() <= out[1].items()
    assert out[-1]['type'] == 'execution_complete'
    js = shell(sbx, 'js=$(exec 3<>ctx/new; echo language=javascript >&3; head -1 <&3); '
                    'echo $js').strip()
    assert shell(sbx, 'cat ctx/%s/language' % js).strip() == 'javascript'
    out = events(shell(sbx, "echo 'const r = await Promise.resolve(42); r' > ctx/%s/in; "
                            "cat ctx/%s/out" % (js, js)))
    assert any(e['type'] == 'result' and e.get('text') == '42' for e in out), out
    assert sorted([py, js]) == sorted(x for x in shell(sbx, 'ls ctx').split() if x != 'new')
    shell(sbx, 'rmdir ctx/%s ctx/%s' % (py, js))
    assert shell(sbx, 'ls ctx').split() == ['new']


def test_env_reaches_a_process(sbx):
    if sbx.mode == 'fallback':
        pytest.skip('a plain container has no environment route (test_env.py)')
    shell(sbx, 'echo GREETING=hi-from-env > env')
    pid = shell(sbx, "p=$(exec 3<>proc/new; echo 'echo $GREETING' >&3; head -1 <&3); "
                     "echo $p").strip()
    assert shell(sbx, 'cat proc/%s/follow' % pid) == 'hi-from-env\n'
    assert 'GREETING=hi-from-env' in shell(sbx, 'cat env').splitlines()
    shell(sbx, 'echo -GREETING > env')
    assert 'GREETING' not in shell(sbx, 'cat env')
