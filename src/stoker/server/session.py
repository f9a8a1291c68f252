"""The browser's session: the API token in an HttpOnly cookie, checked like the Bearer token.

A browser cannot send ``Authorization: Bearer`` on a page load, so the dashboard's login form
posts the token once and the server keeps it in a cookie that scripts cannot read
(``HttpOnly``), that no other site's page sends (``SameSite=Strict``), and that travels only
over HTTPS when the server is reached by HTTPS (``Secure``). The cookie stands for the token:
a token removed from the cluster config ends its sessions.

The cookie is accepted on reads only (GET and HEAD, by the dashboard and the API alike); a
change from the dashboard (cancel, logout) is a form whose hidden ``csrf`` field must match a
keyed hash of the session's token, which another site cannot compute.
"""

from __future__ import annotations

import hashlib
import hmac

from fastapi import Request, Response

COOKIE = "stoker_session"
MAX_AGE = 12 * 3600
SAFE_METHODS = frozenset({"GET", "HEAD"})


def session_token(request: Request, reads_only: bool = True) -> str | None:
    """The token of the request's session cookie (on a read, unless ``reads_only`` is off)."""
    if reads_only and request.method not in SAFE_METHODS:
        return None
    token = request.cookies.get(COOKIE)
    return token or None


def csrf_token(token: str) -> str:
    return hmac.new(token.encode(), b"stoker-dashboard-csrf", hashlib.sha256).hexdigest()[:32]


def csrf_ok(token: str, presented: str | None) -> bool:
    return presented is not None and hmac.compare_digest(csrf_token(token), presented)


def start_session(response: Response, request: Request, token: str) -> None:
    response.set_cookie(COOKIE, token, max_age=MAX_AGE, path="/", httponly=True,
                        samesite="strict", secure=request.url.scheme == "https")


def end_session(response: Response) -> None:
    response.delete_cookie(COOKIE, path="/", httponly=True, samesite="strict")


def safe_next(target: str | None) -> str:
    """Where to go after logging in: a path on this server only (no ``//host``)."""
    if not target or not target.startswith("/") or target.startswith("//") or "\\" in target:
        return "/"
    return target
