"""The link to the Redis that holds the cluster state: one client, its keys, its errors.

`ClusterState` (desired state) and `Membership` (heartbeats, acknowledgements) are
peers over one `Link`; neither knows the other. Every Redis call goes through
`Link.call`, which turns redis-py's exceptions into the coordinator's errors:

    redis.ReadOnlyError   -> ClusterUnavailable   (a demoted primary: a failover is under way)
    redis.ResponseError   -> ClusterStateCorrupt  (a state key holds junk of the wrong type)
    redis.RedisError      -> ClusterUnavailable   (unreachable, timed out)
"""

from __future__ import annotations

import logging
import time
from typing import Any

import redis

from coordinator.errors import ClusterStateCorrupt, ClusterUnavailable
from coordinator.keys import Keys
from coordinator.redis_url import client_for, parse_redis_url

__all__ = ["Link", "LogThrottle", "connect"]

log = logging.getLogger("modelcache.state")


class LogThrottle:
    """Log at most once per `interval_s` per key: junk in Redis must not flood the log."""

    def __init__(self, interval_s: float = 30.0, clock: Any = time.monotonic) -> None:
        self.interval_s, self._clock = interval_s, clock
        self._last: dict[str, float] = {}
        self.suppressed = 0

    def warning(self, key: str, msg: str, *args: Any, logger: logging.Logger = log) -> None:
        now = self._clock()
        if now - self._last.get(key, -self.interval_s - 1) < self.interval_s:
            self.suppressed += 1
            return
        if len(self._last) > 1000:  # keys may come from junk: bound the memory
            self._last.clear()
        self._last[key] = now
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
        except redis.exceptions.ReadOnlyError as exc:  # a demoted primary: a failover is under way
            raise ClusterUnavailable(
                f"cannot {what}: {self.where} is a read-only replica now ({exc})"
            ) from exc
        except redis.ResponseError as exc:
            # WRONGTYPE, "not an integer": someone wrote junk into a state key. Not an outage;
            # the detail (key, script) is for the log, not for the client.
            log.error("cannot %s: Redis refused the command: %s", what, exc)
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
