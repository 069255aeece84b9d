"""HAProxy's runtime API (the admin-level stats socket): the few commands the agent needs.

One connection per batch, in prompt mode, so a batch of commands (a whole map replacement)
costs one round trip. Addresses: a unix socket path, or `host:port` (Compose, Kubernetes:
the runtime API on the pod's loopback).
"""

from __future__ import annotations

import re
import socket
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

__all__ = ["RuntimeAPI", "RuntimeAPIError", "Server"]

_PROMPT = "\n> "
_RATE = re.compile(r"\bkey=(\S+) .*\bhttp_req_rate\(\d+\)=(\d+)")
_VERSION = re.compile(r"New version created: (\d+)")


class RuntimeAPIError(Exception):
    """HAProxy's runtime API is unreachable or answered something unexpected."""


@dataclass(frozen=True)
class Server:
    """A server of a backend, as `show servers state` lists it."""

    name: str
    addr: str
    port: int
    fqdn: str

    def is_at(self, host: str, port: int) -> bool:
        """Whether `host:port` (a node's advertised URL) names this server."""
        if port != self.port:
            return False
        host = host.lower().rstrip(".")
        names = {self.addr.lower(), self.fqdn.lower().rstrip(".")} - {"", "-"}
        return any(host == n or n.startswith(host + ".") or host.startswith(n + ".") for n in names)


class RuntimeAPI:
    def __init__(self, address: str, timeout: float = 5.0) -> None:
        self.address, self.timeout = address, timeout

    def run(self, commands: Sequence[str]) -> list[str]:
        """Send `commands` in one connection; each command's answer, in order."""
        try:
            with self._connect() as s:
                s.sendall(("prompt\n" + "".join(c + "\n" for c in commands) + "quit\n").encode())
                chunks = []
                while chunk := s.recv(1 << 16):
                    chunks.append(chunk)
        except OSError as exc:
            raise RuntimeAPIError(f"HAProxy's runtime API at {self.address}: {exc}") from exc
        parts = b"".join(chunks).decode(errors="replace").split(_PROMPT)
        if len(parts) < len(commands) + 1:
            raise RuntimeAPIError(f"HAProxy's runtime API at {self.address} closed early")
        return [p.strip("\n") for p in parts[1 : len(commands) + 1]]

    def _connect(self) -> socket.socket:
        if ":" in self.address and not self.address.startswith("/"):
            host, port = self.address.rsplit(":", 1)
            return socket.create_connection((host, int(port)), timeout=self.timeout)
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        s.settimeout(self.timeout)
        try:
            s.connect(self.address)
        except OSError:
            s.close()
            raise
        return s

    def servers(self, backend: str) -> list[Server]:
        [text] = self.run([f"show servers state {backend}"])
        out = []
        for line in text.splitlines():
            f = line.split()
            if len(f) >= 19 and not line.startswith("#") and f[1] == backend:
                out.append(Server(name=f[3], addr=f[4], port=int(f[18]), fqdn=f[17]))
        return out

    def rates(self, table: str) -> dict[str, int]:
        """Each key's http_req_rate in stick table `table`."""
        [text] = self.run([f"show table {table}"])
        return {m[1]: int(m[2]) for m in map(_RATE.search, text.splitlines()) if m}

    def map_size(self, map_name: str) -> int | None:
        """Entries in map `map_name` (None when HAProxy has no such map)."""
        [text] = self.run(["show map"])
        for line in text.splitlines():
            if f"({map_name})" in line:
                m = re.search(r"entry_cnt=(\d+)", line)
                return int(m[1]) if m else None
        return None

    def replace_map(self, map_name: str, entries: Iterable[tuple[str, str]]) -> None:
        """Swap the map's whole content at once (prepare, add to the new version, commit)."""
        [answer] = self.run([f"prepare map {map_name}"])
        found = _VERSION.search(answer)
        if found is None:
            raise RuntimeAPIError(f"prepare map {map_name}: {answer.strip()[:200]}")
        v = found[1]
        commands = [f"add map @{v} {map_name} {k} {value}" for k, value in entries]
        answers = self.run([*commands, f"commit map @{v} {map_name}"])
        bad = [a for a in answers if a.strip()]
        if bad:
            raise RuntimeAPIError(f"updating map {map_name}: {bad[0][:200]}")
