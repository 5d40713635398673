"""What every inference route shares: the model (or A/B arm), the API key, the concurrency
limit, the time limit."""

from __future__ import annotations

import hmac
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass
from typing import TypeVar

import anyio
from fastapi import Request
from sse_starlette.sse import EventSourceResponse
from starlette.background import BackgroundTask

from runtime.deadline import Deadline
from runtime.engine import Engine
from runtime.errors import TimedOut
from service.ab import AB_MODEL, pick_arm
from service.admission import Overloaded
from service.errors import APIError, internal_error
from service.settings import Settings

T = TypeVar("T")


def settings_of(request: Request) -> Settings:
    return request.app.state.settings


async def require_api_key(request: Request) -> None:
    """With MACHADO_API_KEY set, the model endpoints want 'Authorization: Bearer <key>'."""
    key = settings_of(request).api_key
    if not key:
        return
    scheme, _, given = request.headers.get("authorization", "").partition(" ")
    # As bytes: compare_digest refuses str outside ASCII, and a header may carry any byte
    # (decoded as latin-1, one character per byte); the key is ASCII (Settings).
    if scheme.lower() != "bearer" or not hmac.compare_digest(
        given.strip().encode("latin-1"), key.encode("ascii")
    ):
        raise APIError(
            401,
            "unauthorized",
            "this endpoint needs 'Authorization: Bearer <key>' with the server's API key",
            None,
            {"WWW-Authenticate": "Bearer"},
        )


def engine_for(request: Request, name: str) -> Engine:
    """The engine serving ``name``: 404 if no such model, 503 if it failed to load."""
    engines: dict[str, Engine] = request.app.state.engines
    if name in engines:
        request.state.model = name
        return engines[name]
    models = request.app.state.models
    if name in models:
        raise APIError(
            503, "not_ready", f"model {name!r} failed to load: {models[name].error}", "model"
        )
    known = ", ".join(sorted(engines)) or "none"
    # A path segment has no length limit of its own: an error quotes at most the start of it.
    shown = repr(name) if len(name) <= 64 else f"{name[:64]!r}… ({len(name)} characters)"
    raise APIError(
        404,
        "model_not_found",
        f"no model named {shown}; served models: {known} (or 'ab' for the A/B "
        "experiment where the endpoint offers it)",
        "model",
    )


def check_token_ids(engine: Engine, ids: Iterable[int | str], field: str) -> None:
    """404 for a token id outside ``engine``'s vocabulary (as for a layer it does not have):
    the request's schema bounds ids for every model, the vocabulary is this model's."""
    engine.check_token_ids(ids, field)


def check_answer_size(request: Request, items: int, what: str, field: str | None) -> None:
    """422 before any work for a request whose answer would hold more than max_answer_items
    token entries (``what`` says how they add up): the answer's size, and the memory it takes
    to build, stay bounded whatever the request combines."""
    limit = settings_of(request).max_answer_items
    if items > limit:
        raise APIError(
            422,
            "answer_too_large",
            f"the answer would hold {items:,} token entries ({what}); one answer may hold at "
            f"most {limit:,} (MACHADO_MAX_ANSWER_ITEMS): ask for fewer tokens, choices, "
            "alternatives or prompts",
            field,
        )


def resolve(request: Request, name: str, client_id: str | None = None) -> tuple[Engine, str | None]:
    """The engine for ``name``, or for the client's A/B arm when ``name`` is 'ab' (the client
    is ``client_id``, else the X-Client-Id header, else anonymous and random)."""
    if name != AB_MODEL:
        return engine_for(request, name), None
    weights = request.app.state.ab_weights
    if not weights:
        raise APIError(
            503,
            "not_ready",
            f"the A/B experiment has no arm: {request.app.state.ab_error or 'no model loaded'}",
            "model",
        )
    arm = pick_arm(weights, client_id or request.headers.get("x-client-id"))
    return engine_for(request, arm), arm


@asynccontextmanager
async def inference_slot(request: Request) -> AsyncIterator[Deadline]:
    """Holds one of the max_concurrency slots, waiting in line for one if every slot is taken
    (429 when the line is full or the wait too long: service.admission); yields the request's
    Deadline: its time limit, from now, and whether its client has hung up."""
    state, settings = request.app.state, settings_of(request)
    hung_up = getattr(request.state, "hung_up", None)
    try:
        waited = await state.admission.enter(hung_up)
    except Overloaded as error:
        state.metrics.rejected.labels(error.reason).inc()
        raise
    state.metrics.queue_wait.observe(waited)
    try:
        yield Deadline(settings.request_timeout_s, hung_up, state.drain)
    finally:
        state.admission.leave()


