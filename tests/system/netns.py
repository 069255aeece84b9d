"""Test hosts in their own network namespaces on one virtual switch: build, run, cut, heal, remove.

Each host is a namespace `<tag>-<host>` with one interface, eth0, holding its own address
in 10.77.0.0/24; eth0's veth peer is a port of a bridge in the namespace `<tag>-switch`.
Nothing is created in the root namespace (every link is made directly inside the test's
namespaces), no namespace has a default route, so the test's traffic cannot leave them:
the only way in from the test process is a Unix socket (see uds_relay.py).

A cut between two hosts is a silent drop both ways, as on a real partition: no ICMP
error, no reset, each side sees only timeouts. The switch drops the packets, on the
bridge ports that lead to the two hosts, so neither host's kernel knows: a drop in the
sender's own queue is not the same (its TCP gives up an established connection with
ETIMEDOUT after ~8 s, checked here, where a real network leaves it retransmitting for
minutes), and a blackhole route fails the sender's calls at once (EINVAL).
Each port has an HTB root with a u32 filter per cut sending the packets to a
`pfifo limit 0` leaf, because those are what this machine's kernel has: netem, prio
and every tc action (drop) are missing, and iptables/nft are not installed.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import time
from collections.abc import Mapping, Sequence
from pathlib import Path

import pytest

from coordinator.processes import stop_process

SUBNET = "10.77.0"
"""A private range that exists only inside the test's namespaces."""
DROP_CLASS = "1:2"
_STALE = re.compile(r"^mc-(\d+)-")
_INSTALL = "apt-get install iproute2"


def _run(*argv: str) -> subprocess.CompletedProcess[str]:
    done = subprocess.run(argv, capture_output=True, text=True, timeout=30)
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)}: exit {done.returncode}: {done.stderr.strip()}")
    return done


def require_netns() -> None:
    """Skip unless namespaces and cuts can be made here; fail instead when CI=true (as require_binary)."""
    reason = _missing()
    if reason is None:
        return
    if os.environ.get("CI") == "true":
        pytest.fail(f"{reason} (CI must run this test, not skip it)")
    pytest.skip(reason)


def _missing() -> str | None:
    """Why this machine cannot run a namespaced test, or None when it can (checked by doing it)."""
    if os.geteuid() != 0:
        return "creating network namespaces needs root"
    for tool in ("ip", "tc"):
        if shutil.which(tool) is None:
            return f"{tool} is not installed: {_INSTALL}"
    probe = Topology({"a": 11, "b": 12}, tag=f"mc-{os.getpid()}-probe")
    try:
        probe.build()
        probe.cut("a", "b")
    except (RuntimeError, OSError, subprocess.TimeoutExpired) as exc:
        return f"cannot build test namespaces with a veth, a bridge and a tc drop filter: {exc}"
    finally:
        probe.close()
    return None


