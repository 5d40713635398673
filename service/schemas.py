"""Request and response bodies, with the limits that show in the OpenAPI schema.

Hard ceilings here keep the schema honest; the configured limits (settings) may be lower and are
checked in the routes, with an error that names the limit.
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

MODEL_NAME = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$"
ModelName = Annotated[
    str,
    Field(
        pattern=MODEL_NAME,
        max_length=64,
        description="a model name from GET /models",
        examples=["attention"],
    ),
]
Prompt = Annotated[
    str,
    Field(
        min_length=1,
        max_length=100_000,
        description="text to continue; not empty or only whitespace",
        examples=["Capitu olhou para mim"],
    ),
]


def _valid_text(value: str) -> str:
    """Unicode text that is not blank: JSON's \\ud800-style escapes can smuggle in lone
    surrogates, which no UTF-8 tokenizer accepts."""
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise ValueError("contains an unpaired UTF-16 surrogate, which is not text") from None
    return value


def _not_blank(value: str) -> str:
    if not _valid_text(value).strip():
        raise ValueError("must contain something other than whitespace")
    return value


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class GenerateRequest(Strict):
    model: ModelName
    prompt: Prompt
    max_new_tokens: int = Field(16, ge=1, le=4096, description="tokens to generate at most")
    temperature: float = Field(
        1.0, ge=0.0, le=10.0, allow_inf_nan=False, description="0 is greedy decoding"
    )
    top_k: int = Field(0, ge=0, le=8192, description="sample among the k likeliest; 0: off")
    top_p: float = Field(
        1.0, gt=0.0, le=1.0, allow_inf_nan=False, description="nucleus sampling mass; 1: off"
    )
    repetition_penalty: float = Field(
        1.0,
        ge=1.0,
        le=10.0,
        allow_inf_nan=False,
        description="> 1 discourages tokens already in context",
    )
    seed: int | None = Field(None, ge=0, le=2**63 - 1, description="same seed, same output")
    stop: list[Annotated[str, Field(min_length=1, max_length=100)]] = Field(
        default_factory=list, max_length=32, description="stop before any of these strings"
    )
    logprobs: int = Field(0, ge=0, le=100, description="alternatives listed per token")

    _prompt_not_blank = field_validator("prompt")(_not_blank)

    @field_validator("stop")
    @classmethod
    def _stops_are_text(cls, stops: list[str]) -> list[str]:
        return [_valid_text(s) for s in stops]


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


class NextTokenRequest(Strict):
    model: ModelName
    prompt: Prompt
    top_k: int = Field(10, ge=1, le=8192, description="how many likely next tokens to list")

    _prompt_not_blank = field_validator("prompt")(_not_blank)


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


class AttentionRequest(Strict):
    model: ModelName
    prompt: Prompt
    layer: int | None = Field(None, ge=0, le=1024, description="one layer (default: all)")
    head: int | None = Field(None, ge=0, le=1024, description="one head (default: all)")

    _prompt_not_blank = field_validator("prompt")(_not_blank)


class AttentionResponse(BaseModel):
    model: str
    tokens: list[str]
    token_ids: list[int]
    truncated: bool = Field(description="only the last tokens of the prompt are shown")
    layers: list[int]
    heads: list[int]
    attention: list[list[list[list[float]]]] = Field(
        description="weights [layer][head][query][key]; each query row sums to 1"
    )


class ScoreRequest(Strict):
    model: ModelName
    text: Annotated[str, Field(min_length=1, max_length=1_000_000)]
    per_token: bool = Field(False, description="also list each token's log-probability")

    _text_not_blank = field_validator("text")(_not_blank)


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
    window: int
    stride: int
    token_logprobs: list[TokenLogprob] | None = None


class TokenizeRequest(Strict):
    text: Annotated[str, Field(min_length=1, max_length=100_000)]
    model: ModelName | None = Field(None, description="whose tokenizer (default: the first)")

    _text_is_text = field_validator("text")(_valid_text)


class TokenizeResponse(BaseModel):
    ids: list[int]
    tokens: list[str]
    offsets: list[tuple[int, int]] = Field(description="[start, end) character offsets")


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
    has_attention: bool = False
    metrics: dict = {}


class ModelList(BaseModel):
    models: list[ModelInfo]


class Health(BaseModel):
    status: Literal["ok"]


class Readiness(BaseModel):
    ready: bool
    models: dict[str, str]
