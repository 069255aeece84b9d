"""Deprecated alias: the load balancer is HAProxy now (`coordinator.lb`).

Kept only because `tests/coordinator/test_cli.py` (outside the load-balancer work)
imports `find_nginx` to decide whether `modelcache up` prints a `load balancer:`
line; delete this module once that test imports `coordinator.lb.find_haproxy`.
"""

from __future__ import annotations

from coordinator.lb import find_haproxy as find_nginx

__all__ = ["find_nginx"]
