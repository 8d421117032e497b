"""What both ROS 2 nodes share: parameter descriptors and throttled, counted input warnings.

Free of torch and of the engine, so the ORB-SLAM3 bridge node can use it without loading either.
"""

from __future__ import annotations

import time
from collections import Counter
from typing import Callable

from rcl_interfaces.msg import FloatingPointRange, IntegerRange, ParameterDescriptor


def param_descriptor(name: str, value, text: str, rng: tuple | None) -> ParameterDescriptor:
    """ParameterDescriptor with the description and, for int/float values, the allowed range."""
    d = ParameterDescriptor(name=name, description=text)
    if rng is not None and not isinstance(value, bool):
        if isinstance(value, int):
            d.integer_range = [IntegerRange(from_value=int(rng[0]), to_value=int(rng[1]), step=0)]
        elif isinstance(value, float):
            d.floating_point_range = [FloatingPointRange(from_value=float(rng[0]), to_value=float(rng[1]), step=0.0)]
    return d


class InputGuard:
    """Counts dropped input messages per kind and throttles warnings per kind.

    logger: an rclpy logger; throttle_s: callable giving the minimum seconds between two warnings of a kind.
    """

    def __init__(self, logger, throttle_s: Callable[[], float]) -> None:
        self.logger = logger
        self.throttle_s = throttle_s
        self.rejected: Counter[str] = Counter()
        self._last_warn: dict[str, float] = {}

    def warn(self, kind: str, text: str) -> None:
        """A warning, at most one per kind every throttle_s seconds."""
        now = time.monotonic()
        if now - self._last_warn.get(kind, -1e9) >= float(self.throttle_s()):
            self._last_warn[kind] = now
            self.logger.warn(text)

    def reject(self, kind: str, problem: str) -> None:
        """Drop a message: count it under `kind` and warn (throttled) naming the problem."""
        self.rejected[kind] += 1
        self.warn(kind, f"dropped {kind}: {problem} ({self.rejected[kind]} dropped so far)")
