"""Model endpoints: /generate (also streamed), /next-token, /attention, /score."""

import json
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from contextlib import AsyncExitStack
from dataclasses import asdict

import anyio
from fastapi import APIRouter, Depends, Response
from sse_starlette.sse import EventSourceResponse

from runtime.engine import Engine
from runtime.errors import InferenceError
from runtime.results import Generation, GenerationRequest, Step
from service.errors import CLIENT_CLOSED, APIError, api_error, error_body
from service.responses import (
    INFERENCE_ERRORS,
    AttentionResponse,
    GeneratedToken,
    GenerateResponse,
    NextTokenResponse,
    ScoreResponse,
    TokenAlternative,
    Usage,
    sse_doc,
)
from service.routes.common import Serving, ServingDep, StreamTally, require_api_key
from service.schemas import (
    AttentionRequest,
    GenerateRequest,
    NextTokenRequest,
    ScoreRequest,
)

SSE_DOC = sse_doc(
    "with stream: true, events 'token' (id, text, logprob), then 'done' "
    "(finish_reason, usage) or 'error'"
)


def generation_response(engine: Engine, result: Generation, seconds: float) -> GenerateResponse:
    tokens = [
        GeneratedToken(
            id=s.id,
            token=s.text,
            logprob=s.logprob,
            top_logprobs=[
                TokenAlternative(id=i, token=engine.decode([i]), logprob=lp) for i, lp in s.top
            ],
        )
        for s in result.steps
    ]
    n = len(tokens)
    return GenerateResponse(
        model=engine.name,
        text=result.text,
        tokens=tokens,
        finish_reason=result.finish_reason,
        prompt_truncated=result.prompt_truncated,
        usage=Usage(
            prompt_tokens=len(result.prompt_ids),
            completion_tokens=n,
            total_tokens=len(result.prompt_ids) + n,
        ),
        seconds=seconds,
        tokens_per_second=n / seconds if seconds > 0 else 0.0,
    )


async def stream_steps(
    serving: Serving, steps, on_step, on_done, on_error, release
) -> AsyncIterator[dict]:
    """Server-sent events from a blocking step generator, one step per worker-thread call.

    A client that leaves cancels this iterator (sse-starlette watches the connection): the step
    in progress finishes, no further step starts, and the slot is released.
    """
    try:
        while True:
            item = await anyio.to_thread.run_sync(next, steps, None)
            if item is None:
                break
            if isinstance(item, Step):
                yield on_step(item)
            else:
                yield on_done(item)
                break
    except (APIError, InferenceError) as error:
        exc = api_error(error)
        if exc.status == CLIENT_CLOSED:
            return  # nobody is there to read an error event: the stream was abandoned
        yield on_error(error_body(exc.type, exc.message, exc.field))
    except Exception as exc:  # the stream has started: logged, and said in its last event
        yield on_error(serving.failure(exc))
    finally:
        steps.close()
        await release()


def _generation_stream(
    serving: Serving,
    engine: Engine,
    arm: str | None,
    started: float,
    steps: Iterator[Step | Generation],
    slot: AsyncExitStack,
) -> EventSourceResponse:
    """/generate's server-sent events: a token event per step, then done (or error)."""
    tally = StreamTally()

    def on_step(step: Step) -> dict:
        tally.tokens += 1
        return {
            "event": "token",
            "data": json.dumps(
                {
                    "id": step.id,
                    "text": step.text,
                    "logprob": step.logprob,
                    "top_logprobs": [{"id": i, "logprob": lp} for i, lp in step.top],
                },
                ensure_ascii=False,
            ),
        }

    def on_done(result: Generation) -> dict:
        tally.ended = True
        final = generation_response(engine, result, time.perf_counter() - started)
        return {
            "event": "done",
            "data": json.dumps(
                {
                    "model": engine.name,
                    "text": final.text,
                    "finish_reason": final.finish_reason,
                    "prompt_truncated": final.prompt_truncated,
                    "usage": final.usage.model_dump(),
                    "seconds": final.seconds,
                },
                ensure_ascii=False,
            ),
        }

    def on_error(error: dict) -> dict:
        tally.ok, tally.ended = False, True
        return {"event": "error", "data": json.dumps(error, ensure_ascii=False)}

    def events(release: Callable[[], Awaitable[None]]) -> AsyncIterator[dict]:
        return stream_steps(serving, steps, on_step, on_done, on_error, release)

    return serving.event_stream(engine, arm, started, slot, tally, events)


