"""
The far side of L{srpy.cluster}: the script an L{SSHCluster<srpy.cluster.SSHCluster>} sends to each
host on ssh's stdin, run there by the host's own C{python3} with nothing else installed.

It imports only the standard library (no srpy: the host may have none, or another version). The
client runs C{ssh HOST python3 -c LOADER}, where L{LOADER} reads this file's text from stdin
(length-prefixed) and runs it; then, over the same stdin and stdout::

    client -> host   a JSON line: the dist's hash and size, the secret, the engine count, launcher options
    host -> client   SRPY-BOOT <python version> <pid>
    host -> client   SRPY-CACHE have <folder>        (the zip of that hash is cached on the host)
                  or SRPY-CACHE need                 (then:)
    client -> host   the zip's bytes (its size was in the header)
    host -> client   SRPY-CACHE stored <folder>
    host -> client   SRPY-TLS <address>                 (only with "tls" in the header; then:)
    client -> host   <length>\n and a JSON object: the host's certificate, its key, the cluster's CA (PEM)
    host -> client   SRPY-URI <uri>, once per engine, then SRPY-UP
    host -> client   SRPY-EXIT <code> when the launcher ends by itself; SRPY-FAILED <why> if it cannot start
    host -> client   SRPY-STOPPED <code> once the engines are stopped at the end of stdin

After that the client sends only heartbeats (a byte every few seconds, each answered with
C{SRPY-ALIVE}): the end of stdin (the cluster closed, the client exited or was killed, the
connection dropped), or no heartbeat for the header's C{heartbeat} seconds (a link cut without a
word, which sshd may not notice), is the signal to stop. This script then SIGTERMs the launcher
(which stops its engines and removes their sandboxes), waits, and SIGKILLs what is left of its
process group. The launcher is also armed to get SIGTERM should this script itself be killed
(C{PR_SET_PDEATHSIG}, Linux).

The cache is C{$XDG_CACHE_HOME/srpy/dist/<sha256>.zip} (by default C{~/.cache/srpy/dist}): one zip
per srpy content, checked against its hash at every start, and unpacked beside it into the folder
C{<sha256>/} the launcher runs from (C{python3 <folder> ...}), where Python keeps the bytecode it
compiles: only the first start on a host compiles srpy and Pyro5. The engines bind the address the client
reached the host on: the server side of C{$SSH_CONNECTION}. The secret comes in the JSON line and
goes to the launcher in its environment (C{SRPY_SECRET}), never on a command line. With TLS, the
host's certificate and key come on stdin too, and stay in a private folder of the temporary folder
until the launcher ends (L{receive_tls}).
"""

import hashlib
import json
import os
import selectors
import signal
import subprocess
import sys
import time

#: the C{python3 -c} program: reads this script's length, then the script, from stdin and runs it
LOADER = "import sys;i=sys.stdin.buffer;exec(i.read(int(i.readline())))"
#: how long the launcher has to stop its engines after SIGTERM before its process group is killed
STOP_GRACE = 20.0
#: the oldest Python srpy runs on
OLDEST = (3, 9)


def say(line):
    """One protocol line to the client; False once the client is gone."""
    try:
        os.write(1, (line + "\n").encode("utf-8"))
        return True
    except OSError:
        return False


def cache_folder(header):
    """Where zips are cached on this host."""
    if header.get("cache"):
        return os.path.expanduser(header["cache"])
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(base, "srpy", "dist")


def digest(path):
    """The SHA-256 of a file, in hex."""
    hasher = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            hasher.update(block)
    return hasher.hexdigest()


def read_exactly(stream, size):
    """C{size} bytes of C{stream}, or None if it ends first."""
    data = stream.read(size)
    return data if data is not None and len(data) == size else None


def fetch_dist(header, stdin):
    """
    The folder srpy runs from: the zip's contents, unpacked beside it (so that Python caches the
    modules' bytecode there and later starts do not compile them again). The zip is there already
    (its hash checked), or asked for and received now. None if the client went away.
    """
    folder = cache_folder(header)
    wanted = header["hash"]
    path = os.path.join(folder, wanted + ".zip")
    if os.path.isfile(path) and digest(path) == wanted:
        state = "have"
    else:
        say("SRPY-CACHE need")
        data = read_exactly(stdin, header["size"])
        if data is None:
            return None
        if hashlib.sha256(data).hexdigest() != wanted:
            say("SRPY-FAILED the srpy zip arrived damaged (its SHA-256 differs)")
            return None
        os.makedirs(folder, mode=0o700, exist_ok=True)
        temporary = "%s.tmp-%d" % (path, os.getpid())
        with open(temporary, "wb") as handle:  # written aside, renamed into place: no half zip is ever cached
            handle.write(data)
        os.replace(temporary, path)
        state = "stored"
    unpacked = unpack(path, os.path.join(folder, wanted))
    say("SRPY-CACHE %s %s" % (state, unpacked))
    return unpacked


