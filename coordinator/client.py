"""The admin API of a node (or of the load balancer in front of the nodes), over HTTP.

What the command line uses with `--url`: no Redis and no registry on the operator's
machine. Each failure is one exception with a sentence a person can act on:

    ModelCacheError
    └── AdminApiError              the node answered with an error (`status`, `code`)
        ├── AdminAuthError         401/403: no token, a wrong token, or admin disabled on the node
        └── AdminRequestInvalid    422: the request itself is wrong (an invalid name or value)
    ClusterUnavailable
    └── AdminUnreachable           no answer (refused, DNS, timeout connecting), a gateway error,
                                   or the node cannot reach Redis

A wait that outlives its own deadline (the node took longer than `timeout_s` plus a
margin) is an `AdminApiError` with code `client_timeout`: the change was published,
its outcome is unknown.
"""

from __future__ import annotations

from typing import Any

import httpx

from coordinator.errors import ClusterUnavailable, ModelCacheError

CONNECT_TIMEOUT_S = 3.0
READ_TIMEOUT_S = 10.0
# A waited call returns after `timeout_s` on the node; allow it this much more on the wire.
WAIT_MARGIN_S = 5.0


class AdminApiError(ModelCacheError):
    """The node refused or failed the call: its status, machine code and message."""

    def __init__(self, status: int, code: str, message: str) -> None:
        self.status, self.code = status, code
        super().__init__(message)


class AdminAuthError(AdminApiError):
    """No token, a wrong token, or the node's admin API is disabled."""


class AdminRequestInvalid(AdminApiError):
    """The node found the request itself invalid (422): fix the arguments."""


class AdminUnreachable(ClusterUnavailable):
    """The node or load balancer could not be reached, or could not reach the cluster."""


_AUTH_HINT = {
    401: "no admin token sent: pass --token or set MODELCACHE_ADMIN_TOKEN",
    403: "the admin token was refused: check --token / MODELCACHE_ADMIN_TOKEN against the node's",
}


