"""The HTTP layer: one module per protocol (v1, v2, admin, canary, ops) over the node's parts.

`create_app` assembles their route tables, each handed the parts it uses (node.parts);
`fast` serves the prediction routes in front of FastAPI; `guards` holds the refusals
both doors share; `common` holds the error shape and body parsing.
"""

from __future__ import annotations

from node.http.app import create_app

__all__ = ["create_app"]
