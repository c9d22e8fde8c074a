"""
Records between engines: a record's class reaches a peer that has not imported its module.

A record travels by reference to its class (L{srpy.records}), and a receiver resolves it only from
modules it has already imported. Between engines (messages, the tuple space, spawned calls and
work stealing, all over L{srpy.group.PeerLink}) the class is given the way a client gives it to
an engine, with a bundle (L{srpy.functions}) the receiving engine builds:

 - B{with a call}: after a peer call's values are encoded, the classes of the records they hold
   whose modules this link has not given yet are sent first, by the peer's C{peer_define}
   (L{RecordTraffic.ship}); an engine that was refused a call for want of one (the peer restarted
   since) gives them again and makes the call once more (L{srpy.group.PeerLink.call});
 - B{with a reply} (a tuple-space read or take, stolen calls): the reader that cannot resolve a
   class asks the peer that answered for it (C{peer_record_bundle}), builds it, and decodes the
   same reply again: nothing is asked twice, and a taken entry is never lost.

The bundle an engine gives is the one it was given (by its client's C{define}, or by a peer): a
local module's files, an installed module's name, a client's C{__main__} class's source
(L{srpy.functions.received_bundle}); for a module the engine imported by itself, a bundle of that
module (L{srpy.functions.pack_module}). A peer builds only those kinds (L{BUNDLE_KINDS}), never a
function, and only from the engines of its group (the secret handshake, then its peer list).
A class that cannot be given (a module not imported here, one that cannot travel) is a
L{SerializationError<srpy.errors.SerializationError>} naming the module, or for a reply the
L{RecordModuleNotImported<srpy.errors.RecordModuleNotImported>} naming it, with why.
"""

import logging
import sys
import weakref
from typing import Any, Callable, Dict, List, Optional, Set, Tuple

from . import codec, errors, functions

log = logging.getLogger("srpy.peers")

#: the kinds of bundle a peer may give: a module to import, or a client's __main__ class (never a function)
BUNDLE_KINDS = frozenset(("ref", "module", "main_class"))
#: classes one reply may make its reader ask for before it gives up (a reply that names ever more is hostile)
FETCHES_PER_REPLY = 64

def bundle_for(reference: str) -> Dict[str, Any]:
    """
    The bundle that gives a peer the class C{reference} (C{'module:qualname'}) of a record this
    engine holds.

    @raise SerializationError: this engine has no bundle of its module to give.
    """
    kept = functions.received_bundle(reference)
    if kept is not None:
        return kept
    module_name = reference.partition(":")[0]
    try:
        return functions.pack_module(module_name)
    except functions.FunctionShippingError as exc:
        raise errors.SerializationError("cannot give a peer the class %s: this engine has no bundle of its module "
                                        "%s (%s)" % (reference, module_name, exc)) from None


def build(bundle: Any, install: Optional[Callable[[Dict[str, str]], Any]]) -> Optional[str]:
    """
    Build a bundle a peer gave (C{peer_define}, or the answer of C{peer_record_bundle}); None once
    built, else what failed, in one line.

    @raise ValueError: it is no bundle of the kinds a peer may give.
    """
    kind = bundle.get("kind") if isinstance(bundle, dict) else None
    if kind not in BUNDLE_KINDS:
        raise ValueError("a peer may give a record class's module or a client's __main__ class, not %r"
                         % (kind if kind is not None else type(bundle).__name__,))
    try:
        functions.build(bundle, install)
    except errors.CallInterrupted:
        raise
    except Exception as exc:  # what building raised is the answer: the peer reports it, this engine serves on
        return "%s: %s" % (type(exc).__name__, exc)
    return None


class RecordTraffic:
    """
    The records side of one L{PeerLink<srpy.group.PeerLink>}: the classes it gave its peer, and
    the serializer (L{PeerRecordFormat}) that gives them with calls and asks for them with replies.

    @param sender: this engine's URI (what the peer checks against its peer list).
    @param install: writes a bundle's local files into this engine's sandbox.
    """

    def __init__(self, link: Any, sender: str, install: Optional[Callable[[Dict[str, str]], Any]]) -> None:
        self._link = weakref.ref(link)  # the link's pool holds the format, which holds this
        self.sender = sender
        self.install = install
        self.given: Set[str] = set()
        self.format = PeerRecordFormat(self)

    def ship(self, classes: List[type]) -> None:
        """Give the peer the classes among C{classes} of modules (or C{__main__} classes) it was not given yet."""
        from . import records

        link = self._link()
        if link is None:
            return
        for key, kind in records.ship_order(classes):
            if key in self.given or key == "builtins":
                continue
            reference = records.reference(kind)
            if reference is None:  # not resolvable by name: encoding refused it already
                continue
            bundle = bundle_for(reference)
            self.given.add(key)  # before the call: the bundle may hold a record of the class itself
            try:
                failure = link.call("peer_define", self.sender, bundle)
            except BaseException:
                self.given.discard(key)
                raise
            if failure:
                self.given.discard(key)
                raise errors.SerializationError("cannot send a record of class %s to %s: it cannot import the "
                                                "module %s: %s" % (reference, link.uri, key.partition(":")[0], failure))

    def forget(self) -> bool:
        """The peer did not know a class this link gave it (it restarted): give them all again. False if none was given."""
        if not self.given:
            return False
        self.given.clear()
        return True

    def fetch(self, reference: str) -> Optional[str]:
        """Ask the peer for the class C{reference} and build it here; None once built, else why not."""
        link = self._link()
        if link is None:
            return "the link to the peer is closed"
        try:
            bundle = link.call("peer_record_bundle", self.sender, reference)
            return build(bundle, self.install)
        except (errors.SRPyError, ValueError, TypeError) as exc:
            return "%s: %s" % (type(exc).__name__, exc)


class PeerRecordFormat(codec.WireFormat):
    """srpy's serializer for one peer link: records' classes go with calls, and are asked for when a reply needs them."""

    def __init__(self, traffic: RecordTraffic) -> None:
        self._traffic = traffic

    def dumps_call_with_buffers(self, obj: str, method: str, args: Any,  # type: ignore[override]
                                kwargs: Any) -> Tuple[bytes, List[Tuple[memoryview, str]]]:
        records = sys.modules.get("srpy.records")
        if records is not None:
            records.take_met()  # classes this thread encoded before (a reply to its client) are not this call's
        message = codec.dumps_with_buffers((obj, method, tuple(args), kwargs or {}))
        records = sys.modules.get("srpy.records")
        if records is not None:
            met = records.take_met()
            if met:
                self._traffic.ship(met)
        return message

    def loads(self, data: Any, *more: Any) -> Any:  # type: ignore[override]
        asked: Set[str] = set()
        while True:
            try:
                return codec.loads(data, *more)
            except errors.RecordModuleNotImported as exc:
                reference = exc.reference
                if reference is None or reference in asked or len(asked) >= FETCHES_PER_REPLY:
                    raise
                asked.add(reference)
                failure = self._traffic.fetch(reference)
                if failure is not None:
                    exc.args = ("%s; the peer that sent it could not give it: %s" % (exc, failure),)
                    raise
                log.debug("a peer gave this engine the class %s", reference)

    def exception(self, value: Any) -> BaseException:  # type: ignore[override]
        exc = codec.WireFormat.exception(value)
        if isinstance(exc, errors.RecordModuleNotImported):
            exc.refused_call = True  # type: ignore[attr-defined]  # the peer refused the call unread: it may be made again
        return exc
