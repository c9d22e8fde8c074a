"""
The C{srpyapp} command (also C{python srpyapp.py} and C{python -m srpy}): its options, their
checks, and the two ways it hosts engines.

Basic mode (C{-b}, the default) serves one engine, in a process the launcher forks and keeps
(a L{srpy.supervisor.Keeper}). Multi mode (C{-m}, or C{-n N}) starts one engine process per core
(or N) and supervises them (L{srpy.supervisor.Supervisor}). C{srpyapp status} is
L{srpy.status}, C{srpyapp analyze SCRIPT} is L{srpy.analysis}, C{srpyapp envs} is
L{srpy.environments}, C{srpyapp run SCRIPT} is L{srpy.runcommand}, C{srpyapp ssh HOST...} is
L{srpy.cluster}, C{srpyapp dashboard} (and C{--dashboard PORT}) is L{srpy.dashboard}. Every
option is checked before any engine starts or any URI is printed: a wrong value gets the usage
and one error line (exit code 2), what an option names that cannot be used gets one error line
(exit code 1).
"""

import argparse
import logging
import os
import sys
import threading
from typing import Any, Callable, List, Optional, Sequence

from ._version import __version__, copyright
from .errors import SRPyError
from .subengine import detectNCPUs
from .supervisor import (CAN_FORK, EngineProcess, Keeper, Supervisor, on_signals, remove_file, run_child,
                         start_engines, write_uri_file)

log = logging.getLogger("srpy.cli")


# -- options ---------------------------------------------------------------------------------------

# -- options ---------------------------------------------------------------------------------------

def build_parser() -> argparse.ArgumentParser:
    """The launcher's command line."""
    parser = argparse.ArgumentParser(
        prog="srpyapp", description="Host srpy engines: Python namespaces that clients run code in. "
                                    "'srpyapp status -h': show what running engines are doing. "
                                    "'srpyapp analyze -h': what a script imports, as JSON. "
                                    "'srpyapp envs -h': list or remove the environments engines built. "
                                    "'srpyapp run -h': run a script on engines. "
                                    "'srpyapp ssh -h': engines on other hosts, over SSH. "
                                    "'srpyapp dashboard -h': a live web page of running engines.")
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument("-b", "--basic", action="store_true",
                      help="one engine, in a process this one keeps (and restarts after a limit) (default)")
    mode.add_argument("-m", "--multi", action="store_true", help="one engine process per core")
    parser.add_argument("-n", "--engines", type=_positive_int, metavar="N",
                        help="number of engine processes (implies --multi)")
    parser.add_argument("-u", "--uri-file", metavar="FILE",
                        help="write the URIs to FILE once every engine answers (removed on exit)")
    parser.add_argument("-p", "--pyro-config", metavar="FILE", help="a Pyro5 configuration file (NAME = value lines)")
    parser.add_argument("-d", "--debug", action="store_true", help="log every call")
    parser.add_argument("-t", "--time", action="store_true", help="log every call's duration")
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    parser.add_argument("--port", type=_port, default=0,
                        help="port of the first engine (the next ones count up); default: any free port")
    parser.add_argument("--name", default="", help="engine name (multi mode appends -1, -2, ...)")
    parser.add_argument("--group", default="", help="group label of the engines")
    parser.add_argument("--secret", type=_secret, default=None,
                        help="shared secret clients must prove they know (default: $SRPY_SECRET)")
    parser.add_argument("--insecure", action="store_true",
                        help="allow listening on a non-loopback address without a secret")
    parser.add_argument("--ns", action="store_true",
                        help="register the engines in a Pyro5 name server (found by --ns-host, or broadcast)")
    parser.add_argument("--start-ns", action="store_true",
                        help="start a Pyro5 name server in the launcher (implies --ns)")
    parser.add_argument("--ns-host", default=None, help="name server host (default: this machine, then broadcast)")
    parser.add_argument("--ns-port", type=_ns_port, default=None, help="name server port (default 9090)")
    parser.add_argument("--python", metavar="PATH", default=None,
                        help="host the engine processes in this Python (a virtualenv's, say); it must have srpy")
    parser.add_argument("--restart", action="store_true",
                        help="restart an engine that crashes (with back-off), on the same port; an engine that ends "
                             "to stop a call over its time limit restarts without this flag")
    parser.add_argument("--max-task-time", type=_positive_number, metavar="SECONDS", default=None,
                        help="stop any call that runs longer: its code is interrupted, or, if it holds the "
                             "interpreter, the engine restarts on the same port")
    parser.add_argument("--max-memory", type=_positive_number, metavar="MB", default=None,
                        help="memory each engine may use beyond its start-up size; a call that needs more "
                             "gets MemoryError")
    parser.add_argument("--max-message-size", type=_message_size, metavar="MB", default=None,
                        help="refuse messages larger than this (default: Pyro5's 1 GiB)")
    parser.add_argument("--tls-cert", metavar="FILE", help="serve TLS with this certificate (PEM)")
    parser.add_argument("--tls-key", metavar="FILE", help="the certificate's private key (PEM)")
    parser.add_argument("--tls-ca", metavar="FILE", help="CA bundle that signs client certificates (and peers')")
    parser.add_argument("--tls-require-client-cert", action="store_true",
                        help="accept only clients with a certificate signed by --tls-ca")
    parser.add_argument("--env-dir", metavar="DIR", default=None,
                        help="where the engines keep the environments EngBox.require(install=True) builds "
                             "(default: $SRPY_ENV_DIR, else ~/.cache/srpy/envs)")
    parser.add_argument("--dashboard", type=_port, metavar="PORT", default=None,
                        help="serve a live web page of these engines on PORT (0: any free port); "
                             "'srpyapp dashboard -h' serves one for engines started elsewhere")
    parser.add_argument("--dashboard-host", metavar="HOST", default=None,
                        help="address of the dashboard (default 127.0.0.1); beyond loopback it asks for the secret")
    parser.add_argument("--ready-timeout", type=_positive_number, default=30.0, help=argparse.SUPPRESS)
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--version", action="version", version="srpy %s" % __version__)
    return parser


