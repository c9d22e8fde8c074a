"""Engines talking to engines: peers, messages, the tuple space, work sharing (issue 4)."""

import signal
import threading
import time

import psutil
import pytest

import srpy
from conftest import wait_gone
from srpy.group import peer_uri

SETUP = "import srpy\nme = srpy.this_engine()\n"

TREE = '''
import srpy
from srpy.benchmark import sum_of_primes

def tree(lo, hi, work):
    """Sum of lo..hi-1, split in two spawned halves down to single numbers; counts leaves per engine."""
    if hi - lo <= 1:
        sum_of_primes(work)
        return lo, {srpy.this_engine().name: 1}
    mid = (lo + hi) // 2
    left, right = srpy.spawn(tree, lo, mid, work), srpy.spawn(tree, mid, hi, work)
    total_l, seen_l = left.result()
    total_r, seen_r = right.result()
    seen = dict(seen_l)
    for name, count in seen_r.items():
        seen[name] = seen.get(name, 0) + count
    return total_l + total_r, seen
'''


@pytest.fixture
def group(start_launcher):
    launcher = start_launcher(["-n", "3", "--group", "workers"], count=3)
    box = srpy.EngBox(launcher.uris)
    kept = box.connectPeers()
    assert all(len(peers) == 2 for peers in kept.values())
    for engine in box:
        engine.exe(SETUP)
    yield box
    box.close()


def peer_object(engine):
    """A client of the peer object served beside C{engine} (what other engines call)."""
    return srpy.PythonEngine(peer_uri(engine.uri))


def wait_until(condition, timeout=30.0, what="the state"):
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "%s did not come within %s s" % (what, timeout)
        time.sleep(0.02)


def waiting(engine):
    """True while a call on C{engine} runs with the engine's lock released (a wait for a peer)."""
    info = engine.whoami()
    return info["Current Call"] != "" and not info["Busy"]


def test_this_engine_outside_an_engine():
    with pytest.raises(srpy.errors.NotInEngine):
        srpy.this_engine()


def test_peers_and_metadata(group):
    a = group[0]
    peers = a.eval("sorted(p.uri for p in me.peers())")
    assert peers == sorted(e.uri for e in group if e.uri != a.uri)
    assert a.eval("sorted({p.group for p in me.peers()})") == ["workers"]
    assert a.eval("me.uri") == a.uri


