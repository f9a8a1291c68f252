"""A small client of the REST API (used by the CLI, the tests and the benchmarks)."""

from __future__ import annotations

import os
import time
import uuid
from typing import Any
from urllib.parse import quote

import httpx

from stoker.spec.api import DEFAULT_PORT
from stoker.spec.errors import StokerError

DEFAULT_SERVER = f"http://127.0.0.1:{DEFAULT_PORT}"


class ApiError(StokerError):
    """The server refused a request; ``status`` is the HTTP status."""

    def __init__(self, status: int, message: str) -> None:
        self.status = status
        super().__init__(message)


class Unreachable(StokerError):
    """No answer from the server (connection refused or reset, timeout)."""


class Client:
    def __init__(self, server: str | None = None, token: str | None = None,
                 timeout: float = 30.0) -> None:
        self.server = (server or os.environ.get("STOKER_SERVER") or DEFAULT_SERVER).rstrip("/")
        token = token or os.environ.get("STOKER_TOKEN")
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        self.http = httpx.Client(base_url=self.server, headers=headers, timeout=timeout)

    def close(self) -> None:
        self.http.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()

    def request(self, method: str, path: str, **kwargs: Any) -> Any:
        return self.send(method, path, **kwargs).json()

    def send(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        """The answer (status < 400); Unreachable or ApiError otherwise."""
        try:
            response = self.http.request(method, path, **kwargs)
        except httpx.TransportError as e:
            reason = str(e) or type(e).__name__
            raise Unreachable(f"cannot reach the stoker server at {self.server}: {reason}") \
                from None
        if response.status_code >= 400:
            raise ApiError(response.status_code, _message(response))
        return response

    # --- jobs ---

    def submit(self, job: dict[str, Any], train: dict[str, Any] | None = None,
               idempotency_key: str | None = None, retries: int = 3,
               backoff: float = 0.5, code: str | None = None) -> dict[str, Any]:
        """Submit a job; when the server cannot be reached, try again up to ``retries`` times
        with the same ``Idempotency-Key`` (a fresh UUID when not given), so a submit whose
        answer was lost is never made twice. ``code``: a [task] job's code archive, base64."""
        body: dict[str, Any] = {"job": job}
        if train is not None:
            body["train"] = train
        if code is not None:
            body["code"] = code
        headers = {"Idempotency-Key": idempotency_key or str(uuid.uuid4())}
        for attempt in range(retries + 1):
            try:
                result: dict[str, Any] = self.request("POST", "/v1/jobs", json=body,
                                                      headers=headers)
                return result
            except Unreachable:
                if attempt == retries:
                    raise
                time.sleep(backoff * 2**attempt)
        raise AssertionError("unreachable")

    def jobs(self, active: bool = False, states: list[str] | None = None) -> list[dict[str, Any]]:
        params: dict[str, Any] = {"active": active}
        if states:
            params["state"] = states
        result: list[dict[str, Any]] = self.request("GET", "/v1/jobs", params=params)
        return result

    def jobs_page(self, active: bool = False, states: list[str] | None = None,
                  limit: int | None = None, newest_first: bool = False
                  ) -> tuple[list[dict[str, Any]], int]:
        """At most ``limit`` jobs (None: all), oldest first or ``newest_first``, and how many
        match in all (``X-Total-Count``)."""
        params: dict[str, Any] = {"active": active, "order": "desc" if newest_first else "asc"}
        if states:
            params["state"] = states
        if limit is not None:
            params["limit"] = limit
        response = self.send("GET", "/v1/jobs", params=params)
        rows: list[dict[str, Any]] = response.json()
        return rows, int(response.headers.get("x-total-count", len(rows)))

    def job(self, job_id: int) -> dict[str, Any]:
        result: dict[str, Any] = self.request("GET", f"/v1/jobs/{job_id}")
        return result

    def cancel(self, job_id: int) -> dict[str, Any]:
        result: dict[str, Any] = self.request("POST", f"/v1/jobs/{job_id}/cancel")
        return result

    def hold(self, job_id: int, reason: str = "") -> dict[str, Any]:
        result: dict[str, Any] = self.request("POST", f"/v1/jobs/{job_id}/hold",
                                              json={"reason": reason})
        return result

    def release(self, job_id: int) -> dict[str, Any]:
        result: dict[str, Any] = self.request("POST", f"/v1/jobs/{job_id}/release")
        return result

    def requeue(self, job_id: int, reason: str = "", hold: bool = False) -> dict[str, Any]:
        result: dict[str, Any] = self.request("POST", f"/v1/jobs/{job_id}/requeue",
                                              json={"reason": reason, "hold": hold})
        return result

    def set_priority(self, job_id: int, priority_class: str) -> dict[str, Any]:
        result: dict[str, Any] = self.request("PUT", f"/v1/jobs/{job_id}/priority",
                                              json={"priority_class": priority_class})
        return result

    def logs(self, job_id: int, rank: int | None = None, offset: int = 0) -> dict[str, Any]:
        params: dict[str, Any] = {"offset": offset}
        if rank is not None:
            params["rank"] = rank
        result: dict[str, Any] = self.request("GET", f"/v1/jobs/{job_id}/logs", params=params)
        return result

    # --- queues and nodes ---

    def queues(self) -> list[dict[str, Any]]:
        result: list[dict[str, Any]] = self.request("GET", "/v1/queues")
        return result

    def usage(self, since: float | None = None) -> dict[str, Any]:
        params = {} if since is None else {"since": since}
        result: dict[str, Any] = self.request("GET", "/v1/usage", params=params)
        return result

    def accounting(self, by: str = "tenant", start: float | None = None,
                   end: float | None = None) -> dict[str, Any]:
        params: dict[str, Any] = {"by": by}
        if start is not None:
            params["from"] = start
        if end is not None:
            params["to"] = end
        result: dict[str, Any] = self.request("GET", "/v1/usage/accounting", params=params)
        return result

    def set_quota(self, queue: str, flavor: str, quota: dict[str, Any],
                  replace: bool = True) -> dict[str, Any]:
        """Replace the quota (PUT), or (``replace=False``) change only what ``quota`` gives
        (PATCH)."""
        result: dict[str, Any] = self.request("PUT" if replace else "PATCH",
                                              f"/v1/queues/{queue}/quotas/{flavor}",
                                              json=quota)
        return result

    def nodes(self) -> list[dict[str, Any]]:
        result: list[dict[str, Any]] = self.request("GET", "/v1/nodes")
        return result

    def cordon(self, node: str, cordoned: bool, reason: str = "") -> dict[str, Any]:
        result: dict[str, Any] = self.request("PUT", f"/v1/nodes/{node}/cordon",
                                              json={"cordoned": cordoned, "reason": reason})
        return result

    def node(self, name: str) -> dict[str, Any]:
        result: dict[str, Any] = self.request("GET", f"/v1/nodes/{_segment(name)}")
        return result

    def drain(self, node: str, drain: bool, reason: str = "", requeue: bool = False
              ) -> dict[str, Any]:
        result: dict[str, Any] = self.request(
            "PUT", f"/v1/nodes/{_segment(node)}/drain",
            json={"drain": drain, "reason": reason, "requeue": requeue})
        return result

    def audit(self, after_id: int = 0, limit: int = 1000) -> list[dict[str, Any]]:
        result: list[dict[str, Any]] = self.request("GET", "/v1/audit",
                                                    params={"after_id": after_id,
                                                            "limit": limit})
        return result


def _message(response: httpx.Response) -> str:
    """One line: the status and the server's reason (422: every field error)."""
    try:
        detail = response.json().get("detail")
    except ValueError:
        detail = response.text.strip()
    if isinstance(detail, list):
        parts = []
        for err in detail:
            loc = [str(p) for p in err.get("loc", []) if p not in ("body", "query", "path")]
            parts.append(f"{'.'.join(loc)}: {err.get('msg')}" if loc else str(err.get("msg")))
        detail = "; ".join(parts)
    return f"server said {response.status_code}: {detail}"


def _segment(name: str) -> str:
    """A name as one path segment (a node named "a/b" is not a route)."""
    return quote(name, safe="")
