#!/usr/bin/env python3
"""
Environments (issue 14): the time C{EngBox.require(..., install=True)} takes to provision two
engines (C{srpyapp -n 2}), with uv and with pip, for a small package and for numpy.

For each installer and package, each round starts from an empty environments folder and empty
installer caches (C{UV_CACHE_DIR}, C{PIP_CACHE_DIR} in a fresh temporary folder), and measures:
 - B{cold}: nothing on the host; the installer downloads (numpy, from PyPI) or reads the shipped
   wheel (the small package: a wheel built here, shipped with C{find_links}, no index), builds
   the environment, both engines activate it (one builds while the other waits for its lock);
 - B{cached}: fresh engines (a second C{srpyapp -n 2}) on the same host: the environment is
   found and activated, nothing installed.

pip runs with no configuration file (C{PIP_CONFIG_FILE=/dev/null}) and no C{PIP_*} variables, so
that both installers fetch numpy from PyPI (this machine's pip configuration adds local indexes).
Measured on a shared 2-core machine: the figures are indications, not a quiet machine's.

Usage::

    python bench/bench_envs.py                              # 3 rounds of everything (needs PyPI for numpy)
    python bench/bench_envs.py --rounds 1 --packages small  # a smoke run, no network
    python bench/bench_envs.py --json figures.json
"""

import argparse
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from typing import Any, Dict, List, Optional, Sequence

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path[:0] = [ROOT, os.path.join(ROOT, "bench"), os.path.join(ROOT, "tests", "envs")]

from bench_startup import READY_TIMEOUT, _read_lines, _stop  # noqa: E402 - after the path above
from wheels import make_wheel  # noqa: E402

#: what each package case installs, and whether it ships a find_links folder (the small one) or uses PyPI
PACKAGES = {"small": ("tinypkg==1.0", True), "numpy": ("numpy==2.3.5", False)}  # not the dev env's numpy
INSTALLERS = ("uv", "pip")


def child_environment(installer: str, caches: str, env_dir: str) -> Dict[str, str]:
    """The launcher's environment: the installer forced, its cache empty, pip without this machine's configuration."""
    env = {key: value for key, value in os.environ.items() if not key.startswith(("PIP_", "UV_", "SRPY_"))}
    env.update(PYTHONPATH=ROOT, SRPY_INSTALLER=installer, SRPY_ENV_DIR=env_dir, PIP_CONFIG_FILE=os.devnull,
               PIP_CACHE_DIR=os.path.join(caches, "pip"), UV_CACHE_DIR=os.path.join(caches, "uv"),
               PIP_DISABLE_PIP_VERSION_CHECK="1")
    return env


def provision(env: Dict[str, str], requirement: str, find_links: Optional[str]) -> Dict[str, Any]:
    """Start C{srpyapp -n 2}, time C{require(requirement, install=True)} on both engines, check a task imports it."""
    import srpy

    process = subprocess.Popen([sys.executable, os.path.join(ROOT, "srpyapp.py"), "-n", "2"], cwd=ROOT, env=env,
                               stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
    try:
        uris = _read_lines(process, lambda line: line.startswith("PYRO:"), 2, time.perf_counter() + READY_TIMEOUT)
        with srpy.EngBox(uris) as box:
            start = time.perf_counter()
            results = box.require(requirement, install=True, find_links=find_links)
            seconds = time.perf_counter() - start
            name = requirement.partition("==")[0]
            versions = box.mrs.eval("__import__(%r).__version__" % name)
            if sorted(versions.values()) != [requirement.partition("==")[2]] * 2:
                raise RuntimeError("the engines import %s, not %s" % (sorted(versions.values()), requirement))
    finally:
        _stop(process, signal.SIGTERM)
    return {"seconds": seconds, "statuses": sorted(info["status"] for info in results.values())}


def run(rounds: int, packages: Sequence[str], installers: Sequence[str]) -> Dict[str, Any]:
    figures: Dict[str, Any] = {}
    with tempfile.TemporaryDirectory(prefix="srpy-bench-envs-") as scratch:
        links = os.path.join(scratch, "wheels")
        os.makedirs(links)
        make_wheel(links, "tinypkg", "1.0")
        for package in packages:
            requirement, shipped = PACKAGES[package]
            for installer in installers:
                samples: Dict[str, List[float]] = {"cold": [], "cached": []}
                for _ in range(rounds):
                    caches, env_dir = os.path.join(scratch, "caches"), os.path.join(scratch, "envs")
                    env = child_environment(installer, caches, env_dir)
                    try:
                        cold = provision(env, requirement, links if shipped else None)
                        cached = provision(env, requirement, links if shipped else None)
                    finally:
                        shutil.rmtree(caches, ignore_errors=True)
                        shutil.rmtree(env_dir, ignore_errors=True)
                    if cold["statuses"] != ["built", "cached"] or cached["statuses"] != ["cached", "cached"]:
                        raise RuntimeError("unexpected provisioning: cold %s, cached %s" % (cold, cached))
                    samples["cold"].append(cold["seconds"])
                    samples["cached"].append(cached["seconds"])
                figures["%s/%s" % (package, installer)] = {
                    "requirement": requirement, "installer": installer,
                    **{kind: {"median": statistics.median(values), "best": min(values), "samples": values}
                       for kind, values in samples.items()}}
    return figures


def report(figures: Dict[str, Any], rounds: int) -> str:
    lines = ["Provisioning 2 engines (srpyapp -n 2) with EngBox.require(..., install=True); %d round%s, "
             "median (best), seconds" % (rounds, "" if rounds == 1 else "s"),
             "%-22s %-5s %18s %18s" % ("requirement", "tool", "cold", "cached")]
    for entry in figures.values():
        lines.append("%-22s %-5s %18s %18s" % (
            entry["requirement"], entry["installer"],
            "%.3f (%.3f)" % (entry["cold"]["median"], entry["cold"]["best"]),
            "%.3f (%.3f)" % (entry["cached"]["median"], entry["cached"]["best"])))
    return "\n".join(lines)


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0].strip())
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--packages", default="small,numpy", help="comma-separated: small, numpy")
    parser.add_argument("--installers", default=",".join(INSTALLERS), help="comma-separated: uv, pip")
    parser.add_argument("--json", metavar="FILE", help="also write the figures as JSON")
    options = parser.parse_args(argv)
    packages = [name for name in options.packages.split(",") if name]
    installers = [name for name in options.installers.split(",") if name]
    if set(packages) - set(PACKAGES) or set(installers) - set(INSTALLERS) or options.rounds < 1:
        parser.error("packages are small and numpy, installers uv and pip, rounds at least 1")
    if "uv" in installers and shutil.which("uv") is None:
        parser.error("uv is not installed (pip install uv), or leave it out: --installers pip")
    figures = run(options.rounds, packages, installers)
    print(report(figures, options.rounds))
    if options.json:
        with open(options.json, "w", encoding="utf-8") as handle:
            json.dump(figures, handle, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
