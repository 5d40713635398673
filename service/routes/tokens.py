"""POST /tokenize: what the models' tokenizer makes of a text."""

from __future__ import annotations

from fastapi import APIRouter, Request

from service.errors import APIError
from service.routes.common import engine_for
from service.schemas import TokenizeRequest, TokenizeResponse

router = APIRouter(tags=["tokens"])


@router.post("/tokenize", response_model=TokenizeResponse)
async def tokenize(body: TokenizeRequest, request: Request) -> TokenizeResponse:
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
        offsets=[tuple(o) for o in encoding.offsets],
    )
