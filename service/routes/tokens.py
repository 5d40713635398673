"""POST /tokenize: what the models' tokenizer makes of a text."""

# No `from __future__ import annotations`: see inference.py.

from fastapi import APIRouter, Depends, Request

from service.errors import APIError
from service.routes.common import engine_for, require_api_key
from service.schemas import Requests, TokenizeResponse, error_responses


def build_router(requests: Requests) -> APIRouter:
    router = APIRouter(tags=["tokens"], dependencies=[Depends(require_api_key)])

    @router.post(
        "/tokenize",
        response_model=TokenizeResponse,
        responses=error_responses(400, 401, 404, 413, 415, 422, 503),
    )
    async def tokenize(body: requests.tokenize, request: Request) -> TokenizeResponse:
        """Token ids, token strings and [start, end) character offsets of a text."""
        engines = request.app.state.engines
        if body.model is not None:
            engine = engine_for(request, body.model)
        elif engines:
            engine = engines[sorted(engines)[0]]
        else:
            raise APIError(503, "not_ready", "no model is loaded, so no tokenizer either")
        encoding = engine.tokenizer.encode(body.text, add_special_tokens=False)
        return TokenizeResponse(
            ids=encoding.ids,
            tokens=engine.token_texts(encoding.ids),
            offsets=[list(o) for o in encoding.offsets],
        )

    return router
