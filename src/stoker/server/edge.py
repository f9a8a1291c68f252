"""The API's edge: what every request passes before a route sees it.

- `BodyLimit`: a request body larger than ``cluster.api.max_body_bytes`` is a 413, whether it
  declares its length or streams it chunked.
- `clean_body`: a JSON body with a NUL character or a lone surrogate in any string (key or
  value), or a number that is NaN or infinite, is a 422 naming where, before any model sees it.
- `printable`: text that may hold lone surrogates made safe to put in a JSON answer (a lone
  surrogate cannot be encoded as UTF-8, so echoing one would turn a 422 into a 500).
- `errors`: the error answers a route declares in the OpenAPI, all of them `Error`.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterator
from typing import Any

from fastapi import Request
from fastapi.exceptions import RequestValidationError
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from stoker.spec.api import Error

_REASONS = {
    400: "The body is not readable JSON",
    401: "Missing or invalid API token",
    403: "Not allowed for this token",
    404: "No such object (or not one of yours)",
    409: "Conflicts with the object's current state",
    413: "The request body is too large",
    422: "A rejected parameter or body field, one entry per error",
}


def errors(*codes: int) -> dict[int | str, dict[str, Any]]:
    """OpenAPI ``responses`` for these error statuses."""
    return {code: {"model": Error, "description": _REASONS[code]} for code in codes}


def json_errors(*codes: int) -> dict[int | str, dict[str, Any]]:
    """`errors` for a route whose success is not JSON (its errors still are)."""
    content = {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}
    return {code: {"description": _REASONS[code], "content": content} for code in codes}


class BodyLimit:
    """ASGI middleware: 413 for a body over ``max_bytes``; the body is read here (at most
    ``max_bytes`` of it) and handed on whole."""

    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = dict(scope["headers"]).get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.max_bytes:
            await self._too_large(send)
            return
        chunks: list[bytes] = []
        size = 0
        while True:
            message = await receive()
            if message["type"] != "http.request":  # the client went away
                return
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > self.max_bytes:
                await self._too_large(send)
                return
            chunks.append(chunk)
            if not message.get("more_body", False):
                break
        await self.app(scope, _replay(b"".join(chunks), receive), send)

    async def _too_large(self, send: Send) -> None:
        body = json.dumps({"detail": f"the request body is larger than {self.max_bytes} "
                                     "bytes"}).encode()
        await send({"type": "http.response.start", "status": 413,
                    "headers": [(b"content-type", b"application/json"),
                                (b"content-length", str(len(body)).encode()),
                                (b"connection", b"close")]})
        await send({"type": "http.response.body", "body": body})


def _replay(body: bytes, receive: Receive) -> Receive:
    sent = False

    async def replay() -> Message:
        nonlocal sent
        if sent:
            return await receive()  # after the body: wait for the disconnect
        sent = True
        return {"type": "http.request", "body": body, "more_body": False}

    return replay


async def clean_body(request: Request) -> None:
    """A route dependency (after authentication): refuse unsafe text and numbers anywhere in
    the JSON body. A body that is not JSON is left to the route's own validation."""
    if not await request.body():
        return
    try:
        data = await request.json()  # parsed once: FastAPI reuses it
    except ValueError:
        return
    bad = [{"loc": ["body", *loc], "msg": msg, "type": "value_error"}
           for loc, msg in _unsafe(data, [])]
    if bad:
        raise RequestValidationError(bad[:20])


def _unsafe(value: Any, loc: list[str | int]) -> Iterator[tuple[list[str | int], str]]:
    if isinstance(value, str):
        reason = _bad_text(value)
        if reason:
            yield loc, reason
    elif isinstance(value, float):
        if not math.isfinite(value):
            yield loc, "numbers must be finite (no NaN or infinity)"
    elif isinstance(value, list):
        for i, item in enumerate(value):
            yield from _unsafe(item, [*loc, i])
    elif isinstance(value, dict):
        for key, item in value.items():
            reason = _bad_text(key)
            if reason:
                yield [*loc, printable(key)], f"key {reason}"
            yield from _unsafe(item, [*loc, printable(key)])


def _bad_text(text: str) -> str | None:
    if "\0" in text:
        return "contains a NUL character"
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return "contains a lone surrogate (not valid Unicode text)"
    return None


def printable(text: str) -> str:
    """``text`` with lone surrogates written as ``\\udXXX`` escapes (UTF-8 encodable)."""
    return text.encode("utf-8", "backslashreplace").decode("utf-8")
