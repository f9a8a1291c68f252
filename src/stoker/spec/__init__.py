"""Pydantic models of every config and API object, TOML loading, and user-facing errors.

The lowest layer: imports nothing else from Stoker.
"""

from stoker.spec.errors import ConfigError, KeyedValueError, StokerError

__all__ = ["ConfigError", "KeyedValueError", "StokerError"]
