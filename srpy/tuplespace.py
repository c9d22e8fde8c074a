"""
The group's tuple space: entries by key, spread over the members, with blocking read and take.

Each key lives on one member, chosen by rendezvous hashing over the group's members (L{owner_of}),
so every engine finds it the same way and a member that dies takes only its own entries with it:
I{entries held by an engine that dies are lost}. L{Space} is the share one engine holds (served to
its peers by its peer object); L{TupleSpace} is the whole space as one engine's code sees it.

Pattern operations (C{read_match}, C{take_match}) look at every member. While none holds a match,
the waiting engine keeps one remote wait per member and pattern under way (each at most
L{WATCH_SLICE} seconds, in a bounded pool of L{WATCHERS_MAX} threads), reused by every loop and
every waiting task of the engine: waiting holds no thread per member per loop, and does not poll.
"""

import fnmatch
import random
import threading
import time
from typing import Any, Callable, Dict, List, Optional, Set, Tuple

from . import codec
from .errors import PeerUnavailable
from .fanout import Workers

#: seconds one remote wait for a pattern lasts before it is made again (bounds how long one outlives its caller)
WATCH_SLICE = 5.0
#: threads one engine uses at most for the remote waits of its pattern operations
WATCHERS_MAX = 64


class Space:
    """The entries of the tuple space that this engine holds, with blocking read and take."""

    def __init__(self) -> None:
        self._entries: Dict[Any, Any] = {}
        self._cond = threading.Condition()

    def put(self, key: Any, value: Any) -> None:
        with self._cond:
            self._entries[key] = value
            self._cond.notify_all()

    def read(self, key: Any, timeout: Optional[float], remove: bool) -> Any:
        with self._cond:
            if not self._cond.wait_for(lambda: key in self._entries, timeout):
                raise TimeoutError("no entry %r within %s s" % (key, timeout))
            return self._entries.pop(key) if remove else self._entries[key]

    def match(self, pattern: str, timeout: Optional[float]) -> Optional[str]:
        """A str key matching the glob C{pattern} (waiting up to C{timeout}); None if none came."""
        def found() -> Optional[str]:
            return next((k for k in self._entries if isinstance(k, str) and fnmatch.fnmatchcase(k, pattern)), None)
        with self._cond:
            self._cond.wait_for(lambda: found() is not None, timeout)
            return found()

    def fetch(self, key: Any, remove: bool) -> Tuple[bool, Any]:
        """(True, value) if C{key} is held (removed if C{remove}), else (False, None); no waiting."""
        with self._cond:
            if key not in self._entries:
                return False, None
            return True, (self._entries.pop(key) if remove else self._entries[key])

    def __len__(self) -> int:
        with self._cond:
            return len(self._entries)


def _weight(member: str, key: Any) -> bytes:
    import hashlib  # on the first entry: an engine needs no hashlib (2-3 ms to load) to start serving

    return hashlib.sha1(member.encode("utf-8") + b"\0" + codec.dumps(key)).digest()


def owner_of(key: Any, members: List[str]) -> str:
    """
    The member that holds C{key}: rendezvous hashing, so removing a member moves only its keys.

    >>> owner_of("k", ["a", "b", "c"]) == owner_of("k", ["c", "b", "a"])
    True
    """
    return max(members, key=lambda member: _weight(member, key))


class _Pattern:
    """The waits for one pattern: members with a remote wait under way, waits ended, tasks waiting."""

    __slots__ = ("watching", "ended", "waiters")

    def __init__(self) -> None:
        self.watching: Set[str] = set()
        self.ended = 0
        self.waiters = 0


