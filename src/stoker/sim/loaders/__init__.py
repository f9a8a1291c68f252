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


# The columns that identify each CSV format (Philly's trace is JSON: a list of jobs).
HEADERS: dict[str, tuple[str, ...]] = {
    "alibaba": alibaba.POD_COLUMNS,
    "helios": helios.COLUMNS,
    "tiresias": tiresias.COLUMNS,
    "generic": generic.COLUMNS,
}


def load_trace(path: str | Path, fmt: str | None = None,
               times_from: str | Path | None = None) -> Trace:
    """Load `path` as format `fmt` (one of FORMATS); None: detected from the file's header.
    `times_from`: an Alibaba pod list whose times the pods of `path` (requests only) take."""
    if times_from is not None:
        if fmt not in (None, "alibaba"):
            raise ConfigError("--times-from", None, "only an Alibaba pod list takes its times "
                              f"from another list, not a {fmt} trace")
        return alibaba.load(Path(path), times_from=Path(times_from))
    if fmt is None:
        fmt = detect_format(path)
    if fmt not in FORMATS:
        raise ConfigError("--format", None,
                          f"unknown trace format {fmt!r} (known: {', '.join(FORMATS)})")
    return FORMATS[fmt](Path(path))


def detect_format(path: str | Path) -> str:
    """The format whose columns the header holds (the most specific when several match), or
    'philly' for a JSON list; a one-line ConfigError naming the file when none does."""
    from stoker.sim.loaders._csv import open_text

    text = open_text(path).lstrip()
    if text.startswith("["):
        return "philly"
    header = _header_of(text)
    matches = [f for f, columns in HEADERS.items() if set(columns) <= header]
    if matches:
        return max(matches, key=lambda f: len(HEADERS[f]))
    if set(alibaba.NODE_COLUMNS) <= header or set(tiresias.NODE_COLUMNS) <= header:
        raise ConfigError(str(path), None, "this is a node list, not a trace: give it as "
                          "--node-list and the jobs as --trace")
    expected = "; ".join(f"{f}: {','.join(c)}" for f, c in HEADERS.items())
    shown = ",".join(sorted(header)) or "(empty)"
    raise ConfigError(str(path), None, f"unknown trace format: header has {shown}; expected "
                      f"the columns of one of {expected}; philly: a JSON list (or give --format)")


def load_node_list(path: str | Path) -> list[TraceNode]:
    """A node list: Alibaba's (sn, gpu, model, ...) or Tiresias' (num_switch, ...) layout."""
    from stoker.sim.loaders._csv import open_text

    header = _header_of(open_text(path))
    if set(alibaba.NODE_COLUMNS) <= header:
        return alibaba.load_nodes(path)
    if set(tiresias.NODE_COLUMNS) <= header:
        return tiresias.load_nodes(path)
    raise ConfigError(str(path), None, "not a node list: expected columns sn,gpu,model "
                      "(Alibaba) or num_switch,num_node_p_switch,num_gpu_p_node (Tiresias)")


def _header_of(text: str) -> set[str]:
    first = text.split("\n", 1)[0]
    return {h.strip().strip('"') for h in first.split(",") if h.strip()}


__all__ = ["FORMATS", "HEADERS", "detect_format", "load_node_list", "load_trace"]