MANIFEST = ".srpy-manifest.json"


def unpack(path, target):
    """
    C{target}, holding the zip's files: as it is if every file of its manifest is there with its
    size; else unpacked anew (aside, then renamed into place: a reader never sees half of it).
    """
    import shutil
    import zipfile
    try:
        with open(os.path.join(target, MANIFEST), encoding="utf-8") as handle:
            manifest = json.load(handle)
        if all(os.path.getsize(os.path.join(target, name)) == size for name, size in manifest.items()):
            return target
    except (OSError, ValueError):
        pass
    temporary = "%s.tmp-%d" % (target, os.getpid())
    shutil.rmtree(temporary, ignore_errors=True)
    with zipfile.ZipFile(path) as archive:
        archive.extractall(temporary)
        manifest = {info.filename: info.file_size for info in archive.infolist() if not info.is_dir()}
    with open(os.path.join(temporary, MANIFEST), "w", encoding="utf-8") as handle:
        json.dump(manifest, handle)
    if os.path.exists(target):  # incomplete or damaged: replaced
        old = "%s.old-%d" % (target, os.getpid())
        os.rename(target, old)
        shutil.rmtree(old, ignore_errors=True)
    try:
        os.rename(temporary, target)
    except OSError:  # another start on this host unpacked it meanwhile
        shutil.rmtree(temporary, ignore_errors=True)
    return target


def receive_tls(address, stdin):
    """
    With TLS: ask for this host's certificate (for C{address}), and write it, its key and the
    cluster's CA into a private folder (mode 700, files 600) of the temporary folder; returns the
    folder, or None if the client went away. The key travels on ssh's stdin only.
    """
    import tempfile
    say("SRPY-TLS %s" % address)
    size = stdin.readline()
    data = read_exactly(stdin, int(size)) if size.strip().isdigit() else None
    if data is None:
        return None
    files = json.loads(data.decode("utf-8"))
    folder = tempfile.mkdtemp(prefix="srpy-tls-")  # mode 700
    for name in ("cert", "key", "ca"):
        handle = os.open(os.path.join(folder, name + ".pem"), os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(handle, "w", encoding="ascii") as stream:
            stream.write(files[name])
    return folder


def bind_address(header):
    """The address the client reached this host on (the server side of $SSH_CONNECTION)."""
    if header.get("bind"):
        return header["bind"]
    words = os.environ.get("SSH_CONNECTION", "").split()
    return words[2] if len(words) == 4 else "127.0.0.1"


def interpreter_flags():
    """The options this Python was started with that the launcher must share (-I, -S, -E)."""
    flags = []
    if sys.flags.isolated:
        flags.append("-I")
    else:
        if sys.flags.ignore_environment:
            flags.append("-E")
    if sys.flags.no_site:
        flags.append("-S")
    return flags


def die_with_me():
    """In the launcher, before it runs: SIGTERM it when this script ends (Linux; elsewhere a no-op)."""
    try:
        import ctypes
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM, 0, 0, 0)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


def stop(launcher):
    """SIGTERM the launcher; if it has not ended after L{STOP_GRACE}, SIGKILL its whole process group."""
    try:
        launcher.send_signal(signal.SIGTERM)
        return launcher.wait(STOP_GRACE)  # it stops its engines and removes their sandboxes
    except subprocess.TimeoutExpired:
        pass
    try:  # before it is reaped: its pid still names its group, not a stranger's
        os.killpg(launcher.pid, signal.SIGKILL)
    except OSError:
        pass
    return launcher.wait()


