"""OpenAI-compatible completions: POST /v1/completions, GET /v1/models and /v1/models/{model}.

The legacy completions API as the official `openai` client and the tools built on it send it:
prompt (text, texts, token ids or lists of them), max_tokens, temperature, top_p, n, best_of,
stop, seed, logprobs, echo, frequency_penalty, presence_penalty, logit_bias, stream with
stream_options, user; suffix only as null (the models continue text, they do not insert).
"""

import json
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from contextlib import AsyncExitStack, aclosing
from dataclasses import dataclass
from itertools import accumulate

import anyio
from fastapi import APIRouter, Depends, Response

from runtime.deadline import Deadline
from runtime.engine import Engine
from runtime.errors import InferenceError
from runtime.results import Generation, GenerationRequest, Step
from runtime.sampling import SamplingParams
from service.errors import CLIENT_CLOSED, APIError, api_error, error_body
from service.openai_schemas import (
    Completion,
    CompletionChoice,
    CompletionLogprobs,
    CompletionRequest,
    CompletionUsage,
    ModelCard,
    ModelPage,
)
from service.responses import INFERENCE_ERRORS, error_responses, sse_doc
from service.routes.common import Serving, ServingDep, StreamTally, require_api_key

FINISH = {"length": "length", "stop": "stop", "end_of_text": "stop"}


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


def _score_prompt(engine: Engine, prompt: _Prompt, top: int, deadline: Deadline) -> None:
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


router = APIRouter(prefix="/v1", tags=["openai"], dependencies=[Depends(require_api_key)])


@router.get("/models", response_model=ModelPage)
async def models(serving: ServingDep) -> ModelPage:
    """The served models, as OpenAI's model list."""
    created = int(serving.started)
    return ModelPage(data=[ModelCard(id=name, created=created) for name in sorted(serving.engines)])


@router.get("/models/{model}", response_model=ModelCard, responses=error_responses(401, 404, 503))
async def model(model: str, serving: ServingDep) -> ModelCard:
    """One served model, as OpenAI's model object (404 for a model not served)."""
    return ModelCard(id=serving.engine_for(model).name, created=int(serving.started))


@router.post(
    "/completions",
    response_model=Completion,
    responses={
        **INFERENCE_ERRORS,
        **sse_doc("with stream: true, OpenAI's chunks as 'data:' events, then [DONE]"),
    },
)
async def completions(body: CompletionRequest, serving: ServingDep, response: Response):
    """OpenAI-style text completions (model 'ab' is the client's A/B arm; `user` or
    X-Client-Id keeps it sticky)."""
    engine, arm = serving.resolve(
        body.model, serving.request.headers.get("x-client-id") or body.user
    )
    started = time.perf_counter()
    engine.check_token_ids(body.logit_bias, "logit_bias")
    sources = (
        body.prompt
        if isinstance(body.prompt, list) and not isinstance(body.prompt[0], int)
        else [body.prompt]
    )
    for source in sources:
        if isinstance(source, list):
            engine.check_token_ids(source, "prompt")
    best_of = max(body.best_of or body.n, body.n)
    prompts = [_prompt(engine, source) for source in sources]
    per_token = 1 + (body.logprobs or 0)
    echoed = sum(len(p.ids) for p in prompts) if body.echo else 0
    serving.check_answer_size(
        body.n * (echoed + len(prompts) * body.max_tokens) * per_token,
        f"{body.n} choice(s) x ({echoed} echoed prompt tokens + {len(prompts)} prompt(s) x "
        f"{body.max_tokens} max_tokens) x {per_token} (each token and its logprobs "
        "alternatives)",
        "max_tokens",
    )
    stops = [] if body.stop is None else [body.stop] if isinstance(body.stop, str) else body.stop
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
    async with AsyncExitStack() as stack:
        deadline = await stack.enter_async_context(serving.slot())
        if body.stream:  # the stream holds the slot from here until it ends
            tally = StreamTally()
            usage = body.stream_options is not None and body.stream_options.include_usage

            def events(release: Callable[[], Awaitable[None]]) -> AsyncIterator[dict]:
                return _stream(serving, job, prompts, deadline, usage, tally, release)

            return serving.event_stream(engine, arm, started, stack.pop_all(), tally, events)
        try:
            choices, prompt_tokens, completion_tokens = [], 0, 0
            for i, prompt in enumerate(prompts):
                chosen = await serving.run(lambda p=prompt: job.answer(p, deadline))
                prompt_tokens += len(chosen[0].prompt_ids)
                for k, generation in enumerate(chosen):
                    completion_tokens += len(generation.steps)
                    choices.append(job.choice(i * body.n + k, prompt, generation))
        except Exception:
            serving.record_ab(arm, started, False)
            raise
    serving.count_tokens(engine, completion_tokens, time.perf_counter() - started)
    serving.record_ab(arm, started, True, completion_tokens)
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

    def steps(self, prompt: _Prompt, deadline: Deadline) -> Iterator[tuple[int, Step | Generation]]:
        """The prompt's completions as one batch: (choice, Step or Generation) events."""
        request = GenerationRequest(
            prompt.ids, self.max_tokens, self.params, tuple(self.stops), None, self.logprobs or 0
        )
        return self.engine.generate_many(request, self.seeds, deadline)

    def score(self, prompt: _Prompt, deadline: Deadline) -> None:
        """Blocking: the prompt's own log-probabilities, where echo shows them."""
        if self.echo and self.logprobs is not None:
            _score_prompt(self.engine, prompt, self.logprobs, deadline)

    def complete(self, prompt: _Prompt, deadline: Deadline) -> list[Generation]:
        """Blocking: the prompt's n best completions."""
        finished = {c: g for c, g in self.steps(prompt, deadline) if isinstance(g, Generation)}
        return _best(finished, self.n)

    def answer(self, prompt: _Prompt, deadline: Deadline) -> list[Generation]:
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
    job: _Job, prompt: _Prompt, deadline: Deadline
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
    serving: Serving,
    job: _Job,
    prompts: list[_Prompt],
    deadline: Deadline,
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
        tally.ended = True
        yield {"data": "[DONE]"}
    except (APIError, InferenceError) as error:
        exc = api_error(error)
        if exc.status == CLIENT_CLOSED:
            return  # nobody is there to read an error chunk: the stream was abandoned
        tally.ok, tally.ended = False, True
        yield {"data": json.dumps(error_body(exc.type, exc.message, exc.field))}
    except Exception as exc:  # the stream has started: logged, and said in its last chunk
        tally.ok, tally.ended = False, True
        yield {"data": json.dumps(serving.failure(exc), ensure_ascii=False)}
    finally:
        await release()
