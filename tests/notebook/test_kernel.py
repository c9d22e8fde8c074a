"""
The magics in a real Jupyter kernel (ipykernel, driven by jupyter_client as a notebook's front end
drives it): each engine's lines arrive as the cell's own stream messages, under its label, and a
failed cell is an error reply with one line of its own.
"""

import os

import pytest

pytest.importorskip("ipykernel")
jupyter_client = pytest.importorskip("jupyter_client")

pytestmark = pytest.mark.timeout(120)


@pytest.fixture
def kernel(tmp_path):
    manager = jupyter_client.KernelManager(kernel_name="python3")
    manager.start_kernel(env=dict(os.environ, IPYTHONDIR=str(tmp_path)))  # PYTHONPATH too: this srpy
    client = manager.client()
    client.start_channels()
    try:
        client.wait_for_ready(timeout=60)
        yield client
    finally:
        client.stop_channels()
        manager.shutdown_kernel(now=True)


def execute(client, code, timeout=60):
    """Run one cell; its reply and [(msg_type, content)] of the iopub messages that belong to it."""
    msg_id = client.execute(code)
    messages = []
    while True:
        message = client.get_iopub_msg(timeout=timeout)
        if message["parent_header"].get("msg_id") != msg_id:
            continue
        if message["msg_type"] == "status" and message["content"]["execution_state"] == "idle":
            break
        messages.append((message["msg_type"], message["content"]))
    while True:  # wait_for_ready may have left a kernel_info reply or two on the shell channel
        reply = client.get_shell_msg(timeout=timeout)
        if reply["parent_header"].get("msg_id") == msg_id:
            return reply["content"], messages


def streams(messages, name):
    return "".join(content["text"] for kind, content in messages if kind == "stream" and content["name"] == name)


def test_px_in_a_jupyter_kernel(kernel, pair):
    for code in ("%load_ext srpy", "import srpy\nbox = srpy.EngBox(%r)" % list(pair), "%srpy use box"):
        reply, messages = execute(kernel, code)
        assert reply["status"] == "ok", (code, messages)
    reply, messages = execute(kernel, "import srpy\n[e.name for e in box]")
    names = eval(next(content for kind, content in messages if kind == "execute_result")["data"]["text/plain"])
    labels = ["%d:%s" % (index, name) for index, name in enumerate(names)]

    reply, messages = execute(kernel, "%%px\nimport sys\nprint('MARK-out')\nprint('MARK-err', file=sys.stderr)\n6 * 7")
    assert reply["status"] == "ok", messages
    out, err = streams(messages, "stdout"), streams(messages, "stderr")
    for label in labels:
        assert "[%s] MARK-out\n" % label in out and "Out[%s]: 42\n" % label in out, out
        assert "[%s] MARK-err\n" % label in err, err

    reply, messages = execute(kernel, "%%px --targets 1\nprint('MARK-before')\n1 / 0")
    assert reply["status"] == "error" and reply["ename"] == "CellError", reply
    errors = [content for kind, content in messages if kind == "error"]
    assert len(errors) == 1 and errors[0]["traceback"] == [
        "CellError: the cell failed on 1 of 1 engine: %s (ZeroDivisionError: division by zero)" % labels[1]]
    out = streams(messages, "stdout")
    assert "[%s] MARK-before" % labels[1] in out and labels[0] not in out, out
    assert "ZeroDivisionError: division by zero" in streams(messages, "stderr")

    reply, messages = execute(kernel, "xs = list(range(5))\n%push xs\n%pull xs")
    result = next(content for kind, content in messages if kind == "execute_result")
    assert result["data"]["text/plain"] == "[[0, 1, 2, 3, 4], [0, 1, 2, 3, 4]]"
