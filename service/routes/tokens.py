"""POST /tokenize and /detokenize: what the models' tokenizer makes of a text, and of ids."""

from fastapi import APIRouter, Depends

from runtime.engine import Engine
from service.errors import APIError
from service.responses import DetokenizeResponse, TokenizeResponse, error_responses
from service.routes.common import Serving, ServingDep, require_api_key
from service.schemas import DetokenizeRequest, TokenizeRequest


def _engine(serving: Serving, model: str | None) -> Engine:
    """The named model's engine, else the first loaded (they share one tokenizer)."""
    engines = serving.engines
    if model is not None:
        return serving.engine_for(model)
    if engines:
        return engines[sorted(engines)[0]]
    raise APIError(503, "not_ready", "no model is loaded, so no tokenizer either")


router = APIRouter(tags=["tokens"], dependencies=[Depends(require_api_key)])


@router.post(
    "/tokenize",
    response_model=TokenizeResponse,
    responses=error_responses(400, 401, 404, 408, 413, 415, 422, 429, 503, 504),
)
async def tokenize(body: TokenizeRequest, serving: ServingDep) -> TokenizeResponse:
    """Token ids, token strings and [start, end) character offsets of a text."""
    engine = _engine(serving, body.model)

    def run() -> TokenizeResponse:  # a long text takes a while: off the event loop
        encoding = engine.tokenizer.encode(body.text, add_special_tokens=False)
        serving.check_answer_size(len(encoding.ids), "tokens of the text", "text")
        return TokenizeResponse(
            ids=encoding.ids,
            tokens=engine.token_texts(encoding.ids),
            offsets=[list(o) for o in encoding.offsets],
        )

    # In a slot like every endpoint that does work: bounded in number and in time.
    async with serving.slot():
        return await serving.run(run)


@router.post(
    "/detokenize",
    response_model=DetokenizeResponse,
    responses=error_responses(400, 401, 404, 408, 413, 415, 422, 429, 503, 504),
)
async def detokenize(body: DetokenizeRequest, serving: ServingDep) -> DetokenizeResponse:
    """The text of token ids, together and one by one (404 for an id outside the
    vocabulary)."""
    engine = _engine(serving, body.model)
    engine.check_token_ids(body.ids, "ids")
    serving.check_answer_size(len(body.ids), "ids", "ids")
    async with serving.slot():
        return await serving.run(
            lambda: DetokenizeResponse(
                text=engine.decode(body.ids), tokens=engine.token_texts(body.ids)
            ),
        )
