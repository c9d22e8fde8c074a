"""
Engines on other hosts over SSH (srpy.SSHCluster), for real: network namespaces play the machines,
each running Debian's OpenSSH server with keys made in the test.

Topology (names carry this test process's pid)::

    srpysb-PID: bridge br0, one veth port per host
      |-- srpysh1-PID  10.214.0.1  sshd  (its sessions: XDG_CACHE_HOME and TMPDIR of its own, set by sshd)
      |-- srpysh2-PID  10.214.0.2  sshd
      |-- srpysh3-PID  10.214.0.3  sshd  the bare host: its Python runs with -I -S (no srpy, no Pyro5)
      `-- srpysc-PID   10.214.0.100 the client: tests/hosts/ssh_client.py, using ssh -F <generated config>
    (10.214.0.9, "nohost" in the ssh config, is nobody: connecting there fails)

The hosts share this machine's filesystem, so each host's sshd gives its sessions a cache and a
temporary folder of their own (C{SetEnv}): a cold start on one host is not warmed by another, and
each host's engine sandboxes are in its own folder, where the test can see they are removed.

What it shows: srpy cannot be imported on the bare host, and the cluster still starts there; an
unreachable host fails with one line naming it while the others start; a map spreads over the three
hosts, all running srpy from the zip the client sent; connectPeers() introduces the engines across
hosts and one on h1 messages one on h3; an engine on the bare host (no psutil) answers status; the
secret is on no command line; a second start finds the zip cached on every host (same hash, nothing
sent), with h2's engines bound to its second address as asked (and the map reaches them there); a
cached zip that was damaged is sent again; a host whose python3 does not exist fails with one line
naming it; closing the cluster, Ctrl-C on C{srpyapp ssh}, a client that exits without closing its
cluster, and a client SIGKILLed while it holds one (with its ssh processes, or without), each leave
no srpy process on any host and no sandbox. Tunnel mode: without it, a host whose engines listen on
its loopback (as good as a firewall: nothing outside reaches them) fails with one line; with it, the
three hosts' engines listen on loopback addresses only, a map across them is correct through ssh's
forwards, connectPeers() makes one mesh per host (and a message goes within h3), an engine whose port
is taken on the client is forwarded on another, and nothing is left listening afterwards. TLS made for the cluster (h3 tunneled): each host holds its key in a private
folder while the cluster lives, a plain client and one trusting only the system's CAs are refused, a
map works, the peer links speak TLS, and the folders are gone afterwards. A host cut off mid-map
(C{ip link set eth0 down} in h3's namespace): every result arrives once, in order, h3's engine leaves
the box, and, while the cluster stays open and h3's sshd notices nothing, h3's engines end by
themselves once no heartbeat reaches them; the client marks h3 lost and closes without waiting for it.
C{srpyapp ssh --tunnel --tls} writes URIs, secret and CA for another program, which maps through the
forwards (and is refused without TLS); Ctrl-C removes the files and stops every host.

Skipped only where the machine forbids network namespaces or has no OpenSSH server.
"""

import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time

import psutil
import pytest

from collections import Counter

from conftest import ROOT, executions
from test_hosts import Proc, ip, netns_unavailable

pytestmark = [pytest.mark.timeout(300), pytest.mark.root, pytest.mark.slow]

CLIENT_SCRIPT = os.path.join(ROOT, "tests", "hosts", "ssh_client.py")
SUBNET = "10.214.0."
SSHD = "/usr/sbin/sshd"
BARE = "h3"
SECOND_ADDRESS = SUBNET + "12"  # h2's other address
#: runs a program (sshd) on one core: python -c PINNED % cpu PROGRAM ARGS...
PINNED = "import os, sys; os.sched_setaffinity(0, {%d}); os.execv(sys.argv[1], sys.argv[1:])"


def sshd_unavailable():
    """Why this machine cannot run sshd hosts (None: it can)."""
    reason = netns_unavailable()
    if reason:
        return reason
    missing = [tool for tool in ("ssh", "ssh-keygen") if shutil.which(tool) is None]
    if not os.path.exists(SSHD) or missing:
        return ("no OpenSSH %s here: apt-get install -y openssh-server openssh-client (.ci/run does)"
                % ", ".join(missing + (["server (%s)" % SSHD] if not os.path.exists(SSHD) else [])))
    return None


def keygen(path):
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(path)], check=True,
                   capture_output=True, timeout=60)