def _positive_int(text: str) -> int:
    """A whole number of at least 1 (argparse type)."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError("not a whole number: %r" % (text,)) from None
    if value < 1:
        raise argparse.ArgumentTypeError("must be at least 1")
    return value


def _port(text: str, lowest: int = 0) -> int:
    """A port number, C{lowest} to 65535 (argparse type)."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError("invalid int value: %r" % (text,)) from None
    if not lowest <= value <= 65535:
        raise argparse.ArgumentTypeError("%d is not a port: use %d to 65535%s"
                                         % (value, lowest, " (0: any free port)" if lowest == 0 else ""))
    return value


def _ns_port(text: str) -> int:
    """A name server's port: 1 to 65535 (argparse type)."""
    return _port(text, lowest=1)


def _positive_number(text: str) -> float:
    """A finite number above 0 (argparse type)."""
    import math
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError("not a number: %r" % (text,)) from None
    if not (value > 0 and math.isfinite(value)):
        raise argparse.ArgumentTypeError("must be a positive number, not %s" % (text,))
    return value


def _message_size(text: str) -> float:
    """A message size limit in MB that still lets a ping through (argparse type)."""
    value = _positive_number(text)
    if value * 1024 * 1024 < 1024:  # a smaller limit would refuse every call, even a ping
        raise argparse.ArgumentTypeError("%s MB is too small for any call: use at least 0.001 (1 KiB)" % (text,))
    return value


def _secret(text: str) -> str:
    """A non-empty secret (argparse type)."""
    if not text:  # an empty secret would silently mean "no secret"
        raise argparse.ArgumentTypeError("an empty secret is no secret: give a real one, or leave --secret out")
    return text


def engine_count(options: argparse.Namespace) -> int:
    """How many engine processes the options ask for (1 in basic mode)."""
    if options.multi or options.engines:
        return options.engines or detectNCPUs()
    return 1


