"""
Several hosts, for real: Linux network namespaces play the machines.

Topology (names carry this test process's pid, so parallel runs do not clash)::

    srpyb-PID: bridge br0, with one veth port per host (h1, h2, h3, c)
      |-- srpyh1-PID  eth0 10.213.0.1/24  launcher -n 1 --start-ns (the name server) + 1 engine
      |-- srpyh2-PID  eth0 10.213.0.2/24  launcher -n 1 --ns + 1 engine
      |-- srpyh3-PID  eth0 10.213.0.3/24  launcher -n 1 --ns + 1 engine   (its link is cut mid-map)
      `-- srpyc-PID   eth0 10.213.0.100/24 the client: tests/hosts/hosts_client.py

Everything lives inside namespaces this test creates: the root namespace (the machine's real network)
is never touched, and 10.213.0.0/24 exists only on that bridge. The engines listen on their host's
address with a secret (a non-loopback address requires one), so every connection across the bridge
also runs the secret handshake. The test process stays in the root namespace and drives the client
script (run with C{ip netns exec}), which prints one JSON line per step.

What it shows: discovery through the name server (by address, and by UDP broadcast on the link)
finds the three engines; a wrong secret is refused by each; a map spreads over all three; during a
second map one host's link goes down (C{ip link set eth0 down} in its namespace: no FIN, no RST,
the host just stops answering) and the map still completes with every result, once, in order,
while the scheduler's watchdog takes the silent engine out of the box; a new discovery skips it.
On a host with no route for broadcasts, discovery without an address fails with NameServerNotFound.

Skipped only where the machine forbids network namespaces (not root, or C{ip netns add} refused).
"""

import json
import os
import queue
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections import Counter

import psutil
import pytest

from conftest import executions

from conftest import ROOT, SRPYAPP, URI_LINE, die_with_parent

pytestmark = [pytest.mark.timeout(300), pytest.mark.root, pytest.mark.slow]

CLIENT_SCRIPT = os.path.join(ROOT, "tests", "hosts", "hosts_client.py")
SUBNET = "10.213.0."
SECRET = "srpy-hosts-test-secret"
NS_PORT = 9090  # each namespace has its own ports: the well-known one cannot clash with anything
ITEMS = 600  # the cut map: 600 x 20 ms of work, about 4 s on three engines, 6 s on two
# run on a host with no route for broadcasts: looking for a name server without its address must fail
# with srpy's NameServerNotFound (sendto raises "Network is unreachable" there)
NO_ROUTE_PROBE = """
import os, srpy
from srpy.discovery import NameServerNotFound
try:
    srpy.EngBox.discover(secret=os.environ["SRPY_SECRET"])
except NameServerNotFound as exc:
    print("NameServerNotFound", exc)
else:
    print("found a name server")
"""
CUT_AFTER = 40  # the victim's link goes down once it has run this many of the cut map's items: more than
                # one batch (at most 0.25 s of work, 25 items), so it has delivered some work before


def netns_unavailable():
    """Why this machine cannot run the test (None: it can)."""
    if os.geteuid() != 0:
        return "needs root: creating network namespaces (ip netns add) needs CAP_SYS_ADMIN"
    if shutil.which("ip") is None:
        pytest.fail("iproute2's 'ip' command is missing: run .ci/run (it installs iproute2) "
                    "or apt-get install -y iproute2")
    probe = "srpyprobe-%d" % os.getpid()
    done = subprocess.run(["ip", "netns", "add", probe], capture_output=True, text=True, timeout=30)
    subprocess.run(["ip", "netns", "del", probe], capture_output=True, timeout=30)  # also half-made ones
    if done.returncode != 0:
        return "this machine does not permit 'ip netns add': %s" % done.stderr.strip()
    return None


def ip(*args):
    """Run C{ip ARGS}; fail the test with ip's own message if it fails."""
    done = subprocess.run(["ip"] + list(args), capture_output=True, text=True, timeout=30)
    if done.returncode != 0:
        raise AssertionError("ip %s: %s" % (" ".join(args), done.stderr.strip()))
    return done.stdout


class Proc:
    """A process run in a namespace; its stdout lines arrive on a queue, its stderr is kept."""

    def __init__(self, argv, env):
        self.argv = argv
        self.process = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                        stderr=subprocess.PIPE, text=True, env=env, cwd=ROOT,
                                        preexec_fn=die_with_parent)
        self.lines = queue.Queue()
        self.errors = []
        threading.Thread(target=self._pump, args=(self.process.stdout, self.lines.put), daemon=True).start()
        threading.Thread(target=self._pump, args=(self.process.stderr, self.errors.append), daemon=True).start()

    @staticmethod
    def _pump(stream, sink):
        for line in stream:
            sink(line.rstrip("\n"))
        sink(None)

    def stderr(self):
        return "\n".join(line for line in self.errors if line is not None)

    def readline(self, timeout):
        try:
            line = self.lines.get(timeout=timeout)
        except queue.Empty:
            raise AssertionError("%s: nothing on stdout within %s s; stderr:\n%s"
                                 % (" ".join(self.argv[3:6]), timeout, self.stderr())) from None
        if line is None:
            self.process.wait(10)
            time.sleep(0.2)  # the stderr pump drains what is left
            raise AssertionError("%s exited (%s); stderr:\n%s"
                                 % (" ".join(self.argv[3:6]), self.process.returncode, self.stderr()))
        return line

    def stop(self):
        """SIGTERM (a launcher stops its engines), then SIGKILL; also reap anything it left."""
        try:
            kids = psutil.Process(self.process.pid).children(recursive=True)
        except psutil.NoSuchProcess:
            kids = []
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
        try:
            self.process.wait(30)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(10)
        _, alive = psutil.wait_procs(kids, timeout=10)
        for kid in alive:
            kid.kill()


