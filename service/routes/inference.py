"""Model endpoints: /generate, /next-token, /attention, /score."""

# No `from __future__ import annotations`: the request bodies are classes built from the
# settings, and FastAPI reads the endpoints' annotations as real objects.

import time

from fastapi import APIRouter, Request

from service.engine import Generation
from service.routes.common import engine_for, inference_slot, run_blocking, settings_of
from service.sampling import SamplingParams
from service.schemas import (
    INFERENCE_ERRORS,
    AttentionResponse,
    GeneratedToken,
    GenerateResponse,
    NextTokenResponse,
    Requests,
    ScoreResponse,
    TokenAlternative,
    Usage,
)


def build_router(requests: Requests) -> APIRouter:
    router = APIRouter(tags=["inference"])

    @router.post("/generate", response_model=GenerateResponse, responses=INFERENCE_ERRORS)
    async def generate(body: requests.generate, request: Request) -> GenerateResponse:
        """Continue a prompt: greedy or sampled, with stop strings and per-token
        log-probabilities."""
        engine = engine_for(request, body.model)
        params = SamplingParams(body.temperature, body.top_k, body.top_p, body.repetition_penalty)
        async with inference_slot(request) as deadline:
            started = time.perf_counter()

            def work() -> Generation:
                *_, final = engine.generate(
                    body.prompt,
                    body.max_new_tokens,
                    params,
                    body.seed,
                    body.stop,
                    body.logprobs,
                    deadline,
                )
                return final

            result = await run_blocking(request, work)
            seconds = time.perf_counter() - started
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

    @router.post("/next-token", response_model=NextTokenResponse, responses=INFERENCE_ERRORS)
    async def next_token(body: requests.next_token, request: Request) -> NextTokenResponse:
        """The distribution of the next token: the likeliest candidates and the entropy."""
        engine = engine_for(request, body.model)
        async with inference_slot(request):
            result = await run_blocking(request, lambda: engine.next_token(body.prompt, body.top_k))
        return NextTokenResponse(model=engine.name, **result)

    @router.post("/attention", response_model=AttentionResponse, responses=INFERENCE_ERRORS)
    async def attention(body: requests.attention, request: Request) -> AttentionResponse:
        """Attention weights [layer][head][query][key] of the prompt's last tokens (the shape
        bertviz reads)."""
        limit = settings_of(request).max_attention_tokens
        engine = engine_for(request, body.model)
        async with inference_slot(request):
            result = await run_blocking(
                request, lambda: engine.attention(body.prompt, limit, body.layer, body.head)
            )
        return AttentionResponse(model=engine.name, **result)

    @router.post(
        "/score",
        response_model=ScoreResponse,
        responses=INFERENCE_ERRORS,
        response_model_exclude_none=True,
    )
    async def score(body: requests.score, request: Request) -> ScoreResponse:
        """Negative log-likelihood, perplexity and bits per character of a text."""
        engine = engine_for(request, body.model)
        async with inference_slot(request) as deadline:
            result = await run_blocking(
                request, lambda: engine.score(body.text, body.per_token, deadline=deadline)
            )
        return ScoreResponse(model=engine.name, **result)

    return router
