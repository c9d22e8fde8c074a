"""
Tunnel mode of L{srpy.cluster}: a host's engines listen on its loopback, and the client reaches
them through SSH port forwards carried by that host's own ssh session.

The host's ssh (the one that runs the bootstrap) is started as an OpenSSH I{ControlMaster}
(C{-o ControlMaster=yes -o ControlPath=SOCKET}); once the engines have reported their ports,
one C{ssh -o ControlPath=SOCKET -O forward -L ADDR:PORT:ADDR:PORT HOST} asks that master to
listen on the client and forward each port to the host: no second login, and the forwards end
with the session.

Each tunneled host gets a loopback address of its own, drawn at random from 127.0.0.0/8
(L{loopback_address}), and its engines listen there on the host; the client listens on the
same address and, when it is free there, the same port. So an engine's URI is the same on the
client and on its host: C{box.connectPeers()} introduces the engines of one host to each
other as usual, while an engine of another tunneled host, under an address no process listens
on here, is refused at once (a partial mesh, one per host; never the wrong engine under a
borrowed URI).

    >>> address = loopback_address(set())
    >>> address.startswith("127.") and address not in ("127.0.0.1", "127.0.1.1")
    True
    >>> forward_spec("127.9.8.7", 41000, 40000)
    '127.9.8.7:41000:127.9.8.7:40000'
"""

import logging
import random
import socket
import subprocess
from typing import Dict, List, Sequence, Set, Tuple

log = logging.getLogger("srpy.cluster")

#: how many times a forward whose local port is taken meanwhile is tried on another port
ATTEMPTS = 5


def loopback_address(taken: Set[str]) -> str:
    """A random address of 127.0.0.0/8, outside 127.0.x.x (where 127.0.0.1 and 127.0.1.1 live), not in C{taken}."""
    while True:
        address = "127.%d.%d.%d" % (random.randint(64, 254), random.randint(0, 255), random.randint(1, 254))
        if address not in taken:
            taken.add(address)
            return address


def forward_spec(address: str, local_port: int, remote_port: int) -> str:
    """The C{-L} argument: listen on C{address:local_port} here, connect to C{address:remote_port} there."""
    return "%s:%d:%s:%d" % (address, local_port, address, remote_port)


def split_uri(uri: str) -> Tuple[str, str, int]:
    """
    C{(object@, host, port)} of a Pyro URI.

    >>> split_uri("PYRO:srpy.engine@127.9.8.7:40000")
    ('PYRO:srpy.engine@', '127.9.8.7', 40000)
    """
    head, _, location = uri.rpartition("@")
    host, _, port = location.rpartition(":")
    return head + "@", host, int(port)


def port_free(address: str, port: int) -> bool:
    """True if nothing listens on C{address:port} here (a listening socket there could be made)."""
    probe = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        probe.bind((address, port))
        return True
    except OSError:
        return False
    finally:
        probe.close()


def free_port(address: str, avoid: Set[int]) -> int:
    """A port the system hands out as free on C{address}, not in C{avoid}."""
    while True:
        probe = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        try:
            probe.bind((address, 0))
            port = probe.getsockname()[1]
        finally:
            probe.close()
        if port not in avoid:
            return port


def control_command(ssh: str, ssh_options: Sequence[str], control_path: str, host: str,
                    specs: Sequence[str]) -> List[str]:
    """The argv of C{ssh -O forward}: ask the host's master to add the forwards C{specs}."""
    argv = [ssh] + [str(option) for option in ssh_options] + ["-o", "ControlPath=" + control_path.replace("%", "%%"),
                                                              "-o", "BatchMode=yes", "-O", "forward"]
    for spec in specs:
        argv += ["-L", spec]
    return argv + ["--", host]


def forward(ssh: str, ssh_options: Sequence[str], control_path: str, host: str,
            uris: Sequence[str], timeout: float = 30.0) -> Dict[str, str]:
    """
    Forward every engine of C{uris} (on the host's loopback) through the host's ssh master:
    returns {engine's URI on the host: its URI here}. Each keeps its port where that port is free
    here, else gets another one.

    @raise OSError: ssh could not add a forward (its last line says why).
    """
    taken = {split_uri(uri)[2] for uri in uris}
    plan: Dict[str, int] = {}
    for uri in uris:
        _, address, port = split_uri(uri)
        plan[uri] = port if port_free(address, port) else free_port(address, taken)
        taken.add(plan[uri])

    def run(specs: Sequence[str]) -> str:
        done = subprocess.run(control_command(ssh, ssh_options, control_path, host, specs), stdin=subprocess.DEVNULL,
                              capture_output=True, text=True, timeout=timeout)
        return "" if done.returncode == 0 else (done.stderr.strip().splitlines() or ["exit %d" % done.returncode])[-1]

    why = run([forward_spec(split_uri(uri)[1], plan[uri], split_uri(uri)[2]) for uri in uris])  # all at once
    if why:
        # a local port was taken since it was checked: one at a time, a fresh port for one that fails
        # (asking again for a forward the master has already is a success, so those made stay as they are)
        log.debug("%s: ssh -O forward: %s; forwarding one port at a time", host, why)
        for uri in uris:
            _, address, port = split_uri(uri)
            for _ in range(ATTEMPTS):
                why = run([forward_spec(address, plan[uri], port)])
                if not why:
                    break
                plan[uri] = free_port(address, taken)
                taken.add(plan[uri])
            if why:
                raise OSError("cannot forward its engines' ports through ssh (%s)" % why)
    mapped = {}
    for uri in uris:
        head, address, port = split_uri(uri)
        mapped[uri] = "%s%s:%d" % (head, address, plan[uri])
        if plan[uri] != port:
            log.info("%s: %s is forwarded here on port %d (%d is taken here)", host, uri, plan[uri], port)
    return mapped


def reachable(uri: str, timeout: float) -> str:
    """'' if a TCP connection to the URI's address opens within C{timeout} seconds; else why not."""
    _, host, port = split_uri(uri)
    try:
        socket.create_connection((host, port), timeout).close()
        return ""
    except socket.timeout:
        return "no answer within %.0f s" % timeout
    except OSError as exc:
        return exc.strerror or str(exc)
