"""Model endpoints: /generate, /next-token, /attention, /score."""

from __future__ import annotations

import time

from fastapi import APIRouter, Request

from service.engine import Generation
from service.routes.common import (
    check_limit,
    engine_for,
    inference_slot,
    run_blocking,
    settings_of,
)
from service.sampling import SamplingParams
from service.schemas import (
    AttentionRequest,
    AttentionResponse,
    GeneratedToken,
    GenerateRequest,
    GenerateResponse,
    NextTokenRequest,
    NextTokenResponse,
    ScoreRequest,
    ScoreResponse,
    TokenAlternative,
    Usage,
)

router = APIRouter(tags=["inference"])


@router.post("/generate", response_model=GenerateResponse)
async def generate(body: GenerateRequest, request: Request) -> GenerateResponse:
    """Continue a prompt: greedy or sampled, with stop strings and per-token log-probabilities."""
    settings = settings_of(request)
    check_limit(len(body.prompt), settings.max_prompt_chars, "max_prompt_chars", "characters")
    check_limit(body.max_new_tokens, settings.max_new_tokens, "max_new_tokens", "new tokens")
    check_limit(body.top_k, settings.max_top_k, "top_k", "candidates")
    check_limit(body.logprobs, settings.max_logprobs, "logprobs", "alternatives")
    check_limit(len(body.stop), settings.max_stop_strings, "stop", "stop strings")
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


@router.post("/next-token", response_model=NextTokenResponse)
async def next_token(body: NextTokenRequest, request: Request) -> NextTokenResponse:
    """The distribution of the next token: the likeliest candidates and the entropy."""
    settings = settings_of(request)
    check_limit(len(body.prompt), settings.max_prompt_chars, "max_prompt_chars", "characters")
    check_limit(body.top_k, settings.max_top_k, "top_k", "candidates")
    engine = engine_for(request, body.model)
    async with inference_slot(request):
        result = await run_blocking(request, lambda: engine.next_token(body.prompt, body.top_k))
    return NextTokenResponse(model=engine.name, **result)


@router.post("/attention", response_model=AttentionResponse)
async def attention(body: AttentionRequest, request: Request) -> AttentionResponse:
    """Attention weights [layer][head][query][key] of the prompt's last tokens (bertviz shape)."""
    settings = settings_of(request)
    check_limit(len(body.prompt), settings.max_prompt_chars, "max_prompt_chars", "characters")
    engine = engine_for(request, body.model)
    async with inference_slot(request):
        result = await run_blocking(
            request,
            lambda: engine.attention(
                body.prompt, settings.max_attention_tokens, body.layer, body.head
            ),
        )
    return AttentionResponse(model=engine.name, **result)


@router.post("/score", response_model=ScoreResponse, response_model_exclude_none=True)
async def score(body: ScoreRequest, request: Request) -> ScoreResponse:
    """Negative log-likelihood, perplexity and bits per character of a text."""
    settings = settings_of(request)
    check_limit(len(body.text), settings.max_score_chars, "max_score_chars", "characters")
    engine = engine_for(request, body.model)
    async with inference_slot(request) as deadline:
        result = await run_blocking(
            request, lambda: engine.score(body.text, body.per_token, deadline=deadline)
        )
    return ScoreResponse(model=engine.name, **result)
