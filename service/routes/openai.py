"""OpenAI-compatible completions: POST /v1/completions and GET /v1/models.

Enough of the legacy completions API that the official `openai` client, and tools built on it,
work unchanged: prompt (string or list), max_tokens, temperature, top_p, n, stop, seed,
logprobs, stream.
"""

# No `from __future__ import annotations`: see inference.py.

import json
import time
import uuid
from typing import Annotated, Literal

import anyio
from fastapi import APIRouter, Depends, Request
from pydantic import BaseModel, Field, field_validator
from sse_starlette.sse import EventSourceResponse
from starlette.background import BackgroundTask

from service.engine import Engine, Generation, Step
from service.errors import APIError, error_body
from service.routes.common import inference_slot, once, require_api_key, resolve, run_blocking
from service.sampling import SamplingParams
from service.schemas import (
    INFERENCE_ERRORS,
    NOT_BLANK,
    ModelName,
    Strict,
    _valid_text,
    sse_doc,
)
from service.settings import Settings

FINISH = {"length": "length", "stop": "stop", "end_of_text": "stop"}


class CompletionLogprobs(BaseModel):
    tokens: list[str]
    token_logprobs: list[float]
    top_logprobs: list[dict[str, float]]
    text_offset: list[int]


class CompletionChoice(BaseModel):
    text: str
    index: int
    logprobs: CompletionLogprobs | None = None
    finish_reason: Literal["length", "stop"]


class CompletionUsage(BaseModel):
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int


class Completion(BaseModel):
    id: str
    object: Literal["text_completion"] = "text_completion"
    created: int
    model: str
    choices: list[CompletionChoice]
    usage: CompletionUsage


class ModelCard(BaseModel):
    id: str
    object: Literal["model"] = "model"
    created: int
    owned_by: str = "machado-lm"


class ModelPage(BaseModel):
    object: Literal["list"] = "list"
    data: list[ModelCard]


def build_request(settings: Settings) -> type[BaseModel]:
    text = Annotated[
        str, Field(min_length=1, max_length=settings.max_prompt_chars, pattern=NOT_BLANK)
    ]

    prompts = Annotated[list[text], Field(min_length=1, max_length=settings.max_completions)]
    stop_text = Annotated[str, Field(min_length=1, max_length=100)]
    stops = Annotated[list[stop_text], Field(max_length=min(4, settings.max_stop_strings))]

    class CompletionRequest(Strict):
        model: ModelName
        prompt: text | prompts = Field(description="a prompt, or a list of prompts")
        max_tokens: int = Field(min(16, settings.max_new_tokens), ge=1, le=settings.max_new_tokens)
        temperature: float = Field(1.0, ge=0.0, le=2.0, allow_inf_nan=False)
        top_p: float = Field(1.0, gt=0.0, le=1.0, allow_inf_nan=False)
        n: int = Field(1, ge=1, le=settings.max_completions)
        stop: stop_text | stops | None = Field(None, description="a stop string or up to four")
        seed: int | None = Field(None, ge=0, le=2**53 - 1)
        logprobs: int | None = Field(None, ge=0, le=min(5, settings.max_logprobs))
        stream: bool = False
        user: str | None = Field(None, max_length=256, description="end-user id (A/B stickiness)")

        @field_validator("prompt", "stop")
        @classmethod
        def _is_text(cls, value: str | list[str] | None) -> str | list[str] | None:
            for item in [] if value is None else [value] if isinstance(value, str) else value:
                _valid_text(item)
            return value

    return CompletionRequest


def _logprobs(engine: Engine, steps: list[Step]) -> CompletionLogprobs:
    offsets, offset = [], 0
    for step in steps:
        offsets.append(offset)
        offset += len(step.text)
    return CompletionLogprobs(
        tokens=[s.text for s in steps],
        token_logprobs=[s.logprob for s in steps],
        top_logprobs=[{engine.decode([i]): lp for i, lp in s.top} for s in steps],
        text_offset=offsets,
    )


