"""The HTTP layer: one module per protocol (v1, v2, admin, ops) over `ModelService`.

`create_app` assembles their route tables; `fast` serves the prediction routes
in front of FastAPI; `common` holds the error shape and body parsing.
"""

from __future__ import annotations

from node.http.app import create_app

__all__ = ["create_app"]
