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

A call that outlives its own deadline (the node took longer than `timeout_s` plus a
margin, or trickled its answer) is an `AdminApiError` with code `client_timeout`: a
change was published, its outcome is unknown. The deadline bounds the whole call, not
each read: a server that sends one byte a second cannot hold the command line.

A 2xx answer whose JSON lacks the fields the call promises (a proxy's page, another
service, a node of another version) is an `AdminApiError` with code `bad_response`,
never a success.
"""

from __future__ import annotations

import json
import threading
import time
from typing import Any

import httpx

from coordinator.errors import ClusterUnavailable, ModelCacheError
from coordinator.redis_url import redact

CONNECT_TIMEOUT_S = 3.0
READ_TIMEOUT_S = 10.0
# A waited call returns after `timeout_s` on the node; allow it this much more on the wire.
WAIT_MARGIN_S = 5.0
# An answer larger than this is not the admin API's (the biggest, /cluster, is kilobytes).
MAX_ANSWER_BYTES = 16 * 1024 * 1024


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
        self.shown = redact(self.url)
        """The URL as messages name it: a password in it (`http://u:pw@lb`) never reaches a message."""
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
        return _cluster_shape(self._call("GET", "/api/v1/cluster"), self._where("/api/v1/cluster"))

    def models(self) -> list[dict[str, Any]]:
        """Every model type: versions, latest, pin, what the answering node caches."""
        doc = self._call("GET", "/api/v1/models")
        where = self._where("/api/v1/models")
        models = _field(doc, "models", list, where)
        for m in models:
            _field(_entry(m, "model", where), "model_type", str, where)
            for name in ("versions", "cached"):
                if name in m and not _strings(m[name]):
                    raise _bad_shape(where, f"{name!r} that is not a list of strings")
        return list(models)

    def pins(self) -> dict[str, str]:
        where = self._where("/api/v1/pins")
        pins = _field(self._call("GET", "/api/v1/pins"), "pins", dict, where)
        if not all(isinstance(v, str) for v in pins.values()):
            raise _bad_shape(where, "a pin that is not a version string")
        return dict(pins)

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
        where = self._where("/api/v1/canaries")
        canaries = _field(self._call("GET", "/api/v1/canaries"), "canaries", dict, where)
        for c in canaries.values():
            _field(_entry(c, "canary", where), "version", str, where)
            _field(c, "percent", (int, float), where)
            for node in c.get("nodes", []) if isinstance(c.get("nodes", []), list) else [None]:
                _field(_entry(node, "canary node", where), "node_id", str, where)
        return dict(canaries)

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
    def _where(self, path: str) -> str:
        return f"{self.shown}{path}"

    def _call(self, method: str, path: str, *, wait_s: float | None = None, **kwargs: Any) -> Any:
        """One call, bounded as a whole: connect, send, and every byte of the answer by one deadline."""
        budget_s = READ_TIMEOUT_S + (wait_s + WAIT_MARGIN_S if wait_s else 0)
        deadline = time.monotonic() + budget_s
        outcome: dict[str, Any] = {}

        def run() -> None:
            try:
                outcome["value"] = self._exchange(method, path, deadline, budget_s, **kwargs)
            except BaseException as exc:  # handed to the caller's thread
                outcome["error"] = exc

        # httpx's timeouts bound each read, not the call: a worker thread does the call, the
        # caller waits for it no longer than the deadline (the worker gives up at its next byte).
        worker = threading.Thread(target=run, name="admin-call", daemon=True)
        worker.start()
        worker.join(budget_s + 0.5)
        if worker.is_alive():
            raise _too_slow(method, self._where(path), budget_s)
        if "error" in outcome:
            raise outcome["error"]
        return _mutation_shape(outcome["value"], method, self._where(path), wait_s is not None)

    def _exchange(self, method: str, path: str, deadline: float, budget_s: float, **kwargs: Any) -> Any:
        where = self._where(path)
        timeout = httpx.Timeout(budget_s, connect=min(CONNECT_TIMEOUT_S, budget_s))
        try:
            with self._http.stream(method, path, timeout=timeout, **kwargs) as response:
                body = bytearray()
                for chunk in response.iter_bytes():
                    body += chunk
                    if time.monotonic() > deadline:
                        raise _too_slow(method, where, budget_s)
                    if len(body) > MAX_ANSWER_BYTES:
                        raise AdminApiError(
                            response.status_code,
                            "bad_response",
                            f"{method} {where} answered more than {MAX_ANSWER_BYTES} bytes",
                        )
        except (httpx.ConnectError, httpx.ConnectTimeout, httpx.UnsupportedProtocol) as exc:
            raise AdminUnreachable(f"cannot reach {self.shown}: {_reason(exc)}") from None
        except httpx.TimeoutException:
            raise _too_slow(method, where, budget_s) from None
        except httpx.HTTPError as exc:
            raise AdminUnreachable(f"{method} {where} failed: {_reason(exc)}") from None
        return _decode(response, bytes(body), method, where)


def _too_slow(method: str, where: str, budget_s: float) -> AdminApiError:
    return AdminApiError(
        0, "client_timeout", f"{method} {where} did not answer within {budget_s:g}s; outcome unknown"
    )


# -- the shapes of the answers ---------------------------------------------------
def _bad_shape(where: str, what: str) -> AdminApiError:
    return AdminApiError(
        200,
        "bad_response",
        f"{where} answered with JSON that is not the admin API's ({what}); "
        "is --url a modelcache node or load balancer of this version?",
    )


def _entry(value: Any, what: str, where: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise _bad_shape(where, f"a {what} that is not an object")
    return value


def _field(doc: Any, name: str, kind: type | tuple[type, ...], where: str) -> Any:
    """`doc[name]`, which must be of `kind` (a bool is not a number here)."""
    if not isinstance(doc, dict):
        raise _bad_shape(where, "not an object")
    value = doc.get(name)
    if not isinstance(value, kind) or (isinstance(value, bool) and bool not in _kinds(kind)):
        raise _bad_shape(where, f"no {name!r}" if name not in doc else f"{name!r} of the wrong type")
    return value


def _strings(value: Any) -> bool:
    return isinstance(value, list) and all(isinstance(v, str) for v in value)


def _kinds(kind: type | tuple[type, ...]) -> tuple[type, ...]:
    return kind if isinstance(kind, tuple) else (kind,)


def _mutation_shape(doc: Any, method: str, where: str, waited: bool) -> Any:
    """A change's answer (any call but a GET) has `ok`, a `change` with its `seq`, and, when
    waited for, the `acks` to judge it by: without them a wait proves nothing."""
    if method == "GET":
        return doc
    _field(doc, "ok", bool, where)
    _field(_field(doc, "change", dict, where), "seq", int, where)
    if waited:
        for ack in _field(doc, "acks", list, where):
            for name in ("node_id", "outcome", "detail"):
                _field(_entry(ack, "acknowledgement", where), name, str, where)
    return doc


def _cluster_shape(doc: Any, where: str) -> dict[str, Any]:
    _field(doc, "seq", int, where)
    _field(doc, "pins", dict, where)
    for node in _field(doc, "nodes", list, where):
        _field(_entry(node, "node", where), "node_id", str, where)
    return doc


def _reason(exc: Exception) -> str:
    return str(exc) or type(exc).__name__


def _decode(response: httpx.Response, raw: bytes, method: str, where: str) -> Any:
    try:
        body = json.loads(raw)
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
