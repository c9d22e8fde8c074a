"""
C{srpyapp run}: run a script on engines from a shell, as C{python SCRIPT ARGS...} would run it,
on every engine at once (L{srpy.scripts}, L{srpy.asmain})::

    srpyapp run -u uris.txt job.py --size 10     # the engines of a URI file (srpyapp -u writes one)
    srpyapp run --ns --group gpu job.py          # the engines in the name server (of a group)

Each engine's output is printed under a header line, in the order of the engines::

    --- engine engine-1@host (PYRO:srpy.engine@127.0.0.1:40001) exit 0 ---

the script's stdout on stdout and its stderr on stderr; C{--live} prints the lines as they come
instead (each prefixed with its engine's name, see L{srpy.forwarding}), and then only the headers.
The exit code is 0 when the script exited 0 everywhere, else the first engine's non-zero code
(1 for an engine that could not run it; 2 for a wrong command line).
"""

import argparse
import os
import sys
from typing import Any, List, Optional, Sequence, Tuple

from . import discovery, scripts
from .client import PythonEngine
from .errors import SRPyError
from .fanout import fan_out


def build_parser() -> argparse.ArgumentParser:
    """The command line of C{srpyapp run}."""
    parser = argparse.ArgumentParser(
        prog="srpyapp run", description="Run a Python script on srpy engines as __main__, with sys.argv = "
                                        "[SCRIPT, ARGS...], and print each engine's output under its name.")
    where = parser.add_mutually_exclusive_group()
    where.add_argument("-u", "--uri-file", metavar="URIFILE", help="the engines of this file (one URI a line)")
    where.add_argument("--ns", action="store_true", help="the engines in the Pyro5 name server (the default)")
    parser.add_argument("--group", default=None, help="only the name server's engines of this group")
    parser.add_argument("--ns-host", default=None, help="name server host (default: this machine, then broadcast)")
    parser.add_argument("--ns-port", type=int, default=None, help="name server port (default 9090)")
    parser.add_argument("--secret", default=None, help="the engines' secret (default: $SRPY_SECRET)")
    parser.add_argument("--live", action="store_true",
                        help="print the engines' lines as they come, prefixed with the engine's name")
    parser.add_argument("script", metavar="SCRIPT", help="the Python script to run")
    parser.add_argument("args", nargs=argparse.REMAINDER, metavar="ARGS", help="its arguments (sys.argv[1:])")
    return parser


def find_uris(options: argparse.Namespace) -> List[str]:
    """The engines' URIs: from the URI file, or else from the name server."""
    if options.uri_file:
        with open(options.uri_file, encoding="utf-8") as handle:
            return [line.strip() for line in handle if line.strip() and not line.lstrip().startswith("#")]
    return [uri for _, uri, _ in discovery.find(options.group, options.ns_host, options.ns_port)]


def run_everywhere(uris: Sequence[str], script: scripts.Script, argv: List[str], secret: Optional[str],
                   live: bool) -> List[Tuple[str, str, Any]]:
    """C{(uri, engine name, result or the exception met)} for each engine, all run at once."""
    def one(uri: str) -> Tuple[str, Any]:
        with PythonEngine(uri, secret=secret, forward_output=live) as engine:
            return engine.name, engine.call("run_script", script.path, script.source, argv, script.files)

    outcomes = fan_out(one, uris, max(1, len(uris)), name="srpy-run")
    return [(uri, "?", outcome) if isinstance(outcome, BaseException) else (uri, outcome[0], outcome[1])
            for uri, outcome in zip(uris, outcomes)]


def report(outcomes: List[Tuple[str, str, Any]], live: bool) -> int:
    """Print each engine's output under its header; the exit code (see the module text)."""
    code = 0
    for uri, name, result in outcomes:
        if isinstance(result, BaseException):
            print("--- engine %s (%s) could not run the script ---" % (name, uri))
            sys.stdout.flush()
            print("srpyapp run: %s: %s" % (uri, " ".join(str(result).split()) or type(result).__name__),
                  file=sys.stderr)
            sys.stderr.flush()
            code = code or 1
            continue
        print("--- engine %s (%s) exit %d ---" % (name, uri, result["exit"]))
        sys.stdout.flush()
        if not live:
            for text, stream in ((result["stdout"], sys.stdout), (result["stderr"], sys.stderr)):
                if text:
                    stream.write(text if text.endswith("\n") else text + "\n")
                    stream.flush()
        code = code or result["exit"]
    return code


def main(argv: Optional[Sequence[str]] = None) -> int:
    """C{srpyapp run ...}; returns the exit code (see the module text)."""
    parser = build_parser()
    options = parser.parse_args(argv)
    if options.group and options.uri_file:
        parser.error("--group selects engines of the name server; a URI file names its engines itself")
    try:
        script = scripts.pack(options.script)
    except (OSError, SyntaxError, UnicodeDecodeError) as exc:
        print("srpyapp run: error: %s: %s" % (options.script, exc), file=sys.stderr)
        return 1
    try:
        uris = find_uris(options)
    except (SRPyError, OSError) as exc:
        print("srpyapp run: error: %s" % " ".join(str(exc).split()), file=sys.stderr)
        return 1
    if not uris:
        print("srpyapp run: error: no engines found", file=sys.stderr)
        return 1
    secret = options.secret or os.environ.get("SRPY_SECRET") or None
    outcomes = run_everywhere(uris, script, scripts.arguments(options.args), secret, options.live)
    return report(outcomes, options.live)