class Hosts:
    """The namespaces, their addresses, and every process started in them."""

    def __init__(self, tag):
        self.bridge = "srpyb-%s" % tag
        self.hosts = ["srpyh%d-%s" % (i, tag) for i in (1, 2, 3)]
        self.client = "srpyc-%s" % tag
        self.address = {name: SUBNET + str(i) for i, name in enumerate(self.hosts, 1)}
        self.address[self.client] = SUBNET + "100"
        self.port = {name: "h%d" % i for i, name in enumerate(self.hosts, 1)}
        self.port[self.client] = "c"
        self.created = []
        self.processes = []

    def build(self):
        for name in [self.bridge] + self.hosts + [self.client]:
            ip("netns", "add", name)
            self.created.append(name)
            ip("-n", name, "link", "set", "lo", "up")
        ip("-n", self.bridge, "link", "add", "br0", "type", "bridge")
        ip("-n", self.bridge, "link", "set", "br0", "up")
        for name in self.hosts + [self.client]:  # each veth pair is born straight into its two namespaces
            ip("-n", self.bridge, "link", "add", self.port[name], "type", "veth", "peer", "name", "eth0",
               "netns", name)
            ip("-n", self.bridge, "link", "set", self.port[name], "master", "br0", "up")
            ip("-n", name, "addr", "add", self.address[name] + "/24", "dev", "eth0")
            ip("-n", name, "link", "set", "eth0", "up")
        # the client may broadcast on its link (Pyro5's name server lookup): a route for 255.255.255.255
        # only, so that nothing else ever has a way out of its subnet
        ip("-n", self.client, "route", "add", "255.255.255.255/32", "dev", "eth0")

    def run(self, namespace, argv, env=None):
        full_env = dict(os.environ)
        full_env.pop("SRPY_SECRET", None)
        full_env.update(env or {})
        process = Proc(["ip", "netns", "exec", namespace] + argv, full_env)
        self.processes.append(process)
        return process

    def launch(self, namespace, args, count=1, timeout=60):
        """Start C{srpyapp.py ARGS} in C{namespace}; returns (process, the URIs it printed)."""
        launcher = self.run(namespace, [sys.executable, SRPYAPP] + list(args))
        uris, deadline = [], time.monotonic() + timeout
        while len(uris) < count:
            line = launcher.readline(max(0.1, deadline - time.monotonic())).strip()
            if URI_LINE.match(line):
                uris.append(line)
        return launcher, uris

    def cut(self, namespace):
        """Take a host off the network: its link goes down, its sockets get no FIN and no RST."""
        ip("-n", namespace, "link", "set", "eth0", "down")

    def teardown(self):
        for process in reversed(self.processes):
            process.stop()
        for name in reversed(self.created):
            subprocess.run(["ip", "netns", "del", name], capture_output=True, timeout=30)


@pytest.fixture
def hosts():
    reason = netns_unavailable()
    if reason:
        pytest.skip(reason)
    net = Hosts(os.getpid())
    for name in [net.bridge] + net.hosts + [net.client]:  # leftovers of a killed run with our pid
        subprocess.run(["ip", "netns", "del", name], capture_output=True, timeout=30)
    try:
        net.build()
        yield net
    finally:
        net.teardown()
        left = set(ip("netns", "list").split()) & set(net.created)
        assert not left, "namespaces left behind: %s" % sorted(left)


def step(client, name, timeout):
    """The client's next JSON line, which must be step C{name}."""
    record = json.loads(client.readline(timeout))
    if record["step"] == "error":
        raise AssertionError("client failed at step %s: %s\n%s" % (name, record["error"], record["traceback"]))
    assert record["step"] == name, record
    return record


