"""Warm restart: save what the cache holds, and at start restore the hottest of it before /readyz.

With `MODELCACHE_STATE_DIR` a node writes its cached models (model, version, uses) to a state
file (`node.cache_state`) every `STATE_SAVE_INTERVAL_S` and at shutdown. At start, once the
cluster state is read (pins), it restores the hottest saved entries:

* each saved default version resolves again like a request naming no version (pin, else
  latest stable), so a model pinned or published in the meantime comes back as the version
  the cluster now wants; an explicit version comes back as itself; a model type or version
  gone from the registry is skipped;
* hottest first, only what fits the cache's free slots and byte budget (by the resident bytes
  saved), so a restore never evicts what it restored;
* through the one verified load path (`Loads.prefetch`: checksum before deserializing,
  invariant 5), in parallel on the load pool, within `RESTORE_BUDGET_S`: a load still
  running then finishes after the node turned ready;
* each restored entry keeps its uses, so LFU, ARC and the cost policy rank it by its record
  (`Cache.seed`), and LRU gets its saved recency back (`Cache.arrange`).

The file is a hint (invariant 7): a missing or bad one is logged and the node starts cold.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from concurrent.futures import Future, wait
from dataclasses import dataclass
from pathlib import Path

from coordinator.errors import ModelCacheError, ModelNotFound, RegistryError
from coordinator.versions import normalize_version
from node.cache_state import CacheState, SavedEntry, StateFileError, read_state, write_state
from node.loads import Loads
from node.metrics import NodeMetrics
from node.periodic import Periodic
from node.resolver import Key, Resolver
from node.runtimes import LoadedModel

log = logging.getLogger("modelcache.restore")

__all__ = ["Planned", "WarmRestart", "plan_restore"]

LOGGED_SKIPS = 10
"""Skipped entries logged one by one; the rest only in the summary line's count."""


@dataclass(frozen=True)
class Planned:
    """One model to restore: the key resolved now, and the saved entry it came from."""

    key: Key
    entry: SavedEntry


def plan_restore(
    entries: list[SavedEntry],
    resolve: Callable[[SavedEntry], Key | None],
    free_slots: int,
    free_bytes: int | None,
) -> tuple[list[Planned], int]:
    """The hottest entries that resolve and fit, hottest first; and how many did not fit.

    `resolve` gives the key to load now, or None (gone: skipped, not counted here). Two
    entries resolving to one key (an old default and the new one) restore it once.
    """
    planned: list[Planned] = []
    seen: set[Key] = set()
    no_room = 0
    for entry in entries:
        key = resolve(entry)
        if key is None or key in seen:
            continue
        seen.add(key)
        cost = entry.resident_bytes
        if len(planned) >= free_slots or (free_bytes is not None and cost > free_bytes):
            no_room += 1
            continue
        if free_bytes is not None:
            free_bytes -= cost
        planned.append(Planned(key, entry))
    return planned, no_room


