"""OpenAI's legacy completions API as bodies: the request as the official `openai` client and
the tools built on it send it, and the completion, model and stream shapes they read back
(the routes: service/routes/openai.py)."""

from typing import Annotated, Literal

from pydantic import BaseModel, Field, ValidationError, field_validator

from service.errors import problem
from service.limits import Capped, Limit, current
from service.schemas import NOT_BLANK, ModelName, Penalties, Strict, TokenIdItem, _valid_text


class CompletionLogprobs(BaseModel):
    tokens: list[str]
    token_logprobs: list[float]
    top_logprobs: list[dict[str, float]]
    text_offset: list[int]


class CompletionChoice(BaseModel):
    text: str
    index: int
    logprobs: CompletionLogprobs | None = None
    finish_reason: Literal["length", "stop"]


class CompletionUsage(BaseModel):
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int


class Completion(BaseModel):
    id: str
    object: Literal["text_completion"] = "text_completion"
    created: int
    model: str
    choices: list[CompletionChoice]
    usage: CompletionUsage


class ModelCard(BaseModel):
    id: str
    object: Literal["model"] = "model"
    created: int
    owned_by: str = "machado-lm"


class ModelPage(BaseModel):
    object: Literal["list"] = "list"
    data: list[ModelCard]


class StreamOptions(Strict):
    include_usage: bool = Field(
        False,
        description="end the stream with a chunk holding the whole request's usage (and no "
        "choices); every other chunk then has usage null",
    )


Text = Annotated[str, Field(min_length=1, pattern=NOT_BLANK), Limit("max_prompt_chars")]
Texts = Annotated[list[Text], Field(min_length=1), Limit("max_completions")]
TokenIds = Annotated[list[TokenIdItem], Field(min_length=1), Limit("max_prompt_chars")]
TokenLists = Annotated[list[TokenIds], Field(min_length=1), Limit("max_completions")]
StopText = Annotated[str, Field(min_length=1, max_length=100)]
# OpenAI's four stop strings at most, fewer where the server allows fewer.
Stops = Annotated[list[StopText], Limit("max_stop_strings", at_most=4)]
Completions = Annotated[int, Field(ge=1), Limit("max_completions")]
_MAX_TOKENS = Capped(16, "max_new_tokens")


def _one_shape(value: object, handler, shapes: str, whitespace: str) -> object:
    """One message naming the shapes a union field takes, not one error per shape tried."""
    try:
        return handler(value)
    except ValidationError as exc:
        first = exc.errors()[0]
        detail = (
            None
            if not isinstance(value, str)
            else whitespace
            if first["type"] == "string_pattern_mismatch"
            else problem(first)
        )
        raise ValueError((f"{detail}; " if detail else "") + shapes) from None


class CompletionRequest(Penalties):
    model: ModelName
    prompt: Text | Texts | TokenIds | TokenLists = Field(
        description="a prompt, a list of prompts, or either as token ids (see /tokenize); "
        "each is read after an end-of-text token, as the start of a document; <|endoftext|> "
        "in a text is that token: a document boundary"
    )
    suffix: None = Field(
        None,
        description="only null: these models continue a prompt, they cannot fill in text "
        "before a suffix",
    )
    max_tokens: Annotated[int, Limit("max_new_tokens")] = Field(
        default_factory=_MAX_TOKENS,
        ge=0,
        description="tokens to generate at most; 0 with echo scores the prompt only",
        json_schema_extra=_MAX_TOKENS.schema,
    )
    temperature: float = Field(1.0, ge=0.0, le=2.0, allow_inf_nan=False)
    top_p: float = Field(1.0, gt=0.0, le=1.0, allow_inf_nan=False)
    n: Completions = 1
    best_of: Completions | None = Field(
        None,
        description="generate this many completions of each prompt (seeds seed, seed + 1, "
        "...; n where best_of is below n) and return the n with the highest "
        "log-probability per token, the end of text included; a stream then sends them "
        "once all are generated",
    )
    stop: StopText | Stops | None = Field(None, description="a stop string or up to four")
    seed: int | None = Field(None, ge=0, le=2**53 - 1)
    logprobs: Annotated[int, Field(ge=0), Limit("max_logprobs", at_most=5)] | None = None
    echo: bool = Field(
        False,
        description="return the prompt before each completion; with logprobs, each prompt "
        "token's log-probability after the tokens before it as well",
    )
    stream: bool = False
    stream_options: StreamOptions | None = Field(None, description="read only with stream: true")
    user: str | None = Field(None, max_length=256, description="end-user id (A/B stickiness)")

    @field_validator("prompt", mode="wrap")
    @classmethod
    def _one_prompt_shape(cls, value: object, handler):
        chars, prompts = current().max_prompt_chars, current().max_completions
        return _one_shape(
            value,
            handler,
            f"a prompt is a text of 1 to {chars} characters, not only whitespace; a list of 1 "
            f"to {prompts} such texts; a list of 1 to {chars} token ids; or a list of 1 to "
            f"{prompts} lists of token ids",
            "is only whitespace",
        )

    @field_validator("stop", mode="wrap")
    @classmethod
    def _one_stop_shape(cls, value: object, handler):
        most = Limit("max_stop_strings", at_most=4).value()
        return _one_shape(
            value,
            handler,
            f"stop is a text of 1 to 100 characters, a list of up to {most} such texts, or null",
            "is only whitespace",
        )

    @field_validator("prompt", "stop")
    @classmethod
    def _is_text(cls, value: object) -> object:
        for item in value if isinstance(value, list) else [value]:
            if isinstance(item, str):
                _valid_text(item)
        return value

    @field_validator("suffix", mode="before")
    @classmethod
    def _no_suffix(cls, value: object) -> None:
        if value is not None:
            raise ValueError(
                "is not supported: these models continue a prompt and cannot fill in text "
                "before a suffix; leave it out or send null"
            )
        return None