def remove_stale_namespaces() -> None:
    """Delete `mc-<pid>-*` namespaces whose test process is gone and that hold no process (a killed run's)."""
    listed = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True, timeout=30)
    for line in listed.stdout.splitlines():
        name = line.split(" ", 1)[0]
        match = _STALE.match(name)
        if match is None or _alive(int(match.group(1))):
            continue
        pids = subprocess.run(["ip", "netns", "pids", name], capture_output=True, text=True, timeout=30)
        if pids.returncode == 0 and not pids.stdout.strip():
            subprocess.run(["ip", "netns", "del", name], capture_output=True, timeout=30)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class Topology:
    """Hosts (name -> last octet of the address) on one bridge; processes run inside them.

    close() stops every process started through run() by PID, then deletes every namespace
    made; it is safe after a partial build().
    """

    def __init__(self, hosts: Mapping[str, int], tag: str | None = None) -> None:
        if "switch" in hosts:
            raise ValueError("'switch' names the bridge's namespace; call the host something else")
        self.hosts = dict(hosts)
        self.tag = tag or f"mc-{os.getpid()}"
        self.processes: list[subprocess.Popen[bytes]] = []
        self._namespaces: list[str] = []

    def ns(self, host: str) -> str:
        return f"{self.tag}-{host}"

    def address(self, host: str) -> str:
        return f"{SUBNET}.{self.hosts[host]}"

    def build(self) -> Topology:
        switch = self._add_namespace("switch")
        _run("ip", "-n", switch, "link", "add", "br0", "type", "bridge")
        _run("ip", "-n", switch, "link", "set", "br0", "up")
        for host in self.hosts:
            ns = self._add_namespace(host)
            port = self.port(host)
            _run("ip", "-n", switch, "link", "add", port, "type", "veth", "peer", "name", "eth0", "netns", ns)
            _run("ip", "-n", switch, "link", "set", port, "master", "br0", "up")
            _run("ip", "-n", ns, "addr", "add", f"{self.address(host)}/24", "dev", "eth0")
            _run("ip", "-n", ns, "link", "set", "eth0", "up")
            # Frames to `host` leave the switch through `port`: class 1:1 passes them (the
            # default), cut() files the packets of a cut-off sender under 1:2, which holds none.
            tc = ("tc", "-n", switch)
            _run(*tc, "qdisc", "add", "dev", port, "root", "handle", "1:", "htb", "default", "1")
            for classid in ("1:1", DROP_CLASS):
                _run(*tc, "class", "add", "dev", port, "parent", "1:", "classid", classid, "htb",
                     "rate", "10gbit", "quantum", "60000")  # fmt: skip
            _run(
                *tc, "qdisc", "add", "dev", port, "parent", DROP_CLASS, "handle", "2:", "pfifo", "limit", "0"
            )
        return self

    def _add_namespace(self, host: str) -> str:
        ns = self.ns(host)
        _run("ip", "netns", "add", ns)
        self._namespaces.append(ns)
        _run("ip", "-n", ns, "link", "set", "lo", "up")
        return ns

    def run(
        self,
        host: str,
        argv: Sequence[str],
        log: Path,
        env: Mapping[str, str] | None = None,
        cwd: Path | None = None,
    ) -> subprocess.Popen[bytes]:
        """Start `argv` inside `host`'s namespace (`ip netns exec` execs it: the PID is the process's own)."""
        with log.open("ab") as out:
            proc = subprocess.Popen(
                ["ip", "netns", "exec", self.ns(host), *argv],
                env={**os.environ, **(env or {})},
                cwd=cwd,
                stdout=out,
                stderr=subprocess.STDOUT,
            )
        self.processes.append(proc)
        return proc

    def port(self, host: str) -> str:
        """The bridge port (in the switch namespace) that leads to `host`."""
        return f"p-{host}"[:15]

    def cut(self, a: str, b: str) -> None:
        """Drop every IP packet between hosts a and b, both ways, silently, in the switch."""
        for sender, receiver in ((a, b), (b, a)):
            _run("tc", "-n", self.ns("switch"), "filter", "add", "dev", self.port(receiver), "parent", "1:",
                 "protocol", "ip", "prio", str(self.hosts[sender]), "u32", "match", "ip", "src",
                 f"{self.address(sender)}/32", "flowid", DROP_CLASS)  # fmt: skip

    def heal(self, a: str, b: str) -> None:
        for sender, receiver in ((a, b), (b, a)):
            _run("tc", "-n", self.ns("switch"), "filter", "del", "dev", self.port(receiver), "parent", "1:",
                 "protocol", "ip", "prio", str(self.hosts[sender]))  # fmt: skip

    def close(self) -> None:
        for proc in reversed(self.processes):
            stop_process(proc)
        self.processes.clear()
        for ns in reversed(self._namespaces):
            subprocess.run(["ip", "netns", "del", ns], capture_output=True, timeout=30)
        self._namespaces.clear()

    def __enter__(self) -> Topology:
        return self.build()

    def __exit__(self, *exc: object) -> None:
        self.close()


def wait_for_files(paths: Sequence[Path], proc: subprocess.Popen[bytes], timeout: float = 15.0) -> None:
    """Until every path exists (a server's socket); fail at once if `proc` exits."""
    deadline = time.monotonic() + timeout
    while not all(p.exists() for p in paths):
        if proc.poll() is not None:
            raise RuntimeError(f"exited with {proc.returncode} before creating {[str(p) for p in paths]}")
        if time.monotonic() > deadline:
            raise TimeoutError(f"{[str(p) for p in paths]} not created within {timeout}s")
        time.sleep(0.05)
