"""How the dashboard writes numbers, amounts, durations and times (Jinja filters)."""

from __future__ import annotations

import time
from typing import Any

BYTES = ("memory", "ephemeral-storage")


def amount(value: float | None, resource: str) -> str:
    """One resource amount: bytes in binary units, the rest as a short number."""
    if value is None:
        return "-"
    if resource in BYTES:
        for unit, size in (("TiB", 2**40), ("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
            if abs(value) >= size:
                return f"{number(value / size)} {unit}"
        return f"{number(value)} B"
    return number(value)


def amounts(values: dict[str, float] | None) -> str:
    if not values:
        return "-"
    return ", ".join(f"{name} {amount(v, name)}" for name, v in values.items())


def number(value: float | None, digits: int = 3) -> str:
    """Up to ``digits`` significant digits, no exponent below a million."""
    if value is None:
        return "-"
    if float(value).is_integer() and abs(value) < 1e15:
        return f"{int(value):,}"
    if abs(value) >= 1e6 or (value != 0 and abs(value) < 1e-3):
        return f"{value:.{digits}g}"
    text = f"{value:.{digits}g}" if abs(value) < 10 ** digits else f"{value:,.0f}"
    return text


def duration(seconds: float | None) -> str:
    """1d 2h, 3h 4m, 5m 6s, 7.8s."""
    if seconds is None:
        return "-"
    s = max(0.0, float(seconds))
    if s < 60:
        return f"{s:.1f}s" if s < 10 else f"{s:.0f}s"
    parts: list[str] = []
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60), ("s", 1)):
        if s >= size or parts:
            parts.append(f"{int(s // size)}{unit}")
            s %= size
        if len(parts) == 2:
            break
    return " ".join(parts)


def clock(at: float | None) -> str:
    """A moment in UTC (the page's script shows it in the browser's time zone)."""
    if at is None:
        return "-"
    return time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(at))


def percent(ratio: float | None) -> str:
    return "-" if ratio is None else f"{100 * ratio:.1f}%"


def hours(seconds: float | None) -> str:
    return "-" if seconds is None else f"{seconds / 3600:,.2f}"


def size(count: int | None) -> str:
    """Bytes in binary units: 512 B, 1.5 KiB, 2.0 GiB."""
    if count is None:
        return "-"
    value, unit = float(count), "B"
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if value < 1024 or unit == "TiB":
            break
        value /= 1024
    return f"{count} B" if unit == "B" else f"{value:.1f} {unit}"


FILTERS: dict[str, Any] = {"amount": amount, "amounts": amounts, "number": number,
                           "duration": duration, "clock": clock, "percent": percent,
                           "hours": hours, "bytes": size}
