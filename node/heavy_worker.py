"""Heavy XGBoost predicts in a worker process under SCHED_IDLE (`HEAVY_PREDICT_SCHED=process`).

Why a process: a SCHED_IDLE thread is preempted the moment anything else on its
CPU wakes (the event loop on a new request, a client on the same machine), which
keeps a small model's p99 near its p99 alone beside 1,000-row batches of a
3,000-tree model (`bench_isolation`; at nice +10 a woken thread waits out the nice
thread's slice, up to a 4 ms tick). But inside the node a SCHED_IDLE thread shares
the GIL with the event loop, and while other processes fill the CPUs it gets no CPU
to hand the GIL back: the loop stalls for up to ~1 s (docs/design.md, "Isolation
between models"). A worker process has its own GIL, and the node waits for it on a
socket from the event loop itself: no thread to wake, no GIL to share. A starved
worker delays its own model's predicts, never the loop (and the batcher's
starvation guard answers those from the node after its patience).

The node sends each booster once, as UBJ bytes serialised from the model it already
verified and loaded; a worker keeps at most `max_models` of them (least recently
used dropped first): that is the extra memory this mode costs, outside the cache's
byte budget. A worker that dies, answers junk or stays silent past
`reply_timeout_s` is killed (`WorkerGone`); the batcher then predicts in the node.

Frames are a 4-byte big-endian length and a pickle, over a socketpair between the
node and the child it spawned: nothing else holds either end (no path, no port).

The worker is `python -c _LAUNCH FD`, started by `HeavyWorker.start`, never by hand.
"""

from __future__ import annotations

import asyncio
import logging
import os
import pickle
import socket
import struct
import subprocess
import sys
import time
from collections import OrderedDict
from typing import Any

import numpy as np

from node.runtimes.base import Predictions

log = logging.getLogger("modelcache.batching")

MAX_MODELS = 4
"""Boosters one worker keeps loaded (each a copy of one the cache holds)."""
START_TIMEOUT_S = 30.0
REPLY_TIMEOUT_S = 60.0
"""A worker silent this long is wedged (or starved for a minute): killed, and the batch runs in the node."""
MAX_FRAME = 1 << 30
_HEADER = struct.Struct("!I")
# The worker lowers itself before importing anything: its start-up (numpy, then XGBoost at
# its first model: ~0.5 s of CPU) must not compete with the node it is there to yield to.
# It ignores Ctrl-C (a terminal sends SIGINT to the node's whole process group: the node
# drains its requests, then closes the socket, which ends the worker), and asks the kernel
# for SIGKILL when the node dies (a stopped worker never reads the EOF; PR_SET_PDEATHSIG
# follows the thread that spawned it: the event loop's, which lives as long as the node).
_LAUNCH = (
    "import ctypes, signal, sys; signal.signal(signal.SIGINT, signal.SIG_IGN); "
    "sys.platform.startswith('linux') and ctypes.CDLL(None).prctl(1, 9); "
    "from node.priority import lower_this_thread; runs_as = lower_this_thread('idle', 19); "
    "from node.heavy_worker import main; main(int(sys.argv[1]), runs_as)"
)


class WorkerGone(Exception):
    """The worker died, answered junk, failed or stayed silent: predict in the node instead."""


class ModelRefused(WorkerGone):
    """The worker could not load this one model (it is fine otherwise): predict it in the node."""


