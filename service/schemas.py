"""Request bodies. Their limits are the server's settings (service/limits.py), so a request is
refused, and the OpenAPI schema states, what this server is configured to accept. (Response
bodies: service/responses.py.)"""

import typing
from types import MappingProxyType
from typing import Annotated

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    ValidationInfo,
    field_validator,
)

from runtime.sampling import SamplingParams
from service.limits import Capped, Limit
from service.settings import API_KEY

# Something other than whitespace. Spelled out rather than \S: the OpenAPI schema's regex
# dialect (ECMAScript) and the validator's (Rust's regex, in pydantic-core) disagree on what \s
# is (U+0085 and U+FEFF, for one), and Python's str.isspace adds U+001C-U+001F; this class is
# whitespace to all three, so the schema and the validator accept the same strings.
WHITESPACE = (
    r"\u0009-\u000d\u001c-\u0020\u0085\u00a0\u1680\u2000-\u200a\u2028\u2029\u202f\u205f"
    r"\u3000\ufeff"
)
NOT_BLANK = f"[^{WHITESPACE}]"
MODEL_NAME = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$"
# JSON object keys are strings: a token id in decimal, without leading zeros.
TOKEN_KEY = r"^(0|[1-9][0-9]{0,9})$"
# What each pattern asks for, in words: a 422 says this rather than the regex.
PATTERN_MEANINGS = MappingProxyType(
    {
        NOT_BLANK: "should hold something other than whitespace",
        MODEL_NAME: "should be a model name from GET /models: 1 to 64 letters, digits, '.', "
        "'_' or '-', starting with a letter or digit",
        TOKEN_KEY: "should be a token id in decimal, without sign or leading zeros",
        API_KEY: "should hold only letters, digits and -._~+/, then any '=' padding (an RFC "
        "6750 bearer token)",
    }
)
ModelName = Annotated[
    str,
    Field(
        pattern=MODEL_NAME,
        max_length=64,
        description="a model name from GET /models",
        examples=["attention"],
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


def _json_kind(annotation: object) -> type | None:
    """int, float or bool for a (possibly optional) numeric or boolean field, else None."""
    options = typing.get_args(annotation) or (annotation,)
    # An option may carry its own bounds (Annotated[int, Field(ge=1), Limit(...)] | None).
    options = [typing.get_args(k)[0] if typing.get_origin(k) is Annotated else k for k in options]
    kinds = [k for k in options if k in (int, float, bool)]
    return kinds[0] if kinds else None


def _json_number(value: object) -> object:
    """A JSON number only: not a string, not true or false (which pydantic would read as 1
    and 0)."""
    if isinstance(value, bool | str):
        raise ValueError(f"must be a JSON number, not {type(value).__name__}")
    return value


# For numbers inside lists and objects, which Strict's check of top-level fields does not see
# (the bounds before the validator, or the OpenAPI schema would not show them as JSON Schema's).
TokenIdItem = Annotated[int, Field(ge=0, le=2**31 - 1), BeforeValidator(_json_number)]
BiasValue = Annotated[
    float, Field(ge=-100.0, le=100.0, allow_inf_nan=False), BeforeValidator(_json_number)
]


class Strict(BaseModel):
    """Unknown fields refused; numbers and booleans only as JSON numbers and booleans (3.0 is an
    integer, as JSON Schema has it; "3" and true are not)."""

    model_config = ConfigDict(extra="forbid")

    @field_validator("*", mode="before")
    @classmethod
    def _json_types(cls, value: object, info: ValidationInfo) -> object:
        kind = _json_kind(cls.model_fields[info.field_name].annotation)
        if kind is bool and not isinstance(value, bool):
            raise ValueError("must be true or false")
        return _json_number(value) if kind in (int, float) else value


class Penalties(Strict):
    """OpenAI's frequency and presence penalties and logit bias, shared by /generate,
    /compare and /v1/completions."""

    frequency_penalty: float = Field(
        0.0,
        ge=-2.0,
        le=2.0,
        allow_inf_nan=False,
        description="subtracted from a token's logit once per time it was generated "
        "(OpenAI's; the prompt does not count)",
    )
    presence_penalty: float = Field(
        0.0,
        ge=-2.0,
        le=2.0,
        allow_inf_nan=False,
        description="subtracted from a token's logit once it was generated at all (OpenAI's)",
    )
    logit_bias: Annotated[
        dict[Annotated[str, Field(pattern=TOKEN_KEY)], BiasValue], Limit("max_logit_bias")
    ] = Field(
        default_factory=dict,
        description="token id (see /tokenize) -> value added to its logit before sampling, "
        "-100 (never) to 100 (always); an id outside the model's vocabulary is a 404",
        examples=[{"0": -100}],
        json_schema_extra={"additionalProperties": False},
    )

    def sampling(
        self, temperature: float, top_k: int, top_p: float, repetition: float = 1.0
    ) -> SamplingParams:
        return SamplingParams(
            temperature,
            top_k,
            top_p,
            repetition,
            self.frequency_penalty,
            self.presence_penalty,
            tuple(sorted((int(k), v) for k, v in self.logit_bias.items())),
        )


PromptText = Annotated[
    str,
    Field(
        min_length=1,
        pattern=NOT_BLANK,
        description="text to continue, read as the start of a document; not empty or "
        "only whitespace. <|endoftext|> in it is the end-of-text token: a document boundary",
        examples=["Capitu olhou para mim"],
    ),
    Limit("max_prompt_chars"),
]
StopString = Annotated[str, Field(min_length=1, max_length=100)]
TopK = Annotated[int, Limit("max_top_k")]
_NEW_TOKENS = Capped(16, "max_new_tokens")


class Generation(Penalties):
    """What every generating endpoint shares: the prompt and the sampling settings."""

    prompt: PromptText
    max_new_tokens: Annotated[int, Limit("max_new_tokens")] = Field(
        default_factory=_NEW_TOKENS,
        ge=1,
        description="tokens to generate at most",
        json_schema_extra=_NEW_TOKENS.schema,
    )
    temperature: float = Field(
        1.0, ge=0.0, le=10.0, allow_inf_nan=False, description="0 is greedy decoding"
    )
    top_k: TopK = Field(0, ge=0, description="sample among the k likeliest; 0: off")
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
    seed: int | None = Field(None, ge=0, le=2**53 - 1, description="same seed, same output")
    stop: Annotated[list[StopString], Limit("max_stop_strings")] = Field(
        default_factory=list, description="stop before any of these strings"
    )

    _prompt_is_text = field_validator("prompt")(_valid_text)

    @field_validator("stop")
    @classmethod
    def _stops_are_text(cls, stops: list[str]) -> list[str]:
        return [_valid_text(s) for s in stops]

    def params(self) -> SamplingParams:
        return self.sampling(self.temperature, self.top_k, self.top_p, self.repetition_penalty)


class GenerateRequest(Generation):
    model: ModelName
    logprobs: Annotated[int, Limit("max_logprobs")] = Field(
        0, ge=0, description="alternatives listed per token"
    )
    stream: bool = Field(False, description="answer with server-sent events, one per token")


_TOP_N = Capped(5, "max_top_k")


class CompareRequest(Generation):
    models: Annotated[list[ModelName], Limit("max_compare_models")] | None = Field(
        None,
        min_length=1,
        json_schema_extra={"uniqueItems": True},
        description="models to compare, each named once (default: every loaded model)",
    )
    top_n: TopK = Field(
        default_factory=_TOP_N,
        ge=1,
        description="next tokens listed per model",
        json_schema_extra=_TOP_N.schema,
    )
    surprisal_window: int | None = Field(
        None,
        ge=1,
        le=65536,
        description="the prompt's surprisal is scored like /score with this window: each "
        "token reads from ceil(w/2) + 1 to w tokens before it, so the models can be "
        "compared reading the same few tokens (default, and at most: each model's own "
        "score_window). The completion and next tokens always read the whole context",
    )

    @field_validator("models")
    @classmethod
    def _each_model_once(cls, models: list[str] | None) -> list[str] | None:
        twice = sorted({m for m in models or () if models.count(m) > 1})
        if twice:
            raise ValueError(f"names {', '.join(twice)} more than once; name each model once")
        return models


_NEXT_TOKENS = Capped(10, "max_top_k")


class NextTokenRequest(Strict):
    model: ModelName
    prompt: PromptText
    top_k: TopK = Field(
        default_factory=_NEXT_TOKENS,
        ge=1,
        description="how many likely next tokens to list",
        json_schema_extra=_NEXT_TOKENS.schema,
    )

    _prompt_is_text = field_validator("prompt")(_valid_text)


class AttentionRequest(Strict):
    model: ModelName
    prompt: PromptText
    layer: int | None = Field(None, ge=0, le=1024, description="one layer (default: all)")
    head: int | None = Field(None, ge=0, le=1024, description="one head (default: all)")
    vectors: bool = Field(
        False,
        description="also return each listed layer's queries and keys, from which the "
        "weights are computed (softmax of q·k / sqrt(head_dim) over the keys up to the "
        "query), and the weights unrounded; GET /models says which models serve them",
    )

    _prompt_is_text = field_validator("prompt")(_valid_text)


Text = Annotated[str, Field(min_length=1), Limit("max_score_chars")]


class ScoreRequest(Strict):
    model: ModelName
    text: Annotated[
        str,
        Field(min_length=1, pattern=NOT_BLANK, description="text to score"),
        Limit("max_score_chars"),
    ]
    per_token: bool = Field(False, description="also list each token's log-probability")
    window: int | None = Field(
        None,
        ge=1,
        le=65536,
        description="scoring window in tokens (default, and at most: the model's own, GET "
        "/models score_window; a longer one is cut to it, and the response's window says "
        "which was used): windows of w tokens overlap by half, so every token reads "
        "from ceil(w/2) + 1 to w tokens before it (the text's first tokens: all there "
        "are). Smaller windows show what the model does with less context. A Bengio model "
        "reads its n tokens whenever the window has 2n - 3 or more (13 for n = 8); it pads "
        "fewer with end-of-text, as at a document's start. Its windows overlap by n - 1 "
        "tokens where that is less than half: every token still reads its n, and the same "
        "scores take fewer windows",
    )

    _text_is_text = field_validator("text")(_valid_text)


class TokenizeRequest(Strict):
    text: Text
    model: ModelName | None = Field(None, description="whose tokenizer (default: the first)")

    _text_is_text = field_validator("text")(_valid_text)


class DetokenizeRequest(Strict):
    ids: Annotated[list[TokenIdItem], Limit("max_score_chars")] = Field(
        min_length=1,
        description="token ids (as /tokenize, /next-token and logprobs give them)",
    )
    model: ModelName | None = Field(None, description="whose tokenizer (default: the first)")
