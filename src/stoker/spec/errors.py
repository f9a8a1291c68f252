"""User-facing errors: one line, naming the file, the key and the reason."""

from __future__ import annotations


class StokerError(Exception):
    """An error caused by the user's input: shown as one line, exit code 2, no traceback."""

    exit_code = 2


class ConfigError(StokerError):
    """A config value was rejected. `key` is the dotted path (e.g. ``train.seq_len``)."""

    def __init__(self, source: str | None, key: str | None, reason: str) -> None:
        self.source = source
        self.key = key
        self.reason = reason
        where = ": ".join(part for part in (source, key) if part)
        super().__init__(f"{where}: {reason}" if where else reason)


class KeyedValueError(ValueError):
    """Raised inside pydantic validators for cross-field checks, naming the offending key.

    Pydantic wraps it; `spec.loading` unwraps it so the message names ``key`` rather than
    the model that ran the check. ``relative``: ``key`` is one key of the model that raised it
    (a resource name, which may hold dots), to be put after that model's own location.
    """

    def __init__(self, key: str, reason: str, relative: bool = False) -> None:
        self.key = key
        self.reason = reason
        self.relative = relative
        super().__init__(f"{key}: {reason}")
