"""
A mesh of many engines holds per engine what grows with the engines, not with the engines times
the traffic (issue 15): after a burst of concurrent calls between every pair, each engine keeps at
most L{srpy.group.PEER_IDLE_CONNECTIONS} connections to each peer, and its threads go back to a
number that does not depend on how many peers it has. Counted in each engine process by psutil
(its own sockets and threads), for 8 and for 16 engines: the bounds are linear in the peers.
And a spawn's hints reach a bounded number of peers per round (L{srpy.stealing.HINT_FANOUT}),
while the work still spreads over the whole group.
"""

import time

import pytest

import srpy
from srpy.group import PEER_IDLE_CONNECTIONS, peer_uri
from srpy.stealing import HINT_FANOUT

pytestmark = pytest.mark.slow

#: threads a meshed engine settles back to at most, however many peers it has (it starts with 7)
SETTLED_THREADS = 20

BURST = '''
import threading
import srpy

me = srpy.this_engine()

def burst(threads, rounds):
    """`threads` threads at once, each sending `rounds` messages to every peer: each link is used concurrently."""
    peers = me.peers()
    failures = []

    def send():
        try:
            for i in range(rounds):
                for peer in peers:
                    me.send(peer, "burst", i)
        except Exception as exc:
            failures.append(repr(exc))

    workers = [threading.Thread(target=send) for _ in range(threads)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()
    return failures
'''

HELD = '''
def held(peer_ports):
    """(this engine's connections to its peers' ports, its connections from anywhere else, its threads)."""
    import psutil
    process = psutil.Process()
    method = getattr(process, "net_connections", None) or process.connections
    conns = [c for c in method(kind="tcp") if c.status == psutil.CONN_ESTABLISHED and c.raddr]
    outbound = sum(1 for c in conns if c.raddr.port in peer_ports)
    return outbound, len(conns) - outbound, process.num_threads()
'''


def port_of(uri):
    return int(uri.rsplit(":", 1)[1])


def wait_for(state, within, timeout=60.0):
    """C{state()} until C{within(it)} holds (returned), or fail with the last one seen after C{timeout} s."""
    deadline = time.monotonic() + timeout
    while True:
        value = state()
        if within(value):
            return value
        assert time.monotonic() < deadline, "still %r after %s s" % (value, timeout)
        time.sleep(0.25)


@pytest.mark.timeout(240)
@pytest.mark.parametrize("count", [8, 16])
def test_a_mesh_holds_connections_and_threads_linear_in_its_peers(start_launcher, count):
    launcher = start_launcher(["-n", str(count), "--group", "mesh"], count=count, timeout=120)
    box = srpy.EngBox(launcher.uris)
    try:
        kept = box.connectPeers()
        assert all(len(peers) == count - 1 for peers in kept.values()), kept
        box.mrs.exe(BURST + HELD)
        failures = box.mrpwait(box.mrp.eval("burst(6, 20)"))
        assert all(value == [] for value in failures.values()), failures
        peers = count - 1
        for engine in box:
            others = {port_of(uri) for uri in launcher.uris if uri != engine.uri}

            def within(held):
                outbound, inbound, threads = held
                # inbound: the peers' links to this engine, and this client's connections
                return (outbound <= PEER_IDLE_CONNECTIONS * peers and inbound <= PEER_IDLE_CONNECTIONS * peers + 4
                        and threads <= SETTLED_THREADS)

            outbound, _, _ = wait_for(lambda: engine.eval("held(%r)" % (others,)), within)
            assert outbound >= peers  # a link to every peer is there: the count is of the right sockets
    finally:
        box.close()


TREE = '''
import time
import srpy

def tree(lo, hi):
    """lo..hi-1 summed, split in spawned halves down to leaves that each hold their engine 50 ms."""
    if hi - lo <= 1:
        time.sleep(0.05)
        return lo
    mid = (lo + hi) // 2
    left, right = srpy.spawn(tree, lo, mid), srpy.spawn(tree, mid, hi)
    return left.result() + right.result()
'''


@pytest.mark.timeout(240)
def test_hints_reach_a_bounded_number_of_peers_per_round_and_work_still_spreads(start_launcher):
    count = 16
    launcher = start_launcher(["-n", str(count), "--group", "tree"], count=count, timeout=120)
    box = srpy.EngBox(launcher.uris)
    try:
        box.connectPeers()
        box.mrs.exe(TREE)
        assert box[0].eval("tree(0, 256)") == sum(range(256))
        stats = [srpy.PythonEngine(peer_uri(uri)).call("peer_stats") for uri in launcher.uris]
        assert stats[0]["hint_rounds"] >= 1
        # every round of hints, on every engine, reached at most HINT_FANOUT of its 15 peers ...
        assert max(s["widest_hint_round"] for s in stats) <= HINT_FANOUT, stats
        # ... and the work still reached more engines than the first engine's first round could
        ran = sum(1 for s in stats if s["executed"] > 0)
        assert ran > HINT_FANOUT + 1, [s["executed"] for s in stats]
        assert sum(s["executed"] for s in stats) >= 256
    finally:
        box.close()


@pytest.mark.timeout(120)
def test_an_engine_raises_its_descriptor_limit_to_the_hard_one(start_launcher):
    """A full mesh holds two sockets per peer: an engine does not stop at a soft limit of 1,024 (here 256)."""
    import resource

    import psutil

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    low = min(256, soft)
    resource.setrlimit(resource.RLIMIT_NOFILE, (low, hard))  # the launcher and its engines inherit it
    try:
        launcher = start_launcher(["-n", "2"], count=2)
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
    engines = launcher.engines()
    assert len(engines) == 2
    for process in engines:
        assert process.rlimit(psutil.RLIMIT_NOFILE) == (hard, hard)