def test_three_hosts_discovery_map_and_a_host_cut_off_mid_map(hosts, tmp_path):
    timings = {}
    started = time.monotonic()
    ns_host = hosts.address[hosts.hosts[0]]
    where = ["--ns-host", ns_host, "--ns-port", str(NS_PORT)]
    uris, launchers = {}, []
    for index, name in enumerate(hosts.hosts):
        role = ["--start-ns"] if index == 0 else ["--ns"]  # the first host also serves the name server
        launcher, printed = hosts.launch(name, ["-n", "1", "--host", hosts.address[name], "--secret", SECRET]
                                         + role + where)
        uris[name] = printed[0]
        launchers.append(launcher)
        assert "@%s:" % hosts.address[name] in uris[name], uris[name]
    timings["3 launchers up"] = time.monotonic() - started

    log_dir = tmp_path / "runs"
    log_dir.mkdir()
    client = hosts.run(hosts.client, [sys.executable, CLIENT_SCRIPT] + where
                       + ["--log-dir", str(log_dir), "--items", str(ITEMS)], env={"SRPY_SECRET": SECRET})

    # discovery: through the name server's address, and by broadcast on the bridge
    found = step(client, "discover", 60)
    assert sorted(e["uri"] for e in found["engines"]) == sorted(uris.values())
    engine_of = {e["ip"]: e for e in found["engines"]}
    assert sorted(engine_of) == sorted(hosts.address[name] for name in hosts.hosts)
    timings["discover"] = found["seconds"]
    heard = step(client, "broadcast", 60)
    assert sorted(e["uri"] for e in heard["engines"]) == sorted(uris.values())
    timings["discover by broadcast"] = heard["seconds"]
    probe = hosts.run(hosts.hosts[1], [sys.executable, "-c", NO_ROUTE_PROBE], env={"SRPY_SECRET": SECRET})
    assert probe.readline(60).startswith("NameServerNotFound"), probe.stderr()
    assert step(client, "wrong-secret", 60)["refusals"] == ["AuthenticationError"] * 3

    # a map across the three hosts
    mapped = step(client, "map", 60)
    assert mapped["values"] == mapped["expected"]
    assert sorted(mapped["pids"]) == sorted(e["pid"] for e in found["engines"]), "an engine got no work"
    assert sorted(mapped["stats"]) == sorted(uris.values()) and all(n > 0 for n in mapped["stats"].values())
    assert sum(mapped["stats"].values()) == len(mapped["values"])
    timings["map on 3 hosts"] = mapped["seconds"]

    # a map during which the third host drops off the network
    victim = hosts.hosts[2]
    victim_pid, victim_uri = engine_of[hosts.address[victim]]["pid"], uris[victim]
    step(client, "cut-map-start", 60)
    deadline = time.monotonic() + 60
    while len(executions(log_dir).get(victim_pid, [])) < CUT_AFTER:
        assert time.monotonic() < deadline, "the victim never got %d items: %s" % (CUT_AFTER, executions(log_dir))
        time.sleep(0.005)
    hosts.cut(victim)
    cut_at = time.monotonic()
    done_at_cut = sum(len(done) for done in executions(log_dir).values())
    assert done_at_cut < ITEMS and client.lines.empty(), "the map was over before the cut"

    cut = step(client, "cut-map", 200)
    timings["map with the cut (client side)"] = cut["seconds"]
    timings["cut to end of map"] = time.monotonic() - cut_at
    # from the caller's view: every result, once, in order
    assert len(cut["results"]) == ITEMS and cut["results"] == cut["expected"]
    # the silent host left the box; the other two are still in it
    assert sorted(e["uri"] for e in cut["engines"]) == sorted(uris[name] for name in hosts.hosts[:2])
    # what ran where: the survivors ran each item at most once, and together with what the victim
    # delivered before the cut they covered every item; the items run twice are the victim's last
    # batch (run, but its results never arrived)
    runs = executions(log_dir)
    survivors = [x for pid, done in runs.items() if pid != victim_pid for x in done]
    assert [x for x, n in Counter(survivors).items() if n > 1] == []
    victim_ran = runs.get(victim_pid, [])
    assert set(survivors) | set(victim_ran) == set(range(ITEMS))
    again = [x for x in victim_ran if x in set(survivors)]
    # (none, if the cut caught the victim between batches: then its next batch never reached it)
    assert victim_ran[len(victim_ran) - len(again):] == again, "re-run items must be the victim's last batch"
    # the counts add up to the items exactly: what the victim delivered counts once, its lost batch not at all
    delivered = {uri: n - cut["stats_before"].get(uri, 0) for uri, n in cut["stats_after"].items()}
    assert sum(delivered.values()) == ITEMS, delivered
    assert delivered[victim_uri] == len(victim_ran) - len(again) > 0, (delivered, len(victim_ran), len(again))

    # a new discovery skips the host that is gone, and removes its entry from the name server
    rediscovered = step(client, "rediscover", 60)
    assert sorted(e["uri"] for e in rediscovered["engines"]) == sorted(uris[name] for name in hosts.hosts[:2])
    assert sorted(rediscovered["entries"]) == sorted(uris[name] for name in hosts.hosts[:2])
    timings["rediscover"] = rediscovered["seconds"]
    client.process.wait(30)
    assert client.process.returncode == 0, client.stderr()
    assert "stopped answering" in client.stderr(), client.stderr()  # the watchdog's word, not a closed socket's
    # every launcher stops cleanly: the cut host's too (its engine cannot reach the name server to
    # unregister), and the first host's name server with its broadcast responder
    stopping = time.monotonic()
    for launcher in reversed(launchers):
        launcher.stop()
        assert launcher.process.returncode == 0, launcher.stderr()
    timings["stop 3 launchers"] = time.monotonic() - stopping
    timings["whole test"] = time.monotonic() - started
    print("timings (s): " + ", ".join("%s %.1f" % pair for pair in timings.items()))