class SSHHosts:
    """The namespaces, each host's sshd and folders, the client's ssh config."""

    def __init__(self, tag, root):
        self.root = root
        self.bridge = "srpysb-%s" % tag
        self.names = ["h1", "h2", "h3"]
        self.namespace = {name: "srpysh%d-%s" % (i, tag) for i, name in enumerate(self.names, 1)}
        self.client = "srpysc-%s" % tag
        self.address = {name: SUBNET + str(i) for i, name in enumerate(self.names, 1)}
        self.created, self.processes = [], []

    def folder(self, name, what):
        return self.root / name / what

    def build(self):
        for namespace in [self.bridge, self.client] + list(self.namespace.values()):
            ip("netns", "add", namespace)
            self.created.append(namespace)
            ip("-n", namespace, "link", "set", "lo", "up")
        ip("-n", self.bridge, "link", "add", "br0", "type", "bridge")
        ip("-n", self.bridge, "link", "set", "br0", "up")
        ends = [(self.client, SUBNET + "100", "c")] + [(self.namespace[n], self.address[n], n) for n in self.names]
        for namespace, address, port in ends:
            ip("-n", self.bridge, "link", "add", port, "type", "veth", "peer", "name", "eth0", "netns", namespace)
            ip("-n", self.bridge, "link", "set", port, "master", "br0", "up")
            ip("-n", namespace, "addr", "add", address + "/24", "dev", "eth0")
            ip("-n", namespace, "link", "set", "eth0", "up")
        # h2 has a second address: the warm start binds its engines there (SSHCluster's bind)
        ip("-n", self.namespace["h2"], "addr", "add", SECOND_ADDRESS + "/24", "dev", "eth0")
        os.makedirs("/run/sshd", exist_ok=True)  # sshd's privilege separation directory (Debian's)
        cpus = sorted(os.sched_getaffinity(0))
        client_key = self.root / "client_key"
        keygen(client_key)
        config = ["Host *", "  User root", "  IdentityFile %s" % client_key, "  IdentitiesOnly yes",
                  "  UserKnownHostsFile %s" % (self.root / "known_hosts"), "  StrictHostKeyChecking accept-new",
                  "  LogLevel ERROR", "Host nohost", "  HostName %s9" % SUBNET]
        for name in self.names:
            config[:0] = ["Host %s" % name, "  HostName %s" % self.address[name]]
            for what in ("cache", "tmp"):
                self.folder(name, what).mkdir(parents=True)
            keygen(self.folder(name, "host_key"))
            sshd_config = self.folder(name, "sshd_config")
            sshd_config.write_text("\n".join([
                "ListenAddress %s:22" % self.address[name],
                "HostKey %s" % self.folder(name, "host_key"),
                "AuthorizedKeysFile %s.pub" % client_key,
                "PermitRootLogin prohibit-password", "PasswordAuthentication no", "KbdInteractiveAuthentication no",
                "StrictModes no", "UsePAM no", "PidFile %s" % self.folder(name, "sshd.pid"),
                "SetEnv XDG_CACHE_HOME=%s TMPDIR=%s" % (self.folder(name, "cache"), self.folder(name, "tmp")),
                "LogLevel ERROR", ""]))
            # each host has one core (sshd's sessions inherit it): "one engine per core" is one engine there
            cpu = cpus[self.names.index(name) % len(cpus)]
            self.processes.append(Proc(["ip", "netns", "exec", self.namespace[name], sys.executable, "-c",
                                        PINNED % cpu, SSHD, "-D", "-e", "-f", str(sshd_config)], dict(os.environ)))
        self.ssh_config = self.root / "ssh_config"
        self.ssh_config.write_text("\n".join(config) + "\n")
        for name in self.names:  # each sshd listens before the client starts
            deadline = time.monotonic() + 30
            while not self._listening(name):
                assert time.monotonic() < deadline, "sshd on %s did not listen" % name
                time.sleep(0.1)

    def _listening(self, name):
        done = subprocess.run(["ip", "netns", "exec", self.namespace[name], "ss", "-ltnH"], capture_output=True,
                              text=True, timeout=30)
        return ("%s:22" % self.address[name]) in done.stdout

    def run_client(self, mode, *more):
        env = dict(os.environ, PYTHONPATH=ROOT)
        env.pop("SRPY_SECRET", None)
        process = Proc(["ip", "netns", "exec", self.client, sys.executable, CLIENT_SCRIPT, mode,
                        str(self.ssh_config), BARE] + [str(arg) for arg in more], env)
        self.processes.append(process)
        return process

    def srpy_processes(self, host=None):
        """
        Every process on this machine that one of the hosts' ssh sessions started (or only C{host}'s):
        its environment has that host's cache folder (the bootstrap script, the launcher, its engines).
        """
        found = []
        root = str(self.folder(host, "cache")) if host else str(self.root)
        for process in psutil.process_iter(["pid", "cmdline"]):
            try:
                cache = process.environ().get("XDG_CACHE_HOME", "")
            except (psutil.Error, OSError):
                continue
            if cache.startswith(root) and process.status() != psutil.STATUS_ZOMBIE:
                found.append((process.info["pid"], " ".join(process.info["cmdline"] or [])))
        return found

    def sandboxes(self):
        """The engines' sandboxes and the hosts' TLS folders (what the cluster's ssh sessions leave in TMPDIR)."""
        return sorted(str(p) for name in self.names for pattern in ("srpy-sandbox-*", "srpy-tls-*")
                      for p in self.folder(name, "tmp").glob(pattern))

    def wait_clean(self, timeout=60):
        """Wait until no srpy process and no sandbox is left on any host (fail after C{timeout} s)."""
        deadline = time.monotonic() + timeout
        while self.srpy_processes() or self.sandboxes():
            assert time.monotonic() < deadline, "left behind: %s %s" % (self.srpy_processes(), self.sandboxes())
            time.sleep(0.2)

    def teardown(self):
        for process in reversed(self.processes):
            process.stop()
        for namespace in reversed(self.created):
            subprocess.run(["ip", "netns", "del", namespace], capture_output=True, timeout=30)


