"""
Issue 12: outsiders (no secret) cannot stop service, and nothing an outsider does can make a
serving thread wait.

Each test attacks a real engine on loopback the way the issue's reports did, bounded in count and
time, while a client that has the secret (or an open engine's ordinary client) keeps working.
"""

import os
import socket
import threading
import time

import pytest

import srpy
from srpy import lite

pytestmark = pytest.mark.timeout(180)

SECRET = "s3cret-for-dos-tests"


def address(uri):
    _, host, port = lite.parse_uri(uri)
    return host, port


def wrong_secret(uri):
    try:
        lite.Connection(uri, secret="not the secret", connect_timeout=10).close()
    except srpy.AuthenticationError:
        return
    raise AssertionError("a wrong secret was accepted")


# -- item 4: no log write may block serving ---------------------------------------------------------

def test_a_log_pipe_nobody_reads_never_blocks_serving(start_launcher):
    """
    The fixture reads the launcher's stderr only when it stops, so the engine's log is a pipe
    nobody drains (64 KiB in the kernel). Wrong proofs (each used to log a line) and a call whose
    code prints far more than the pipe holds must not make any serving thread wait.
    """
    launcher = start_launcher(["-b", "--secret", SECRET])
    uri = launcher.uris[0]
    for _ in range(700):  # the pipe filled after ~620
        wrong_secret(uri)
    eng = srpy.PythonEngine(uri, secret=SECRET)
    done = []

    def noisy():
        eng.exe("for i in range(20000):\n    print('line %d of a call that prints far more than a pipe holds' % i)")
        done.append(True)

    worker = threading.Thread(target=noisy, daemon=True)
    worker.start()
    worker.join(60)
    assert done, "a call that prints hung: the engine waited for its log"
    for _ in range(50):
        wrong_secret(uri)
    assert eng.eval("6 * 7") == 42
    eng.close()
    code, err = launcher.stop()
    assert code == 0, err[-2000:]
    assert err.count("wrong secret") <= 12, "refusals are rate-limited"
    assert "log records were dropped" in err
