"""TOML loading, `--set section.key=value` overrides, and pydantic errors turned into one line."""

from __future__ import annotations

import difflib
import re
import tomllib
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any, TypeVar

from pydantic import BaseModel, ValidationError

from stoker.spec.errors import ConfigError, KeyedValueError

M = TypeVar("M", bound=BaseModel)


def read_toml(path: str | Path) -> dict[str, Any]:
    """Read a TOML file; a missing file or a syntax error becomes a ConfigError."""
    p = Path(path)
    if not p.is_file():
        raise ConfigError(str(path), None, "no such file")
    try:
        with p.open("rb") as f:
            return tomllib.load(f)
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(str(path), None, f"invalid TOML: {e}") from None
    except UnicodeDecodeError:
        raise ConfigError(str(path), None, "invalid TOML: not UTF-8 text") from None


def parse_override(text: str) -> tuple[list[str], Any]:
    """Split ``a.b=value`` into (["a", "b"], value). Values are TOML literals, else strings.
    A quoted part keeps its dots, as in TOML: ``nodes.0."example.com/gpu"=2``."""
    if "=" not in text:
        raise ConfigError("--set", text, "expected section.key=value")
    dotted, raw = text.split("=", 1)
    keys = [k.strip().strip('"') for k in re.findall(r'\s*"[^"]*"\s*|[^.]+', dotted.strip())]
    if not all(keys):
        raise ConfigError("--set", dotted, "empty key")
    try:
        value = tomllib.loads(f"v = {raw}")["v"]
    except tomllib.TOMLDecodeError:
        value = raw
    return keys, value


def apply_overrides(data: dict[str, Any], overrides: Iterable[str]) -> dict[str, Any]:
    """Return a copy of ``data`` with every ``section.key=value`` override applied."""
    out = _deep_copy(data)
    for text in overrides:
        keys, value = parse_override(text)
        node = out
        for k in keys[:-1]:
            child = node.setdefault(k, {})
            if not isinstance(child, dict):
                raise ConfigError("--set", ".".join(keys), f"'{k}' is not a section")
            node = child
        node[keys[-1]] = value
    return out


def validate(model: type[M], data: Mapping[str, Any], source: str | None) -> M:
    """Validate ``data`` against ``model``; the first error becomes a one-line ConfigError."""
    try:
        return model.model_validate(data)
    except ValidationError as e:
        raise _to_config_error(e, model, source) from None


def load(
    model: type[M], path: str | Path, overrides: Iterable[str] = ()
) -> M:
    """Read, override and validate a TOML config file."""
    data = apply_overrides(read_toml(path), overrides)
    return validate(model, data, str(path))


def _to_config_error(e: ValidationError, model: type[BaseModel], source: str | None) -> ConfigError:
    err = e.errors()[0]
    loc = [str(part) for part in err["loc"]]
    cause = (err.get("ctx") or {}).get("error")
    if isinstance(cause, KeyedValueError):
        if cause.relative:  # after the model's location; a key with dots is quoted, as in TOML
            where = ".".join([*loc, f'"{cause.key}"' if "." in cause.key else cause.key])
            return ConfigError(source, where, cause.reason)
        return ConfigError(source, cause.key, cause.reason)
    key = ".".join(loc) or None
    if err["type"] == "extra_forbidden":
        return ConfigError(source, key, "unknown key" + _suggestion(model, loc))
    if err["type"] == "missing":
        return ConfigError(source, key, "required key is missing")
    reason = err["msg"]
    if reason.startswith("Value error, "):
        reason = reason[len("Value error, ") :]
    if "input" in err and err["type"] not in ("model_type", "dict_type"):
        reason += f" (got {err['input']!r})"
    return ConfigError(source, key, reason)


def _suggestion(model: type[BaseModel], loc: list[str]) -> str:
    """'; did you mean X?' when the unknown key is close to a known one."""
    fields: dict[str, Any] = dict(model.model_fields)
    for part in loc[:-1]:
        if part.isdigit():  # an item of the list the previous part named
            continue
        ann = _model_of(getattr(fields.get(part), "annotation", None))
        if ann is None:
            return ""
        fields = dict(ann.model_fields)
    close = difflib.get_close_matches(loc[-1], list(fields), n=1)
    return f"; did you mean '{close[0]}'?" if close else ""


def _model_of(ann: Any) -> type[BaseModel] | None:
    """The model a field holds: itself, or that of its items (``tuple[Role, ...] | None``)."""
    if isinstance(ann, type) and issubclass(ann, BaseModel):
        return ann
    for arg in getattr(ann, "__args__", ()):
        found = _model_of(arg)
        if found is not None:
            return found
    return None


def _deep_copy(data: Mapping[str, Any]) -> dict[str, Any]:
    return {k: _deep_copy(v) if isinstance(v, Mapping) else v for k, v in data.items()}


def to_toml(data: Mapping[str, Any]) -> str:
    """Render a two-level config mapping as TOML (None values are left out)."""
    lines: list[str] = []
    for section, body in data.items():
        if not isinstance(body, Mapping):
            lines.append(f"{section} = {_toml_value(body)}")
            continue
        lines.append(f"\n[{section}]")
        lines.extend(f"{k} = {_toml_value(v)}" for k, v in body.items() if v is not None)
    return "\n".join(lines).strip() + "\n"


def _toml_value(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, int | float):
        return repr(v)
    if isinstance(v, list | tuple):
        return "[" + ", ".join(_toml_value(x) for x in v) + "]"
    if isinstance(v, Mapping):  # an inline table
        return "{" + ", ".join(f"{_toml_value(str(k))} = {_toml_value(x)}"
                               for k, x in v.items() if x is not None) + "}"
    s = str(v).replace("\\", "\\\\").replace('"', '\\"')
    return f'"{s}"'