@pytest.fixture
def ssh_hosts(tmp_path):
    reason = sshd_unavailable()
    if reason:
        pytest.skip(reason)
    net = SSHHosts(os.getpid(), tmp_path)
    for namespace in [net.bridge, net.client] + list(net.namespace.values()):  # a killed run's leftovers
        subprocess.run(["ip", "netns", "del", namespace], capture_output=True, timeout=30)
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
        raise AssertionError("client failed at step %s: %s\n%s\n%s" % (name, record["error"], record["traceback"],
                                                                       client.stderr()))
    assert record["step"] == name, record
    return record


def test_cluster_on_three_ssh_hosts_cold_then_warm_and_a_host_that_fails(ssh_hosts):
    client = ssh_hosts.run_client("steps")
    bare = step(client, "bare", 60)
    assert bare["code"] != 0 and "No module named 'srpy'" in " ".join(bare["stderr"]), bare

    cold = step(client, "cold", 150)
    assert len(cold["uris"]) == 6, cold
    for name in ssh_hosts.names:  # two engines each, listening on the address the client reached the host on
        assert sum("@%s:" % ssh_hosts.address[name] in uri for uri in cold["uris"]) == 2, cold["uris"]
    assert list(cold["failed"]) == ["nohost"], cold["failed"]
    why = cold["failed"]["nohost"]
    assert why.startswith("nohost: ") and "\n" not in why and SUBNET + "9" in why, why
    assert cold["cache"] == dict.fromkeys(ssh_hosts.names, "stored"), cold["cache"]  # sent to every host
    runs_from = {name: ssh_hosts.folder(name, "cache") / "srpy" / "dist" / cold["hash"] for name in ssh_hosts.names}
    zips = {name: path.with_name(path.name + ".zip") for name, path in runs_from.items()}
    assert cold["dist"] == {name: str(path) for name, path in runs_from.items()}
    assert all(path.is_file() for path in zips.values())
    assert all((path / "srpy" / "cli.py").is_file() for path in runs_from.values())
    running = ssh_hosts.srpy_processes()
    assert len(running) >= 3 * 3, running  # per host: a launcher and two engines, at least
    secret = cold["secret"]
    assert len(secret) >= 32
    shown = [(p.pid, p.info["cmdline"]) for p in psutil.process_iter(["cmdline"])
             if any(secret in word for word in p.info["cmdline"] or [])]
    assert not shown, "the secret is on a command line: %s" % shown

    mapped = step(client, "map", 120)
    assert mapped["values"] == [x * x for x in range(60)]
    assert mapped["tmpdirs"] == sorted(str(ssh_hosts.folder(name, "tmp")) for name in ssh_hosts.names), mapped
    assert len(mapped["pids"]) == 6, "an engine got no work: %s" % mapped["pids"]
    # every engine, the bare host's too, runs the srpy the client sent (not the one installed on the host)
    assert sorted(mapped["srpy_files"]) == sorted(str(path / "srpy" / "__init__.py") for path in runs_from.values())
    # and the bytecode the first start compiled stays in the cache for the next one
    assert all(list((path / "srpy" / "__pycache__").glob("hosting.*.pyc")) for path in runs_from.values())
    status = step(client, "status", 60)
    assert status["psutil"] is False and status["cores"] >= 1 and status["rss"] > 0 and status["memory_total"] > 0
    peers = step(client, "peers", 60)  # engines started this way find each other across hosts
    assert peers["kept"] == dict.fromkeys(cold["uris"], 5), peers["kept"]
    assert peers["got"] == "across hosts" and peers["sender"].split("@")[1].split(":")[0] != \
        peers["receiver"].split("@")[1].split(":")[0], peers
    step(client, "closed", 120)
    ssh_hosts.wait_clean()

    warm = step(client, "warm", 150)
    assert warm["hash"] == cold["hash"]
    assert warm["cache"] == dict.fromkeys(ssh_hosts.names, "have"), warm["cache"]  # nothing sent: cached
    assert warm["failed"] == {} and len(warm["uris"]) == 3
    assert ["@%s:" % SECOND_ADDRESS in uri for uri in warm["uris"]] == [False, True, False], warm["uris"]
    assert warm["secret"] != secret  # a fresh one per cluster
    step(client, "closed", 120)
    ssh_hosts.wait_clean()

    damaged = step(client, "damaged", 150)  # a cached zip that is not what its name says is replaced
    assert damaged["cache"] == {"h1": "stored"} and damaged["hash"] == cold["hash"], damaged
    assert hashlib.sha256(zips["h1"].read_bytes()).hexdigest() == cold["hash"]
    ssh_hosts.wait_clean()

    failed = step(client, "no-python", 60)
    assert failed["error"] and failed["error"].startswith("h1: ") and "no-such-python3" in failed["error"], failed
    assert "\n" not in failed["error"]
    client.process.wait(30)
    assert client.process.returncode == 0, client.stderr()
    ssh_hosts.wait_clean()
    print("cold start %.1f s, warm start %.1f s; %s; %s" % (cold["seconds"], warm["seconds"], why, failed["error"]))


