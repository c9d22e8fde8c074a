"""
The client's side of C{EngBox.require(..., install=True)}: requirement strings parsed and
normalized with packaging, the wheels of a C{find_links} folder shipped, every engine that lacks
a requirement given its environment (the engine's side, where environments are built, cached and
activated, is L{srpy.environments}).

For each engine, in parallel: one call asks what it has (the versions it imports now of the
required distributions, and whether its host has the environment already); an engine whose
imports satisfy every requirement is left as it is (C{'satisfied'}); one whose host has the
environment activates it (C{'cached'}); for the others the C{find_links} folder is shipped into the
sandbox (one archive, as C{EngBox.upload} ships) and the environment is built (C{'built'}; or
C{'cached'} where another engine of the host built it meanwhile).

>>> normalize(["NumPy >= 2.0, <3", "tiny_pkg==1.0", "tiny-pkg == 1.0"])
['numpy<3,>=2.0', 'tiny-pkg==1.0']
>>> normalize(["pkg[b,A]; python_version >= '3'"])
['pkg[a,b]; python_version >= "3"']
>>> normalize(["numpy>>2"])
Traceback (most recent call last):
srpy.errors.InvalidRequirement: 'numpy>>2' is not a valid requirement: ...
"""

import hashlib
import io
import logging
import os
import tarfile
from typing import Any, Dict, List, Optional, Sequence, Tuple

from .errors import EnvironmentConflict, InstallError, InvalidRequirement
from .fanout import fan_out

log = logging.getLogger("srpy.provisioning")

#: where shipped find_links folders go, inside each engine's sandbox
LINKS_FOLDER = ".srpy-links"


def parse(specs: Sequence[Any]) -> List[Any]:
    """
    The requirements C{specs} as packaging C{Requirement}s.

    @raise InvalidRequirement: one is not a string, or not a valid requirement (the message says why).
    """
    try:
        from packaging.requirements import InvalidRequirement as Invalid, Requirement
    except ImportError:  # srpy's setup.py installs it: only a copy installed by hand can lack it
        raise InvalidRequirement("installing requirements needs the packaging module on the client: "
                                 "pip install packaging") from None
    if not specs:
        raise InvalidRequirement("no requirements given")
    parsed = []
    for spec in specs:
        if not isinstance(spec, str):
            raise InvalidRequirement("a requirement is a string such as 'numpy>=2', not %r" % (spec,))
        try:
            parsed.append(Requirement(spec))
        except Invalid as exc:
            reason = str(exc).strip().splitlines()[0] if str(exc).strip() else "unreadable"  # its first line: the rest draws a caret
            raise InvalidRequirement("%r is not a valid requirement: %s" % (spec, reason)) from None
    return parsed


def normalize(specs: Sequence[Any]) -> List[str]:
    """C{specs} checked and written one way (canonical names, sorted extras and specifiers), sorted, each once."""
    return sorted({_text(requirement) for requirement in parse(specs)})


def _text(requirement: Any) -> str:
    from packaging.utils import canonicalize_name
    text = str(canonicalize_name(requirement.name))
    if requirement.extras:
        text += "[%s]" % ",".join(sorted(canonicalize_name(extra) for extra in requirement.extras))
    if requirement.url:
        text += " @ " + requirement.url + (" " if requirement.marker else "")
    else:
        text += str(requirement.specifier)
    if requirement.marker:
        text += "; " + str(requirement.marker)
    return text


def satisfied(requirements: Sequence[Any], versions: Dict[str, Optional[str]]) -> bool:
    """
    True when C{versions} ({name: installed version}) meet every requirement. One with extras, a
    marker or a URL is never taken as met this way: the installer decides.
    """
    from packaging.version import InvalidVersion, Version
    for requirement in requirements:
        version = versions.get(requirement.name)
        if requirement.extras or requirement.marker or requirement.url or version is None:
            return False
        try:
            if not requirement.specifier.contains(Version(version), prereleases=True):
                return False
        except InvalidVersion:
            return False
    return True


