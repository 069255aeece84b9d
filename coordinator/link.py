"""The link to the Redis that holds the cluster state: one client, its keys, its errors.

`ClusterState` (desired state) and `Membership` (heartbeats, acknowledgements) are
peers over one `Link`; neither knows the other. Every Redis call goes through
`Link.call`, which turns redis-py's exceptions into the coordinator's errors:

    a refusal (OOM, MISCONF, NOPERM, BUSY, READONLY, LOADING, MASTERDOWN, NOREPLICAS)
                          -> ClusterRefusing      (Redis answers but will not do it: an outage)
    redis.ResponseError   -> ClusterStateCorrupt  (anything else: a state key holds junk)
    redis.RedisError      -> ClusterUnavailable   (unreachable, timed out)

Telling a refusal from junk matters: a refusal is the operator's Redis to fix (memory, disk,
ACL), junk is the cluster state to repair, and only the first is worth retrying.
"""

from __future__ import annotations

import logging
import re
import time
from typing import Any

import redis

from coordinator.errors import ClusterRefusing, ClusterStateCorrupt, ClusterUnavailable
from coordinator.keys import Keys
from coordinator.redis_url import client_for, parse_redis_url

__all__ = ["REFUSALS", "Link", "LogThrottle", "connect", "refusal"]

log = logging.getLogger("modelcache.state")


REFUSALS: dict[str, str] = {
    "oom": "is out of memory (maxmemory reached, noeviction): free memory or raise maxmemory",
    "misconf": "refuses writes because it cannot persist (MISCONF): check its disk and RDB/AOF",
    "noperm": "refuses the command for this user (NOPERM): check the ACL",
    "busy": "is busy running a script (BUSY)",
    "readonly": "is a read-only replica now (a failover is under way)",
    "loading": "is loading its dataset into memory (LOADING)",
    "masterdown": "is a replica that lost its primary (MASTERDOWN)",
    "noreplicas": "has too few replicas to accept writes (NOREPLICAS)",
}
"""Redis' error codes that mean "reachable, but refusing": reason -> what it means for operators."""


def refusal(exc: BaseException) -> str | None:
    """The reason (a key of REFUSALS) when `exc` is Redis refusing a command, else None.

    redis-py has classes for some codes (OutOfMemoryError, ReadOnlyError, ...) and strips the
    code from the message; MISCONF and BUSY stay plain ResponseErrors with `status_code` set.
    A refusal inside a Lua script arrives wrapped: "Error running script ...: -OOM command ...".
    """
    if isinstance(exc, redis.exceptions.BusyLoadingError):  # a ConnectionError in redis-py
        return "loading"
    if not isinstance(exc, redis.ResponseError):
        return None
    codes = [str(getattr(exc, "status_code", None) or ""), *_EMBEDDED_CODE.findall(str(exc))]
    return next((code.lower() for code in codes if code.lower() in REFUSALS), None)


_EMBEDDED_CODE = re.compile(r"(?:^|\s-)([A-Z]{2,16})\b")
"""An error code at the start of a reply, or quoted as `-CODE` inside a script's error."""


class LogThrottle:
    """Log at most once per `interval_s` per key: junk in Redis must not flood the log."""

    def __init__(self, interval_s: float = 30.0, clock: Any = time.monotonic) -> None:
        self.interval_s, self._clock = interval_s, clock
        self._last: dict[str, float] = {}
        self.suppressed = 0

    def allow(self, key: str) -> bool:
        """True at most once per `interval_s` for `key` (then log); False counts as suppressed."""
        now = self._clock()
        if now - self._last.get(key, -self.interval_s - 1) < self.interval_s:
            self.suppressed += 1
            return False
        if len(self._last) > 1000:  # keys may come from junk: bound the memory
            self._last.clear()
        self._last[key] = now
        return True

    def warning(self, key: str, msg: str, *args: Any, logger: logging.Logger = log) -> None:
        if self.allow(key):
            logger.warning(msg, *args)


def connect(url: str, *, timeout: float = 2.0, decode_responses: bool = True) -> redis.Redis:
    """A client that fails fast: no retries, short timeouts (callers must never hang on Redis).

    `url` is `redis://...` or `redis+sentinel://h:p[,h:p...]/<master>/<db>`; with Sentinel
    every (re)connection asks for the current primary, so the client follows failovers.
    `decode_responses=False` for the events channel: anyone can PUBLISH any bytes there, and
    decoding inside redis-py raises where the subscriber cannot tell junk from a broken link.
    """
    return client_for(parse_redis_url(url), timeout=timeout, decode_responses=decode_responses)


class Link:
    """One Redis client for the cluster state, its key names, and its errors translated."""

    def __init__(
        self, client: redis.Redis, keys: Keys | None = None, *, where: str = "", url: str = ""
    ) -> None:
        self.client = client
        self.keys = keys or Keys()
        self.where = where or _where(client)
        """Where the state lives, as error messages name it."""
        self.url = url
        """The URL it came from (a second, byte-level client for the events channel uses it)."""
        self.throttle = LogThrottle()

    @classmethod
    def from_url(cls, url: str, prefix: str = Keys.prefix) -> Link:
        target = parse_redis_url(url)
        client = client_for(target, timeout=2.0, decode_responses=True)
        return cls(client, Keys(prefix), where=target.describe(), url=url)

    def close(self) -> None:
        self.client.close()

    def script(self, source: str) -> Any:
        """A Lua script registered on this client (EVALSHA, loaded on first use)."""
        return self.client.register_script(source)

    def events_client(self, timeout: float = 5.0) -> redis.Redis:
        """A fresh client for the events channel: bytes in, never decoded (see `connect`)."""
        return connect(self.url, timeout=timeout, decode_responses=False)

    def call(self, what: str, fn: Any, *args: Any) -> Any:
        """`fn(*args)`; a Redis failure becomes a ModelCacheError that says `cannot <what>: ...`."""
        try:
            return fn(*args)
        except (redis.ResponseError, redis.exceptions.BusyLoadingError) as exc:
            reason = refusal(exc)
            if reason is not None:
                raise ClusterRefusing(
                    f"cannot {what}: {self.where} is reachable but {REFUSALS[reason]} ({exc})", reason
                ) from exc
            # WRONGTYPE, "not an integer": someone wrote junk into a state key. Not an outage;
            # the detail (key, script) is for the log (at a bounded rate), not for the client.
            self.throttle.warning(f"corrupt:{what}", "cannot %s: Redis refused the command: %s", what, exc)
            raise ClusterStateCorrupt(
                f"cannot {what}: the cluster state in Redis is corrupt (a key under {self.keys.prefix!r} "
                "holds a value of the wrong type); the node log has the detail"
            ) from exc
        except redis.RedisError as exc:
            raise ClusterUnavailable(
                f"cannot {what}: {self.where} is unreachable "
                f"({type(exc).__name__}: {exc}); check MODELCACHE_REDIS_URL and that Redis runs"
            ) from exc


def _where(client: redis.Redis) -> str:
    kwargs = client.connection_pool.connection_kwargs
    return f"Redis at {kwargs.get('host')}:{kwargs.get('port')}"