def test_a_client_that_exits_or_is_sigkilled_leaves_no_engine_on_any_host(ssh_hosts):
    client = ssh_hosts.run_client("exit")  # exits without closing its cluster
    assert len(step(client, "up", 150)["uris"]) == 3
    assert client.process.wait(60) == 0, client.stderr()
    ssh_hosts.wait_clean()

    client = ssh_hosts.run_client("hold")
    up = step(client, "up", 150)
    assert len(up["uris"]) == 3 and up["failed"] == {}, up
    assert len(ssh_hosts.srpy_processes()) >= 3 * 2  # per host: a launcher and its engine, at least
    assert ssh_hosts.sandboxes()
    os.kill(client.process.pid, signal.SIGKILL)  # ip netns exec execs: this is the client itself
    client.process.wait(30)
    ssh_hosts.wait_clean(timeout=90)

    # the ssh clients killed too (the whole machine going away, say): each sshd sees its connection
    # close, ends the session, and the host side sees the end of its stdin
    client = ssh_hosts.run_client("hold")
    assert len(step(client, "up", 150)["uris"]) == 3
    ssh_clients = [kid for kid in psutil.Process(client.process.pid).children() if kid.name() == "ssh"]
    assert len(ssh_clients) == 3, ssh_clients
    for process in ssh_clients + [psutil.Process(client.process.pid)]:
        process.kill()
    client.process.wait(30)
    psutil.wait_procs(ssh_clients, timeout=30)
    ssh_hosts.wait_clean(timeout=90)


