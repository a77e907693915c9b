"""ports/ through the mount, with the one-liners of docs/ports-git-env.md: a web server in the
sandbox, exposed with touch, reached with curl at the preview URL, unexposed with rm. In
fallback mode (a plain container) exposing fails with EOPNOTSUPP and nothing else changes."""
import os
import re
import shlex

import pytest

from util import SLOW, curl, free_port, shell, wait_for

URL_RE = re.compile(r'^http://(\d+)-local-([a-z0-9_]{16})\.localhost:(\d+)/$')


def ports(sbx, *parts):
    return os.path.join(sbx.mnt, 'ports', *parts)


@pytest.fixture(scope='module')
def web(sbx):
    """python3 -m http.server on a free loopback port, started in the sandbox as a process
    (in a directory of its own with one known file); yields the port."""
    port = free_port()
    os.makedirs(os.path.join(sbx.workspace, 'site'), exist_ok=True)
    with open(os.path.join(sbx.workspace, 'site', 'hello-from-the-sandbox.txt'), 'w') as f:
        f.write('hi\n')
    status, r = sbx.api('/api/process/start', {
        'command': 'exec python3 -m http.server %d --bind 127.0.0.1' % port,
        'cwd': '/workspace/site'})
    assert status == 200 and r['success'], r
    assert wait_for(lambda: curl('http://127.0.0.1:%d/' % port)[0] == 200, 20 * SLOW), \
        'http.server did not come up in the sandbox'
    yield port
    sbx.api('/api/process/%s' % r['processId'], method='DELETE')


def test_expose_curl_unexpose(sbx, web):
    if sbx.mode == 'fallback':
        pytest.skip('a plain container cannot expose ports (test_fallback_refuses)')
    assert shell(sbx, 'touch ports/%d' % web)[0] == 0
    assert str(web) in os.listdir(ports(sbx))
    rc, url, _ = shell(sbx, 'cat ports/%d' % web)
    url = url.strip()
    m = URL_RE.match(url)
    assert rc == 0 and m and m.group(1) == str(web) and m.group(3) == str(sbx.port), url

    # the documented one-liner, as typed
    rc, out, err = shell(sbx, 'curl -s "$(cat ports/%d)"' % web)
    assert rc == 0 and 'hello-from-the-sandbox.txt' in out, (out, err)

    # the token is the credential
    status, body = curl(url.replace(m.group(2), 'a' * 16))
    assert status == 404 and 'hello-from-the-sandbox' not in body

    # touching again keeps the URL
    assert shell(sbx, 'touch ports/%d && cat ports/%d' % (web, web))[1].strip() == url

    rc, _, err = shell(sbx, 'rm ports/%d' % web)
    assert rc == 0, err
    status, body = curl(url)
    assert status == 404 and 'hello-from-the-sandbox' not in body
    assert str(web) not in os.listdir(ports(sbx))
    rc, _, err = shell(sbx, 'cat ports/%d' % web)
    assert rc == 1 and 'No such file or directory' in err
    rc, _, err = shell(sbx, 'rm ports/%d' % web)
    assert rc == 1 and 'No such file or directory' in err

    # exposing again makes a new URL: the old one stays dead
    rc, url2, _ = shell(sbx, 'echo > ports/%d && cat ports/%d' % (web, web))
    assert rc == 0 and URL_RE.match(url2.strip()) and url2.strip() != url
    assert curl(url)[0] == 404
    assert curl(url2.strip())[0] == 200
    assert shell(sbx, 'rm ports/%d' % web)[0] == 0


def test_name_and_ports_exposed_elsewhere(sbx):
    if sbx.mode == 'fallback':
        pytest.skip('a plain container cannot expose ports')
    p1, p2 = free_port(), free_port()
    rc, _, err = shell(sbx, 'echo web > ports/%d' % p1)
    assert rc == 0, err
    status, r = sbx.api('/api/x/ports')
    assert [(x['port'], x['name']) for x in r['ports'] if x['port'] == p1] == [(p1, 'web')]
    # exposed through the API: listed and readable through the mount
    status, r = sbx.api('/api/x/ports', {'port': p2})
    assert status == 200
    assert wait_for(lambda: str(p2) in os.listdir(ports(sbx)), 3 * SLOW)
    assert shell(sbx, 'cat ports/%d' % p2)[1].strip() == r['url']
    # unexposed through the API: gone from the mount
    sbx.api('/api/x/ports/%d' % p2, method='DELETE')
    assert wait_for(lambda: str(p2) not in os.listdir(ports(sbx)), 3 * SLOW)
    assert shell(sbx, 'rm ports/%d' % p1)[0] == 0
    assert os.listdir(ports(sbx)) == []


def test_bad_port_names(sbx):
    if sbx.mode == 'fallback':
        pytest.skip('a plain container refuses every port (test_fallback_refuses)')
    for name in ('abc', '80', '0', '08080', '65536', '99999999999', '-1'):
        rc, _, err = shell(sbx, 'touch ports/%s' % shlex.quote(name))
        assert rc == 1 and 'Invalid argument' in err, (name, err)
        assert name not in os.listdir(ports(sbx))
    # sbxd's own port is refused by the server
    rc, _, err = shell(sbx, 'touch ports/%d' % sbx.port)
    assert rc == 1 and 'Invalid argument' in err, err
    assert os.listdir(ports(sbx)) == []
    # directories are not ports
    rc, _, err = shell(sbx, 'mkdir ports/9000')
    assert rc == 1


def test_fallback_refuses(sbx):
    if sbx.mode == 'ext':
        pytest.skip('sbxd exposes ports (test_expose_curl_unexpose)')
    log = os.path.getsize(sbx.sbxfs_log)
    rc, _, err = shell(sbx, 'touch ports/8080')
    assert rc == 1 and 'Operation not supported' in err, err
    assert os.listdir(ports(sbx)) == []
    text = sbx.read_log(sbx.sbxfs_log, log)
    assert 'no port exposure route' in text, text
    # nothing else broke
    rc, out, _ = shell(sbx, 'ls ports && echo ok > workspace/after && cat workspace/after')
    assert rc == 0 and out == 'ok\n'