def check_values(parser: argparse.ArgumentParser, options: argparse.Namespace) -> None:
    """
    Refuse (through C{parser.error}: usage, one error line, exit code 2) option values that do not
    fit together; each value on its own was checked by its argparse type.
    """
    if options.basic and options.engines:
        parser.error("-b/--basic hosts one engine in this process; -n N needs -m/--multi (or no -b)")
    if options.python and not (options.multi or options.engines or options.restart or options.max_task_time):
        parser.error("--python needs engine processes: use it with -m or -n N")
    count = engine_count(options)
    if options.port and options.port + count - 1 > 65535:
        parser.error("--port %d with %d engines needs ports %d to %d, past the last port, 65535: use a lower "
                     "--port" % (options.port, count, options.port, options.port + count - 1))
    if options.dashboard_host and options.dashboard is None:
        parser.error("--dashboard-host needs --dashboard PORT")
    if bool(options.tls_cert) != bool(options.tls_key):
        parser.error("TLS needs both --tls-cert and --tls-key")
    if options.tls_ca and not options.tls_cert:
        parser.error("--tls-ca needs --tls-cert and --tls-key (the engines' own certificate)")
    if options.tls_require_client_cert and not (options.tls_ca and options.tls_cert):
        parser.error("--tls-require-client-cert needs --tls-ca (the CA that signs client certificates) "
                     "and --tls-cert/--tls-key")


def check_files(options: argparse.Namespace) -> None:
    """
    Make sure what the options name can be used before any engine starts: the C{-u} file can be
    written, the TLS files are a certificate, its key and a CA bundle. (The C{-p} file is checked as
    it is applied, L{apply_pyro_config}.)

    @raise SRPyError: one line naming the option and what is wrong.
    """
    if options.uri_file:
        _check_uri_file(options.uri_file)
    if options.env_dir and os.path.exists(options.env_dir) and not os.path.isdir(options.env_dir):
        raise SRPyError("--env-dir %s: that is not a directory" % options.env_dir)
    if options.tls_cert:
        _check_tls_files(options.tls_cert, options.tls_key, options.tls_ca)


def _check_uri_file(path: str) -> None:
    """The C{-u} file can be written: its directory exists and takes new files."""
    import tempfile
    directory = os.path.dirname(path) or "."
    if os.path.isdir(path):
        raise SRPyError("-u %s: that is a directory; give the name of a file to write" % path)
    if not os.path.isdir(directory):
        why = "is not a directory" if os.path.exists(directory) else "does not exist"
        raise SRPyError("-u %s: %s %s" % (path, directory, why))
    try:  # the file is written as a temporary file renamed into place: the directory must take new files
        handle, probe = tempfile.mkstemp(prefix=".srpy-uri-check-", dir=directory)
    except OSError as exc:
        raise SRPyError("-u %s: cannot write in %s: %s" % (path, directory, exc.strerror or exc)) from None
    os.close(handle)
    os.remove(probe)


def _check_tls_files(cert: str, key: str, ca: Optional[str]) -> None:
    """The TLS files can be read and are a certificate, its key and a CA bundle."""
    import ssl

    from Pyro5 import config as pyro_config
    for option, path in (("--tls-cert", cert), ("--tls-key", key), ("--tls-ca", ca)):
        if path:
            try:
                with open(path, "rb"):
                    pass
            except OSError as exc:
                raise SRPyError("%s %s: %s" % (option, path, exc.strerror or exc)) from None
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    password = pyro_config.SSL_SERVERKEYPASSWD or ""  # never a prompt on the terminal: a key without one fails
    try:
        context.load_cert_chain(cert, key, password=lambda: password)
    except (ssl.SSLError, ValueError) as exc:
        raise SRPyError("--tls-cert %s / --tls-key %s: not a PEM certificate and its private key (%s)"
                        % (cert, key, exc)) from None
    if ca:
        try:
            context.load_verify_locations(ca)
        except ssl.SSLError as exc:
            raise SRPyError("--tls-ca %s: not a PEM bundle of CA certificates (%s)" % (ca, exc)) from None


def apply_pyro_config(path: str) -> None:
    """
    Apply a Pyro5 configuration file: C{NAME = value} lines, C{#} comments. Every line is checked
    before any setting changes.

    @raise SRPyError: the file cannot be read, or a line is not a Pyro5 setting with a valid value
        (the message names the file and the line).
    """
    try:
        with open(path, encoding="utf-8") as handle:
            lines = handle.readlines()
    except OSError as exc:
        raise SRPyError("-p %s: cannot read it: %s" % (path, exc.strerror or exc)) from None
    except UnicodeDecodeError as exc:
        raise SRPyError("-p %s: not a UTF-8 text file (%s)" % (path, exc)) from None
    from Pyro5 import config as pyro_config
    known = pyro_config.as_dict()
    settings = {}
    for number, line in enumerate(lines, 1):
        line = line.split("#", 1)[0].strip()
        if not line:
            continue
        name, sep, value = line.partition("=")
        name = name.strip().upper()
        if name.startswith("PYRO_"):
            name = name[5:]
        if not sep or name not in known:
            raise SRPyError("-p %s line %d: not a Pyro5 setting: %r" % (path, number, line))
        try:
            settings[name] = _convert(name, known[name], value.strip())
        except ValueError as exc:
            raise SRPyError("-p %s line %d: %s" % (path, number, exc)) from None
    for name, value in settings.items():
        setattr(pyro_config, name, value)