def test_srpyapp_ssh_serves_until_stopped_then_stops_every_host(ssh_hosts):
    uri_file, secret_file = ssh_hosts.root / "uris", ssh_hosts.root / "secret"
    env = dict(os.environ, PYTHONPATH=ROOT)
    env.pop("SRPY_SECRET", None)
    # no -n: one engine per core of each host, and each test host has one core
    launcher = Proc(["ip", "netns", "exec", ssh_hosts.client, sys.executable, "-m", "srpy", "ssh", "h1", "h2",
                     "-F", str(ssh_hosts.ssh_config), "--python", sys.executable,
                     "-u", str(uri_file), "-s", str(secret_file)], env)
    ssh_hosts.processes.append(launcher)
    printed = []
    while True:
        line = launcher.readline(150)
        if line.startswith("PYRO:"):
            printed.append(line)
        elif line.startswith("Hosting "):
            assert line.startswith("Hosting 2 engines on 2 hosts"), line
        if len(printed) == 2:
            break
    assert sorted(uri.split("@")[1].split(":")[0] for uri in printed) == [ssh_hosts.address["h1"],
                                                                         ssh_hosts.address["h2"]]
    deadline = time.monotonic() + 30
    while not (uri_file.exists() and secret_file.exists()):
        assert time.monotonic() < deadline, "no URI file or secret file"
        time.sleep(0.1)
    assert uri_file.read_text().split() == printed
    assert oct(secret_file.stat().st_mode & 0o777) == "0o600" and len(secret_file.read_text().strip()) >= 32
    assert len(ssh_hosts.srpy_processes()) >= 2 * 2
    launcher.process.send_signal(signal.SIGINT)  # Ctrl-C
    assert launcher.process.wait(60) == 0, launcher.stderr()
    assert not uri_file.exists() and not secret_file.exists()
    ssh_hosts.wait_clean()


def listening(ssh_hosts, name):
    """The addresses and ports that listen in host C{name}'s namespace (C{ss -ltnH}), sshd's aside."""
    done = subprocess.run(["ip", "netns", "exec", ssh_hosts.namespace[name], "ss", "-ltnH"], capture_output=True,
                          text=True, timeout=30)
    return sorted(line.split()[3] for line in done.stdout.splitlines() if not line.split()[3].endswith(":22"))


def test_tunnel_mode_reaches_engines_on_the_hosts_loopback_through_ssh_forwards(ssh_hosts):
    client = ssh_hosts.run_client("tunnel")
    # without tunnel, a host whose engines the client cannot reach (here: bound to its loopback,
    # which is as good as a firewall) fails with one line naming it, while h1 starts
    direct = step(client, "direct", 150)
    assert list(direct["failed"]) == ["h3"] and len(direct["uris"]) == 1, direct
    why = direct["failed"]["h3"]
    assert why.startswith("h3: ") and "\n" not in why and "127.0.0.1" in why and "cannot reach" in why, why
    ssh_hosts.wait_clean()

    tunnel = step(client, "tunnel", 150)
    assert tunnel["failed"] == {} and len(tunnel["uris"]) == 6, tunnel
    addresses = step(client, "addresses", 30)
    loopbacks = addresses["tunnel"]
    assert sorted(loopbacks) == ssh_hosts.names and len(set(loopbacks.values())) == 3, loopbacks
    assert all(address.startswith("127.") for address in loopbacks.values()), loopbacks
    for name in ssh_hosts.names:
        # the client's URIs are the forwards' ends here, on the host's own loopback address and port
        mine = [uri for uri in tunnel["uris"] if "@%s:" % loopbacks[name] in uri]
        assert len(mine) == 2, tunnel["uris"]
        # on the host, the engines listen on that loopback address only: nothing else can reach them
        ports = sorted(uri.rsplit(":", 1)[1] for uri in mine)
        assert listening(ssh_hosts, name) == sorted("%s:%s" % (loopbacks[name], port) for port in ports)
    assert addresses["engine_uris"] == tunnel["uris"]  # each keeps its port here (they were free)
    assert os.path.exists(addresses["control"])

    mapped = step(client, "map", 120)
    assert mapped["values"] == [x * x for x in range(60)] and mapped["cheap"]
    assert mapped["tmpdirs"] == sorted(str(ssh_hosts.folder(name, "tmp")) for name in ssh_hosts.names), mapped
    assert len(mapped["pids"]) == 6, "an engine got no work: %s" % mapped["pids"]
    # peers: each engine keeps the other engine of its own host; the other hosts' are refused at once
    peers = step(client, "peers", 120)
    for uri, kept in peers["kept"].items():
        address = uri.split("@")[1].split(":")[0]
        assert [other.split("@")[1].split(":")[0] for other in kept] == [address], peers["kept"]
    assert peers["got"] == "within h3"
    closed = step(client, "closed", 120)
    assert closed["control_left"] is False  # the masters' sockets and their folder are gone
    taken = step(client, "taken", 120)
    assert taken["engine_uris"][0].endswith(":45000") and not taken["uris"][0].endswith(":45000"), taken
    assert taken["value"] == 42
    client.process.wait(30)
    assert client.process.returncode == 0, client.stderr()
    # the box's connections were still open (an EngBox's "with" shuts its executor down, it does not
    # close them), which a master's forwards wait for: once its host said its engines stopped, the
    # cluster ends that ssh instead of waiting for it
    assert "did not end" not in client.stderr(), client.stderr()
    ssh_hosts.wait_clean()
    assert all(listening(ssh_hosts, name) == [] for name in ssh_hosts.names)
    print("1000 cheap items: direct (h1 alone) %s s, tunnel (3 hosts) %.2f s" % (mapped["direct_seconds"],
                                                                                mapped["seconds"]))


