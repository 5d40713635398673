"""Choosing the next token from logits: greedy, temperature, top-k, top-p, repetition,
frequency and presence penalties, logit bias.

Pure numpy on one vocabulary-sized vector, so it is tested against known logits without a model.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class SamplingParams:
    temperature: float = 1.0  # 0: greedy
    top_k: int = 0  # 0: no top-k filter
    top_p: float = 1.0  # 1: no nucleus filter
    repetition_penalty: float = 1.0  # 1: none; > 1 discourages tokens already in the context
    frequency_penalty: float = 0.0  # subtracted from a logit once per time the token was generated
    presence_penalty: float = 0.0  # subtracted from a logit once if the token was generated
    logit_bias: tuple[tuple[int, float], ...] = ()  # (token id, added to its logit)


GREEDY = SamplingParams(temperature=0.0)


class NonFiniteLogits(ArithmeticError):
    """A model's output holds NaN or infinity: broken weights or graph, never a request's fault
    (answered as a 500 and logged, instead of tokens drawn from nonsense)."""


def log_softmax(logits: np.ndarray) -> np.ndarray:
    """Log-probabilities in float64 (stable for any finite or -inf logits). A row with NaN, +inf
    or nothing but -inf has none: NonFiniteLogits."""
    x = logits.astype(np.float64)
    top = np.max(x, axis=-1, keepdims=True)  # NaN if the row holds one
    if not np.isfinite(top).all():
        raise NonFiniteLogits(
            f"{int((~np.isfinite(top)).sum())} of {top.size} rows of logits hold NaN or "
            "infinity (or only -inf): the model's weights or graph are broken"
        )
    return x - top - np.log(np.sum(np.exp(x - top), axis=-1, keepdims=True))


def logsumexp(logits: np.ndarray) -> np.ndarray:
    """log(sum(exp(logits))) of each row (the last axis), as float64: what a token's logit
    loses to become its log-probability. The exponentials in float32 (a generation step needs
    one token's log-probability, not the whole row's in float64: 32 rows of 8,192 took a
    millisecond that way). A row with NaN, +inf or nothing but -inf: NonFiniteLogits."""
    # Array methods, not np.max and np.sum: their Python wrappers cost more than the
    # reductions themselves on one row of 8,192.
    top = logits.max(axis=-1, keepdims=True)
    if not np.isfinite(top).all():
        raise NonFiniteLogits(
            f"{int((~np.isfinite(top)).sum())} of {top.size} rows of logits hold NaN or "
            "infinity (or only -inf): the model's weights or graph are broken"
        )
    total = np.exp(logits - top).sum(axis=-1, dtype=np.float64)
    return top[..., 0].astype(np.float64) + np.log(total)


def entropy_bits(logprobs: np.ndarray) -> float:
    probs = np.exp(logprobs)
    finite = np.where(probs > 0, logprobs, 0.0)  # 0 * -inf would be nan
    return float(-np.sum(probs * finite) / np.log(2))


def apply_repetition_penalty(logits: np.ndarray, seen: Iterable[int], penalty: float) -> np.ndarray:
    """CTRL's penalty (Keskar et al. 2019): seen tokens' positive logits divided, negative
    multiplied, by the penalty."""
    if penalty == 1.0:
        return logits
    out = logits.astype(np.float64).copy()
    ids = np.unique(np.fromiter(seen, dtype=np.int64))
    if ids.size:
        values = out[ids]
        out[ids] = np.where(values > 0, values / penalty, values * penalty)
    return out


def apply_logit_bias(logits: np.ndarray, bias: tuple[tuple[int, float], ...]) -> np.ndarray:
    """OpenAI's logit_bias: each listed token's bias added to its logit."""
    if not bias:
        return logits
    out = logits.astype(np.float64).copy()
    ids, values = zip(*bias, strict=True)
    np.add.at(out, np.asarray(ids, dtype=np.int64), np.asarray(values, dtype=np.float64))
    return out


def apply_frequency_presence(
    logits: np.ndarray, generated: Iterable[int], frequency: float, presence: float
) -> np.ndarray:
    """OpenAI's penalties: a token's logit loses ``frequency`` per time it was generated so
    far, and ``presence`` once if it was generated at all (the prompt does not count)."""
    if not frequency and not presence:
        return logits
    ids = np.fromiter(generated, dtype=np.int64)
    if not ids.size:
        return logits
    seen, counts = np.unique(ids, return_counts=True)
    out = logits.astype(np.float64).copy()
    out[seen] -= counts * frequency + presence
    return out


def adjust(
    logits: np.ndarray, params: SamplingParams, seen: Iterable[int], generated: Iterable[int]
) -> np.ndarray:
    """The logits that sampling draws from: bias, then the repetition penalty over ``seen``
    (the context), then the frequency and presence penalties over ``generated``."""
    scores = apply_logit_bias(logits, params.logit_bias)
    scores = apply_repetition_penalty(scores, seen, params.repetition_penalty)
    return apply_frequency_presence(
        scores, generated, params.frequency_penalty, params.presence_penalty
    )


def filter_top_k(logits: np.ndarray, k: int) -> np.ndarray:
    """Only the k largest logits stay; the rest become -inf."""
    if k <= 0 or k >= logits.shape[-1]:
        return logits
    cut = np.partition(logits, -k)[-k]
    return np.where(logits < cut, -np.inf, logits)


def filter_top_p(logits: np.ndarray, p: float) -> np.ndarray:
    """The smallest set of most likely tokens whose probability reaches p stays (Holtzman et al.
    2020); the most likely token always does. Ties go to the lower token id.

    Only the most likely tokens are sorted: 64 of them, then 4 times as many until the nucleus
    closes strictly inside them (a full sort of 8,192 logits would cost far more than the
    rest of a sampling step)."""
    if p >= 1.0:
        return logits
    size = logits.shape[-1]
    x = logits.astype(np.float64)
    top = np.max(x)
    log_total = top + np.log(np.sum(np.exp(x - top)))
    candidates = 64
    while True:
        if candidates >= size:
            order = np.argsort(-x, kind="stable")
        else:
            part = np.argpartition(-x, candidates - 1)[:candidates]
            order = part[np.lexsort((part, -x[part]))]  # by logit, then by id
        probs = np.exp(x[order] - log_total)
        keep = np.cumsum(probs) - probs < p  # keep a token while the mass before it is below p
        keep[0] = True
        kept = int(keep.sum())
        # Exact when every token outside the candidates is less likely than the last kept one.
        if candidates >= size or (kept < len(order) and x[order[kept - 1]] > x[order[-1]]):
            break
        candidates *= 4
    out = np.full_like(logits, -np.inf, dtype=np.float64)
    out[order[:kept]] = logits[order[:kept]]
    return out


def choose(
    logits: np.ndarray,
    params: SamplingParams,
    seen: Iterable[int],
    rng: np.random.Generator,
    generated: Iterable[int] = (),
) -> int:
    """The next token id under ``params``, given the context ``seen`` and the tokens
    ``generated`` so far; ``rng`` makes sampling reproducible."""
    scores = adjust(logits, params, seen, generated)
    if params.temperature == 0.0:
        return int(scores.argmax())
    scores = np.asarray(scores, dtype=np.float64)
    # Shift before dividing: with the maximum at 0, even a vanishing temperature gives -inf
    # (probability 0) for the others, never inf - inf.
    with np.errstate(over="ignore"):
        scores = (scores - scores.max()) / params.temperature
    scores = filter_top_p(filter_top_k(scores, params.top_k), params.top_p)
    probs = np.exp(log_softmax(scores))
    return draw(probs / probs.sum(), rng)


def draw(probs: np.ndarray, rng: np.random.Generator) -> int:
    """``rng.choice(len(probs), p=probs)``, the same draw from the same generator state, without
    its checks of ``probs`` (half its cost; the callers' probabilities are well formed)."""
    cdf = np.cumsum(probs)
    cdf /= cdf[-1]
    return int(cdf.searchsorted(rng.random(), side="right"))


def first_stop(text: str, stops: Iterable[str]) -> int:
    """Index in ``text`` where the earliest stop string starts, or -1."""
    found = [i for i in (text.find(s) for s in stops if s) if i >= 0]
    return min(found) if found else -1


def likeliest(logp: np.ndarray, k: int) -> list[list[tuple[int, float]]]:
    """The k likeliest (id, log-probability) of each row of ``logp`` (N, V), likeliest first
    (equal ones by id); only those k are sorted, not the vocabulary."""
    k = min(k, logp.shape[-1])
    part = np.argpartition(-logp, k - 1, axis=-1)[:, :k]  # (N, k), unordered
    values = np.take_along_axis(logp, part, -1)
    rows = []
    for ids, vals in zip(part, values, strict=True):
        order = np.lexsort((ids, -vals))
        rows.append([(int(ids[j]), float(vals[j])) for j in order])
    return rows