_TRUE, _FALSE = ("1", "true", "yes", "on"), ("0", "false", "no", "off")
#: Pyro5 settings with fewer valid values than their type allows
_CHOICES = {"SERVERTYPE": ("thread", "multiplex"), "SERIALIZER": ("serpent", "marshal", "json", "msgpack"),
            "PREFER_IP_VERSION": (0, 4, 6)}
_AT_LEAST_ONE = ("MAX_MESSAGE_SIZE", "THREADPOOL_SIZE", "THREADPOOL_SIZE_MIN")


def _convert(name: str, current: Any, text: str) -> Any:
    """
    The value of Pyro5 setting C{name} written as C{text}, of the type of its C{current} value.

    >>> _convert("COMPRESSION", False, "yes"), _convert("NS_PORT", 9090, "9190")
    (True, 9190)

    @raise ValueError: C{text} is not a valid value for it (the message says what would be).
    """
    import math
    if isinstance(current, bool):
        if text.lower() not in _TRUE + _FALSE:
            raise ValueError("%s must be true or false (1/0, yes/no, on/off), not %r" % (name, text))
        return text.lower() in _TRUE
    if isinstance(current, (int, float)):
        kind = type(current)
        try:
            value = kind(text)
        except ValueError:
            raise ValueError("%s must be a %s, not %r" % (name, "whole number" if kind is int else "number",
                                                            text)) from None
        if not math.isfinite(value) or value < 0:
            raise ValueError("%s must be a number of 0 or more, not %r" % (name, text))
        if name.endswith("PORT") and value > 65535:
            raise ValueError("%s must be a port (0 to 65535), not %r" % (name, text))
        if name in _AT_LEAST_ONE and value < 1:
            raise ValueError("%s must be at least 1, not %r" % (name, text))
        current = value
    elif isinstance(current, (list, set)):
        return type(current)(v.strip() for v in text.split(","))
    else:
        current = text
    if name in _CHOICES and current not in _CHOICES[name]:
        raise ValueError("%s must be one of %s, not %r" % (name, ", ".join(map(str, _CHOICES[name])), text))
    return current


# -- hosting engines -------------------------------------------------------------------------------

def _banner(count: int, options: argparse.Namespace) -> str:
    """What the launcher says before it prints the URIs."""
    return ("srpy %s - Simple Remote Python. %s\nHosting %d engine%s on %s%s. Stop with Ctrl-C%s."
            % (__version__, copyright, count, "" if count == 1 else "s", options.host,
               " (secret required)" if options.secret else "",
               " or 'quit'" if sys.stdin.isatty() else ""))


def _watch_quit(stop: Callable[[], Any]) -> None:
    """On a console, stop when a line says 'quit', 'exit' or 'q' (read in a thread of its own)."""
    stdin = sys.__stdin__  # the console, even once user code got an empty sys.stdin
    if stdin is None or not stdin.isatty():
        return

    def reader() -> None:
        for line in stdin:
            if line.strip().lower() in ("quit", "exit", "q"):
                break
        else:
            return  # end of input does not stop a launcher
        stop()

    threading.Thread(target=reader, name="srpy-quit", daemon=True).start()


