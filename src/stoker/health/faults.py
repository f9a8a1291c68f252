"""Fault injection, for tests only: per-node switches that make a health probe fail as a bad
node's would.

``STOKER_NODE_FAULTS`` holds ``NODE:FAULT[=VALUE]`` entries separated by ``;`` (``*``: every
node):

- ``slow_matmul=F`` — the matmul probe runs F times slower;
- ``fail_collective`` — the all-reduce probe raises as a broken link would;
- ``fill_disk`` — the disk probe sees no free space;
- ``hot_device`` — the device-state probe reads an over-temperature device.

Nothing in production sets it; a malformed value names the variable and is refused.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field

from stoker.spec.errors import ConfigError

ENV = "STOKER_NODE_FAULTS"
KNOWN = ("slow_matmul", "fail_collective", "fill_disk", "hot_device")


@dataclass(frozen=True)
class Faults:
    """The faults injected on one node."""

    active: dict[str, float] = field(default_factory=dict)

    def has(self, name: str) -> bool:
        return name in self.active

    def value(self, name: str, default: float = 1.0) -> float:
        return self.active.get(name, default)


def parse(text: str) -> dict[str, dict[str, float]]:
    """``"n0:slow_matmul=20;*:fill_disk"`` -> ``{"n0": {"slow_matmul": 20.0}, "*": {...}}``."""
    nodes: dict[str, dict[str, float]] = {}
    for entry in filter(None, (e.strip() for e in text.split(";"))):
        node, sep, fault = entry.partition(":")
        name, eq, raw = fault.partition("=")
        if not sep or not node or name not in KNOWN:
            raise ConfigError(ENV, None, f"{entry!r} is not NODE:FAULT[=VALUE] with FAULT "
                              f"one of {', '.join(KNOWN)}")
        try:
            value = float(raw) if eq else 1.0
        except ValueError:
            raise ConfigError(ENV, None, f"{entry!r}: {raw!r} is not a number") from None
        nodes.setdefault(node, {})[name] = value
    return nodes


def faults_for(node: str, text: str | None = None) -> Faults:
    """The faults injected on ``node`` (its own entries over the ``*`` ones)."""
    nodes = parse(os.environ.get(ENV, "") if text is None else text)
    return Faults({**nodes.get("*", {}), **nodes.get(node, {})})
