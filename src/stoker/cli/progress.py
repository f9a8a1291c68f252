"""`stoker job N`'s lines for a training job's progress (the API's ``progress``)."""

from __future__ import annotations

from typing import Any


def progress_rows(progress: dict[str, Any] | None) -> list[tuple[str, str]]:
    """step N/M, loss (eval loss), tokens/s, MFU and the ETA; none without a recorded step."""
    if not progress:
        return []
    loss = _num(progress.get("loss"), 4)
    if progress.get("eval_loss") is not None:
        loss += f" (eval {_num(progress['eval_loss'], 4)})"
    mfu = progress.get("mfu")
    speed = f"{_num(progress.get('tokens_per_s'))} tokens/s, MFU " + \
        ("-" if mfu is None else f"{100 * mfu:.1f}%")
    if progress.get("step_time_s") is not None:
        speed += f", {progress['step_time_s'] * 1000:.0f} ms/step"
    eta = progress.get("eta_s")
    return [("step", f"{progress['step']}/{progress['steps']}"
             + ("" if eta is None else f", ETA {duration(eta)}")),
            ("loss", loss), ("speed", speed)]


def duration(seconds: float) -> str:
    s = max(0, round(seconds))
    if s < 60:
        return f"{s}s"
    parts = []
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60), ("s", 1)):
        if s >= size or parts:
            parts.append(f"{s // size}{unit}")
            s %= size
        if len(parts) == 2:
            break
    return " ".join(parts)


def _num(value: float | None, digits: int = 3) -> str:
    if value is None:
        return "-"
    return f"{value:,.0f}" if abs(value) >= 1000 else f"{value:.{digits}g}"
