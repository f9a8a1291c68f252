"""Named resources and their amounts: what a node offers, a queue's quota, a rank's request.

Any resource has a name: ``gpu``, ``cpu``, ``memory``, ``ephemeral-storage``, or a vendor's
domain-prefixed name as in Kubernetes (``example.com/gpu``, ``nvidia.com/mig-1g.10gb``). The
old keys ``gpus`` and ``cpus`` still name ``gpu`` and ``cpu``.

Amounts are integers, exact whatever is added or taken away, in each resource's *unit*:

- ``gpu`` and ``cpu``: thousandths (``"500m"`` is half a CPU; fractional GPUs, which traces of
  shared GPUs have, are thousandths of a GPU too);
- ``memory`` and ``ephemeral-storage``: bytes;
- any other resource: whole units (Kubernetes' extended resources are whole numbers: a
  fraction is refused).

Written amounts are numbers of the resource (GPUs, CPUs, bytes, units) or strings: Kubernetes
quantities for counted resources (``"500m"``, ``"2"``, ``"1k"``, ``"4Ki"``) and sizes for bytes
(``"8GiB"``, ``"8Gi"``, ``"512MB"``, as Stoker always read them: case-insensitive, ``m`` is
mega). A CPU or GPU amount finer than a thousandth, or a fraction of a byte, is rounded up,
as Kubernetes rounds a quantity.
"""

from __future__ import annotations

import math
import re
from decimal import Decimal, InvalidOperation
from typing import Any

GPU, CPU, MEMORY, STORAGE = "gpu", "cpu", "memory", "ephemeral-storage"
BASE = (GPU, CPU, MEMORY)  # in every cluster's resources, first and in this order
ALIASES = {"gpus": GPU, "cpus": CPU}
MILLI = frozenset({GPU, CPU})  # counted in thousandths
BYTES = frozenset({MEMORY, STORAGE})
KNOWN = frozenset({GPU, CPU, MEMORY, STORAGE})
LARGEST = 2**62  # no amount is this large (unlimited amounts are the scheduler's own value)

_LABEL = r"[a-z0-9]([-a-z0-9]*[a-z0-9])?"
VENDOR_NAME = re.compile(rf"^(?=[^/]{{1,253}}/){_LABEL}(\.{_LABEL})*/[A-Za-z0-9]"
                         r"([-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?$")

_NUMBER = re.compile(r"\s*([+]?(?:[0-9]+\.?[0-9]*|\.[0-9]+)(?:[eE][-+]?[0-9]+)?)\s*([A-Za-z]*)\s*")
_QUANTITY_SUFFIXES: dict[str, int | Decimal] = {
    "": 1, "m": Decimal("0.001"), "k": 10**3, "M": 10**6, "G": 10**9, "T": 10**12,
    "P": 10**15, "E": 10**18, "Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "Ti": 2**40, "Pi": 2**50,
    "Ei": 2**60,
}
_SIZE_SUFFIXES = {
    "": 1, "b": 1, "k": 10**3, "kb": 10**3, "m": 10**6, "mb": 10**6, "g": 10**9, "gb": 10**9,
    "t": 10**12, "tb": 10**12, "p": 10**15, "pb": 10**15, "ki": 2**10, "kib": 2**10,
    "mi": 2**20, "mib": 2**20, "gi": 2**30, "gib": 2**30, "ti": 2**40, "tib": 2**40,
    "pi": 2**50, "pib": 2**50,
}


def canonical(name: str) -> str | None:
    """The resource ``name`` stands for (``gpus`` -> ``gpu``), or None if it names none."""
    name = ALIASES.get(name, name)
    return name if name in KNOWN or VENDOR_NAME.match(name) else None


def scale(name: str) -> int:
    """Units of ``name`` in one of it as written: 1000 for gpu and cpu, else 1."""
    return 1000 if name in MILLI else 1


def parse_amount(name: str, value: Any) -> int:
    """A written amount of resource ``name`` -> an integer in its unit; ValueError (one line,
    without the key) for anything that is no amount."""
    if isinstance(value, bool) or not isinstance(value, int | float | str):
        raise ValueError(f"expected an amount such as {_example(name)}, got {value!r}")
    if isinstance(value, str):
        amount = _parse_string(name, value)
    else:
        if isinstance(value, float) and not math.isfinite(value):
            raise ValueError(f"expected a finite amount, got {value!r}")
        amount = Decimal(str(value)) * scale(name)
    if amount < 0:
        raise ValueError(f"must be at least 0, got {value!r}")
    if name not in MILLI and name not in BYTES and amount != int(amount):
        raise ValueError(f"must be a whole number, got {value!r}")
    units = math.ceil(amount)
    if units >= LARGEST:
        raise ValueError(f"{value!r} is too large")
    return units


def _parse_string(name: str, text: str) -> Decimal:
    m = _NUMBER.fullmatch(text)
    suffixes: dict[str, int] | dict[str, int | Decimal] = (
        _SIZE_SUFFIXES if name in BYTES else _QUANTITY_SUFFIXES)
    suffix = (m.group(2).lower() if name in BYTES else m.group(2)) if m else ""
    if m is None or suffix not in suffixes:
        raise ValueError(f"expected an amount such as {_example(name)}, got {text!r}")
    try:
        return Decimal(m.group(1)) * suffixes[suffix] * scale(name)
    except InvalidOperation:  # pragma: no cover - the pattern admits only decimal numbers
        raise ValueError(f"expected an amount such as {_example(name)}, got {text!r}") from None


def _example(name: str) -> str:
    if name in BYTES:
        return "'8GiB' or a number of bytes"
    if name in MILLI:
        return "2 or '500m'"
    return "a whole number such as 2"


def written(name: str, units: int) -> int | float:
    """An amount in ``name``'s unit as it would be written (2 CPUs, 0.5 GPU, bytes)."""
    whole, rest = divmod(units, scale(name))
    return whole if not rest else units / scale(name)


def describe(name: str, units: int) -> str:
    """An amount for people: ``8 GPU``, ``0.5 CPU``, ``64 GiB``, ``2 example.com/gpu``."""
    if name == GPU:
        return f"{units / 1000:g} GPU"
    if name == CPU:
        return f"{units / 1000:g} CPU"
    if name == MEMORY:
        return f"{units / 2**30:.3g} GiB"
    if name == STORAGE:
        return f"{units / 2**30:.3g} GiB {STORAGE}"
    return f"{units:g} {name}"


def bucket_unit(name: str) -> int:
    """How coarsely free amounts of ``name`` are bucketed: whole GPUs and CPUs, GiB."""
    if name in MILLI:
        return 1000
    return 2**30 if name in BYTES else 1


def order(names: set[str] | frozenset[str]) -> tuple[str, ...]:
    """A cluster's resources in their fixed order: gpu, cpu, memory, ephemeral-storage (if
    used), then the vendors' resources by name."""
    rest = sorted(n for n in names if n not in BASE and n != STORAGE)
    return (*BASE, *((STORAGE,) if STORAGE in names else ()), *rest)