router = APIRouter(tags=["inference"], dependencies=[Depends(require_api_key)])


@router.post(
    "/generate", response_model=GenerateResponse, responses={**INFERENCE_ERRORS, **SSE_DOC}
)
async def generate(body: GenerateRequest, serving: ServingDep, response: Response):
    """Continue a prompt: greedy or sampled, with stop strings and per-token
    log-probabilities; `stream: true` sends each token as a server-sent event."""
    engine, arm = serving.resolve(body.model)
    engine.check_token_ids(body.logit_bias, "logit_bias")
    serving.note(prompt=body.prompt)
    params = body.params()
    started = time.perf_counter()
    job = GenerationRequest(
        body.prompt, body.max_new_tokens, params, tuple(body.stop), body.seed, body.logprobs
    )
    async with AsyncExitStack() as stack:
        deadline = await stack.enter_async_context(serving.slot())
        steps = engine.generate(job, deadline)
        if body.stream:  # the stream holds the slot from here until it ends
            return _generation_stream(serving, engine, arm, started, steps, stack.pop_all())
        try:
            result = await serving.run(lambda: _last(steps))
        except Exception:
            serving.record_ab(arm, started, False)
            raise
    final = generation_response(engine, result, time.perf_counter() - started)
    serving.count_tokens(engine, len(final.tokens), final.seconds)
    serving.record_ab(arm, started, True, len(final.tokens))
    response.headers["X-Model"] = engine.name
    return final


@router.post("/next-token", response_model=NextTokenResponse, responses=INFERENCE_ERRORS)
async def next_token(
    body: NextTokenRequest, serving: ServingDep, response: Response
) -> NextTokenResponse:
    """The distribution of the next token: the likeliest candidates and the entropy."""
    engine, arm = serving.resolve(body.model)
    serving.note(prompt=body.prompt)
    started = time.perf_counter()
    async with serving.slot():  # a 429 here is no fault of the arm's
        try:
            result = await serving.run(lambda: engine.next_token(body.prompt, body.top_k))
        except Exception:
            serving.record_ab(arm, started, False)
            raise
    serving.record_ab(arm, started, True)
    response.headers["X-Model"] = engine.name
    return NextTokenResponse(model=engine.name, **asdict(result))


@router.post(
    "/attention",
    response_model=AttentionResponse,
    responses=INFERENCE_ERRORS,
    response_model_exclude_none=True,
)
async def attention(body: AttentionRequest, serving: ServingDep) -> AttentionResponse:
    """Attention weights [layer][head][query][key] of the prompt's last tokens (the shape
    bertviz reads); with `vectors`, also the queries and keys they are computed from."""
    limit = serving.settings.max_attention_tokens
    engine = serving.engine_for(body.model)
    serving.note(prompt=body.prompt)
    async with serving.slot():
        result = await serving.run(
            lambda: engine.attention(body.prompt, limit, body.layer, body.head, body.vectors)
        )
    return AttentionResponse(model=engine.name, **asdict(result))


@router.post(
    "/score",
    response_model=ScoreResponse,
    responses=INFERENCE_ERRORS,
    response_model_exclude_none=True,
)
async def score(body: ScoreRequest, serving: ServingDep, response: Response) -> ScoreResponse:
    """Negative log-likelihood, perplexity and bits per character of a text."""
    engine, arm = serving.resolve(body.model)
    started = time.perf_counter()
    if body.per_token:  # a token is at least a byte of the text (byte-level BPE)
        serving.check_answer_size(
            len(body.text.encode()), "at most one per byte of the text", "text"
        )
    async with serving.slot() as deadline:
        scoring = time.perf_counter()
        try:
            result = await serving.run(
                lambda: engine.score(
                    body.text, body.per_token, deadline=deadline, window=body.window
                ),
            )
        except Exception:
            serving.record_ab(arm, started, False)
            raise
        seconds = time.perf_counter() - scoring
    serving.record_ab(arm, started, True, bpc=result.bits_per_character)
    response.headers["X-Model"] = engine.name
    return ScoreResponse(
        model=engine.name,
        seconds=seconds,
        tokens_per_second=result.tokens / seconds if seconds > 0 else 0.0,
        **asdict(result),
    )


def _last(steps) -> Generation:
    *_, final = steps
    return final
