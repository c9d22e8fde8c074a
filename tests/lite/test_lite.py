"""
The one-file client (srpy/wire.py and srpy/lite.py, written as one lite.py by C{python3 -m srpy.lite
--save DIR}): tests/lite/lite_script.py against real engines under CPython 3 and under Debian's real
Jython 2.7, and the wire framing against impostor servers.
"""

import json
import os
import shutil
import socket
import struct
import subprocess
import sys
import threading
import time
import zlib

import pytest

from srpy import lite
from conftest import Launcher

HERE = os.path.dirname(os.path.abspath(__file__))
SCRIPT = os.path.join(HERE, "lite_script.py")
SECRET = "jvm-secret"


def free_port():
    """A loopback port nothing listens on (bound, then released)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="module")
def script_engines():
    """Two engines (multi mode), one engine with a secret, and a URI where nothing answers."""
    plain = Launcher(["-n", "2"], count=2)
    try:
        secure = Launcher(["-b", "--secret", SECRET])
    except BaseException:
        plain.shutdown()
        raise
    yield {"uris": plain.uris, "secure_uri": secure.uris[0],
           "dead_uri": "PYRO:srpy.engine@127.0.0.1:%d" % free_port()}
    secure.shutdown()
    plain.shutdown()


@pytest.fixture(scope="module")
def saved_lite(tmp_path_factory):
    """The folder holding the one-file client, written the way doc/jython.md tells users to."""
    folder = tmp_path_factory.mktemp("one-file")
    done = subprocess.run([sys.executable, "-m", "srpy.lite", "--save", str(folder)], stdout=subprocess.PIPE,
                          stderr=subprocess.STDOUT, text=True, timeout=60)
    assert done.returncode == 0 and done.stdout.strip() == str(folder / "lite.py"), done.stdout
    return folder


def run_script(command, engines, doomed_uri, timeout, lite_dir):
    args = []
    for uri in engines["uris"]:
        args += ["--uri", uri]
    args += ["--secure-uri", engines["secure_uri"], "--secret", SECRET, "--dead-uri", engines["dead_uri"],
             "--doomed-uri", doomed_uri]
    env = dict(os.environ)
    env.pop("SRPY_SECRET", None)
    env.pop("PYTHONPATH", None)  # the one file alone, not the srpy package, must do
    env["SRPY_LITE_DIR"] = str(lite_dir)
    done = subprocess.run(command + [SCRIPT] + args, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                          text=True, timeout=timeout, env=env, cwd=HERE)
    lines = done.stdout.strip().splitlines()
    assert done.returncode == 0 and lines and lines[-1].endswith(" passed, 0 failed"), done.stdout
    passed = int(lines[-1].split()[0])
    assert passed >= 17, done.stdout
    return done.stdout


def test_script_under_cpython(script_engines, start_launcher, saved_lite):
    doomed = start_launcher(["-b"]).uris[0]
    output = run_script([sys.executable], script_engines, doomed, timeout=110, lite_dir=saved_lite)
    assert "transport SocketTransport" in output


def jython_command():
    """The jython command; skipped where it is absent, but a failure on CI (which installs it)."""
    path = shutil.which("jython")
    if path is None:
        if os.environ.get("CI"):
            pytest.fail("jython is not installed, and CI must run the Jython client tests "
                        "(.ci/run installs Debian's jython as root)")
        pytest.skip("jython is not installed (apt-get install jython)")
    return [path]


@pytest.mark.jython
@pytest.mark.slow
@pytest.mark.timeout(300)
def test_script_under_jython(script_engines, start_launcher, saved_lite):
    command = jython_command()
    doomed = start_launcher(["-b"]).uris[0]
    output = run_script(command, script_engines, doomed, timeout=280, lite_dir=saved_lite)
    assert "transport JavaSocketTransport" in output, "Jython must use java.net.Socket"
    assert "on java" in output


# -- the one file ---------------------------------------------------------------------------------

def test_the_saved_file_is_wire_then_lite_and_stands_alone(saved_lite):
    text = (saved_lite / "lite.py").read_text(encoding="utf-8")
    wire_text = open(os.path.join(os.path.dirname(lite.__file__), "wire.py"), encoding="utf-8").read()
    assert wire_text.rstrip("\n") in text, "wire.py's whole text comes first"
    assert "from .wire import" not in text and "\n# -- srpy package imports: begin" not in text, "the cut"
    assert text.index("class Pool(") < text.index("class Engine(") < text.index("class Box(")
    probe = ("import sys; sys.path.insert(0, sys.argv[1]); import lite; "
             "assert lite.Engine.__module__ == 'lite' and lite.SRPyError.__module__ == 'lite'; "
             "assert not [m for m in sys.modules if m.split('.')[0] in ('srpy', 'Pyro5', 'serpent')]; "
             "print(sorted(set(lite.__all__) - set(dir(lite))), lite.save(sys.argv[2]))")
    again = saved_lite / "again"
    env = dict(os.environ)
    env.pop("PYTHONPATH", None)
    done = subprocess.run([sys.executable, "-c", probe, str(saved_lite), str(again)], stdout=subprocess.PIPE,
                          stderr=subprocess.STDOUT, text=True, timeout=60, env=env, cwd=str(saved_lite))
    assert done.returncode == 0 and done.stdout.split()[0] == "[]", done.stdout
    assert (again / "lite.py").read_text(encoding="utf-8") == text, "the one file saves a copy of itself"


def test_the_package_module_copied_alone_names_the_save_command(tmp_path):
    (tmp_path / "lite.py").write_bytes(open(lite.__file__, "rb").read())
    env = dict(os.environ)
    env.pop("PYTHONPATH", None)
    done = subprocess.run([sys.executable, "-c", "import lite"], stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                          text=True, timeout=60, env=env, cwd=str(tmp_path))
    assert done.returncode == 1
    assert done.stdout.strip().splitlines()[-1] == (
        "ImportError: this lite.py is srpy's package module and needs srpy/wire.py: for the one-file client to "
        "copy, run `python3 -m srpy.lite --save DIR` and copy DIR/lite.py"), done.stdout


def test_save_returns_the_path_it_wrote(tmp_path):
    path = lite.save(str(tmp_path / "new" / "folder"))
    assert path == str(tmp_path / "new" / "folder" / "lite.py") and os.path.isfile(path)


# -- the framing, against impostor servers -------------------------------------------------------

def message(msgtype, data=b"", seq=0, version=lite.PROTOCOL_VERSION, flags=0, annotations=b"",
            ann_size=None, data_size=None, tag=b"PYRO", magic=lite.MAGIC):
    """One Pyro5 message as bytes, with any header field open to lies."""
    head = lite.HEADER.pack(tag, version, msgtype, lite.JSON_SERIALIZER_ID, flags, seq,
                            len(data) if data_size is None else data_size,
                            len(annotations) if ann_size is None else ann_size, b"\0" * 16, 0, magic)
    return head + annotations + data


def connect_ok(msg):
    return message(lite.MSG_CONNECTOK, b'{"handshake": "hello"}')


def answer(data, seq_shift=0, flags=0):
    """A reply to the call just read, carrying C{data}."""
    return lambda msg: message(lite.MSG_RESULT, data, seq=msg["seq"] + seq_shift, flags=flags)


class Impostor:
    """
    A one-connection server on loopback that reads each message and answers it with the next of
    C{replies} (bytes, or a function of the message read, which may return C{(bytes, "close")} to
    hang up after sending). C{None} closes the connection; C{"hang"} answers nothing and waits for
    the client to go.
    """

    def __init__(self, replies):
        self.replies = list(replies)
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(1)
        self.sock.settimeout(10)
        self.uri = "PYRO:srpy.engine@127.0.0.1:%d" % self.sock.getsockname()[1]
        self.received = []
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self):
        try:
            conn, _ = self.sock.accept()
        except OSError:
            return
        with conn:
            conn.settimeout(10)
            for reply in self.replies:
                msg = self._read(conn)
                if msg is None or reply is None:
                    return
                if reply == "hang":
                    conn.recv(1)
                    return
                out = reply(msg) if callable(reply) else reply
                if isinstance(out, tuple):  # (bytes, "close"): send, then hang up
                    conn.sendall(out[0])
                    return
                conn.sendall(out)
            try:
                conn.recv(1)  # until the client closes
            except OSError:
                pass

    def _read(self, conn):
        head = self._exactly(conn, lite.HEADER.size)
        if head is None:
            return None
        fields = lite.HEADER.unpack(head)
        body = self._exactly(conn, fields[6] + fields[7])
        msg = {"type": fields[2], "seq": fields[5], "data": body[fields[7]:] if body is not None else b""}
        self.received.append(msg)
        return msg

    @staticmethod
    def _exactly(conn, size):
        data = b""
        while len(data) < size:
            try:
                chunk = conn.recv(size - len(data))
            except OSError:
                return None
            if not chunk:
                return None
            data += chunk
        return data

    def close(self):
        self.sock.close()
        self.thread.join(10)


@pytest.fixture
def impostor():
    made = []

    def make(*replies):
        server = Impostor(replies)
        made.append(server)
        return server

    yield make
    for server in made:
        server.close()


def test_unknown_protocol_version_is_refused_clearly(impostor):
    server = impostor(message(lite.MSG_CONNECTOK, b"{}", version=501))
    with pytest.raises(lite.ProtocolError, match=r"version 501.*only version 502"):
        lite.Connection(server.uri)


@pytest.mark.parametrize("garbage, match", [
    (b"HTTP/1.1 400 Bad Request\r\n\r\n" + b"x" * 40, "not a Pyro5 message"),
    (message(lite.MSG_CONNECTOK, b"{}", magic=0x1234), "magic number"),
    (message(lite.MSG_CONNECTOK, b"{}", data_size=(1 << 30) + 1), "limit"),
    (message(lite.MSG_CONNECTOK, b"{not json"), "not valid json"),
    (message(lite.MSG_CONNECTOK, b"{}", annotations=struct.pack("!4sI", b"XXXX", 500), ann_size=8), "annotation"),
    (message(lite.MSG_RESULT, b"{}"), "unexpected message type 5"),
    (message(lite.MSG_CONNECT, b'"no challenge"'), "malformed secret challenge"),
])
def test_garbage_from_the_server_is_a_protocol_error(impostor, garbage, match):
    server = impostor(garbage)
    with pytest.raises(lite.ProtocolError, match=match):
        lite.Connection(server.uri, secret="s")


def test_server_that_hangs_up_at_once_is_not_found(impostor):
    server = impostor(None)
    with pytest.raises(lite.SRPyServerNotFound, match="handshake failed") as info:
        lite.Connection(server.uri)
    assert info.value.uri == server.uri


def test_silent_server_times_out_the_handshake(impostor):
    server = impostor("hang")
    started = time.monotonic()
    with pytest.raises(lite.SRPyServerNotFound, match="no answer to the handshake"):
        lite.Connection(server.uri, connect_timeout=0.3)
    assert time.monotonic() - started < 5


def test_refused_connection_names_the_reason(impostor):
    server = impostor(message(lite.MSG_CONNECTFAIL, b'"go away"'))
    with pytest.raises(lite.CommunicationError, match="refused the connection: go away"):
        lite.Connection(server.uri)


def test_a_call_speaks_pyro5_json(impostor):
    server = impostor(connect_ok, answer(b"[1, 2]"))
    conn = lite.Connection(server.uri)
    assert conn.handshake_info == "hello"
    assert conn.call("eval", ("x", {"x": [1, 2]})) == ([1, 2], {})
    connect, call = server.received
    assert connect["type"] == lite.MSG_CONNECT and call["type"] == lite.MSG_INVOKE
    assert json.loads(call["data"]) == {"object": "srpy.engine", "method": "eval",
                                        "params": ["x", {"x": [1, 2]}], "kwargs": {}}
    conn.close()


def test_compressed_answer_is_decompressed(impostor):
    server = impostor(connect_ok, answer(zlib.compress(b'"' + b"a" * 1000 + b'"'), flags=lite.FLAGS_COMPRESSED))
    conn = lite.Connection(server.uri)
    assert conn.call("eval", ("x",))[0] == "a" * 1000
    conn.close()


def test_remote_exception_reply(impostor):
    error = {"__class__": "builtins.ValueError", "__exception__": True, "args": ["bad"],
             "attributes": {"_pyroTraceback": ["Traceback...\n", "ValueError: bad\n"]}}
    server = impostor(connect_ok, answer(json.dumps(error).encode(), flags=lite.FLAGS_EXCEPTION))
    conn = lite.Connection(server.uri)
    with pytest.raises(ValueError, match="bad") as info:
        conn.call("eval", ("x",))
    assert info.value.remote_traceback == "Traceback...\nValueError: bad\n"
    assert not conn.broken, "a remote exception leaves the connection usable"
    conn.close()


@pytest.mark.parametrize("reply, error, match", [
    (answer(b"2", seq_shift=1), lite.ProtocolError, "out of order"),
    (answer(b"\xff\xfe"), lite.ProtocolError, "cannot be decoded"),
    (lambda msg: (message(lite.MSG_RESULT, b"2", seq=msg["seq"], data_size=100), "close"), lite.ConnectionLost,
     "lost the connection"),
    (None, lite.ConnectionLost, "lost the connection"),
])
def test_bad_answers_break_the_connection(impostor, reply, error, match):
    server = impostor(connect_ok, reply)
    conn = lite.Connection(server.uri)
    with pytest.raises(error, match=match):
        conn.call("eval", ("x",))
    assert conn.broken
    with pytest.raises(lite.ConnectionLost, match="failed earlier"):
        conn.call("ping")


def test_call_timeout_is_distinct_from_connection_loss(impostor):
    server = impostor(connect_ok, "hang")
    conn = lite.Connection(server.uri)
    with pytest.raises(lite.CallTimeout, match="within 0.3 s") as info:
        conn.call("exe", ("import time; time.sleep(9)",), timeout=0.3)
    assert not isinstance(info.value, lite.ConnectionLost)
    assert isinstance(info.value, lite.CommunicationError) and conn.broken


def test_nothing_listening_is_server_not_found():
    uri = "PYRO:srpy.engine@127.0.0.1:%d" % free_port()
    with pytest.raises(lite.SRPyServerNotFound) as info:
        lite.Engine(uri)
    assert info.value.uri == uri


# -- values and exceptions -----------------------------------------------------------------------

def test_json_serializer_round_trip_and_refusal():
    ser = lite.JsonSerializer()
    value = {"a": [1, 2.5, None, True, "\u2603"], "b": {"c": "d"}}
    assert ser.loads(ser.dumps(value)) == value
    assert ser.loads(ser.dumps({"t": (1, 2), "s": {3}})) == {"t": [1, 2], "s": [3]}
    with pytest.raises(TypeError, match="'object'"):
        ser.dumps({"x": object()})


def test_exception_from_dict():
    exc = lite.exception_from_dict({"__class__": "builtins.KeyError", "args": ["k"],
                                    "attributes": {"srpy_traceback": "tb"}})
    assert type(exc) is KeyError and exc.remote_traceback == "tb" and exc.remote_type == "builtins.KeyError"
    exc = lite.exception_from_dict({"__class__": "mymod.Custom", "args": ["mine"]})
    assert isinstance(exc, lite.RemoteError) and exc.remote_type == "mymod.Custom" and "mine" in str(exc)
    exc = lite.exception_from_dict({"__class__": "builtins.SystemExit", "args": [3]})
    assert isinstance(exc, lite.RemoteSystemExit) and exc.remote_code == 3
    exc = lite.exception_from_dict({"__class__": "builtins.SyntaxError",
                                    "args": ["invalid syntax", ["<srpy>", 1, 12, "def broken(:\n", 1, 13]]})
    assert type(exc) is SyntaxError and exc.lineno == 1 and exc.offset == 12


def test_secret_helpers():
    assert lite.same_text("abc", "abc") and not lite.same_text("abc", "abd") and not lite.same_text("a", "ab")
    assert lite.proof("s", "client", "n1", "n2") != lite.proof("s", "server", "n1", "n2")
    assert len(lite.new_nonce()) == 32


def test_cpython_uses_python_sockets():
    assert lite.default_transport() is lite.SocketTransport


@pytest.mark.parametrize("uri", ["srpy.engine@127.0.0.1:4000", "PYRO:@127.0.0.1:4000", "PYRO:x@127.0.0.1:port"])
def test_parse_uri_refuses_what_is_not_a_direct_uri(uri):
    with pytest.raises(ValueError, match="not a direct Pyro5 URI"):
        lite.parse_uri(uri)


def test_plain_pyro5_json_client_gets_a_type_error_for_a_module(engine_uri):
    """The engine side: Pyro5's own json client gets a TypeError, not a module turned into a dict."""
    from Pyro5.api import Proxy
    with Proxy(engine_uri) as proxy:
        proxy._pyroSerializer = "json"
        proxy.imp(["math"])
        with pytest.raises(TypeError, match="'module'.*json client"):
            proxy.get("math")
        assert proxy.eval("math.sqrt(4)", None) == 2.0
        assert proxy.eval("{'when': __import__('datetime').date(2009, 5, 1)}", None) == {"when": "2009-05-01"}


def test_module_sources_ships_a_module_or_its_whole_package(tmp_path, monkeypatch):
    pkg = tmp_path / "litepkg"
    (pkg / "sub").mkdir(parents=True)
    (pkg / "__init__.py").write_text("from .inner import value\n")
    (pkg / "inner.py").write_text("value = 42\n")
    (pkg / "sub" / "__init__.py").write_text("")
    (tmp_path / "litemod.py").write_text("x = 1\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    assert lite.module_sources("litemod") == {"litemod.py": "x = 1\n"}
    assert sorted(lite.module_sources("litepkg.inner")) == ["litepkg/__init__.py", "litepkg/inner.py",
                                                            "litepkg/sub/__init__.py"]
    with pytest.raises(ValueError, match="not a package"):
        lite.module_sources("litemod.nothing")
    for name in ("litemod", "litepkg", "litepkg.inner"):
        sys.modules.pop(name, None)