def test_messages_both_ways_in_order(group):
    a, b = group[0], group[1]
    count = 10_000
    program = (SETUP + "def exchange(to, n):\n"
               "    for i in range(n):\n"
               "        me.send(to, 'seq', i)\n"
               "    got = [me.receive('seq', timeout=60) for _ in range(n)]\n"
               "    return [v for _, v in got] == list(range(n)), {s for s, _ in got}\n")
    results = {}

    def run(engine, other):
        engine.exe(program)
        results[engine.uri] = engine.eval("exchange(to, n)", to=other.uri, n=count)

    threads = [threading.Thread(target=run, args=(a, b)), threading.Thread(target=run, args=(b, a))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(120)
    assert results[a.uri] == (True, {b.uri}) and results[b.uri] == (True, {a.uri})
    with peer_object(a) as a_peer, peer_object(b) as b_peer:
        assert a_peer.call("peer_stats")["mailbox"] == 0 == b_peer.call("peer_stats")["mailbox"]


def test_full_mailbox_applies_back_pressure(group):
    a, b = group[0], group[1]
    b.exe("me._mailbox.capacity = 5")
    done = threading.Event()

    def flood():
        a.exe("for i in range(12):\n    me.send(to, 'bp', i)", to=b.uri)
        done.set()

    sender = threading.Thread(target=flood)
    sender.start()
    with peer_object(b) as b_peer:
        wait_until(lambda: b_peer.call("peer_stats")["mailbox"] == 5, what="a full mailbox")
        # 12 messages cannot fit in 5 until the receiver takes some: the sender is held
        assert not done.wait(0.5), "the sender must wait while the receiver's mailbox is full"
        assert b_peer.call("peer_stats")["mailbox"] == 5
    assert b.eval("[me.receive('bp', timeout=30)[1] for _ in range(12)]") == list(range(12))
    sender.join(30)
    assert done.is_set()
    b.exe("me._mailbox.capacity = 10000")


def test_receive_timeout(group):
    with pytest.raises(TimeoutError):
        group[0].eval("me.receive('nothing-comes', timeout=0.3)")


def test_tuple_space(group):
    a, b, c = group[0], group[1], group[2]
    a.exe("me.put('answer', 42)\nfor i in range(20):\n    me.put('job-%d' % i, i)")
    assert b.eval("me.read('answer', timeout=5)") == 42
    assert c.eval("me.take('answer', timeout=5)") == 42
    with pytest.raises(TimeoutError):
        a.eval("me.read('answer', timeout=0.3)")
    taken = {}

    def drain(engine):
        taken[engine.uri] = engine.eval(
            "[me.take_match('job-*', timeout=2)[1] for _ in range(10)]")

    threads = [threading.Thread(target=drain, args=(e,)) for e in (b, c)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert sorted(taken[b.uri] + taken[c.uri]) == list(range(20)), "each entry taken exactly once"
    waiter = threading.Thread(target=lambda: taken.update(late=a.eval("me.take('late', timeout=20)")))
    waiter.start()
    # the take is under way and waiting: its eval runs with the engine's lock let go
    wait_until(lambda: waiting(a), what="a take waiting on engine a")
    c.exe("me.put('late', 'here')")
    waiter.join(30)
    assert taken["late"] == "here"


def test_divide_and_conquer_spreads_over_every_engine(group):
    a = group[0]
    a.exe(TREE)
    total, seen = a.eval("tree(0, 48, 40000)")  # a leaf of ~30 ms: long enough for every peer to take some
    assert total == sum(range(48))
    assert sum(seen.values()) == 48
    names = {e.info["Name"] for e in group}
    assert set(seen) == names, "every engine of the group ran part of the job: %s" % seen


def test_killed_peer_work_is_redone(group):
    a, b = group[0], group[1]
    a.exe(TREE)
    outcome = {}
    job = threading.Thread(target=lambda: outcome.update(result=a.eval("tree(0, 64, 6000)")))
    job.start()
    victim = psutil.Process(b.info["PID"])
    with peer_object(b) as b_peer:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and b_peer.call("peer_stats")["executed"] < 3:
            time.sleep(0.02)
    victim.send_signal(signal.SIGKILL)
    assert wait_gone([victim.pid])
    job.join(120)
    total, seen = outcome["result"]
    assert total == sum(range(64)), "the job completes correctly after a peer dies"
    assert b.info["Name"] not in seen or sum(seen.values()) == 64
    assert b.uri not in a.eval("[p.uri for p in me.peers(alive=True)]")
    with pytest.raises(srpy.PeerUnavailable):
        a.exe("me.send(dead, 'x', 1)", dead=b.uri)


def test_groups_and_secrets_do_not_mix(start_launcher):
    blue = start_launcher(["-n", "1", "--group", "blue"], count=1)
    red = start_launcher(["-n", "1", "--group", "red"], count=1)
    secret = start_launcher(["-n", "1", "--group", "blue"], count=1, env={"SRPY_SECRET": "other"})
    box = srpy.EngBox(blue.uris + red.uris)
    kept = box.connectPeers()
    assert kept == {blue.uris[0]: [], red.uris[0]: []}
    blue_engine = box[0]
    assert blue_engine.call("set_peers", secret.uris) == [], "an engine with another secret is no peer"
    with peer_object(blue_engine) as blue_peer, pytest.raises(PermissionError):
        blue_peer.call("peer_deliver", red.uris[0], "tag", "intruder")
    blue_engine.exe(SETUP)
    assert blue_engine.eval("len(me.peers())") == 0
    box.close()


WHERE = '''
import srpy, time

def where(seconds):
    time.sleep(seconds)
    return srpy.this_engine().uri
'''


@pytest.mark.timeout(60)
def test_queued_work_reaches_a_peer_that_was_busy_when_it_was_spawned(group):
    """
    A peer busy at the moment work is spawned ignores that hint; the spawning engine reminds its
    peers while the work stays queued, so a peer takes it once it is free (it does not wait for the
    spawning engine to get round to it).
    """
    a, b, c = group[0], group[1], group[2]
    a.exe(WHERE)
    busy = [threading.Thread(target=engine.exe, args=("import time; time.sleep(3.0)",)) for engine in (b, c)]
    for thread in busy:
        thread.start()
    wait_until(lambda: b.isBusy() and c.isBusy(), what="both peers holding their engine locks")
    ran_on = a.eval("[f.result() for f in [srpy.spawn(where, 4.0), srpy.spawn(where, 0.1)]]")
    for thread in busy:
        thread.join(30)
    assert ran_on[0] == a.uri  # the first ran inline, in the task that waited for it
    assert ran_on[1] in (b.uri, c.uri)  # the second went to a peer as soon as one was free



def test_the_peer_object_is_served_beside_the_engine(group):
    """Engines call each other's peer object (srpy.peer); the engine object serves clients only."""
    a = group[0]
    with peer_object(a) as a_peer:
        assert a_peer.ping() == "pong"
        assert a_peer.info["URI"] == a.uri and a_peer.info["Name"] == a.info["Name"]
        assert sorted(a_peer.call("peer_list")) == sorted(e.uri for e in group if e.uri != a.uri)
        assert a_peer.call("peer_stats")["peers"] == a_peer.call("peer_list")
    with pytest.raises(AttributeError, match="peer_stats"):
        a.call("peer_stats")  # no longer part of the engine object


def test_peer_threads_stay_bounded_while_take_match_waits(group):
    """
    A take_match that loops as entries trickle in keeps one remote wait per member and pattern:
    the waiting engine's threads do not grow with the loops (they did: a thread per member per loop).
    """
    a, b = group[0], group[1]
    process = psutil.Process(a.info["PID"])
    before = process.num_threads()
    b.exe("import threading, time\n"
          "def produce():\n"
          "    for i in range(40):\n"
          "        time.sleep(0.02)\n"
          "        me.put('trickle-%d' % i, i)\n"
          "threading.Thread(target=produce).start()")
    peak = [before]
    stop = threading.Event()

    def sample():
        while not stop.is_set():
            peak[0] = max(peak[0], process.num_threads())
            time.sleep(0.005)

    sampler = threading.Thread(target=sample)
    sampler.start()
    try:
        got = a.eval("sorted(me.take_match('trickle-*', timeout=30)[1] for _ in range(40))")
    finally:
        stop.set()
        sampler.join(10)
    assert got == list(range(40))
    # one wait per member, and room for the server's own workers (the old way grew by 17 here)
    assert peak[0] <= before + 2 * len(group) + 4, "threads grew from %d to %d while waiting" % (before, peak[0])


def test_a_flood_of_hints_is_handled_by_one_thief(group):
    """
    Hints a peer receives go to one thief thread, one steal at a time, not a thread each: with the
    hinting engine stopped (SIGSTOP), a flood of its hints leaves the receiver with one steal
    waiting for it, not hundreds.
    """
    a, b = group[0], group[1]
    process = psutil.Process(b.info["PID"])
    victim = psutil.Process(a.info["PID"])
    before = process.num_threads()
    victim.suspend()
    try:
        with peer_object(b) as b_peer:
            for _ in range(200):  # b is idle: it goes to take work from a at each hint
                assert b_peer.call("peer_hint", a.uri) is True
            peak = process.num_threads()
            assert peak <= before + 3, "threads grew from %d to %d under a flood of hints" % (before, peak)
    finally:
        victim.resume()
    assert b.eval("len(me.peers())") == 2, "the hints cost no peer"
