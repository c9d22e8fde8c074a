"""
Engines started with a secret: clients without it, with a wrong one or a forged proof are refused
with an error naming the secret, and the engine keeps serving the right ones.
"""

import pytest

import srpy
from conftest import assert_serving, header, raw_socket
from srpy import lite

pytestmark = pytest.mark.timeout(60)


SECRET = "correct horse battery staple"


@pytest.fixture(scope="module")
def secret_launcher():
    from conftest import Launcher
    launcher = Launcher(["-b", "--secret", SECRET])
    yield launcher
    code, err = launcher.stop()
    assert code == 0, err


def test_no_secret_is_refused_by_a_secret_engine(secret_launcher, monkeypatch):
    monkeypatch.delenv("SRPY_SECRET", raising=False)
    uri = secret_launcher.uris[0]
    with pytest.raises(srpy.AuthenticationError, match="requires a secret"):
        srpy.PythonEngine(uri)
    with pytest.raises(srpy.AuthenticationError, match="requires a secret"):
        lite.Engine(uri)
    assert_serving(uri, secret=SECRET)


def test_wrong_secret_is_refused(secret_launcher):
    uri = secret_launcher.uris[0]
    for wrong in ("wrong", SECRET + " ", SECRET.upper(), "x" * 1000):
        with pytest.raises(srpy.AuthenticationError, match="secret"):
            srpy.PythonEngine(uri, secret=wrong)
    assert_serving(uri, secret=SECRET)


def test_secret_on_both_sides(secret_launcher, monkeypatch):
    uri = secret_launcher.uris[0]
    with srpy.PythonEngine(uri, secret=SECRET) as eng:
        assert eng.eval("a+b", a=2, b=3) == 5
    monkeypatch.setenv("SRPY_SECRET", SECRET)
    assert_serving(uri)  # from the environment
    eng = lite.Engine(uri)
    try:
        assert eng.ping() == "pong"
    finally:
        eng.close()


def test_plain_pyro5_client_is_refused_by_a_secret_engine(secret_launcher):
    from Pyro5.api import Proxy
    from Pyro5.errors import CommunicationError
    with Proxy(secret_launcher.uris[0]) as proxy:
        with pytest.raises(CommunicationError, match="requires a secret"):
            proxy.ping()
    assert_serving(secret_launcher.uris[0], secret=SECRET)


def test_client_that_forges_the_secret_proof_is_refused(secret_launcher):
    """A client that answers the challenge with a made-up proof gets a refusal naming the secret."""
    uri = secret_launcher.uris[0]
    conn = lite.Connection.__new__(lite.Connection)
    conn.uri = uri
    conn.object_id, conn.host, conn.port = lite.parse_uri(uri)
    conn._json = lite.JsonSerializer()
    conn.transport = lite.SocketTransport(conn.host, conn.port, 5.0)
    conn.transport.settimeout(5.0)
    try:
        request = {"handshake": {"srpy": 1, "nonce": lite.new_nonce()}, "object": conn.object_id}
        conn._send(lite.MSG_CONNECT, lite.JSON_SERIALIZER_ID, conn._json.dumps(request))
        msgtype, _, _, _, data, _, _ = conn._receive()
        assert msgtype == lite.MSG_CONNECT and "nonce" in conn._json.loads(data)
        conn._send(lite.MSG_CONNECT, lite.JSON_SERIALIZER_ID, conn._json.dumps({"proof": "0" * 64}))
        msgtype, _, _, _, data, _, _ = conn._receive()
        assert msgtype == lite.MSG_CONNECTFAIL and "wrong secret" in conn._json.loads(data)
    finally:
        conn.transport.close()
    assert_serving(uri, secret=SECRET)


def test_client_that_never_answers_the_challenge(secret_launcher):
    uri = secret_launcher.uris[0]
    for answer in (b"", b"garbage instead of an answer" * 3):
        sock = raw_socket(uri)
        body = b'{"handshake": {"srpy": 1, "nonce": "%s"}, "object": "srpy.engine"}' % lite.new_nonce().encode()
        sock.sendall(header(lite.MSG_CONNECT, len(body)) + body)
        assert sock.recv(lite.HEADER.size)[:4] == b"PYRO"
        if answer:
            sock.sendall(answer)
        sock.close()
    assert_serving(uri, secret=SECRET)


def test_secret_engine_from_environment(start_launcher):
    launcher = start_launcher(["-b"], env={"SRPY_SECRET": "from-env"})
    uri = launcher.uris[0]
    with pytest.raises(srpy.AuthenticationError):
        srpy.PythonEngine(uri, secret="not-it")
    assert_serving(uri, secret="from-env")

