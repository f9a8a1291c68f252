"""Trace loaders: each format's reader returns a normalized `Trace` with its skip report."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from stoker.sim.loaders import alibaba, generic, helios, philly, tiresias
from stoker.sim.trace import Trace, TraceNode
from stoker.spec.errors import ConfigError

FORMATS: dict[str, Callable[[Path], Trace]] = {
    "alibaba": alibaba.load,
    "helios": helios.load,
    "philly": philly.load,
    "tiresias": tiresias.load,
    "generic": generic.load,
}


def load_trace(path: str | Path, fmt: str) -> Trace:
    """Load `path` as format `fmt` (one of FORMATS)."""
    if fmt not in FORMATS:
        raise ConfigError("--format", None,
                          f"unknown trace format {fmt!r} (known: {', '.join(FORMATS)})")
    return FORMATS[fmt](Path(path))


def load_node_list(path: str | Path) -> list[TraceNode]:
    """A node list: Alibaba's (sn, gpu, model, ...) or Tiresias' (num_switch, ...) layout."""
    header = _csv_header(Path(path))
    if set(alibaba.NODE_COLUMNS) <= header:
        return alibaba.load_nodes(path)
    if set(tiresias.NODE_COLUMNS) <= header:
        return tiresias.load_nodes(path)
    raise ConfigError(str(path), None, "not a node list: expected columns sn,gpu,model "
                      "(Alibaba) or num_switch,num_node_p_switch,num_gpu_p_node (Tiresias)")


def _csv_header(path: Path) -> set[str]:
    from stoker.sim.loaders._csv import open_text

    first = open_text(path).split("\n", 1)[0]
    return {h.strip() for h in first.split(",")}


__all__ = ["FORMATS", "load_node_list", "load_trace"]