class AdminClient:
    """Calls of the admin API; `url` is a node's or the load balancer's base URL."""

    def __init__(self, url: str, token: str | None = None, *, transport: httpx.BaseTransport | None = None):
        self.url = url.rstrip("/")
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        self._http = httpx.Client(
            base_url=self.url,
            headers=headers,
            timeout=httpx.Timeout(READ_TIMEOUT_S, connect=CONNECT_TIMEOUT_S),
            transport=transport,
        )

    def __enter__(self) -> AdminClient:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()

    def close(self) -> None:
        self._http.close()

    # -- reads ------------------------------------------------------------------
    def cluster(self) -> dict[str, Any]:
        """Live nodes with their cached models and stats, pins, generations (`GET /api/v1/cluster`)."""
        return self._call("GET", "/api/v1/cluster")

    def models(self) -> list[dict[str, Any]]:
        """Every model type: versions, latest, pin, what the answering node caches."""
        return list(self._call("GET", "/api/v1/models")["models"])

    def pins(self) -> dict[str, str]:
        return dict(self._call("GET", "/api/v1/pins")["pins"])

    # -- changes (admin) --------------------------------------------------------
    def pin(
        self, model_type: str, version: str, *, wait: bool = False, timeout_s: float = 30.0
    ) -> dict[str, Any]:
        body = {"version": version, "wait": wait, "timeout_s": timeout_s}
        return self._call("PUT", f"/api/v1/pins/{model_type}", json=body, wait_s=timeout_s if wait else None)

    def unpin(self, model_type: str, *, wait: bool = False, timeout_s: float = 30.0) -> dict[str, Any]:
        params = {"wait": "true" if wait else "false", "timeout_s": str(timeout_s)}
        return self._call(
            "DELETE", f"/api/v1/pins/{model_type}", params=params, wait_s=timeout_s if wait else None
        )

    def reload(
        self,
        model_type: str | None = None,
        version: str | None = None,
        *,
        wait: bool = False,
        timeout_s: float = 30.0,
    ) -> dict[str, Any]:
        body = {
            "model_type": model_type,
            "version": version,
            "scope": "cluster",
            "wait": wait,
            "timeout_s": timeout_s,
        }
        return self._call("POST", "/api/v1/models/reload", json=body, wait_s=timeout_s if wait else None)

    # -- canaries (admin, except the listing) -------------------------------------
    def canaries(self) -> dict[str, Any]:
        """Canaries in force, each with every live node's last outcome (`GET /api/v1/canaries`)."""
        return dict(self._call("GET", "/api/v1/canaries")["canaries"])

    def canary(
        self, model_type: str, version: str, percent: float, *, wait: bool = False, timeout_s: float = 30.0
    ) -> dict[str, Any]:
        body = {"version": version, "percent": percent, "wait": wait, "timeout_s": timeout_s}
        wait_s = timeout_s if wait else None
        return self._call("PUT", f"/api/v1/canaries/{model_type}", json=body, wait_s=wait_s)

    def abort_canary(self, model_type: str, *, wait: bool = False, timeout_s: float = 30.0) -> dict[str, Any]:
        params = {"wait": "true" if wait else "false", "timeout_s": str(timeout_s)}
        wait_s = timeout_s if wait else None
        return self._call("DELETE", f"/api/v1/canaries/{model_type}", params=params, wait_s=wait_s)

    def promote_canary(
        self, model_type: str, *, wait: bool = False, timeout_s: float = 30.0
    ) -> dict[str, Any]:
        params = {"wait": "true" if wait else "false", "timeout_s": str(timeout_s)}
        wait_s = timeout_s if wait else None
        return self._call("POST", f"/api/v1/canaries/{model_type}/promote", params=params, wait_s=wait_s)

    # -- the wire ---------------------------------------------------------------
    def _call(self, method: str, path: str, *, wait_s: float | None = None, **kwargs: Any) -> Any:
        timeout = httpx.Timeout(
            READ_TIMEOUT_S + (wait_s or 0) + (WAIT_MARGIN_S if wait_s else 0), connect=CONNECT_TIMEOUT_S
        )
        where = f"{self.url}{path}"
        try:
            response = self._http.request(method, path, timeout=timeout, **kwargs)
        except (httpx.ConnectError, httpx.ConnectTimeout, httpx.UnsupportedProtocol) as exc:
            raise AdminUnreachable(f"cannot reach {self.url}: {_reason(exc)}") from None
        except httpx.TimeoutException:
            raise AdminApiError(
                0,
                "client_timeout",
                f"{method} {where} did not answer within {timeout.read:g}s; outcome unknown",
            ) from None
        except httpx.HTTPError as exc:
            raise AdminUnreachable(f"{method} {where} failed: {_reason(exc)}") from None
        return _decode(response, method, where)


def _reason(exc: Exception) -> str:
    return str(exc) or type(exc).__name__


def _decode(response: httpx.Response, method: str, where: str) -> Any:
    try:
        body = response.json()
    except ValueError:
        body = None
    status = response.status_code
    if status < 400:
        if body is None:
            raise AdminApiError(status, "bad_response", f"{method} {where} answered {status} without JSON")
        return body
    if isinstance(body, dict) and isinstance(body.get("error"), str):
        code, message = str(body.get("code", "")), body["error"]
    else:
        code, message = "http_error", f"{method} {where} answered {status} {response.reason_phrase}".strip()
    if status in _AUTH_HINT:
        raise AdminAuthError(status, code, f"{_AUTH_HINT[status]} ({status} {code}: {message})")
    if status in (502, 504) or (status == 503 and code in ("cluster_unavailable", "http_error")):
        raise AdminUnreachable(f"{message} ({status} from {where})")
    if status == 422:
        raise AdminRequestInvalid(status, code, message)
    raise AdminApiError(status, code, message)
