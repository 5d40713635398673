"""What every inference route shares: finding the model, the concurrency limit, the time limit."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import TypeVar

import anyio
from fastapi import Request

from service.engine import Engine
from service.errors import APIError
from service.settings import Settings

T = TypeVar("T")


def settings_of(request: Request) -> Settings:
    return request.app.state.settings


def engine_for(request: Request, name: str) -> Engine:
    """The engine serving ``name``: 404 if no such model, 503 if it failed to load."""
    engines: dict[str, Engine] = request.app.state.engines
    if name in engines:
        return engines[name]
    models = request.app.state.models
    if name in models:
        raise APIError(
            503, "not_ready", f"model {name!r} failed to load: {models[name].error}", "model"
        )
    known = ", ".join(sorted(engines)) or "none"
    raise APIError(
        404, "model_not_found", f"no model named {name!r}; served models: {known}", "model"
    )


@asynccontextmanager
async def inference_slot(request: Request) -> AsyncIterator[float]:
    """Holds one of the max_concurrency slots (429 when none is free); yields the deadline."""
    state, settings = request.app.state, settings_of(request)
    if state.in_flight >= settings.max_concurrency:
        raise APIError(
            429,
            "overloaded",
            f"{state.in_flight} requests are in flight, the limit is "
            f"{settings.max_concurrency}; retry shortly",
            None,
            {"Retry-After": "1"},
        )
    state.in_flight += 1
    try:
        yield time.monotonic() + settings.request_timeout_s
    finally:
        state.in_flight -= 1


async def run_blocking(request: Request, fn: Callable[[], T]) -> T:
    """``fn`` in a worker thread, off the event loop, under the request time limit."""
    timeout = settings_of(request).request_timeout_s
    with anyio.move_on_after(timeout) as scope:
        return await anyio.to_thread.run_sync(fn, abandon_on_cancel=True)
    if scope.cancelled_caught:
        raise APIError(504, "timeout", f"the request ran past its time limit of {timeout:g} s")
    raise AssertionError("unreachable")