class HeavyWorker:
    """One SCHED_IDLE worker process and the socket to it, used from one event loop, one call at a time."""

    def __init__(
        self,
        process: subprocess.Popen[bytes],
        sock: socket.socket,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        max_models: int,
        reply_timeout_s: float,
    ) -> None:
        self.process, self._socket, self._reader, self._writer = process, sock, reader, writer
        self.max_models, self.reply_timeout_s = max_models, reply_timeout_s
        self._models: OrderedDict[int, None] = OrderedDict()  # tokens it holds, oldest first
        self.lock = asyncio.Lock()
        """Held by the caller for a whole exchange: replies come in the order of requests."""
        self.closed = False
        """Whether the node closed it (after a failure it reported, or at shutdown)."""
        self.runs_as = "?"
        """What the worker runs as: "SCHED_IDLE", or its fallback where that was refused."""

    @classmethod
    async def start(
        cls, max_models: int = MAX_MODELS, reply_timeout_s: float = REPLY_TIMEOUT_S
    ) -> HeavyWorker:
        """Spawn a worker and wait for it to say it runs (and as what)."""
        ours, theirs = socket.socketpair()
        # Not the node's settings (a Redis password, the admin token): the worker needs none of them.
        env = {k: v for k, v in os.environ.items() if not k.startswith("MODELCACHE_")}
        env["OMP_NUM_THREADS"] = "1"  # one thread: the point is to yield the CPU
        try:
            process = subprocess.Popen(
                [sys.executable, "-c", _LAUNCH, str(theirs.fileno())],
                pass_fds=(theirs.fileno(),),
                stdin=subprocess.DEVNULL,
                env=env,
            )
        except BaseException:
            ours.close()
            raise
        finally:
            theirs.close()
        try:
            reader, writer = await asyncio.open_unix_connection(sock=ours, limit=1 << 20)
        except BaseException:
            ours.close()
            process.kill()
            process.wait()
            raise
        worker = cls(process, ours, reader, writer, max_models, reply_timeout_s)
        hello = await worker._reply(START_TIMEOUT_S)
        if not (isinstance(hello, tuple) and len(hello) == 2 and hello[0] == "ready"):
            worker.close()
            raise WorkerGone(f"heavy predict worker said {str(hello)[:200]} at start")
        worker.runs_as = str(hello[1])
        return worker

    @property
    def pid(self) -> int:
        return self.process.pid

    def alive(self) -> bool:
        return self.process.poll() is None and not self._writer.is_closing()

    def holds(self, token: int) -> bool:
        return token in self._models

    async def load(self, token: int, ubj: bytes) -> None:
        """Give the worker booster `token` (UBJ bytes); past `max_models` it drops the least recently used."""
        drop = []
        while len(self._models) >= self.max_models:
            drop.append(self._models.popitem(last=False)[0])
        self._send(("load", token, drop), ubj)  # the bytes as they are: no pickled copy on the loop
        reply = await self._reply(self.reply_timeout_s)
        if reply == ("loaded", token):
            self._models[token] = None
            return
        if isinstance(reply, tuple) and reply[:1] == ("error",):
            raise ModelRefused(f"heavy predict worker could not load the model: {str(reply[1:])[:200]}")
        self.close()
        raise WorkerGone(f"heavy predict worker answered {str(reply)[:200]} to a load")

    async def predict(self, token: int, x: np.ndarray) -> tuple[Predictions, float]:
        """Outputs of booster `token` (loaded) for `x`, and the worker's CPU seconds for them."""
        if token not in self._models:
            raise WorkerGone("heavy predict worker does not hold the model")
        self._models.move_to_end(token)
        self._send(("predict", token, np.ascontiguousarray(x, dtype=np.float32)))
        reply = await self._reply(self.reply_timeout_s)
        if isinstance(reply, tuple) and len(reply) == 4 and reply[0] == "done":
            _, labels, probabilities, cpu = reply
            if isinstance(labels, np.ndarray) and len(labels) == len(x):
                return Predictions(labels, probabilities), float(cpu)
        if isinstance(reply, tuple) and reply[:1] == ("error",):  # the model failed; the worker is fine
            raise WorkerGone(f"heavy predict worker failed: {str(reply[1:])[:200]}")
        self.close()
        raise WorkerGone(f"heavy predict worker answered {str(reply)[:200]}")

    def close(self) -> None:
        """Kill the worker (it holds nothing that needs a clean stop) and reap it."""
        self.closed = True
        try:
            self._writer.close()
        except RuntimeError:  # its event loop is closed (a test's asyncio.run ended)
            self._socket.close()
        if self.process.poll() is None:
            self.process.kill()
        try:
            self.process.wait(timeout=5)
        except subprocess.TimeoutExpired:  # pragma: no cover - SIGKILL not reaped in 5 s
            log.warning("heavy predict worker %s did not exit", self.process.pid)

    def _send(self, message: tuple[Any, ...], raw: bytes | None = None) -> None:
        """`message` pickled in one frame, then `raw` (if any) in the next."""
        if not self.alive():
            self.close()
            raise WorkerGone("heavy predict worker gone")
        payload = pickle.dumps(message, protocol=pickle.HIGHEST_PROTOCOL)
        frames = [_HEADER.pack(len(payload)), payload]
        if raw is not None:
            frames += [_HEADER.pack(len(raw)), raw]
        self._writer.writelines(frames)

    async def _reply(self, timeout_s: float) -> Any:
        try:
            async with asyncio.timeout(timeout_s):
                await self._writer.drain()
                (size,) = _HEADER.unpack(await self._reader.readexactly(_HEADER.size))
                if size > MAX_FRAME:
                    raise WorkerGone(f"heavy predict worker sent a {size}-byte frame")
                return pickle.loads(await self._reader.readexactly(size))
        except TimeoutError:
            self.close()
            raise WorkerGone(f"heavy predict worker silent for {timeout_s:.0f} s") from None
        except (OSError, EOFError, asyncio.IncompleteReadError, pickle.UnpicklingError) as exc:
            self.close()
            raise WorkerGone(f"heavy predict worker gone: {type(exc).__name__}") from exc
        except (WorkerGone, asyncio.CancelledError):  # cancelled: a late reply would be read as the next
            self.close()
            raise


