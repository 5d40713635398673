"""Response bodies, and the OpenAPI entries of the errors and event streams a route may answer.

What the service promises back: every route declares its response model here, so the OpenAPI
schema (and schemathesis, which checks every response against it) holds the service to it."""

from typing import Literal

from pydantic import BaseModel, Field


class TokenAlternative(BaseModel):
    id: int
    token: str
    logprob: float


class GeneratedToken(BaseModel):
    id: int
    token: str
    logprob: float
    top_logprobs: list[TokenAlternative] = []


class Usage(BaseModel):
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int


class GenerateResponse(BaseModel):
    model: str
    text: str
    tokens: list[GeneratedToken]
    finish_reason: Literal["length", "stop", "end_of_text"]
    prompt_truncated: bool = Field(
        description="the prompt was longer than the context: only its last tokens were used"
    )
    usage: Usage
    seconds: float
    tokens_per_second: float


class NextTokenCandidate(BaseModel):
    id: int
    token: str
    probability: float
    logprob: float


class NextTokenResponse(BaseModel):
    model: str
    tokens: list[str] = Field(description="the tokens the model saw, end-of-text first")
    token_ids: list[int]
    truncated: bool
    top: list[NextTokenCandidate]
    entropy_bits: float


class AttentionResponse(BaseModel):
    model: str
    tokens: list[str]
    token_ids: list[int]
    truncated: bool = Field(description="only the last tokens of the prompt are shown")
    layers: list[int]
    heads: list[int]
    attention: list[list[list[list[float]]]] = Field(
        description="weights [layer][head][query][key]; each query row sums to 1; rounded to "
        "5 decimals unless vectors were asked"
    )
    queries: list[list[list[float]]] | None = Field(
        None,
        description="with vectors: each listed layer's queries [layer][token][width]; head h "
        "reads columns h * head_dim to (h + 1) * head_dim",
    )
    keys: list[list[list[float]]] | None = Field(
        None, description="with vectors: each listed layer's keys, shaped as queries"
    )
    head_dim: int | None = Field(None, description="with vectors: the width of one head")


class TokenLogprob(BaseModel):
    id: int
    token: str
    logprob: float


class ScoreResponse(BaseModel):
    model: str
    tokens: int
    characters: int
    nll_nats: float
    nll_bits: float
    perplexity: float
    bits_per_character: float
    window: int = Field(description="tokens per scoring window, as used")
    stride: int = Field(description="tokens between the starts of two windows")
    seconds: float = Field(description="time the model spent scoring (not waiting for a slot)")
    tokens_per_second: float = Field(description="tokens scored per second of that time")
    token_logprobs: list[TokenLogprob] | None = None


class TokenizeResponse(BaseModel):
    ids: list[int]
    tokens: list[str]
    offsets: list[list[int]] = Field(description="[start, end) character offsets, a pair a token")


class DetokenizeResponse(BaseModel):
    text: str = Field(
        description="the ids decoded together; bytes that do not complete a character (a "
        "character split across ids, cut at an end) become U+FFFD"
    )
    tokens: list[str] = Field(description="each id decoded alone")


class ModelInfo(BaseModel):
    name: str
    status: Literal["ready", "failed"]
    error: str | None = None
    kind: str | None = None
    parameters: int | None = None
    context: int | None = None
    vocabulary: int | None = None
    provider: str | None = None
    provider_reason: str | None = None
    precision: Literal["float32", "int8"] = Field(
        "float32",
        description="of the matrix products: float32, or int8 weights quantized at load "
        "(MACHADO_QUANTIZE=int8, CPU only; /attention's graph stays float32)",
    )
    has_attention: bool = False
    attention_vectors: bool = Field(
        False, description="/attention also returns the queries and keys (vectors: true)"
    )
    files_checked: bool = Field(
        False,
        description="its graphs and weights matched the sizes and sha256 its card records "
        "before they loaded; false for a card that records none (an older export, loaded "
        "unchecked)",
    )
    kv_cache: bool = Field(
        False, description="generation reads its key/value cache graph (MACHADO_KV_CACHE)"
    )
    training: dict = Field({}, description="hardware, time and tokens of its training run")
    score_window: int | None = Field(
        None, description="/score's window in tokens: its default, and the longest it allows"
    )
    layers: int | None = Field(None, description="attention layers (models with attention)")
    heads: int | None = Field(None, description="heads per layer (models with attention)")
    metrics: dict = {}


class ModelList(BaseModel):
    models: list[ModelInfo]


class Health(BaseModel):
    status: Literal["ok"]


class Readiness(BaseModel):
    ready: bool
    models: dict[str, str]


class ErrorDetail(BaseModel):
    type: str = Field(description="machine-readable kind, e.g. invalid_field, model_not_found")
    message: str = Field(description="what was wrong and what is allowed")
    field: str | None = Field(None, description="the offending field, where there is one")


class ErrorResponse(BaseModel):
    error: ErrorDetail


def error_responses(*codes: int) -> dict[int | str, dict]:
    """OpenAPI entries for the error statuses a route may answer, all with ErrorResponse."""
    meaning = {
        400: "malformed JSON or invalid UTF-8",
        401: "API key missing or wrong",
        404: "no such model (or layer, head, token id of it) or route",
        405: "method not allowed",
        409: "the request already has what it sends (one reward per request)",
        408: "the body did not arrive in time (MACHADO_BODY_TIMEOUT_S)",
        413: "body over the size limit",
        415: "body is not application/json",
        422: "a field is invalid or over a limit",
        429: "every slot taken and the line of requests waiting for one full, or no slot free "
        "in time; see Retry-After",
        500: "an unexpected failure, logged by the server under the request id that its "
        "message names (X-Request-Id)",
        503: "model or service not ready",
        504: "the request ran past its time limit",
    }
    return {code: {"model": ErrorResponse, "description": meaning[code]} for code in codes}


def sse_doc(description: str) -> dict[int | str, dict]:
    """OpenAPI entry of a 200 that may be a stream of server-sent events (each event's fields)."""
    event = {
        "type": "object",
        "properties": {
            "event": {"type": "string"},
            "data": {"type": "string"},
            "id": {"type": "string"},
        },
    }
    return {200: {"description": description, "content": {"text/event-stream": {"schema": event}}}}


INFERENCE_ERRORS = error_responses(400, 401, 404, 408, 413, 415, 422, 429, 500, 503, 504)


class CompareModelResult(BaseModel):
    model: str
    completion: str
    finish_reason: Literal["length", "stop", "end_of_text"]
    next_tokens: list[NextTokenCandidate]
    surprisal_bits: list[float] = Field(description="-log2 p of each prompt token, in order")
    total_surprisal_bits: float
    latency_ms: float = Field(
        description="milliseconds this model's part took; the models of one request run at "
        "once and share the machine, so this is not the model's latency alone"
    )


class CompareResponse(BaseModel):
    prompt_tokens: list[str]
    results: list[CompareModelResult]
    least_surprised: list[str | None] = Field(
        description="per prompt token, the model that gave it the highest probability (null "
        "where the models tokenize the prompt differently)"
    )