def test_tls_made_for_the_cluster_refuses_clients_without_its_ca(ssh_hosts):
    client = ssh_hosts.run_client("tls")
    up = step(client, "tls", 150)
    assert up["failed"] == {} and len(up["uris"]) == 3, up
    assert "tls" in up["phases"]["h1"] and "tls" in up["phases"]["h3"], up["phases"]
    # while the cluster lives, each host has its key and certificate in a private folder of its own
    for name in ssh_hosts.names:
        folders = list(ssh_hosts.folder(name, "tmp").glob("srpy-tls-*"))
        assert len(folders) == 1, folders
        assert oct(folders[0].stat().st_mode & 0o777) == "0o700"
        assert sorted(p.name for p in folders[0].iterdir()) == ["ca.pem", "cert.pem", "key.pem"]
        assert all(oct(p.stat().st_mode & 0o777) == "0o600" for p in folders[0].iterdir())
        assert "PRIVATE KEY" in (folders[0] / "key.pem").read_text()
    refused = step(client, "refused", 60)
    assert refused["refusals"]["plain"].startswith("SRPyServerNotFound") and "TLS" in refused["refusals"]["plain"]
    assert refused["refusals"]["system CAs"].startswith("SRPyServerNotFound"), refused["refusals"]
    assert all((ssh_hosts.folder(name, "tmp").glob("srpy-tls-*").__next__() / "ca.pem").read_text() == refused["ca"]
               for name in ssh_hosts.names)
    mapped = step(client, "map", 120)
    assert mapped["values"] == [x * x for x in range(30)]
    assert mapped["tmpdirs"] == sorted(str(ssh_hosts.folder(name, "tmp")) for name in ssh_hosts.names), mapped
    # the engines' peer links speak TLS too, trusting the cluster's CA, checking the address: h1 and h2
    # are each other's peers; h3 (tunneled) reaches them, they do not reach h3's loopback
    h1, h2, h3 = up["uris"]
    kept = step(client, "peers", 120)["kept"]
    assert kept == {h1: [h2], h2: [h1], h3: [h1, h2]}, kept
    step(client, "closed", 120)
    client.process.wait(30)
    assert client.process.returncode == 0, client.stderr()
    assert "did not end" not in client.stderr(), client.stderr()
    ssh_hosts.wait_clean()  # the TLS folders are gone with the engines


CUT_AFTER = 40  # h3's link goes down once its engine has run this many of the cut map's 600 items