def serve(launcher, count, heartbeat=None):
    """
    Relay the launcher's URIs; stop it at the end of stdin, or, with C{heartbeat}, once the
    client has sent nothing for that many seconds since the engines were up (a link cut without
    a word: sshd may not notice for hours). Each heartbeat is answered (SRPY-ALIVE), so that the
    client knows the host hears it. Returns the exit code.
    """
    selector = selectors.DefaultSelector()
    selector.register(0, selectors.EVENT_READ, "stdin")
    selector.register(launcher.stdout, selectors.EVENT_READ, "launcher")
    pending, uris, heard = b"", 0, None  # heard: when the client last sent something, once the engines are up
    while True:
        wait = None if heard is None or not heartbeat else max(0.0, heard + heartbeat - time.monotonic())
        events = selector.select(wait)
        if heartbeat and heard is not None and time.monotonic() - heard >= heartbeat and \
                not any(key.data == "stdin" for key, _ in events):
            sys.stderr.write("srpy: no word from the client for %.0f s: stopping the engines\n" % heartbeat)
            sys.stderr.flush()
            return stop(launcher)
        for key, _ in events:
            if key.data == "stdin":
                try:
                    chunk = os.read(0, 4096)
                except OSError:
                    chunk = b""
                if not chunk:  # the client is gone, or closed the cluster
                    code = stop(launcher)
                    # the engines are stopped: the client need not wait for ssh (which, in tunnel mode,
                    # waits for forwarded connections the client may still hold)
                    say("SRPY-STOPPED %d" % code)
                    return code
                if heard is not None:
                    heard = time.monotonic()
                    say("SRPY-ALIVE")
                continue
            chunk = os.read(launcher.stdout.fileno(), 65536)
            if not chunk:
                selector.unregister(launcher.stdout)
                code = launcher.wait()
                say("SRPY-EXIT %d" % code)
                return code
            pending += chunk
            *lines, pending = pending.split(b"\n")
            for line in lines:
                text = line.decode("utf-8", "replace").strip()
                if text.startswith("PYRO:"):
                    uris += 1
                    alive = say("SRPY-URI " + text)
                    if alive and uris == count:
                        alive = say("SRPY-UP")
                        heard = time.monotonic()  # the client beats from now on
                    if not alive:
                        return stop(launcher)


def cores():
    """The cores this process may use: one engine each by default."""
    if hasattr(os, "sched_getaffinity"):
        return max(1, len(os.sched_getaffinity(0)))
    return os.cpu_count() or 1


def main():
    """Run by the loader on the host."""
    say("SRPY-BOOT %d.%d.%d %d" % (sys.version_info[:3] + (os.getpid(),)))
    if sys.version_info[:2] < OLDEST:
        say("SRPY-FAILED srpy needs Python %d.%d or newer; %s is %d.%d"
            % (OLDEST + (sys.executable,) + sys.version_info[:2]))
        return 1
    for signum in (signal.SIGHUP, signal.SIGTERM):
        signal.signal(signum, hung_up)
    stdin = sys.stdin.buffer
    header = json.loads(stdin.readline().decode("utf-8"))
    path = fetch_dist(header, stdin)
    if path is None:
        return 1
    count = header.get("engines") or cores()
    address = bind_address(header)
    tls = receive_tls(address, stdin) if header.get("tls") else None
    if header.get("tls") and tls is None:
        return 1
    try:
        return launch(header, path, count, address, tls)
    finally:
        if tls is not None:  # the key leaves the host with the engines
            import shutil
            shutil.rmtree(tls, ignore_errors=True)


def launch(header, path, count, address, tls):
    """Start the launcher from C{path} (with the TLS files in C{tls}, if any) and serve it."""
    env = dict(os.environ, SRPY_SECRET=header["secret"])
    # engine processes the launcher starts as new interpreters (newSubEngine, say) find srpy in the zip too
    # (a Python run with -I or -E ignores it: there only forked engines have srpy)
    env["PYTHONPATH"] = os.pathsep.join([path] + [p for p in [os.environ.get("PYTHONPATH", "")] if p])
    command = [sys.executable] + interpreter_flags() + [path, "-n", str(count), "--host", address]
    if tls is not None:
        command += ["--tls-cert", os.path.join(tls, "cert.pem"), "--tls-key", os.path.join(tls, "key.pem"),
                    "--tls-ca", os.path.join(tls, "ca.pem")]
    command += [str(option) for option in header.get("args", [])]
    try:
        launcher = subprocess.Popen(command, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, env=env,
                                    start_new_session=True, preexec_fn=die_with_me)
    except OSError as exc:
        say("SRPY-FAILED cannot start the launcher: %s" % exc)
        return 1
    try:
        return serve(launcher, count, header.get("heartbeat"))
    except SystemExit:  # SIGHUP or SIGTERM (hung_up): the engines stop first, then the TLS files go
        stop(launcher)
        raise


def hung_up(signum, frame):
    """SIGHUP, SIGTERM: end as at the end of stdin (the launcher stopped, the TLS folder removed)."""
    raise SystemExit(128 + signum)


if __name__ == "__main__":
    sys.exit(main())
