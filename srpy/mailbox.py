"""
An engine's mailbox: the messages its peers sent it, by tag, bounded.

A sender's C{send} (L{srpy.peers.EngineHandle.send}) is one synchronous call to the receiver's peer
object, which puts the message here; a sender to a full mailbox waits for room (back-pressure) up
to L{SEND_TIMEOUT} seconds, then fails loudly. Messages of one tag come out in the order they went
in, so from one sender to one receiver they keep their order.
"""

import collections
import threading
from typing import Any, Deque, Dict, Optional, Tuple

#: messages one engine's mailbox holds before senders wait
MAILBOX_CAPACITY = 10_000
#: seconds a sender waits for room in a full mailbox
SEND_TIMEOUT = 30.0


class Mailbox:
    """Messages by tag, bounded: C{put} waits while it is full."""

    def __init__(self, capacity: int = MAILBOX_CAPACITY) -> None:
        self.capacity = capacity
        self._queues: Dict[Any, Deque[Tuple[str, Any]]] = collections.defaultdict(collections.deque)
        self._count = 0
        self._cond = threading.Condition()

    def put(self, sender: str, tag: Any, value: Any, timeout: float = SEND_TIMEOUT) -> None:
        """Add a message from C{sender}, waiting up to C{timeout} for room (TimeoutError)."""
        with self._cond:
            if not self._cond.wait_for(lambda: self._count < self.capacity, timeout):
                raise TimeoutError("the mailbox stayed full (%d messages) for %s s" % (self.capacity, timeout))
            self._queues[tag].append((sender, value))
            self._count += 1
            self._cond.notify_all()

    def get(self, tag: Any, timeout: Optional[float]) -> Tuple[str, Any]:
        """The oldest message tagged C{tag}: (sender, value), waiting up to C{timeout} (TimeoutError)."""
        with self._cond:
            if not self._cond.wait_for(lambda: bool(self._queues.get(tag)), timeout):
                raise TimeoutError("no message tagged %r within %s s" % (tag, timeout))
            queue = self._queues[tag]
            message = queue.popleft()
            if not queue:  # a tag used once does not stay behind
                del self._queues[tag]
            self._count -= 1
            self._cond.notify_all()
            return message

    def __len__(self) -> int:
        with self._cond:
            return self._count
