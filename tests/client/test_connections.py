"""
Dead, silent and malformed URIs raise SRPyServerNotFound naming the URI, within the connect
timeout; an engine that dies mid-call is ConnectionLost; the engine's connections send without
Nagle's delay.
"""

import socket
import time

import pytest

import srpy
from conftest import address, assert_serving
from srpy import errors, lite

pytestmark = pytest.mark.timeout(60)


def free_port():
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_dead_uri_raises_server_not_found():
    uri = "PYRO:srpy.engine@127.0.0.1:%d" % free_port()
    with pytest.raises(srpy.SRPyServerNotFound) as info:
        srpy.PythonEngine(uri)
    assert info.value.uri == uri and uri in str(info.value)
    with pytest.raises(srpy.SRPyServerNotFound):
        lite.Engine(uri)


def test_silent_listener_raises_server_not_found_within_the_connect_timeout():
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(5)  # accepts connections in the kernel, never answers
        uri = "PYRO:srpy.engine@127.0.0.1:%d" % listener.getsockname()[1]
        start = time.monotonic()
        with pytest.raises(srpy.SRPyServerNotFound) as info:
            srpy.PythonEngine(uri, connect_timeout=1.0)
        assert time.monotonic() - start < 10
        assert info.value.uri == uri


def test_not_an_engine_at_the_uri(engine_uri):
    host, port = address(engine_uri)
    with pytest.raises(errors.SRPyServerNotFound, match="serves no object named 'not.the.engine'"):
        srpy.PythonEngine("PYRO:not.the.engine@%s:%d" % (host, port))
    assert_serving(engine_uri)


@pytest.mark.parametrize("uri", [
    "", "nonsense", "PYRO:srpy.engine@127.0.0.1", "PYRO:srpy.engine@127.0.0.1:port",
    "PYRO:@127.0.0.1:4000", "PYRONAME:srpy.engine", "http://127.0.0.1:4000/",
    "PYRO:srpy.engine@no-such-host.invalid:4000",
])
def test_malformed_or_unresolvable_uri(uri):
    with pytest.raises(srpy.SRPyServerNotFound) as info:
        srpy.PythonEngine(uri)
    assert info.value.uri == uri
    assert info.value.reason


def test_engine_that_dies_mid_call():
    uri, process = srpy.newSubEngine()
    try:
        eng = srpy.PythonEngine(uri)
        with pytest.raises(srpy.ConnectionLost):
            eng.exe("import os; os._exit(9)")
        assert process.wait(10) == 9
        with pytest.raises(srpy.SRPyServerNotFound):
            eng.ping()  # the next call needs a new connection, and nothing answers
        eng.close()
    finally:
        srpy.stopSubEngine(process)


def test_engine_connections_send_without_nagle_delay(engine):
    """
    The engine's connections have TCP_NODELAY: a result sent as bulk bytes and then its small
    reply would otherwise wait for the client's delayed ACK (40 ms on Linux) before the reply left.
    """
    code = ("__import__('Pyro5.callcontext').callcontext.current_context.client.sock"
            ".getsockopt(__import__('socket').IPPROTO_TCP, __import__('socket').TCP_NODELAY)")
    assert engine.eval(code) != 0
    blob = b"\x01" * (200 * 1024)  # larger than BLOB_MIN: travels as bulk bytes, then the reply
    engine.set(blob=blob)
    assert engine.get("blob") == blob