def build_router(settings: Settings) -> APIRouter:
    router = APIRouter(prefix="/v1", tags=["openai"], dependencies=[Depends(require_api_key)])
    completion_request = build_request(settings)

    @router.get("/models", response_model=ModelPage)
    async def models(request: Request) -> ModelPage:
        """The served models, as OpenAI's model list."""
        created = int(request.app.state.started)
        return ModelPage(
            data=[ModelCard(id=name, created=created) for name in sorted(request.app.state.engines)]
        )

    @router.post(
        "/completions",
        response_model=Completion,
        responses={
            **INFERENCE_ERRORS,
            **sse_doc("with stream: true, OpenAI's chunks as 'data:' events, then [DONE]"),
        },
    )
    async def completions(body: completion_request, request: Request):
        """OpenAI-style text completions (model 'ab' is the client's A/B arm; `user` or
        X-Client-Id keeps it sticky)."""
        engine, _ = resolve(request, body.model, request.headers.get("x-client-id") or body.user)
        prompts = [body.prompt] if isinstance(body.prompt, str) else body.prompt
        stops = (
            [] if body.stop is None else [body.stop] if isinstance(body.stop, str) else body.stop
        )
        params = SamplingParams(body.temperature, 0, body.top_p, 1.0)
        top = body.logprobs or 0
        ident, created = f"cmpl-{uuid.uuid4().hex}", int(time.time())
        # Choice k of prompt i has index i * n + k and seed seed + k; a prompt's n choices are
        # generated as one batch.
        seeds = [None if body.seed is None else body.seed + k for k in range(body.n)]
        jobs = [(prompt, i * body.n) for i, prompt in enumerate(prompts)]
        slot = inference_slot(request)
        deadline = await slot.__aenter__()
        if body.stream:
            release = once(lambda: slot.__aexit__(None, None, None))
            return EventSourceResponse(
                _stream(
                    engine,
                    jobs,
                    seeds,
                    body.max_tokens,
                    params,
                    stops,
                    top,
                    deadline,
                    ident,
                    created,
                    release,
                ),
                headers={"X-Model": engine.name},
                ping=15,
                background=BackgroundTask(release),
            )
        try:
            results: list[tuple[int, Generation]] = []
            for prompt, first in jobs:
                events = engine.generate_many(
                    prompt, seeds, body.max_tokens, params, stops, top, deadline
                )
                finished = await run_blocking(request, lambda e=events: _finished(e))
                results += [(first + k, finished[k]) for k in range(body.n)]
        finally:
            await slot.__aexit__(None, None, None)
        prompt_tokens = sum(len(g.prompt_ids) for _, g in results) // body.n
        completion_tokens = sum(len(g.steps) for _, g in results)
        return Completion(
            id=ident,
            created=created,
            model=engine.name,
            choices=[
                CompletionChoice(
                    text=g.text,
                    index=i,
                    finish_reason=FINISH[g.finish_reason],
                    logprobs=_logprobs(engine, g.steps) if body.logprobs is not None else None,
                )
                for i, g in results
            ],
            usage=CompletionUsage(
                prompt_tokens=prompt_tokens,
                completion_tokens=completion_tokens,
                total_tokens=prompt_tokens + completion_tokens,
            ),
        )

    return router


async def _stream(
    engine, jobs, seeds, max_tokens, params, stops, top, deadline, ident, created, release
):
    """OpenAI's stream: one chunk per token per choice (a prompt's choices interleaved, as they
    are generated together), a chunk with finish_reason for each choice, then [DONE]."""
    try:
        for prompt, first in jobs:
            steps = engine.generate_many(prompt, seeds, max_tokens, params, stops, top, deadline)
            try:
                while True:
                    event = await anyio.to_thread.run_sync(next, steps, None)
                    if event is None:
                        break
                    choice, item = event
                    index = first + choice
                    done = isinstance(item, Generation)
                    chunk = {
                        "id": ident,
                        "object": "text_completion",
                        "created": created,
                        "model": engine.name,
                        "choices": [
                            {
                                "text": "" if done else item.text,
                                "index": index,
                                "logprobs": None,
                                "finish_reason": FINISH[item.finish_reason] if done else None,
                            }
                        ],
                    }
                    yield {"data": json.dumps(chunk, ensure_ascii=False)}
            finally:
                steps.close()
        yield {"data": "[DONE]"}
    except APIError as exc:
        yield {"data": json.dumps(error_body(exc.type, exc.message, exc.field))}
    finally:
        await release()


def _finished(events) -> dict[int, Generation]:
    """Run a generate_many to the end: each choice's Generation."""
    return {choice: item for choice, item in events if isinstance(item, Generation)}