def run_multi(options: argparse.Namespace, count: int) -> int:
    """Start C{count} engine processes, print their URIs, supervise them until stopped."""
    names = ["%s-%d" % (options.name, i + 1) if options.name else "" for i in range(count)]
    ports = [options.port + i if options.port else 0 for i in range(count)]
    if options.python:
        check_python(options.python)
    stop_ns = _maybe_start_ns(options)
    supervisor = Supervisor([], options.uri_file, stop_ns, _restarter(options, names), crashes=options.restart)
    on_signals(supervisor.stop)  # from here on a signal is a clean stop, even while engines start
    try:
        supervisor.engines = engines = start_engines(options, names, ports, options.ready_timeout, detectNCPUs())
    except BaseException:
        stop_ns()
        raise
    board = None
    try:
        if options.dashboard is not None:
            board = start_dashboard(options, [e.uri for e in engines])
        print(_banner(count, options))
        if board is not None:
            print("dashboard: %s%s" % (board.url, " (secret required)" if board.login else ""))
        for engine in engines:
            print(engine.uri)
        sys.stdout.flush()
        if options.uri_file:
            write_uri_file(options.uri_file, [e.uri for e in engines])
        _watch_quit(supervisor.stop)
        supervisor.run()
    finally:
        if board is not None:
            board.close()
        supervisor.shutdown()
    return 0


def start_dashboard(options: argparse.Namespace, uris: List[str]) -> Any:
    """
    Serve the live dashboard of the engines at C{uris} (L{srpy.dashboard}; a restarted engine
    keeps its URI) on C{--dashboard}'s port, from threads of this process. Started once the
    engines are up: a launcher with threads starts the engines it restarts as new interpreters.
    """
    from . import dashboard, monitor, security

    context = None
    if options.tls_cert:  # the engines serve TLS: trust their CA (or their own certificate), as peers do
        mutual = options.tls_require_client_cert
        context = security.client_tls(ca=options.tls_ca or options.tls_cert, cert=options.tls_cert if mutual else None,
                                      key=options.tls_key if mutual else None)
    watcher = monitor.Monitor(monitor.fixed(uris), options.secret, context)
    return dashboard.Dashboard(watcher, options.dashboard_host or "127.0.0.1", options.dashboard, options.secret,
                               insecure=options.insecure).start()


def _restarter(options: argparse.Namespace, names: List[str]) -> Callable[[int, int], EngineProcess]:
    """How the supervisor starts engine C{index} again, on C{port}: C{restart(index, port)}."""
    def restart(index: int, port: int) -> EngineProcess:
        return start_engines(options, [names[index]], [port], options.ready_timeout)[0]
    return restart


def check_python(python: str) -> None:
    """Make sure C{python} runs and has srpy (and its dependencies) importable."""
    import subprocess
    try:
        # what an engine process imports (srpy itself imports nothing until used)
        done = subprocess.run([python, "-c", "import srpy.hosting, srpy; print(srpy.__version__)"],
                              capture_output=True, text=True, timeout=60)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise SRPyError("--python %s: cannot run it: %s" % (python, exc)) from None
    if done.returncode != 0:
        last = (done.stderr.strip().splitlines() or ["?"])[-1]
        raise SRPyError("--python %s cannot host engines: it has no srpy (%s). Install srpy there first: %s"
                        % (python, last, install_hint(python)))


def install_hint(python: str) -> str:
    """
    The command that installs this srpy into C{python}: srpy is installed from its source
    directory (it is not on a package index), with pip, which a bare virtualenv may lack.
    """
    import shlex
    import subprocess
    package = os.path.dirname(os.path.abspath(__file__))
    source = os.path.dirname(package)
    if not os.path.isfile(os.path.join(source, "setup.py")):  # an installed copy: its source is elsewhere
        source = "/path/to/srpy"
        where = " (the directory of srpy's setup.py)"
    else:
        where = ""
    command = "%s -m pip install %s" % (shlex.quote(python), shlex.quote(source))
    try:
        has_pip = subprocess.run([python, "-m", "pip", "--version"], capture_output=True, timeout=60).returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        has_pip = True  # it ran a moment ago: say the usual command
    if not has_pip:
        command = "%s -m ensurepip && %s" % (shlex.quote(python), command)
    return command + where


def _maybe_start_ns(options: argparse.Namespace) -> Callable[[], None]:
    """Start a name server when asked; returns the function that stops it (a no-op otherwise)."""
    if not options.start_ns:
        return lambda: None
    from . import discovery
    from .hosting import tls_options
    uri, stop = discovery.start_name_server(options.ns_host or options.host, options.ns_port or 9090,
                                            tls=tls_options(options))
    options.ns_host = options.ns_host or options.host
    print("name server: %s" % uri)
    return stop