async def run_blocking(request: Request, fn: Callable[[], T]) -> T:
    """``fn`` in a worker thread, off the event loop, under the request time limit."""
    timeout = settings_of(request).request_timeout_s
    with anyio.move_on_after(timeout) as scope:
        return await anyio.to_thread.run_sync(fn, abandon_on_cancel=True)
    if scope.cancelled_caught:
        raise TimedOut(timeout)
    raise AssertionError("unreachable")


def once(release: Callable[[], Awaitable[None]]) -> Callable[[], Awaitable[None]]:
    """``release`` made safe to call twice: a stream's own ``finally`` and the response's
    background task both call it, so the slot comes back even if the stream never started."""
    done = False

    async def run() -> None:
        nonlocal done
        if not done:
            done = True
            await release()

    return run


@dataclass
class StreamTally:
    """What a stream has sent: tokens, whether it sent its last event (done or error: a stream
    that did not was left by its client), and whether that was not an error."""

    tokens: int = 0
    ok: bool = True
    ended: bool = False


def event_stream(
    request: Request,
    engine: Engine,
    arm: str | None,
    started: float,
    slot: AsyncExitStack,
    tally: StreamTally,
    events: Callable[[Callable[[], Awaitable[None]]], AsyncIterator[dict]],
) -> EventSourceResponse:
    """Server-sent ``events(release)``, holding the inference slot (``slot``: the exit stack
    that the caller's ``async with`` handed over with ``pop_all``) until the stream ends, or
    never starts; then the tokens in ``tally`` go to /metrics and
    the A/B figures."""

    @once
    async def release() -> None:
        count_tokens(request, engine, tally.tokens, time.perf_counter() - started)
        record_ab(request, arm, started, tally.ok, tally.tokens, abandoned=not tally.ended)
        await slot.aclose()

    return EventSourceResponse(
        events(release),
        headers={"X-Model": engine.name},
        ping=15,
        # sse-starlette would end every stream the moment the server is signalled to stop: a
        # stream goes on through the drain instead, and ends on its own (runtime.deadline.Drain).
        shutdown_grace_period=settings_of(request).drain_timeout_s,
        background=BackgroundTask(release),
    )


def failure(request: Request, error: Exception) -> dict:
    """The error body of an unexpected failure once a stream has started, logged as
    RequestContext logs one before the answer starts."""
    return internal_error(request.state.request_id, f"{request.method} {request.url.path}", error)


def count_tokens(request: Request, engine: Engine, tokens: int, seconds: float) -> None:
    """Tokens generated, and the time per token, for /metrics."""
    metrics = request.app.state.metrics
    if tokens:
        metrics.tokens.labels(engine.name).inc(tokens)
        metrics.token_time.labels(engine.name).observe(seconds / tokens)


def record_ab(
    request: Request,
    arm: str | None,
    started: float,
    ok: bool,
    tokens: int = 0,
    bpc: float | None = None,
    abandoned: bool | None = None,
) -> None:
    """A/B figures for GET /ab and Prometheus, when the request went through an arm. A request
    whose client hung up before its answer is abandoned (default: a failure after the hang-up),
    not an error of the arm; its time stays out of the latencies."""
    if arm is None:
        return
    if abandoned is None:
        hung_up = getattr(request.state, "hung_up", None)
        abandoned = not ok and hung_up is not None and hung_up.is_set()
    seconds = time.perf_counter() - started
    state = request.app.state
    state.ab_stats.record(arm, seconds, ok, tokens, bpc, abandoned)
    outcome = "abandoned" if abandoned else "ok" if ok else "error"
    state.metrics.ab_requests.labels(arm, outcome).inc()
    if tokens:
        state.metrics.ab_tokens.labels(arm).inc(tokens)
    if abandoned:
        return
    state.metrics.ab_latency.labels(arm).observe(seconds)
    if bpc is not None:
        state.metrics.ab_bpc.labels(arm).observe(bpc)
