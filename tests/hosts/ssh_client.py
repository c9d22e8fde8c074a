"""
The client side of tests/hosts/test_ssh.py, run inside the client's own network namespace::

    ip netns exec NS python tests/hosts/ssh_client.py MODE SSH_CONFIG BARE_HOST

It starts L{srpy.SSHCluster}s on the hosts named by the ssh configuration file (C{h1}, C{h2}, C{h3};
C{nohost} has an address nobody answers on) and prints one JSON object per line, one per step; a
failure prints C{{"step": "error", ...}} and exits 1. BARE_HOST runs its Python with C{-I -S}: no
site-packages, so neither srpy nor Pyro5 is importable there.

MODE C{steps}: C{bare} (srpy cannot be imported on BARE_HOST), C{cold} (the first start: h1, h2, h3
and nohost), C{map}, C{status}, C{peers}, C{closed}, C{warm} (the second start, h2's engines bound
to its second address), C{closed}, C{damaged} (h1's cached zip damaged: sent again), C{no-python}
(a host whose python3 command does not exist).
MODE C{hold}: C{up}, then it sleeps until killed (the test SIGKILLs it).
MODE C{tunnel}: C{direct} (h1 and h3 without tunnel, h3's engines bound to its loopback: h3 fails),
C{tunnel} (the three hosts in tunnel mode), C{map}, C{peers}, C{closed}, C{taken} (h1's engine on
a port that is taken on the client: forwarded on another one).
MODE C{tls}: C{tls} (h1 and h2 direct, h3 tunneled, all serving TLS with the cluster's
certificates), C{refused} (clients without the cluster's CA), C{map}, C{peers}, C{closed}.
MODE C{cut} (a fourth argument: a folder the engines note their work in): C{up} (one engine per
host, a heartbeat of 10 s), C{cut-map-start}, C{cut-map} (the test cuts h3's link meanwhile),
then it waits for a file C{close} in that folder, and C{closed} (with how long closing took).
MODE C{exit}: C{up}, then it exits without closing the cluster.
"""

import json
import os
import subprocess
import sys
import time
import traceback

HOSTS = ["h1", "h2", "h3"]


def where(x):
    """C{x * x} with where it ran: the host's TMPDIR (each sshd sets its own) and srpy's file there."""
    import os as _os
    import sys as _sys
    time.sleep(0.01)
    return x * x, _os.environ.get("TMPDIR", ""), _sys.modules["srpy"].__file__, _os.getpid()


def emit(step, **fields):
    fields["step"] = step
    sys.stdout.write(json.dumps(fields) + "\n")
    sys.stdout.flush()


def started(step, cluster, seconds):
    emit(step, uris=cluster.uris, failed=cluster.failed, secret=cluster.secret, hash=cluster.dist_hash,
         cache={r.host: r.cache for r in cluster.hosts}, dist={r.host: r.dist_path for r in cluster.hosts},
         seconds=seconds, phases={r.host: r.phases for r in cluster.hosts})


