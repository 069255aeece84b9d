"""A background thread that runs one function periodically and never dies silently.

It catches everything at its top, logs it (a traceback per task at most every 30 s, so an
error that repeats cannot flood the log), backs off (`node.background.Backoff`, up to
ten intervals) and goes on; `problem()` reports it in /readyz's body (degraded, still ready) when it has not
succeeded for three intervals, and each failure counts in
`modelcache_background_errors_total{thread}`.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable

from prometheus_client import Counter

from coordinator.link import LogThrottle
from node.background import Backoff

log = logging.getLogger("modelcache.periodic")


class Periodic:
    """Run `fn` every `interval_s` seconds on a daemon thread until `stop()`."""

    def __init__(
        self,
        name: str,
        fn: Callable[[], object],
        interval_s: float,
        errors: Counter | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if interval_s <= 0:
            raise ValueError("interval_s must be positive")
        self.name, self.fn, self.interval_s = name, fn, interval_s
        self._errors = errors
        self._clock = clock
        self._stop = threading.Event()
        self.last_ok = clock()
        self.failures = 0
        self.last_error = ""
        self._throttle = LogThrottle()
        self._thread = threading.Thread(target=self._run, name=f"modelcache-{name}", daemon=True)

    def start(self) -> Periodic:
        self._thread.start()
        return self

    def stop(self, timeout: float | None = 5.0) -> None:
        self._stop.set()
        if self._thread.is_alive() and self._thread is not threading.current_thread():
            self._thread.join(timeout)

    def run_once(self) -> bool:
        """One tick: True if `fn` succeeded (errors are logged and counted, never raised)."""
        try:
            self.fn()
        except Exception as exc:
            self.failures += 1
            self.last_error = f"{type(exc).__name__}: {exc}"
            if self._errors is not None:
                self._errors.labels(self.name).inc()
            if self._throttle.allow(self.name):
                log.exception("background task %s failed (%d in a row)", self.name, self.failures)
            return False
        self.failures = 0
        self.last_ok = self._clock()
        return True

    def problem(self) -> str | None:
        """Why this task is unhealthy (for /readyz), or None."""
        if not self._thread.is_alive() and self._thread.ident is not None and not self._stop.is_set():
            return f"background task {self.name} stopped"
        stale = self._clock() - self.last_ok
        if self.failures and stale > 3 * self.interval_s:
            return f"background task {self.name} failing for {stale:.0f}s: {self.last_error}"
        return None

    def _run(self) -> None:
        backoff = Backoff(base=self.interval_s, cap=10 * self.interval_s)  # the sync threads' jitter too
        wait = self.interval_s
        while not self._stop.wait(wait):
            if self.run_once():
                backoff.reset()
                wait = self.interval_s
            else:
                wait = backoff.next()
