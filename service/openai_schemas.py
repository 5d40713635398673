"""OpenAI's legacy completions API as bodies: the request as the official `openai` client and
the tools built on it send it, and the completion, model and stream shapes they read back
(the routes: service/routes/openai.py)."""

# No `from __future__ import annotations`: the request model is built inside a function, from
# the settings, and pydantic must see its annotations as objects.

from typing import Annotated, Literal

from pydantic import BaseModel, Field, ValidationError, field_validator

from service.errors import problem
from service.schemas import (
    NOT_BLANK,
    ModelName,
    Strict,
    TokenIdItem,
    _valid_text,
    build_penalties,
)
from service.settings import Settings


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


def build_request(settings: Settings) -> type[BaseModel]:
    text = Annotated[
        str, Field(min_length=1, max_length=settings.max_prompt_chars, pattern=NOT_BLANK)
    ]
    texts = Annotated[list[text], Field(min_length=1, max_length=settings.max_completions)]
    token_ids = Annotated[
        list[TokenIdItem],
        Field(min_length=1, max_length=settings.max_prompt_chars),
    ]
    token_lists = Annotated[
        list[token_ids], Field(min_length=1, max_length=settings.max_completions)
    ]
    stop_text = Annotated[str, Field(min_length=1, max_length=100)]
    stops = Annotated[list[stop_text], Field(max_length=min(4, settings.max_stop_strings))]

    class CompletionRequest(build_penalties(settings)):
        model: ModelName
        prompt: text | texts | token_ids | token_lists = Field(
            description="a prompt, a list of prompts, or either as token ids (see /tokenize); "
            "each is read after an end-of-text token, as the start of a document; <|endoftext|> "
            "in a text is that token: a document boundary"
        )
        suffix: None = Field(
            None,
            description="only null: these models continue a prompt, they cannot fill in text "
            "before a suffix",
        )
        max_tokens: int = Field(
            min(16, settings.max_new_tokens),
            ge=0,
            le=settings.max_new_tokens,
            description="tokens to generate at most; 0 with echo scores the prompt only",
        )
        temperature: float = Field(1.0, ge=0.0, le=2.0, allow_inf_nan=False)
        top_p: float = Field(1.0, gt=0.0, le=1.0, allow_inf_nan=False)
        n: int = Field(1, ge=1, le=settings.max_completions)
        best_of: int | None = Field(
            None,
            ge=1,
            le=settings.max_completions,
            description="generate this many completions of each prompt (seeds seed, seed + 1, "
            "...; n where best_of is below n) and return the n with the highest "
            "log-probability per token, the end of text included; a stream then sends them "
            "once all are generated",
        )
        stop: stop_text | stops | None = Field(None, description="a stop string or up to four")
        seed: int | None = Field(None, ge=0, le=2**53 - 1)
        logprobs: int | None = Field(None, ge=0, le=min(5, settings.max_logprobs))
        echo: bool = Field(
            False,
            description="return the prompt before each completion; with logprobs, each prompt "
            "token's log-probability after the tokens before it as well",
        )
        stream: bool = False
        stream_options: StreamOptions | None = Field(
            None, description="read only with stream: true"
        )
        user: str | None = Field(None, max_length=256, description="end-user id (A/B stickiness)")

        @field_validator("prompt", mode="wrap")
        @classmethod
        def _one_prompt_shape(cls, value: object, handler):
            """One message naming the four shapes, not one error per shape tried."""
            try:
                return handler(value)
            except ValidationError as exc:
                first = exc.errors()[0]
                detail = (
                    None
                    if not isinstance(value, str)
                    else "is only whitespace"
                    if first["type"] == "string_pattern_mismatch"
                    else problem(first)
                )
                raise ValueError(
                    (f"{detail}; " if detail else "")
                    + f"a prompt is a text of 1 to {settings.max_prompt_chars} characters, not "
                    f"only whitespace; a list of 1 to {settings.max_completions} such texts; a "
                    f"list of 1 to {settings.max_prompt_chars} token ids; or a list of 1 to "
                    f"{settings.max_completions} lists of token ids"
                ) from None

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

    return CompletionRequest