def main():
    mode, config, bare = sys.argv[1:4]
    import srpy
    options = ["-F", config]
    python = {bare: "%s -I -S" % sys.executable}
    for host in HOSTS:
        python.setdefault(host, sys.executable)
    if mode == "tunnel":
        return tunnel(python, options)
    if mode == "tls":
        return tls(python, options)
    if mode == "cut":
        return cut(python, options, sys.argv[4])
    if mode in ("hold", "exit"):
        cluster = srpy.SSHCluster(HOSTS, 1, python=python, ssh_options=options)
        started("up", cluster, 0)
        while mode == "hold":
            time.sleep(60)
        return  # without closing the cluster: the interpreter's exit does

    probe = subprocess.run(["ssh", "-F", config, "-o", "BatchMode=yes", bare, sys.executable, "-I", "-S", "-c",
                            "'import srpy'"], capture_output=True, text=True, timeout=60)
    emit("bare", code=probe.returncode, stderr=probe.stderr.strip().splitlines()[-1:])

    began = time.monotonic()
    cluster = srpy.SSHCluster(HOSTS + ["nohost"], 2, python=python, ssh_options=options, connect_timeout=5)
    started("cold", cluster, time.monotonic() - began)
    with cluster:
        with cluster.box() as box:
            values = list(box.map(where, range(60)))
            emit("map", values=[v[0] for v in values], tmpdirs=sorted({v[1] for v in values}),
                 srpy_files=sorted({v[2] for v in values}), pids=sorted({v[3] for v in values}))
            # peers across hosts: the first engine (on h1) messages the last (on h3), directly
            kept = box.connectPeers()
            first, last = box[0], box[len(box) - 1]
            last.exe("import srpy\nme = srpy.this_engine()")
            pending = box[[len(box) - 1]].mrp.exe("_, got = me.receive('ping', timeout=30)")
            first.exe("import srpy\nsrpy.this_engine().send(to, 'ping', 'across hosts')", to=last.uri)
            box.mrpwait(pending)
            # the bare host has no psutil: its engines serve status (srpyapp status) all the same
            status = last.call("status")
            psutil_there = last.eval("__import__('importlib.util').util.find_spec('psutil') is not None")
            emit("status", cores=status["cores"], rss=status["rss"], memory_total=status["memory_total"],
                 psutil=psutil_there)
            emit("peers", kept={uri: len(peers) for uri, peers in kept.items()}, got=last.get("got"),
                 sender=first.uri, receiver=last.uri)
    emit("closed")

    began = time.monotonic()
    with srpy.SSHCluster(HOSTS, 1, python=python, ssh_options=options, bind={"h2": "10.214.0.12"}) as cluster:
        started("warm", cluster, time.monotonic() - began)
        with cluster.box() as box:
            assert list(box.map(pow, [2, 3, 4], [10, 2, 3])) == [1024, 9, 64]
            assert len(box) == 3
        h1_zip = cluster.hosts[0].dist_path + ".zip"
    emit("closed")

    with open(h1_zip, "r+b") as handle:  # h1's cached zip is damaged (or another srpy's, under that name)
        handle.seek(100)
        handle.write(b"not srpy")
    with srpy.SSHCluster(["h1"], 1, python=python, ssh_options=options) as cluster:
        with cluster.box() as box:
            sent = list(box.map(abs, [-5]))
        started("damaged", cluster, 0)
    assert sent == [5]

    try:
        srpy.SSHCluster(["h1"], 1, python="no-such-python3", ssh_options=options)
    except srpy.ClusterHostError as exc:
        emit("no-python", error=str(exc))
    else:
        emit("no-python", error=None)


def tunnel(python, options):
    """Tunnel mode: engines on each host's loopback, reached through ssh's forwards."""
    import srpy
    try:  # the loopback-bound host, without tunnel: its engines are out of reach, and it says so
        with srpy.SSHCluster(["h1", "h3"], 1, python=python, ssh_options=options, bind={"h3": "127.0.0.1"}) as direct:
            emit("direct", uris=direct.uris, failed=direct.failed)
            with direct.box() as box:
                began = time.monotonic()
                assert list(box.map(abs, range(-1000, 0))) == list(range(1000, 0, -1))
                direct_seconds = time.monotonic() - began
    except srpy.ClusterHostError as exc:
        emit("direct", uris=[], failed={"error": str(exc)})
        direct_seconds = None
    began = time.monotonic()
    with srpy.SSHCluster(HOSTS, 2, python=python, ssh_options=options, tunnel=True) as cluster:
        started("tunnel", cluster, time.monotonic() - began)
        control = cluster._control_dir
        emit("addresses", tunnel={r.host: r.tunnel for r in cluster.hosts}, engine_uris=[u for r in cluster.hosts
                                                                                       for u in r.engine_uris],
             control=control)
        with cluster.box() as box:
            values = list(box.map(where, range(60)))
            began = time.monotonic()
            cheap = list(box.map(abs, range(-1000, 0)))
            emit("map", values=[v[0] for v in values], tmpdirs=sorted({v[1] for v in values}),
                 pids=sorted({v[3] for v in values}), cheap=cheap == list(range(1000, 0, -1)),
                 seconds=time.monotonic() - began, direct_seconds=direct_seconds)
            kept = box.connectPeers()  # within each host: across tunneled hosts nobody reaches anybody
            first, second = box[len(box) - 2], box[len(box) - 1]  # both on h3
            second.exe("import srpy\nme = srpy.this_engine()")
            pending = box[[len(box) - 1]].mrp.exe("_, got = me.receive('ping', timeout=30)")
            first.exe("import srpy\nsrpy.this_engine().send(to, 'ping', 'within h3')", to=second.uri)
            box.mrpwait(pending)
            emit("peers", kept=kept, got=second.get("got"))
    emit("closed", control_left=os.path.exists(control))
    # h1's engine on port 45000 there, which is taken here: its forward takes another port
    import socket
    blocker = socket.socket()
    blocker.bind(("0.0.0.0", 45000))
    blocker.listen()
    with srpy.SSHCluster(["h1"], 1, python=python, ssh_options=options, tunnel=True,
                         launcher_args=["--port", "45000"]) as cluster:
        box = cluster.box()
        emit("taken", uris=cluster.uris, engine_uris=cluster.hosts[0].engine_uris, value=box[0].eval("6 * 7"))
        box.close()
    blocker.close()