def test_a_host_cut_off_mid_map_loses_nothing_and_stops_its_engines_by_itself(ssh_hosts):
    log_dir = ssh_hosts.root / "runs"
    log_dir.mkdir()
    client = ssh_hosts.run_client("cut", log_dir)
    up = step(client, "up", 150)
    victim_pid, victim_uri = up["pids"][2], up["uris"][2]  # h3's engine
    step(client, "cut-map-start", 60)
    deadline = time.monotonic() + 60
    while len(executions(log_dir).get(victim_pid, [])) < CUT_AFTER:
        assert time.monotonic() < deadline, "h3 never got %d items: %s" % (CUT_AFTER, executions(log_dir))
        time.sleep(0.005)
    ip("-n", ssh_hosts.namespace["h3"], "link", "set", "eth0", "down")  # no FIN, no RST: h3 goes silent
    cut_at = time.monotonic()
    assert sum(len(done) for done in executions(log_dir).values()) < 600 and client.lines.empty()

    cut = step(client, "cut-map", 200)
    # every result, once, in order; h3's engine left the box, the others are in it
    assert cut["results"] == cut["expected"]
    assert cut["engines"] == up["uris"][:2], cut["engines"]
    runs = executions(log_dir)
    survivors = [x for pid, done in runs.items() if pid != victim_pid for x in done]
    assert [x for x, n in Counter(survivors).items() if n > 1] == []
    assert set(survivors) | set(runs.get(victim_pid, [])) == set(range(600))
    delivered = {uri: n - cut["stats_before"].get(uri, 0) for uri, n in cut["stats_after"].items()}
    assert sum(delivered.values()) == 600 and delivered[victim_uri] > 0, delivered

    # the cluster is still open, h3's sshd has not noticed anything, and yet h3's engines end: no
    # heartbeat reached them for 10 s (then up to 20 s for the launcher to stop them)
    deadline = cut_at + 90
    while ssh_hosts.srpy_processes("h3"):
        assert time.monotonic() < deadline, "h3's engines outlived the heartbeat: %s" % ssh_hosts.srpy_processes("h3")
        time.sleep(0.2)
    stopped_after = time.monotonic() - cut_at
    assert ssh_hosts.srpy_processes("h1") and ssh_hosts.srpy_processes("h2")  # the others serve on
    (log_dir / "close").touch()
    closed = step(client, "closed", 120)
    assert closed["lost"] == {"h1": False, "h2": False, "h3": True}, closed
    client.process.wait(30)
    assert client.process.returncode == 0, client.stderr()
    assert "no word from the host" in client.stderr() and "stopped answering" in client.stderr(), client.stderr()
    ssh_hosts.wait_clean()
    print("map with the cut: %.1f s; h3's engines gone %.1f s after the cut; close %.1f s"
          % (cut["seconds"], stopped_after, closed["seconds"]))


#: another program on the client's machine, using what srpyapp ssh --tunnel --tls wrote
URI_FILE_CLIENT = """
import sys, srpy
from srpy.security import client_tls
uris = open(sys.argv[1]).read().split()
box = srpy.EngBox(uris, secret=open(sys.argv[2]).read().strip(), ssl_context=client_tls(ca=sys.argv[3]))
print(list(box.map(abs, [-1, -2, -3])), flush=True)
box.close()
try:
    srpy.PythonEngine(uris[0], secret=open(sys.argv[2]).read().strip()).close()
except srpy.SRPyServerNotFound as exc:
    print("plain refused", flush=True)
"""


def test_srpyapp_ssh_tunnel_tls_serves_programs_that_read_its_files(ssh_hosts):
    files = {what: ssh_hosts.root / what for what in ("uris", "secret", "ca")}
    env = dict(os.environ, PYTHONPATH=ROOT)
    env.pop("SRPY_SECRET", None)
    launcher = Proc(["ip", "netns", "exec", ssh_hosts.client, sys.executable, "-m", "srpy", "ssh", "h1", "h2",
                     "-F", str(ssh_hosts.ssh_config), "--python", sys.executable, "--tunnel", "--tls",
                     "-u", str(files["uris"]), "-s", str(files["secret"]), "--ca-file", str(files["ca"])], env)
    ssh_hosts.processes.append(launcher)
    printed = []
    while len(printed) < 2:
        line = launcher.readline(150)
        if line.startswith("PYRO:"):
            printed.append(line)
    assert all(uri.split("@")[1].startswith("127.") for uri in printed), printed  # the forwards' ends
    deadline = time.monotonic() + 30
    while not all(path.exists() for path in files.values()):
        assert time.monotonic() < deadline, "srpyapp ssh did not write %s" % files
        time.sleep(0.1)
    assert "BEGIN CERTIFICATE" in files["ca"].read_text()
    other = Proc(["ip", "netns", "exec", ssh_hosts.client, sys.executable, "-c", URI_FILE_CLIENT]
                 + [str(files[what]) for what in ("uris", "secret", "ca")], env)
    ssh_hosts.processes.append(other)
    assert other.readline(60) == "[1, 2, 3]", other.stderr()
    assert other.readline(60) == "plain refused", other.stderr()
    assert other.process.wait(30) == 0, other.stderr()
    launcher.process.send_signal(signal.SIGINT)
    assert launcher.process.wait(60) == 0, launcher.stderr()
    assert not any(path.exists() for path in files.values())
    ssh_hosts.wait_clean()
