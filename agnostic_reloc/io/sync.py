"""Stamp synchronisation of several message streams (the pip-path stand-in for message_filters).

`StampSync` behaves like message_filters' TimeSynchronizer (slop 0: equal stamps) and
ApproximateTimeSynchronizer (slop > 0: the stamps of a set lie within slop of each other): messages are
added per input with their stamp, and the callback receives one message per input once a set is complete.
Older unmatched messages are dropped (counted) when a newer set completes or a queue overflows.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from typing import Any, Callable


class StampSync:
    """Call `callback(*msgs)` with one message per input whose stamps (integer ns) agree within `slop_ns`."""

    def __init__(self, n_inputs: int, callback: Callable[..., Any], queue_size: int = 10, slop_ns: int = 0) -> None:
        if n_inputs < 2 or queue_size < 1 or slop_ns < 0:
            raise ValueError("StampSync needs >= 2 inputs, queue_size >= 1 and slop_ns >= 0")
        self.callback = callback
        self.queue_size = queue_size
        self.slop_ns = int(slop_ns)
        self.queues: list[OrderedDict[int, Any]] = [OrderedDict() for _ in range(n_inputs)]
        self.dropped = 0  # messages discarded without ever being part of a set
        self._lock = threading.Lock()

    def add(self, index: int, stamp_ns: int, msg: Any) -> None:
        """Add a message of input `index`; may invoke the callback (outside the lock)."""
        with self._lock:
            q = self.queues[index]
            q[int(stamp_ns)] = msg
            while len(q) > self.queue_size:
                q.popitem(last=False)
                self.dropped += 1
            found = self._find(int(stamp_ns), index)
            if found is None:
                return
            msgs = []
            for i, s in enumerate(found):
                msgs.append(self.queues[i].pop(s))
                # everything older than the matched stamp can no longer complete a set
                for old in [t for t in self.queues[i] if t < s]:
                    del self.queues[i][old]
                    self.dropped += 1
        self.callback(*msgs)

    def _find(self, stamp: int, index: int) -> list[int] | None:
        stamps = []
        for i, q in enumerate(self.queues):
            if i == index:
                stamps.append(stamp)
                continue
            if self.slop_ns == 0:
                if stamp not in q:
                    return None
                stamps.append(stamp)
            else:
                near = [t for t in q if abs(t - stamp) <= self.slop_ns]
                if not near:
                    return None
                stamps.append(min(near, key=lambda t: abs(t - stamp)))
        return stamps
