"""POST /compare: one prompt through several models, side by side."""

import asyncio
import math
import time
from dataclasses import asdict

from fastapi import APIRouter, Depends

from runtime.deadline import Deadline
from runtime.engine import Engine
from runtime.results import GenerationRequest
from service.errors import APIError
from service.responses import (
    INFERENCE_ERRORS,
    CompareModelResult,
    CompareResponse,
    NextTokenCandidate,
)
from service.routes.common import ServingDep, require_api_key
from service.schemas import CompareRequest

router = APIRouter(tags=["comparison"], dependencies=[Depends(require_api_key)])


@router.post("/compare", response_model=CompareResponse, responses=INFERENCE_ERRORS)
async def compare(body: CompareRequest, serving: ServingDep) -> CompareResponse:
    """The same prompt, settings and seed through several models: completions, next-token
    candidates, the prompt's surprisal token by token, and which model each token surprised
    least."""
    names = body.models or sorted(serving.engines)
    if not names:
        raise APIError(503, "not_ready", "no model is loaded, so there is nothing to compare")
    engines = [serving.engine_for(name) for name in dict.fromkeys(names)]
    # One label value for every set of models: the ordered list would grow the metrics'
    # label values with the permutations of the served models.
    serving.note(model=engines[0].name if len(engines) == 1 else "(several)")
    for engine in engines:
        engine.check_token_ids(body.logit_bias, "logit_bias")
    serving.note(prompt=body.prompt)
    params = body.params()

    def run(engine: Engine, deadline: Deadline) -> tuple[CompareModelResult, list[int]]:
        started = time.perf_counter()
        job = GenerationRequest(
            body.prompt, body.max_new_tokens, params, tuple(body.stop), body.seed
        )
        *_, generation = engine.generate(job, deadline)
        nxt = engine.next_token(body.prompt, body.top_n)
        scored = engine.score(
            body.prompt, per_token=True, deadline=deadline, window=body.surprisal_window
        )
        bits = [-t.logprob / math.log(2) for t in scored.token_logprobs]
        result = CompareModelResult(
            model=engine.name,
            completion=generation.text,
            finish_reason=generation.finish_reason,
            next_tokens=[NextTokenCandidate(**asdict(c)) for c in nxt.top],
            surprisal_bits=bits,
            total_surprisal_bits=sum(bits),
            latency_ms=(time.perf_counter() - started) * 1000,
        )
        return result, [t.id for t in scored.token_logprobs]

    async with serving.slot() as deadline:
        # The models run at once, each in a worker thread of its own (ONNX Runtime releases
        # the GIL): with cores for every model's threads the answer takes as long as the
        # slowest model, not the sum of them (BENCHMARKS.md, /compare).
        runs = [serving.run(lambda e=e: run(e, deadline)) for e in engines]
        finished = await asyncio.gather(*runs, return_exceptions=True)
    for outcome in finished:
        if isinstance(outcome, BaseException):
            raise outcome
    outcomes: list[tuple[CompareModelResult, list[int]]] = finished  # type: ignore[assignment]
    results = [r for r, _ in outcomes]
    token_ids = [ids for _, ids in outcomes]
    same = all(ids == token_ids[0] for ids in token_ids)
    least = (
        [
            min(results, key=lambda r: r.surprisal_bits[i]).model if same else None
            for i in range(len(token_ids[0]))
        ]
        if same
        else [None] * max(len(ids) for ids in token_ids)
    )
    prompt_tokens = engines[0].token_texts(token_ids[0])
    return CompareResponse(prompt_tokens=prompt_tokens, results=results, least_surprised=least)