def tls(python, options):
    """TLS made for the cluster: a plain client and one trusting only the system's CAs are refused."""
    import ssl

    import srpy
    began = time.monotonic()
    with srpy.SSHCluster(HOSTS, 1, python=python, ssh_options=options, tls=True, tunnel=["h3"]) as cluster:
        started("tls", cluster, time.monotonic() - began)
        refusals = {}
        for name, context in (("plain", None), ("system CAs", ssl.create_default_context())):
            try:
                srpy.PythonEngine(cluster.uris[0], secret=cluster.secret, ssl_context=context).close()
                refusals[name] = "accepted"
            except srpy.SRPyError as exc:
                refusals[name] = "%s: %s" % (type(exc).__name__, exc)
        emit("refused", refusals=refusals, ca=cluster.ca.ca_pem)
        with cluster.box() as box:
            values = list(box.map(where, range(30)))
            emit("map", values=[v[0] for v in values], tmpdirs=sorted({v[1] for v in values}))
            emit("peers", kept=box.connectPeers())
    emit("closed")


def square_noted(x, log_dir):
    """x * x, after noting this execution in the engine's own file in C{log_dir} (shared filesystem)."""
    with open(os.path.join(log_dir, "%d.log" % os.getpid()), "a") as handle:
        handle.write("%d\n" % x)
    time.sleep(0.02)
    return x * x


def cut(python, options, log_dir, items=600):
    """A map across the three hosts during which the test cuts h3's link; the cluster stays open after it."""
    import srpy
    cluster = srpy.SSHCluster(HOSTS, 1, python=python, ssh_options=options, heartbeat=10)
    with cluster.box() as box:
        emit("up", uris=cluster.uris, pids=[engine.eval("__import__('os').getpid()") for engine in box])
        before = box.stats()
        emit("cut-map-start")
        began = time.monotonic()
        results = list(box.map(square_noted, range(items), [log_dir] * items, timeout=150))
        emit("cut-map", results=results, expected=[x * x for x in range(items)], seconds=time.monotonic() - began,
             engines=[engine.uri for engine in box], stats_before=before, stats_after=box.stats())
    deadline = time.monotonic() + 150
    while not os.path.exists(os.path.join(log_dir, "close")) and time.monotonic() < deadline:
        time.sleep(0.1)
    while not cluster.hosts[2].lost and time.monotonic() < deadline + 60:  # the heartbeat thread's word on h3
        time.sleep(0.1)
    lost = {remote.host: remote.lost for remote in cluster.hosts}
    began = time.monotonic()
    cluster.close()
    emit("closed", seconds=time.monotonic() - began, lost=lost)


if __name__ == "__main__":
    try:
        main()
    except BaseException as exc:  # noqa: B902 - report whatever it was to the test
        emit("error", error="%s: %s" % (type(exc).__name__, exc), traceback=traceback.format_exc())
        sys.exit(1)