def run_basic(options: argparse.Namespace) -> int:
    """
    Serve one engine until stopped: in a child process this one forks and keeps (a L{srpy.supervisor.Keeper}), so
    that an engine that ends to stop a call serves again at the same URI. With C{--restart} or
    C{--start-ns}, or where the system cannot fork, the engine is a supervised child process
    instead (L{run_multi} with one engine).
    """
    if options.python:
        raise SRPyError("--python needs engine processes: use it with -m or -n N")
    if options.restart or options.start_ns or options.dashboard is not None or not CAN_FORK:
        return run_multi(options, 1)

    def ready(uri: Optional[str], sandbox: str, failure: str = "") -> None:
        if uri is None:
            raise SRPyError(failure)
        print(_banner(1, options))
        print(uri)
        sys.stdout.flush()
        if options.uri_file:
            write_uri_file(options.uri_file, [uri])

    console = sys.__stdin__ is not None and sys.__stdin__.isatty()
    try:
        return Keeper(options, options.name, options.port).run(ready, watch_stdin="console" if console else None)
    finally:
        if options.uri_file:
            remove_file(options.uri_file)


# -- the program -----------------------------------------------------------------------------------

def configure_logging(debug: bool) -> None:
    """Log to stderr, one line per record, with the process id (engines share a console)."""
    logging.basicConfig(level=logging.DEBUG if debug and os.environ.get("SRPY_LOG_PYRO") else logging.INFO,
                        format="%(asctime)s %(name)s[%(process)d] %(levelname)s %(message)s",
                        stream=sys.stderr)
    if not os.environ.get("SRPY_LOG_PYRO"):
        logging.getLogger("Pyro5").setLevel(logging.WARNING)


def main(argv: Optional[Sequence[str]] = None) -> int:
    """
    Entry point of C{srpyapp} / C{python srpyapp.py}; returns the exit code: 0 after a clean stop,
    2 for option values that are wrong in themselves (usage and one error line, as argparse does),
    1 when what an option names cannot be used or the engines cannot start (one error line).
    Everything is checked before any engine starts or any URI is printed.
    """
    args = list(sys.argv[1:] if argv is None else argv)
    if args[:1] == ["status"]:  # srpyapp status ...: what the engines are doing
        from . import status
        return status.main(args[1:])
    if args[:1] == ["analyze"]:  # srpyapp analyze SCRIPT: what a script imports, as JSON
        from . import analysis
        return analysis.main(args[1:])
    if args[:1] == ["envs"]:  # srpyapp envs list|remove ...: this host's environments
        from . import environments
        return environments.main(args[1:])
    if args[:1] == ["dashboard"]:  # srpyapp dashboard ...: a live web page of the engines (srpy.dashboard)
        from . import dashboard
        return dashboard.main(args[1:])
    if args[:1] == ["run"]:  # srpyapp run SCRIPT ...: a script on engines (srpy.runcommand)
        from . import runcommand
        return runcommand.main(args[1:])
    if args[:1] == ["ssh"]:  # srpyapp ssh HOST...: engines on other hosts, over SSH
        from . import cluster
        return cluster.main(args[1:])
    parser = build_parser()
    options = parser.parse_args(args)
    if not options.child:
        check_values(parser, options)
    if options.uri_file:
        options.uri_file = os.path.abspath(options.uri_file)  # engines change directory to their sandbox
    if options.env_dir:  # the engines read it from their environment, forked or started anew
        options.env_dir = os.path.abspath(os.path.expanduser(options.env_dir))
        os.environ["SRPY_ENV_DIR"] = options.env_dir
    configure_logging(options.debug)
    if options.secret is None:
        options.secret = os.environ.get("SRPY_SECRET") or None
        if os.environ.get("SRPY_SECRET") == "" and not options.child:
            # the same rule as the client's: empty means unset (a shell's way to clear it), said aloud
            log.warning("SRPY_SECRET is set but empty: treated as unset, so these engines take no secret")
    try:
        if options.pyro_config:
            apply_pyro_config(options.pyro_config)
        if options.child:
            return run_child(options)
        check_files(options)
        if options.multi or options.engines:
            return run_multi(options, engine_count(options))
        return run_basic(options)
    except (SRPyError, OSError) as exc:
        if options.child:
            log.error("%s", exc)
        else:
            print("srpyapp: error: %s" % " ".join(str(exc).split()), file=sys.stderr)  # one line, whatever it said
        return 1


if __name__ == "__main__":
    sys.exit(main())