def _read_frame(sock: socket.socket) -> bytes | None:
    """One frame's payload, or None at the end of the stream (the node closed it, or died)."""
    header = _read_exactly(sock, _HEADER.size)
    if header is None:
        return None
    return _read_exactly(sock, _HEADER.unpack(header)[0])


def _read_exactly(sock: socket.socket, size: int) -> bytes | None:
    buffer = bytearray(size)
    view, got = memoryview(buffer), 0
    while got < size:
        n = sock.recv_into(view[got:])
        if n == 0:
            return None
        got += n
    return bytes(buffer)


def main(fd: int, runs_as: str) -> None:
    """The worker (already lowered, as `runs_as` says): serve the node on socket `fd`."""
    logging.basicConfig(level=logging.WARNING)
    serve(socket.socket(fileno=fd), runs_as)


def serve(sock: socket.socket, runs_as: str) -> None:
    """Load and predict until the node closes the socket."""
    from node.runtimes import xgboost as runtime  # the library, only in the process that needs it

    def send(message: tuple[Any, ...]) -> None:
        payload = pickle.dumps(message, protocol=pickle.HIGHEST_PROTOCOL)
        sock.sendall(_HEADER.pack(len(payload)) + payload)

    send(("ready", runs_as))
    models: dict[int, Any] = {}
    while (frame := _read_frame(sock)) is not None:
        message = pickle.loads(frame)  # from the node that started this process, over a socketpair
        try:
            if message[0] == "load":
                _, token, drop = message
                raw = _read_frame(sock)
                if raw is None:
                    return
                for old in drop:
                    models.pop(old, None)
                models[token] = runtime.load(raw)
                send(("loaded", token))
            else:
                _, token, x = message
                cpu = time.thread_time()
                out = models[token].predict(x)
                send(("done", out.labels, out.probabilities, time.thread_time() - cpu))
        except Exception as exc:  # the node predicts in-process, and answers with its own error
            send(("error", type(exc).__name__))
