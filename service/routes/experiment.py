"""The A/B experiment: GET /ab (the report, from the record), POST /ab/feedback (a reward for an
answer), GET /ab/export (the record itself, as JSON or CSV)."""

import csv
import io
import json
import math
from datetime import UTC, datetime
from typing import Annotated, Literal

import anyio
from fastapi import APIRouter, Depends, Query
from fastapi.responses import Response
from pydantic import (
    BaseModel,
    BeforeValidator,
    Field,
    TypeAdapter,
    ValidationError,
    WithJsonSchema,
    field_validator,
)

from service.ab import report
from service.ab_store import Store
from service.errors import APIError
from service.responses import error_responses
from service.routes.common import Serving, ServingDep, require_api_key

router = APIRouter(prefix="/ab", tags=["experiment"], dependencies=[Depends(require_api_key)])

REQUEST_ID = r"^[A-Za-z0-9._:-]{1,128}$"


class Feedback(BaseModel):
    """How an answer served through the `ab` model went, for the experiment."""

    model_config = {"extra": "forbid"}

    request_id: str = Field(
        pattern=REQUEST_ID,
        description="the X-Request-Id of an answer served through model 'ab'",
        examples=["3f2b8c0e9d7a4b1c"],
    )
    reward: float = Field(
        ge=0, le=1, description="the outcome, from 0 (bad) to 1 (good): a rating, a click"
    )

    @field_validator("reward")
    @classmethod
    def _finite(cls, reward: float) -> float:
        if not math.isfinite(reward):
            raise ValueError("the reward must be a finite number from 0 to 1")
        return reward


class FeedbackRecorded(BaseModel):
    request_id: str
    reward: float


def _store(serving: Serving) -> Store:
    if serving.ab_store is None:
        raise APIError(
            503,
            "not_ready",
            f"the A/B experiment has no record: {serving.ab_store_error or 'no store'}",
        )
    return serving.ab_store


_DATETIME = TypeAdapter(datetime)


def _moment(value: object) -> float | None:
    """Unix seconds from unix seconds, or from an ISO 8601 time (UTC where it names no zone)."""
    if value is None or isinstance(value, int | float):
        return value
    try:
        return float(value)
    except (TypeError, ValueError):
        pass
    try:
        moment = _DATETIME.validate_python(value)
    except ValidationError:
        raise ValueError(
            "expected unix seconds or an ISO 8601 time, e.g. 2026-12-06T10:00:00Z"
        ) from None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return moment.timestamp()


Since = Annotated[
    float | None,
    BeforeValidator(_moment),
    WithJsonSchema({"anyOf": [{"type": "number"}, {"type": "string", "format": "date-time"}]}),
    Query(description="only requests served since then: unix seconds or an ISO 8601 time"),
]


@router.get("", responses=error_responses(401, 404, 422, 503))
async def experiment(
    serving: ServingDep,
    since: Since = None,
    reference: Annotated[
        str | None,
        Query(max_length=64, description="the arm the others are compared with"),
    ] = None,
    effect: Annotated[
        float | None,
        Query(gt=0, le=1, description="the difference of mean rewards to size for"),
    ] = None,
) -> dict:
    """The experiment per arm, from its record: requests, errors, abandoned requests, tokens,
    latency percentiles, the mean reward and bits per character with 95 % intervals; and each
    arm against the reference arm (the first of MACHADO_AB_WEIGHTS): the difference of mean
    rewards with its interval, Welch's t-test p-value, the rewards per arm still needed to
    detect `effect`, and a verdict in words."""
    store = _store(serving)
    start = since
    arms = list(serving.ab_weights)
    reference = reference or (arms[0] if arms else None)
    if reference is not None and arms and reference not in arms:
        shown = reference if len(reference) <= 64 else reference[:64] + "…"
        raise APIError(
            404, "arm_not_found", f"no arm {shown!r} in the experiment; arms: {arms}", "reference"
        )
    rows = await anyio.to_thread.run_sync(store.rows, start)
    figures = report(rows, arms, reference, effect or serving.settings.ab_effect)
    return {
        "weights": serving.ab_weights,
        "error": serving.ab_error,
        "store": store.kind,
        "since": start,
        "reference": reference,
        "effect": effect or serving.settings.ab_effect,
        **figures,
    }


@router.post(
    "/feedback",
    response_model=FeedbackRecorded,
    responses=error_responses(400, 401, 404, 409, 413, 415, 422, 429, 503),
)
async def feedback(body: Feedback, serving: ServingDep) -> FeedbackRecorded:
    """A reward for an answer served through model 'ab' (its X-Request-Id), once: 404 for a
    request no arm served (or served longer ago than MACHADO_AB_FEEDBACK_WINDOW_S), 409 for a
    second reward."""
    store = _store(serving)
    window = serving.settings.ab_feedback_window_s
    async with serving.slot():
        outcome = await anyio.to_thread.run_sync(store.reward, body.request_id, body.reward, window)
    if outcome == "unknown":
        raise APIError(
            404,
            "request_not_found",
            f"no answer with request id {body.request_id!r} was served through model 'ab'",
            "request_id",
        )
    if outcome == "expired":
        raise APIError(
            404,
            "request_expired",
            f"request {body.request_id!r} was answered more than {window:g} s ago "
            "(MACHADO_AB_FEEDBACK_WINDOW_S); its reward is no longer taken",
            "request_id",
        )
    if outcome == "duplicate":
        raise APIError(
            409,
            "reward_exists",
            f"request {body.request_id!r} already has its reward; one reward per request",
            "request_id",
        )
    return FeedbackRecorded(request_id=body.request_id, reward=body.reward)


@router.get(
    "/export",
    responses={
        **error_responses(401, 422, 503),
        200: {"content": {"text/csv": {}, "application/json": {}}},
    },
)
async def export(
    serving: ServingDep,
    since: Since = None,
    format: Annotated[Literal["json", "csv"], Query(description="json or csv")] = "json",
    limit: Annotated[int, Query(ge=1, le=1_000_000, description="most rows, oldest first")] = (
        100_000
    ),
) -> Response:
    """The experiment's record for analysis elsewhere: one row per request served through an
    arm (request id, arm, client hash, time, endpoint, outcome, tokens, latency, bits per
    character, reward), oldest first."""
    store = _store(serving)
    start = since
    rows = await serving.run(
        lambda: store.rows(start, min(limit, serving.settings.max_answer_items))
    )
    if format == "json":
        return Response(json.dumps({"rows": rows}), media_type="application/json")
    out = io.StringIO()
    writer = csv.DictWriter(out, fieldnames=list(rows[0]) if rows else ["request_id"])
    writer.writeheader()
    writer.writerows(rows)
    return Response(out.getvalue(), media_type="text/csv; charset=utf-8")
