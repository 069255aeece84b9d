"""Constants and helpers the HTTP tests share."""

from __future__ import annotations

TOKEN = "s3cret-token"
ADMIN = {"Authorization": f"Bearer {TOKEN}"}
ROW = [0.5, -1.0, 2.0, None]


# -- no input reaches a 500 (issue 8 §3) ---------------------------------------------------------
def assert_error_shape(r, status: int, code: str | None = None) -> dict:
    assert r.status_code == status, r.text
    body = r.json()
    assert set(body) == {"error", "code"} and isinstance(body["error"], str), body
    if code is not None:
        assert body["code"] == code, body
    return body


def v2_input() -> dict:
    return {"name": "input-0", "shape": [1, 4], "datatype": "FP64", "data": [0.5, -1.0, 2.0, None]}
