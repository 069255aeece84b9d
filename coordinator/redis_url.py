"""One place that turns MODELCACHE_REDIS_URL into a client: plain Redis or Redis via Sentinel.

    redis://[:password@]host:port/db                       one Redis (redis-py's own URL forms)
    redis+sentinel://[:password@]h:p[,h:p...]/<master>/<db> discover the primary through Sentinel

With Sentinel every connection (commands and the events subscriber alike) asks the
Sentinels for the current primary when it (re)connects, so clients follow a failover
without a restart. A password in the URL is the primary's (`requirepass`); Sentinels
are reached without one unless `?sentinel_password=...` is given.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qs, unquote

import redis
from redis.backoff import NoBackoff
from redis.connection import parse_url
from redis.retry import Retry
from redis.sentinel import Sentinel

from coordinator.errors import ModelCacheError

__all__ = ["SENTINEL_SCHEME", "InvalidRedisUrl", "RedisTarget", "client_for", "parse_redis_url", "redact"]

SENTINEL_SCHEME = "redis+sentinel"
DEFAULT_SENTINEL_PORT = 26379


@dataclass(frozen=True)
class RedisTarget:
    """Where cluster state lives: a URL redis-py reads itself, or Sentinels plus a master name."""

    url: str
    sentinels: tuple[tuple[str, int], ...] = ()
    master: str = ""
    db: int = 0
    username: str | None = None
    password: str | None = None
    sentinel_password: str | None = None

    @property
    def is_sentinel(self) -> bool:
        return bool(self.sentinels)

    def describe(self) -> str:
        """Where, for error messages (never the password)."""
        if self.is_sentinel:
            hosts = ",".join(f"{h}:{p}" for h, p in self.sentinels)
            return f"Redis primary {self.master!r} (db {self.db}) via Sentinel {hosts}"
        rest = self.url.split("://", 1)[-1].rsplit("@", 1)[-1]
        return f"Redis at {rest}"


class InvalidRedisUrl(ModelCacheError, ValueError):
    """A Redis URL that cannot be parsed: a usage error. The message shows the URL redacted."""

    code = "invalid_redis_url"


_SECRET_PARAMS = ("password", "sentinel_password", "token")


def redact(url: str) -> str:
    """`url` (Redis or HTTP) with any password or token (userinfo or query parameter) replaced by
    `***`, for messages and logs."""
    scheme, sep, rest = url.partition("://")
    if not sep:
        scheme, rest = "", url
    rest, qmark, query = rest.partition("?")
    userinfo, at, hostpart = rest.rpartition("@")
    if at:
        user, colon, _pw = userinfo.partition(":")
        # A lone userinfo (`redis://secret@host`) is read as a username, but is often a password.
        rest = f"{user}:***@{hostpart}" if colon else f"***@{hostpart}"
    if qmark:
        pairs = []
        for pair in query.split("&"):
            key, eq, _value = pair.partition("=")
            pairs.append(f"{key}=***" if eq and key.lower() in _SECRET_PARAMS else pair)
        query = "&".join(pairs)
    return f"{scheme}{sep}{rest}{qmark}{query}"


def parse_redis_url(url: str) -> RedisTarget:
    """Parse once, fail with a sentence naming the expected form (and never the password)."""
    try:
        return _parse(url)
    except InvalidRedisUrl:
        raise
    except ValueError as exc:  # redis-py's own parser: a bad port, an unknown scheme
        raise InvalidRedisUrl(f"Redis URL {redact(url)!r}: {_without(str(exc), url)}") from None


def _without(text: str, url: str) -> str:
    """A third-party message with the URL, if it quoted it, redacted."""
    return text.replace(url, redact(url))


def _parse(url: str) -> RedisTarget:
    scheme, sep, rest = url.partition("://")
    if not sep:
        raise InvalidRedisUrl(f"Redis URL {redact(url)!r} has no scheme: use redis://host:port/db or {_FORM}")
    if scheme != SENTINEL_SCHEME:
        parse_url(url)  # fail now, with a usage error, rather than at the first command
        return RedisTarget(url)
    rest, _, query = rest.partition("?")
    params = {k: v[-1] for k, v in parse_qs(query).items()}
    userinfo, at, hostpart = rest.rpartition("@")
    username = password = None
    if at:
        user, colon, pw = userinfo.partition(":")
        username = unquote(user) or None
        password = unquote(pw) if colon else None
    hosts, _, path = hostpart.partition("/")
    parts = [p for p in path.split("/") if p]
    if not hosts or not parts or len(parts) > 2:
        raise InvalidRedisUrl(f"Redis URL {redact(url)!r}: expected {_FORM}")
    sentinels = []
    for item in hosts.split(","):
        host, colon, port = item.strip().rpartition(":") if ":" in item else (item.strip(), "", "")
        if not host:
            raise InvalidRedisUrl(f"Redis URL {redact(url)!r}: empty Sentinel host in {hosts!r}")
        try:
            sentinels.append((host.strip("[]"), int(port) if colon else DEFAULT_SENTINEL_PORT))
        except ValueError:
            bad = f"Redis URL {redact(url)!r}: Sentinel port {port!r} is not a number"
            raise InvalidRedisUrl(bad) from None
    try:
        db = int(parts[1]) if len(parts) == 2 else 0
    except ValueError:
        raise InvalidRedisUrl(f"Redis URL {redact(url)!r}: database {parts[1]!r} is not a number") from None
    return RedisTarget(
        url,
        tuple(sentinels),
        unquote(parts[0]),
        db,
        username,
        password,
        params.get("sentinel_password"),
    )


_FORM = f"{SENTINEL_SCHEME}://host:port[,host:port...]/<master>/<db>"


def client_for(target: RedisTarget, *, timeout: float, decode_responses: bool) -> redis.Redis:
    """A fail-fast client (no retries, short timeouts) for a plain Redis or a Sentinel-managed primary."""
    common: dict[str, Any] = {
        "socket_connect_timeout": min(timeout, 1.0),
        "socket_timeout": timeout,
        "retry": Retry(NoBackoff(), 0),
    }
    options: dict[str, Any] = {
        **common,
        "decode_responses": decode_responses,
        # Any key may hold non-UTF-8 bytes (a hand-edited value): decode them as U+FFFD, which
        # then fails validation like any other junk, instead of raising inside redis-py.
        "encoding_errors": "replace",
    }
    if not target.is_sentinel:
        return redis.Redis.from_url(target.url, **options)
    sentinel = Sentinel(
        list(target.sentinels),
        sentinel_kwargs={**common, "password": target.sentinel_password},
    )
    # The pool asks the Sentinels for the primary on every new connection; a connection to a
    # primary that was demoted answers READONLY, which redis-py turns into a reconnect.
    client = sentinel.master_for(
        target.master,
        redis_class=SentinelRedis,
        db=target.db,
        username=target.username,
        password=target.password,
        **options,
    )
    client.sentinel = sentinel
    return client


class SentinelRedis(redis.Redis):
    """A client of the Sentinel-managed primary that also closes its Sentinel connections."""

    sentinel: Sentinel | None = None

    def close(self) -> None:
        try:
            super().close()
        finally:
            for conn in self.sentinel.sentinels if self.sentinel else ():
                conn.close()