def pack_links(folder: str) -> Tuple[str, bytes]:
    """
    (the folder's place in a sandbox, one tar.gz archive of it) for the wheels and sdists in
    C{folder} (its files; installers read a find-links folder's top level only).

    @raise FileNotFoundError: C{folder} is no folder.
    @raise ValueError: it holds no files.
    """
    if not os.path.isdir(folder):
        raise FileNotFoundError("find_links %s is no folder" % folder)
    names = sorted(name for name in os.listdir(folder) if os.path.isfile(os.path.join(folder, name)))
    if not names:
        raise ValueError("find_links %s holds no wheels or sdists" % folder)
    digest = hashlib.sha256()
    for name in names:
        digest.update(name.encode("utf-8") + b"\0")
        with open(os.path.join(folder, name), "rb") as handle:
            for block in iter(lambda: handle.read(1 << 20), b""):
                digest.update(block)
    place = "%s/%s" % (LINKS_FOLDER, digest.hexdigest()[:16])
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as tar:
        for name in names:
            tar.add(os.path.join(folder, name), arcname="%s/%s" % (place, name))
    return place, buffer.getvalue()


def provision(engines: Sequence[Any], specs: Sequence[Any], find_links: Optional[str] = None,
              index_url: Optional[str] = None) -> Dict[str, Dict[str, Any]]:
    """
    Give every engine of C{engines} (L{PythonEngine<srpy.client.PythonEngine>}s) what C{specs}
    require (see the module's text). Returns C{{uri: info}}, info as L{srpy.environments.provide}
    answers, with C{status} one of C{'satisfied'}, C{'active'}, C{'cached'}, C{'built'}.

    @raise InvalidRequirement: a requirement string is not valid (before anything is sent).
    @raise InstallError: installing failed on an engine (one error; it names each engine that failed).
    @raise EnvironmentConflict: an engine has imported, at another version, what the environment provides.
    """
    requirements = parse(specs)
    texts = sorted({_text(requirement) for requirement in requirements})
    if index_url is not None and (not isinstance(index_url, str) or not index_url or index_url.startswith("-")):
        raise ValueError("index_url is a URL, not %r" % (index_url,))
    links = pack_links(os.fspath(find_links)) if find_links is not None else None
    names = sorted({requirement.name for requirement in requirements})
    request: Dict[str, Any] = {"requirements": texts, "names": names, "action": "check"}

    def give(engine: Any) -> Dict[str, Any]:
        info = engine.call("environment", request)
        if info["status"] == "active":
            return info
        if satisfied(requirements, info["versions"]):
            return dict(info, status="satisfied")
        wanted = dict(request, action="activate", index_url=index_url)
        if info["status"] == "absent" and links is not None:
            engine.call("unpack", {"archive": links[1]})  # only where it is to be built
        if links is not None:
            wanted["find_links"] = links[0]
        from .client import NO_TIMEOUT  # building may take minutes: the engine's installer timeout bounds it
        return engine.call("environment", wanted, timeout=NO_TIMEOUT)

    outcomes = list(zip(engines, fan_out(give, list(engines), name="srpy-provision")))
    failures = {engine.uri: outcome for engine, outcome in outcomes if isinstance(outcome, BaseException)}
    if failures:
        raise _one_error(failures)
    results = {engine.uri: outcome for engine, outcome in outcomes}
    log.info("requirements %s: %s", " ".join(texts),
             ", ".join("%s %s" % (uri, info["status"]) for uri, info in results.items()))
    return results


def _one_error(failures: Dict[str, BaseException]) -> BaseException:
    """One exception for the engines that failed: the engine's own if one did, else one naming each."""
    if len(failures) == 1:
        return next(iter(failures.values()))
    kinds = {type(error) for error in failures.values()}
    text = "%d engines failed: %s" % (len(failures), "; ".join("%s: %s" % item for item in failures.items()))
    if kinds == {EnvironmentConflict}:
        return EnvironmentConflict(text)
    first = next((e for e in failures.values() if isinstance(e, InstallError)), None)
    return InstallError(text, engine=", ".join(failures), requirements=getattr(first, "requirements", []),
                        output=getattr(first, "output", ""), failures=failures)
