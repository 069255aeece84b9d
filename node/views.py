"""JSON views of the node's cache and models, built from plain data.

Kept apart so the HTTP layer can render them where it serves them;
`Loads.stats()` and the v1 model listing build on these.
"""

from __future__ import annotations

import time
from typing import Any

from coordinator.errors import RegistryError
from coordinator.versions import latest_stable
from node.cache import CacheStats


def cache_stats_view(s: CacheStats) -> dict[str, Any]:
    """What `/api/v1/cache/stats` returns (without `node_id`).

    `cache_bytes` and each model's `resident_bytes` are what the byte budget
    charges (resident memory, node.memory); `size_bytes` is the artifact's size.
    """
    lookups = s.hits + s.misses
    return {
        "cache_size": s.capacity,
        "cached_models": s.size,
        "cache_hits": s.hits,
        "cache_misses": s.misses,
        "hit_rate": round(s.hits / lookups, 6) if lookups else 0.0,
        "miss_rate": round(s.misses / lookups, 6) if lookups else 0.0,
        "evictions": s.evictions,
        "evictions_by_reason": s.evictions_by_reason,
        "total_loads": s.loads,
        "cache_bytes": s.bytes,
        "cache_max_bytes": s.max_bytes,
        "cache_policy": s.policy,
        "cache_idle_ttl_s": s.idle_ttl_s,
        # Ghost caches' estimate at 1x, 2x, 4x the capacity (node.curve); `max_bytes` under a byte budget.
        "hit_ratio_curve": [point.to_json() for point in s.hit_ratio_curve],
        "models": [
            {
                "model_type": e["key"][0],
                "version": e["key"][1],
                "size_bytes": e["value"].meta.size_bytes,
                "resident_bytes": e["resident_bytes"],
                "hits": e["hits"],
                "uses": e["uses"],  # the load and every hit, across reloads and warm restarts
                "loaded_at": _iso(e["loaded_at"]),
                "last_used": _iso(e["last_used"]),
            }
            for e in s.entries
        ],
    }


def models_view(
    scan: dict[str, list[str] | RegistryError],
    pins: dict[str, str],
    serving: dict[str, str],
    cached: dict[str, list[str]],
) -> list[dict[str, Any]]:
    """Every model type; one whose files cannot be read is listed with an `error`."""
    out = []
    for mt, found in sorted(scan.items()):
        entry: dict[str, Any] = {"model_type": mt}
        if isinstance(found, RegistryError):
            entry |= {"versions": [], "latest": None, "error": str(found)}
        else:
            entry |= {"versions": found, "latest": latest_stable(found)}
        entry |= {"pin": pins.get(mt), "serving": serving.get(mt), "cached": cached.get(mt, [])}
        out.append(entry)
    return out


def _iso(ts: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(ts))