class WarmRestart:
    """Saves the cache's entries to a state file and restores them at the next start."""

    def __init__(
        self,
        path: Path,
        node_id: str,
        loads: Loads,
        resolver: Resolver,
        metrics: NodeMetrics,
        *,
        budget_s: float = 10.0,
        save_interval_s: float = 30.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.path, self.node_id = path, node_id
        self.loads, self.resolver, self.metrics = loads, resolver, metrics
        self.budget_s, self.save_interval_s = budget_s, save_interval_s
        self._clock = clock
        self._saver: Periodic | None = None
        self._restored = False  # until then a save would overwrite the file with a cold cache
        self._stopped = False

    # -- saving --------------------------------------------------------------------
    def snapshot(self) -> CacheState:
        """What the cache holds now, hottest first."""
        stats = self.loads.cache.stats()
        entries = [
            SavedEntry(
                model_type=e["key"][0],
                version=e["key"][1],
                uses=e["uses"],
                last_used=e["last_used"],
                resident_bytes=e["resident_bytes"],
                default=self.resolver.served(e["key"][0]) == e["key"][1],
            )
            for e in stats.entries
        ]
        return CacheState(self.node_id, time.time(), entries)

    def save(self) -> bool:
        """Write the state file (atomically); False while the restore has not run yet."""
        if not self._restored:
            return False
        write_state(self.path, self.snapshot())
        return True

    def start_saving(self) -> None:
        if self._saver is None and not self._stopped:  # a restore ending after shutdown starts none
            errors = self.metrics.background_errors
            self._saver = Periodic("state-save", self.save, self.save_interval_s, errors)
            self._saver.start()

    def stop(self) -> None:
        """The node's shutdown: stop the periodic save, then save one last time."""
        self._stopped = True
        if self._saver is not None:
            self._saver.stop()
        try:
            if self.save():
                log.info("saved the cache state to %s", self.path)
        except OSError as exc:
            log.error("could not save the cache state to %s: %s", self.path, exc)

    def problem(self) -> str | None:
        """A periodic save that keeps failing (for /readyz's degraded list)."""
        return self._saver.problem() if self._saver is not None else None

    # -- restoring -----------------------------------------------------------------
    def restore(self) -> list[str]:
        """Load the hottest saved models within the budget; return `type:version` of those loaded."""
        started = self._clock()
        try:
            return self._restore(started)
        except Exception:  # a restore that breaks must not stop the warm-up after it
            log.exception("warm restart failed; starting with what is cached")
            return []
        finally:
            self._restored = True
            self.metrics.restore_seconds.set(self._clock() - started)
            self.start_saving()

    def _restore(self, started: float) -> list[str]:
        try:
            state = read_state(self.path)
        except StateFileError as exc:
            log.error("warm restart: ignoring the state file, starting cold: %s", exc)
            return []
        if state is None:
            log.info("warm restart: no state file at %s, starting cold", self.path)
            return []
        if state.dropped:
            log.warning("warm restart: %d malformed entries in %s ignored", state.dropped, self.path)
        deadline = started + self.budget_s
        gone = out_of_time = 0

        def resolve(entry: SavedEntry) -> Key | None:
            nonlocal gone, out_of_time
            if self._clock() >= deadline:  # resolving reads the registry: it spends the budget too
                out_of_time += 1
                return None
            try:
                key = self._resolve(entry)
            except (ModelNotFound, RegistryError, ModelCacheError) as exc:
                if gone < LOGGED_SKIPS:  # a file of thousands must not flood the log: the summary counts all
                    log.info("warm restart: skipping %s %s: %s", entry.model_type, entry.version, exc)
                gone += 1
                return None
            return key

        cache = self.loads.cache
        free_bytes = None if cache.max_bytes is None else max(0, cache.max_bytes - cache.total_bytes)
        planned, no_room = plan_restore(state.hottest(), resolve, cache.capacity - len(cache), free_bytes)
        futures: dict[Future[LoadedModel], Planned] = {
            self.loads.prefetch(p.key, p.entry.uses): p for p in planned
        }
        done, late = wait(futures, timeout=max(0.0, deadline - self._clock()))
        restored, failed = [], 0
        for future in done:
            p = futures[future]
            if future.exception() is None:
                restored.append(p)
            else:
                failed += 1
                log.warning("warm restart: %s %s did not load: %s", *p.key, future.exception())
        # LRU and ARC: the saved recency, least recent first (loads landed in any order).
        cache.arrange([p.key for p in sorted(restored, key=lambda p: p.entry.last_used)])
        self._count(len(restored), gone=gone, failed=failed, room=no_room, budget=len(late) + out_of_time)
        loaded = [f"{p.key[0]}:{p.key[1]}" for p in sorted(restored, key=lambda p: -p.entry.uses)]
        log.info(
            "warm restart: restored %d of %d saved models in %.2fs (%s); skipped: %d gone, "
            "%d failed, %d without room, %d past the %.1fs budget",
            len(restored),
            len(state.entries),
            self._clock() - started,
            ", ".join(loaded) or "none",
            gone,
            failed,
            no_room,
            len(late) + out_of_time,
            self.budget_s,
        )
        return loaded

    def _resolve(self, entry: SavedEntry) -> Key:
        """The key to restore: a saved default resolves again like a request naming no version."""
        if entry.default:
            return (entry.model_type, self.resolver.default_version(entry.model_type))
        self.resolver.check_known(entry.model_type)
        return (entry.model_type, normalize_version(entry.version))

    def _count(self, restored: int, **skipped: int) -> None:
        self.metrics.restored_models.inc(restored)
        for reason, n in skipped.items():
            if n:
                self.metrics.restore_skipped.labels(reason).inc(n)
