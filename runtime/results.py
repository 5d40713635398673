"""What the engine is asked (one typed request per generation) and what it answers (dataclasses).

A generation request splits as text-generation-inference's server splits it: how the next token
is chosen (``SamplingParams``, its NextTokenChooser) and when to stop (``max_new_tokens`` and
``stop``, its StoppingCriteria).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from runtime.sampling import GREEDY, SamplingParams


@dataclass(frozen=True)
class GenerationRequest:
    """One completion to make (or several, one per seed, with ``Engine.generate_many``)."""

    prompt: str | list[int]  # text, or token ids as they are; an end-of-text token goes first
    max_new_tokens: int
    sampling: SamplingParams = GREEDY  # how each next token is chosen
    stop: tuple[str, ...] = ()  # the completion ends before the first of these it produces
    seed: int | None = None  # of the random generator (None: fresh entropy)
    logprobs: int = 0  # likeliest alternatives reported with each new token


@dataclass
class Step:
    """One generated token."""

    id: int
    text: str  # the characters it adds to the completion (empty while a character is unfinished)
    logprob: float
    top: list[tuple[int, float]] = field(default_factory=list)  # (id, logprob), likeliest first


@dataclass
class Generation:
    """A finished completion."""

    prompt_ids: list[int]  # what the model read of the prompt (at most its context)
    prompt_truncated: bool
    steps: list[Step] = field(default_factory=list)
    text: str = ""
    finish_reason: str = "length"  # length, end_of_text or stop
    end_logprob: float | None = None  # the end-of-text token's, when it ended the text

    def mean_logprob(self) -> float:
        """Log-probability per token of the completion, its end-of-text token included: how
        best_of ranks completions."""
        values = [s.logprob for s in self.steps]
        if self.end_logprob is not None:
            values.append(self.end_logprob)
        return sum(values) / len(values) if values else 0.0


@dataclass(frozen=True)
class Candidate:
    """One possible next token."""

    id: int
    token: str
    probability: float
    logprob: float


@dataclass(frozen=True)
class NextToken:
    """The distribution of the token after a prompt."""

    tokens: list[str]  # what the model read, token by token
    token_ids: list[int]
    truncated: bool  # the prompt was longer than the context: its start was not read
    top: list[Candidate]  # likeliest first
    entropy_bits: float


@dataclass(frozen=True)
class TokenScore:
    id: int
    token: str
    logprob: float


@dataclass(frozen=True)
class Score:
    """How well a model predicts a text, token by token after an end-of-text token."""

    tokens: int
    characters: int
    nll_nats: float
    nll_bits: float
    perplexity: float
    bits_per_character: float
    window: int  # tokens per scoring window
    stride: int  # tokens between the starts of two windows
    token_logprobs: list[TokenScore] | None = None


@dataclass(frozen=True)
class AttentionMaps:
    """Attention weights of a prompt's last tokens."""

    tokens: list[str]
    token_ids: list[int]
    truncated: bool
    layers: list[int]
    heads: list[int]
    attention: list  # [layer][head][query][key], rounded to 5 decimals unless vectors were asked
    # With vectors: each listed layer's queries and keys [layer][token][width] (a head's are
    # the columns head * head_dim to (head + 1) * head_dim) and the weights unrounded.
    queries: list | None = None
    keys: list | None = None
    head_dim: int | None = None