class TupleSpace:
    """
    The tuple space as code on one engine sees it: each operation goes to the key's owner (this
    engine's own L{Space}, or a peer's through its peer object), releasing the engine's lock while
    it waits.

    @param engine: this engine (its C{uri} and C{lock}).
    @param group: its peers (L{srpy.group.PeerGroup}: C{members} and C{call_peer}).
    @param share: the entries this engine holds.
    """

    def __init__(self, engine: Any, group: Any, share: Space) -> None:
        self._engine = engine
        self._group = group
        self.share = share
        self._watchers = Workers("srpy-space-watch", WATCHERS_MAX)
        self._patterns: Dict[str, _Pattern] = {}
        self._cond = threading.Condition()

    def put(self, key: Any, value: Any) -> None:
        self._on_owner(key, lambda: self.share.put(key, value), "peer_space_put", key, value)

    def read(self, key: Any, timeout: Optional[float], remove: bool) -> Any:
        return self._on_owner(key, lambda: self.share.read(key, timeout, remove), "peer_space_read",
                              key, timeout, remove)

    def match(self, pattern: str, timeout: Optional[float], remove: bool) -> Tuple[str, Any]:
        """(key, value) of an entry whose str key matches C{pattern} on any member (removed if C{remove})."""
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._engine.lock.released_if_mine():
            with self._cond:
                record = self._patterns.setdefault(pattern, _Pattern())
                record.waiters += 1
            try:
                while True:
                    with self._cond:
                        seen = record.ended  # a wait that ends from here on wakes the wait below
                    members = self._group.members()
                    random.shuffle(members)
                    for member in members:
                        key = self._member_match(member, pattern, 0)
                        if key is None:
                            continue
                        found, value = self._member_fetch(member, key, remove)
                        if found:
                            return key, value
                    left = None if deadline is None else deadline - time.monotonic()
                    if left is not None and left <= 0:
                        raise TimeoutError("no entry matching %r within %s s" % (pattern, timeout))
                    self._wait_any(pattern, record, members, seen, left)
            finally:
                with self._cond:
                    record.waiters -= 1
                    self._forget_if_unused(pattern, record)

    def _on_owner(self, key: Any, local: Callable[[], Any], method: str, *args: Any) -> Any:
        owner = owner_of(key, self._group.members())
        with self._engine.lock.released_if_mine():
            if owner == self._engine.uri:
                return local()
            return self._group.call_peer(owner, method, *args)

    def _member_match(self, member: str, pattern: str, timeout: float) -> Optional[str]:
        if member == self._engine.uri:
            return self.share.match(pattern, timeout)
        try:
            return self._group.call_peer(member, "peer_space_match", pattern, timeout)
        except PeerUnavailable:  # it left the group: the next look leaves it out
            return None

    def _member_fetch(self, member: str, key: Any, remove: bool) -> Tuple[bool, Any]:
        if member == self._engine.uri:
            return self.share.fetch(key, remove)
        try:
            found, value = self._group.call_peer(member, "peer_space_fetch", key, remove)
            return bool(found), value
        except PeerUnavailable:
            return False, None

    def _wait_any(self, pattern: str, record: _Pattern, members: List[str], seen: int,
                  left: Optional[float]) -> None:
        """
        Block until a remote wait for C{pattern} ends after C{seen} (a member has a match, or its
        wait ran out, or it left) or C{left} seconds pass. Members without a wait under way for
        C{pattern} get one; those with one (from an earlier loop or another task) keep it.
        """
        wait = WATCH_SLICE if left is None else min(left, WATCH_SLICE)
        with self._cond:
            for member in members:
                if member not in record.watching:
                    record.watching.add(member)
                    self._watchers.submit(self._watch, pattern, record, member, wait)
            self._cond.wait_for(lambda: record.ended != seen, wait)

    def _watch(self, pattern: str, record: _Pattern, member: str, wait: float) -> None:
        """One remote wait: until C{member} holds a match for C{pattern}, or C{wait} s pass."""
        try:
            self._member_match(member, pattern, wait)
        finally:
            with self._cond:
                record.watching.discard(member)
                record.ended += 1
                self._cond.notify_all()
                self._forget_if_unused(pattern, record)

    def _forget_if_unused(self, pattern: str, record: _Pattern) -> None:
        """(Under the lock.) Drop the record of a pattern nobody waits for any more."""
        if not record.watching and not record.waiters and self._patterns.get(pattern) is record:
            del self._patterns[pattern]
