"""OpenAI-compatible completions: POST /v1/completions, GET /v1/models and /v1/models/{model}.

The legacy completions API as the official `openai` client and the tools built on it send it:
prompt (text, texts, token ids or lists of them), max_tokens, temperature, top_p, n, best_of,
stop, seed, logprobs, echo, frequency_penalty, presence_penalty, logit_bias, stream with
stream_options, user; suffix only as null (the models continue text, they do not insert).
"""

# No `from __future__ import annotations`: see inference.py.

import json
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from contextlib import aclosing
from dataclasses import dataclass
from itertools import accumulate
from typing import Annotated, Literal

import anyio
from fastapi import APIRouter, Depends, Request, Response
from pydantic import BaseModel, Field, ValidationError, field_validator

from service.engine import Engine, Generation, Step
from service.errors import APIError, error_body
from service.responses import INFERENCE_ERRORS, error_responses, sse_doc
from service.routes.common import (
    StreamTally,
    check_token_ids,
    count_tokens,
    engine_for,
    event_stream,
    inference_slot,
    record_ab,
    require_api_key,
    resolve,
    run_blocking,
)
from service.sampling import SamplingParams
from service.schemas import (
    NOT_BLANK,
    ModelName,
    Strict,
    TokenIdItem,
    _valid_text,
    build_penalties,
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


class StreamOptions(Strict):
    include_usage: bool = Field(
        False,
        description="end the stream with a chunk holding the whole request's usage (and no "
        "choices); every other chunk then has usage null",
    )


def build_request(settings: Settings) -> type[BaseModel]:
    text = Annotated[
        str, Field(min_length=1, max_length=settings.max_prompt_chars, pattern=NOT_BLANK)
    ]
    texts = Annotated[list[text], Field(min_length=1, max_length=settings.max_completions)]
    token_ids = Annotated[
        list[TokenIdItem],
        Field(min_length=1, max_length=settings.max_prompt_chars),
    ]
    token_lists = Annotated[
        list[token_ids], Field(min_length=1, max_length=settings.max_completions)
    ]
    stop_text = Annotated[str, Field(min_length=1, max_length=100)]
    stops = Annotated[list[stop_text], Field(max_length=min(4, settings.max_stop_strings))]

    class CompletionRequest(build_penalties(settings)):
        model: ModelName
        prompt: text | texts | token_ids | token_lists = Field(
            description="a prompt, a list of prompts, or either as token ids (see /tokenize); "
            "each is read after an end-of-text token, as the start of a document"
        )
        suffix: None = Field(
            None,
            description="only null: these models continue a prompt, they cannot fill in text "
            "before a suffix",
        )
        max_tokens: int = Field(
            min(16, settings.max_new_tokens),
            ge=0,
            le=settings.max_new_tokens,
            description="tokens to generate at most; 0 with echo scores the prompt only",
        )
        temperature: float = Field(1.0, ge=0.0, le=2.0, allow_inf_nan=False)
        top_p: float = Field(1.0, gt=0.0, le=1.0, allow_inf_nan=False)
        n: int = Field(1, ge=1, le=settings.max_completions)
        best_of: int | None = Field(
            None,
            ge=1,
            le=settings.max_completions,
            description="generate this many completions of each prompt (seeds seed, seed + 1, "
            "...; n where best_of is below n) and return the n with the highest "
            "log-probability per token, the end of text included; a stream then sends them "
            "once all are generated",
        )
        stop: stop_text | stops | None = Field(None, description="a stop string or up to four")
        seed: int | None = Field(None, ge=0, le=2**53 - 1)
        logprobs: int | None = Field(None, ge=0, le=min(5, settings.max_logprobs))
        echo: bool = Field(
            False,
            description="return the prompt before each completion; with logprobs, each prompt "
            "token's log-probability after the tokens before it as well",
        )
        stream: bool = False
        stream_options: StreamOptions | None = Field(
            None, description="read only with stream: true"
        )
        user: str | None = Field(None, max_length=256, description="end-user id (A/B stickiness)")

        @field_validator("prompt", mode="wrap")
        @classmethod
        def _one_prompt_shape(cls, value: object, handler):
            """One message naming the four shapes, not one error per shape tried."""
            try:
                return handler(value)
            except ValidationError as exc:
                first = exc.errors()[0]
                detail = (
                    None
                    if not isinstance(value, str)
                    else "is only whitespace"
                    if first["type"] == "string_pattern_mismatch"
                    else first["msg"]
                )
                raise ValueError(
                    (f"{detail}; " if detail else "")
                    + f"a prompt is a text of 1 to {settings.max_prompt_chars} characters, not "
                    f"only whitespace; a list of 1 to {settings.max_completions} such texts; a "
                    f"list of 1 to {settings.max_prompt_chars} token ids; or a list of 1 to "
                    f"{settings.max_completions} lists of token ids"
                ) from None

        @field_validator("prompt", "stop")
        @classmethod
        def _is_text(cls, value: object) -> object:
            for item in value if isinstance(value, list) else [value]:
                if isinstance(item, str):
                    _valid_text(item)
            return value

        @field_validator("suffix", mode="before")
        @classmethod
        def _no_suffix(cls, value: object) -> None:
            if value is not None:
                raise ValueError(
                    "is not supported: these models continue a prompt and cannot fill in text "
                    "before a suffix; leave it out or send null"
                )
            return None

    return CompletionRequest


@dataclass
class _Prompt:
    """One prompt of a request: its tokens, and the text that echo shows of it."""

    ids: list[int]
    text: str
    pieces: list[str]  # each token's part of ``text``
    offsets: list[int]  # where each piece starts in ``text``
    logprobs: list[float] | None = None  # each token's, after the tokens before it
    top: list[list[tuple[int, float]]] | None = None


def _prompt(engine: Engine, prompt: str | list[int]) -> _Prompt:
    if isinstance(prompt, list):
        pieces = engine.token_texts(prompt)
        offsets = [0, *accumulate(len(p) for p in pieces[:-1])]
        return _Prompt(list(prompt), engine.decode(prompt), pieces, offsets)
    encoding = engine.tokenizer.encode(prompt, add_special_tokens=False)
    # A token's piece runs from its start to the next token's: the pieces join to the prompt
    # even where a character's bytes are split between tokens.
    starts = [0] + [start for start, _ in encoding.offsets[1:]]
    for i in range(1, len(starts)):
        starts[i] = max(starts[i], starts[i - 1])
    ends = [*starts[1:], len(prompt)]
    pieces = [prompt[a:b] for a, b in zip(starts, ends, strict=True)]
    return _Prompt(list(encoding.ids), prompt, pieces, starts)


def _score_prompt(engine: Engine, prompt: _Prompt, top: int, deadline: float) -> None:
    """Each prompt token's log-probability after the end-of-text token and the tokens before
    it, as /score computes them, and the ``top`` likeliest tokens at each position."""
    logprobs, best = engine.token_logprobs([engine.eot, *prompt.ids], top, deadline=deadline)
    prompt.logprobs, prompt.top = logprobs.tolist(), best


def _logprobs(
    engine: Engine, steps: list[Step], start: int, prompt: _Prompt | None = None
) -> CompletionLogprobs:
    """OpenAI's logprobs of a choice: its echoed prompt's tokens (if any), then its own, with
    offsets from ``start``."""
    tokens, values, tops, offsets = [], [], [], []
    if prompt is not None and prompt.logprobs is not None and prompt.top is not None:
        tokens += prompt.pieces
        values += prompt.logprobs
        tops += [{engine.decode([i]): lp for i, lp in top} for top in prompt.top]
        offsets += [start + o for o in prompt.offsets]
        start += len(prompt.text)
    for step in steps:
        tokens.append(step.text)
        values.append(step.logprob)
        tops.append({engine.decode([i]): lp for i, lp in step.top})
        offsets.append(start)
        start += len(step.text)
    return CompletionLogprobs(
        tokens=tokens, token_logprobs=values, top_logprobs=tops, text_offset=offsets
    )


def _best(generations: dict[int, Generation], n: int) -> list[Generation]:
    """The n completions with the highest log-probability per token (the first seeds first
    among equals); all of them, in seed order, when there are only n."""
    order = sorted(generations, key=lambda k: (-generations[k].mean_logprob(), k))
    return [generations[k] for k in (order[:n] if len(generations) > n else sorted(generations))]


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

    @router.get(
        "/models/{model}", response_model=ModelCard, responses=error_responses(401, 404, 503)
    )
    async def model(model: str, request: Request) -> ModelCard:
        """One served model, as OpenAI's model object (404 for a model not served)."""
        return ModelCard(id=engine_for(request, model).name, created=int(request.app.state.started))

    @router.post(
        "/completions",
        response_model=Completion,
        responses={
            **INFERENCE_ERRORS,
            **sse_doc("with stream: true, OpenAI's chunks as 'data:' events, then [DONE]"),
        },
    )
    async def completions(body: completion_request, request: Request, response: Response):
        """OpenAI-style text completions (model 'ab' is the client's A/B arm; `user` or
        X-Client-Id keeps it sticky)."""
        engine, arm = resolve(request, body.model, request.headers.get("x-client-id") or body.user)
        started = time.perf_counter()
        check_token_ids(engine, body.logit_bias, "logit_bias")
        sources = (
            body.prompt
            if isinstance(body.prompt, list) and not isinstance(body.prompt[0], int)
            else [body.prompt]
        )
        for source in sources:
            if isinstance(source, list):
                check_token_ids(engine, source, "prompt")
        best_of = max(body.best_of or body.n, body.n)
        prompts = [_prompt(engine, source) for source in sources]
        stops = (
            [] if body.stop is None else [body.stop] if isinstance(body.stop, str) else body.stop
        )
        job = _Job(
            engine=engine,
            n=body.n,
            seeds=[None if body.seed is None else body.seed + k for k in range(best_of)],
            max_tokens=body.max_tokens,
            params=body.sampling(body.temperature, 0, body.top_p),
            stops=stops,
            logprobs=body.logprobs,
            echo=body.echo,
            ident=f"cmpl-{uuid.uuid4().hex}",
            created=int(time.time()),
        )
        slot = inference_slot(request)
        deadline = await slot.__aenter__()
        if body.stream:
            tally = StreamTally()
            usage = body.stream_options is not None and body.stream_options.include_usage

            def events(release: Callable[[], Awaitable[None]]) -> AsyncIterator[dict]:
                return _stream(job, prompts, deadline, usage, tally, release)

            return event_stream(request, engine, arm, started, slot, tally, events)
        try:
            choices, prompt_tokens, completion_tokens = [], 0, 0
            for i, prompt in enumerate(prompts):
                chosen = await run_blocking(request, lambda p=prompt: job.answer(p, deadline))
                prompt_tokens += len(chosen[0].prompt_ids)
                for k, generation in enumerate(chosen):
                    completion_tokens += len(generation.steps)
                    choices.append(job.choice(i * body.n + k, prompt, generation))
        except APIError:
            record_ab(request, arm, started, False)
            raise
        finally:
            await slot.__aexit__(None, None, None)
        count_tokens(request, engine, completion_tokens, time.perf_counter() - started)
        record_ab(request, arm, started, True, completion_tokens)
        response.headers["X-Model"] = engine.name
        return Completion(
            id=job.ident,
            created=job.created,
            model=engine.name,
            choices=choices,
            usage=CompletionUsage(
                prompt_tokens=prompt_tokens,
                completion_tokens=completion_tokens,
                total_tokens=prompt_tokens + completion_tokens,
            ),
        )

    return router


@dataclass
class _Job:
    """What one completions request asks of its model, for each of its prompts."""

    engine: Engine
    n: int
    seeds: list[int | None]  # one per completion generated: best_of of them
    max_tokens: int
    params: SamplingParams
    stops: list[str]
    logprobs: int | None
    echo: bool
    ident: str
    created: int

    def steps(self, prompt: _Prompt, deadline: float) -> Iterator[tuple[int, Step | Generation]]:
        """The prompt's completions as one batch: (choice, Step or Generation) events."""
        return self.engine.generate_many(
            prompt.ids,
            self.seeds,
            self.max_tokens,
            self.params,
            self.stops,
            self.logprobs or 0,
            deadline,
        )

    def score(self, prompt: _Prompt, deadline: float) -> None:
        """Blocking: the prompt's own log-probabilities, where echo shows them."""
        if self.echo and self.logprobs is not None:
            _score_prompt(self.engine, prompt, self.logprobs, deadline)

    def complete(self, prompt: _Prompt, deadline: float) -> list[Generation]:
        """Blocking: the prompt's n best completions."""
        finished = {c: g for c, g in self.steps(prompt, deadline) if isinstance(g, Generation)}
        return _best(finished, self.n)

    def answer(self, prompt: _Prompt, deadline: float) -> list[Generation]:
        """Blocking: what a plain (not streamed) answer needs of the prompt."""
        self.score(prompt, deadline)
        return self.complete(prompt, deadline)

    def choice(self, index: int, prompt: _Prompt, generation: Generation) -> CompletionChoice:
        echoed = prompt if self.echo else None
        return CompletionChoice(
            text=(prompt.text if self.echo else "") + generation.text,
            index=index,
            finish_reason=FINISH[generation.finish_reason],
            logprobs=None
            if self.logprobs is None
            else _logprobs(self.engine, generation.steps, 0, echoed),
        )

    def chunk(
        self, index: int, text: str, logprobs: dict | None = None, finish: str | None = None
    ) -> dict:
        return {
            "id": self.ident,
            "object": "text_completion",
            "created": self.created,
            "model": self.engine.name,
            "choices": [
                {"text": text, "index": index, "logprobs": logprobs, "finish_reason": finish}
            ],
        }


async def _choices(
    job: _Job, prompt: _Prompt, deadline: float
) -> AsyncIterator[tuple[int, Step | Generation]]:
    """(choice, Step or Generation) events of a prompt's completions: as they are generated,
    or with best_of above n the best ones, once all are generated."""
    if len(job.seeds) > job.n:
        chosen = await anyio.to_thread.run_sync(job.complete, prompt, deadline)
        for k, generation in enumerate(chosen):
            for step in generation.steps:
                yield k, step
            yield k, generation
        return
    steps = job.steps(prompt, deadline)
    try:
        while (item := await anyio.to_thread.run_sync(next, steps, None)) is not None:
            yield item
    finally:
        steps.close()


async def _stream(
    job: _Job,
    prompts: list[_Prompt],
    deadline: float,
    usage: bool,
    tally: StreamTally,
    release: Callable[[], Awaitable[None]],
) -> AsyncIterator[dict]:
    """OpenAI's stream: per choice its echoed prompt (with echo), one chunk per token (a
    prompt's choices interleaved, as they are generated together), a chunk with its
    finish_reason; with include_usage a chunk of usage; then [DONE]. ``tally`` counts the
    tokens sent and whether the stream ended well."""

    def event(chunk: dict) -> dict:
        if usage:
            chunk["usage"] = None
        return {"data": json.dumps(chunk, ensure_ascii=False)}

    def logprobs(steps: list[Step], start: int, prompt: _Prompt | None = None) -> dict | None:
        if job.logprobs is None:
            return None
        return _logprobs(job.engine, steps, start, prompt).model_dump()

    prompt_tokens = completion_tokens = 0
    try:
        for i, prompt in enumerate(prompts):
            first = i * job.n
            offsets = [0] * job.n
            if job.echo:
                if job.logprobs is not None:
                    await anyio.to_thread.run_sync(job.score, prompt, deadline)
                for k in range(job.n):
                    yield event(job.chunk(first + k, prompt.text, logprobs([], 0, prompt)))
                    offsets[k] = len(prompt.text)
            async with aclosing(_choices(job, prompt, deadline)) as events:
                async for k, item in events:
                    if isinstance(item, Generation):
                        prompt_tokens += len(item.prompt_ids) if k == 0 else 0
                        completion_tokens += len(item.steps)
                        yield event(job.chunk(first + k, "", None, FINISH[item.finish_reason]))
                        continue
                    yield event(job.chunk(first + k, item.text, logprobs([item], offsets[k])))
                    offsets[k] += len(item.text)
                    tally.tokens += 1
        if usage:
            total = {
                "prompt_tokens": prompt_tokens,
                "completion_tokens": completion_tokens,
                "total_tokens": prompt_tokens + completion_tokens,
            }
            yield {"data": json.dumps({**job.chunk(0, ""), "choices": [], "usage": total})}
        yield {"data": "[DONE]"}
    except APIError as exc:
        tally.ok = False
        yield {"data": json.dumps(error_body(exc.type, exc.message, exc.field))}
    finally:
        await release()
