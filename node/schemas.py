"""Request and response bodies of the HTTP API, with the examples OpenAPI shows."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, StrictBool, StrictFloat, model_validator

# Strict: "1.5" (a string) or true is refused with 422 rather than coerced.
Value = StrictFloat | None
Features = list[Value] | dict[str, Value]

MAX_TIMEOUT_S = 120.0
# Bounded and finite: a NaN, infinite or huge timeout would hold a request (and its Redis wait) forever.
Timeout = Annotated[float, Field(gt=0, le=MAX_TIMEOUT_S, allow_inf_nan=False)]
BodyTimeout = Annotated[float, Field(gt=0, le=MAX_TIMEOUT_S, allow_inf_nan=False, strict=True)]
"""In a JSON body a timeout is a number, never "5" or true (a query string is parsed instead)."""

# With a canary running, one key gets one version on every node (X-Modelcache-Routing-Key too).
RoutingKey = Annotated[
    str | None,
    Field(
        max_length=256,
        description="Canary routing: requests with the same key get the same version on every node.",
    ),
]

_ROW = {
    "tenure_months": 12,
    "monthly_spend": 70.5,
    "support_calls": 2,
    "contract_years": 1,
    "late_payments": None,
}


class PredictBody(BaseModel):
    """One row to predict, for the model named in the path."""

    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={"examples": [{"features": [12, 70.5, 2, 1, None]}, {"features": _ROW}]},
    )
    version: str | None = Field(None, description="Exact version; default: pin, else latest stable.")
    features: Features = Field(
        description="Values in the model's feature order, or a {name: value} map; null is missing."
    )
    routing_key: RoutingKey = None


class PredictRequest(PredictBody):
    """One row to predict."""

    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "examples": [
                {"model_type": "churn", "features": [12, 70.5, 2, 1, None]},
                {"model_type": "churn", "version": "1.0.0", "features": _ROW},
            ]
        },
    )
    model_type: str = Field(description="Registry name of the model.", examples=["churn"])


class BatchBody(BaseModel):
    """Several rows for the model named in the path."""

    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={"examples": [{"instances": [[12, 70.5, 2, 1, 0], [3, 20.0, 5, 0, 2]]}]},
    )
    version: str | None = None
    instances: list[list[Value]] | list[dict[str, Value]] = Field(
        description="Rows as lists or {name: value} maps (at most MODELCACHE_MAX_BATCH)."
    )
    routing_key: RoutingKey = None


class BatchRequest(BatchBody):
    """Several rows to predict with one model."""

    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "examples": [{"model_type": "churn", "instances": [[12, 70.5, 2, 1, 0], [3, 20.0, 5, 0, 2]]}]
        },
    )
    model_type: str = Field(examples=["churn"])


class PredictResponse(BaseModel):
    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "model_type": "churn",
                    "version": "1.1.0",
                    "prediction": 1,
                    "probability": 0.83,
                    "node_id": "node-1",
                    "cached": True,
                }
            ]
        }
    )
    model_type: str
    version: str
    prediction: float | int
    probability: float | list[float] | None = None
    node_id: str
    cached: bool
    fallback_from: str | None = Field(None, description="Set when the default version could not load.")


class BatchResponse(BaseModel):
    model_type: str
    version: str
    predictions: list[float | int]
    probabilities: list[float] | list[list[float]] | None = None
    node_id: str
    cached: bool
    fallback_from: str | None = None


class ReloadRequest(BaseModel):
    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "examples": [{"model_type": "churn", "scope": "cluster", "wait": True}, {"scope": "node"}]
        },
    )
    model_type: str | None = Field(None, description="Reload this model type; omit for every one.")
    version: str | None = Field(None, description="Load this exact version afresh.")
    scope: Literal["cluster", "node"] = "cluster"
    wait: StrictBool = Field(False, description="Cluster scope: wait for every node's acknowledgement.")
    timeout_s: BodyTimeout = 10.0

    @model_validator(mode="after")
    def _version_needs_a_model_type(self) -> ReloadRequest:
        if self.version is not None and self.model_type is None:
            raise ValueError("version needs model_type: name the model type to reload at that version")
        return self


class PinRequest(BaseModel):
    model_config = ConfigDict(extra="forbid", json_schema_extra={"examples": [{"version": "1.0.0"}]})
    version: str
    wait: StrictBool = False
    timeout_s: BodyTimeout = 10.0


class ErrorBody(BaseModel):
    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "error": "unknown model type 'nope'; known model types: churn, fraud",
                    "code": "model_not_found",
                }
            ]
        }
    )
    error: str = Field(description="What went wrong and what to do about it.")
    code: str = Field(description="Machine-readable error code.")


ERRORS: dict[int | str, dict[str, Any]] = {
    404: {"model": ErrorBody, "description": "Unknown model type or version"},
    413: {"model": ErrorBody, "description": "Body or batch too large"},
    422: {"model": ErrorBody, "description": "Invalid input: wrong feature count or name, non-numeric value"},
    503: {"model": ErrorBody, "description": "Model could not be loaded, or node not ready"},
}
ADMIN_ERRORS: dict[int | str, dict[str, Any]] = {
    401: {"model": ErrorBody, "description": "No bearer token"},
    403: {"model": ErrorBody, "description": "Wrong token, or admin API disabled"},
    **ERRORS,
}
