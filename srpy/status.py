"""
C{srpyapp status}: what every engine it can find is doing::

    srpyapp status                       # engines in the name server (this machine, or broadcast)
    srpyapp status PYRO:srpy.engine@h:p  # these engines
    srpyapp status -u uris.txt --stack   # the engines of a URI file, with the stack of busy ones

One line per engine: host, group, busy or idle, the current call and how long it has run, cores,
load and memory; C{--stack} adds the stack of each busy engine's running call (faulthandler-style),
C{--json} prints the raw figures. An engine that does not answer is listed as C{down}, one that
wants a secret this command lacks (or refuses the one given) as C{needs secret}; a line on standard
error says why for each. The exit code is 0 when at least one engine answered, 1 when none did.
"""

import argparse
import json
import os
import sys
from typing import Any, Dict, List, Optional, Sequence

from . import discovery
from .fanout import fan_out
from .client import PythonEngine
from .errors import AuthenticationError, SRPyError


def collect(uris: Sequence[str], secret: Optional[str] = None, timeout: float = 3.0) -> List[Dict[str, Any]]:
    """
    The C{status()} of each engine (all asked at once); C{{'uri', 'down': reason}} for the silent
    ones, with C{'needs_secret': True} for those that refused this client's secret (or its lack of one).
    """
    results: List[Dict[str, Any]] = [{"uri": uri, "down": "no answer"} for uri in uris]

    def ask(index: int) -> None:
        try:
            with PythonEngine(uris[index], secret=secret, connect_timeout=timeout) as engine:
                results[index] = engine.call("status", timeout=timeout)
        except AuthenticationError as exc:
            results[index] = {"uri": uris[index], "down": str(exc), "needs_secret": True}
        except (SRPyError, OSError) as exc:
            results[index] = {"uri": uris[index], "down": str(exc)}

    fan_out(ask, range(len(uris)), timeout=timeout + 10, name="srpy-status")
    return results


def format_table(statuses: List[Dict[str, Any]], stacks: bool = False) -> str:
    """
    The statuses as a text table.

    >>> print(format_table([{"uri": "PYRO:srpy.engine@h:1", "down": "refused"},
    ...                     {"uri": "PYRO:srpy.engine@h:2", "down": "wants one", "needs_secret": True}]))
    URI                   HOST  GROUP  STATE         CURRENT  FOR  CORES  LOAD  MEM FREE
    PYRO:srpy.engine@h:1  -     -      down          -        -    -      -     -
    PYRO:srpy.engine@h:2  -     -      needs secret  -        -    -      -     -
    """
    header = ["URI", "HOST", "GROUP", "STATE", "CURRENT", "FOR", "CORES", "LOAD", "MEM FREE"]
    rows = [header] + [_row(status) for status in statuses]
    widths = [max(len(row[i]) for row in rows) for i in range(len(header))]
    lines = ["  ".join(cell.ljust(width) for cell, width in zip(row, widths)).rstrip() for row in rows]
    if stacks:
        for status in statuses:
            if status.get("stack"):
                lines.append("\n%s is running %s() for %.1f s:\n%s" % (
                    status["uri"], status.get("current"), status.get("running_for", 0.0), status["stack"].rstrip()))
    return "\n".join(lines)


def _row(status: Dict[str, Any]) -> List[str]:
    if "down" in status:
        return [status["uri"], "-", "-", "needs secret" if status.get("needs_secret") else "down"] + ["-"] * 5
    busy = status.get("busy")
    load = status.get("load") or []
    return [status["uri"], status.get("host", "?"), status.get("group") or "-", "busy" if busy else "idle",
            status.get("current") or "-", "%.1fs" % status.get("running_for", 0.0) if busy else "-",
            str(status.get("cores", "?")), "%.2f" % load[0] if load else "-",
            "%.1f GB" % (status.get("memory_available", 0) / 1e9)]


def find_uris(options: argparse.Namespace) -> List[str]:
    """The URIs named on the command line, in the URI file, or else in the name server."""
    uris = list(options.uris)
    if options.uri_file:
        with open(options.uri_file, encoding="utf-8") as handle:
            uris += [line.strip() for line in handle if line.strip() and not line.startswith("#")]
    if not uris:
        uris = [uri for _, uri, _ in discovery.find(options.group, options.ns_host, options.ns_port)]
    return uris


def why_down(status: Dict[str, Any], secret: Optional[str]) -> str:
    """
    One line saying why an engine gave no status.

    >>> why_down({"uri": "PYRO:srpy.engine@h:1", "down": "...", "needs_secret": True}, None)
    'PYRO:srpy.engine@h:1 wants a secret: give it with --secret or SRPY_SECRET'
    """
    if status.get("needs_secret"):
        if secret:
            return "%s refused the secret given: not the same secret on both sides" % status["uri"]
        return "%s wants a secret: give it with --secret or SRPY_SECRET" % status["uri"]
    return "%s is down: %s" % (status["uri"], status["down"])


def positive_seconds(text: str) -> float:
    """An argparse type: a positive number of seconds (also C{srpyapp dashboard}'s)."""
    try:
        value = float(text)
    except ValueError:
        value = float("nan")
    if not 0 < value < float("inf"):
        raise argparse.ArgumentTypeError("must be a positive number of seconds, not %r" % (text,))
    return value


def _port(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if not 1 <= value <= 65535:
        raise argparse.ArgumentTypeError("%r is not a port: use 1 to 65535" % (text,))
    return value


def main(argv: Optional[Sequence[str]] = None) -> int:
    """
    C{srpyapp status ...}; returns the exit code: 0 when at least one engine answered, 1 when none
    was found or none answered.
    """
    parser = argparse.ArgumentParser(prog="srpyapp status", description="Show what srpy engines are doing.")
    parser.add_argument("uris", nargs="*", help="engine URIs (default: every engine in the name server)")
    parser.add_argument("-u", "--uri-file", help="read engine URIs from this file")
    parser.add_argument("--group", default=None, help="only engines of this group (name server)")
    parser.add_argument("--ns-host", default=None)
    parser.add_argument("--ns-port", type=_port, default=None)
    parser.add_argument("--secret", default=None, help="the engines' secret (default: $SRPY_SECRET)")
    parser.add_argument("--stack", action="store_true", help="show the stack of each busy engine's call")
    parser.add_argument("--json", action="store_true", help="print the raw figures as JSON")
    parser.add_argument("--timeout", type=positive_seconds, default=3.0, help="seconds an engine has to answer")
    options = parser.parse_args(argv)
    try:
        uris = find_uris(options)
    except (SRPyError, OSError) as exc:
        print("srpyapp status: %s" % exc, file=sys.stderr)
        return 1
    if not uris:
        print("srpyapp status: no engines found", file=sys.stderr)
        return 1
    secret = options.secret or os.environ.get("SRPY_SECRET") or None
    statuses = collect(uris, secret, options.timeout)
    print(json.dumps(statuses, indent=2, default=str) if options.json else format_table(statuses, options.stack))
    sys.stdout.flush()  # the table first, then why some engines are missing from it
    for status in statuses:
        if "down" in status:
            print("srpyapp status: %s" % " ".join(why_down(status, secret).split()), file=sys.stderr)
    if all("down" in status for status in statuses):
        print("srpyapp status: no engine answered", file=sys.stderr)
        return 1
    return 0
