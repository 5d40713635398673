"""Inference on one loaded model: next-token distributions, generation, scoring, attention.

Blocking numpy and ONNX Runtime code: the routes run it in worker threads, off the event loop.
Every prompt starts after an end-of-text token, as every document did in training.
"""

from __future__ import annotations

import math
import time
from collections.abc import Iterator
from dataclasses import dataclass, field

import numpy as np

from service.errors import APIError
from service.registry import LoadedModel
from service.sampling import SamplingParams, choose, entropy_bits, first_stop, log_softmax

END_OF_TEXT = "<|endoftext|>"


@dataclass
class Step:
    """One generated token."""

    id: int
    text: str
    logprob: float
    top: list[tuple[int, float]] = field(default_factory=list)


@dataclass
class Generation:
    prompt_ids: list[int]
    prompt_truncated: bool
    steps: list[Step] = field(default_factory=list)
    text: str = ""
    finish_reason: str = "length"


def window_plan(n_tokens: int, length: int) -> list[tuple[int, int]]:
    """(start, first scored index) of half-overlapping windows predicting tokens 1..n-1."""
    last = n_tokens - 1
    if last < 1:
        return []
    length = min(length, last)
    stride = max(1, length // 2)
    plan, covered = [(0, 0)], length
    while covered < last:
        start = min(covered + stride - length, last - length)
        plan.append((start, covered - start))
        covered = start + length
    return plan


def uses_kv_cache(model: LoadedModel) -> bool:
    """Whether generation on this model goes through its key/value cache graph (the registry
    loads it where asked for and worth it)."""
    return model.decoder_session is not None


class CachedContext:
    """Next-token logits of a growing token sequence, through the key/value cache graph.

    The first call reads the last ``context`` tokens at once (what ``Engine.next_logits`` sees);
    each later call feeds only the tokens added since, at one position's cost. The graph has
    learned absolute positions, so when the cache would pass the context, the window restarts
    with the last 3/4 of the context: from then on the model sees between 3/4 of its context
    and all of it, instead of always all of it.
    """

    def __init__(self, session, context: int) -> None:
        self.session = session
        self.context = context
        self.refill = max(1, context * 3 // 4)
        self.keys: np.ndarray | None = None
        self.values: np.ndarray | None = None
        self.cached = 0  # tokens whose keys and values are held
        self.seen = 0  # length of the sequence at the last call
        layers, _, heads, _, head_dim = session.get_inputs()[1].shape  # past_keys
        self.empty = np.zeros((layers, 1, heads, 0, head_dim), dtype=np.float32)

    def _run(self, ids: list[int], keys: np.ndarray, values: np.ndarray) -> np.ndarray:
        logits, self.keys, self.values = self.session.run(
            None,
            {
                "input_ids": np.asarray(ids, dtype=np.int64)[None],
                "past_keys": keys,
                "past_values": values,
            },
        )
        self.cached = self.keys.shape[3]
        return logits[0]

    def next_logits(self, ids: list[int]) -> np.ndarray:
        new = len(ids) - self.seen
        self.seen = len(ids)
        if self.keys is None or new <= 0:  # the first call (or a sequence that did not grow)
            return self._run(ids[-self.context :], self.empty, self.empty)
        if self.cached + new <= self.context:
            return self._run(ids[-new:], self.keys, self.values)
        return self._run(ids[-self.refill :], self.empty, self.empty)  # past the context


class Engine:
    """The computations the endpoints need, on one model."""

    def __init__(self, model: LoadedModel) -> None:
        if not model.ready:
            raise ValueError(f"model {model.name} is not loaded: {model.error}")
        self.model = model
        self.name = model.name
        self.card = model.card
        self.tokenizer = model.tokenizer
        self.context = int(self.card["context"])
        self.vocab_size = int(self.card["config"]["vocab_size"])
        # Scoring windows: the attention model's context; the Bengio model's training block
        # (it reads its n tokens out of any window, so a longer window only batches better).
        self.score_window = int(self.card["config"].get("block", self.context))
        eot = self.tokenizer.token_to_id(END_OF_TEXT)
        if eot is None:
            raise ValueError(f"the tokenizer of {self.name} has no {END_OF_TEXT} token")
        self.eot = eot

    # Tokens -----------------------------------------------------------------------------
    def encode(self, text: str) -> list[int]:
        return self.tokenizer.encode(text, add_special_tokens=False).ids

    def prompt_ids(self, prompt: str) -> list[int]:
        return [self.eot, *self.encode(prompt)]

    def token_texts(self, ids: list[int]) -> list[str]:
        return [self.tokenizer.decode([i], skip_special_tokens=False) for i in ids]

    def decode(self, ids: list[int]) -> str:
        return self.tokenizer.decode(ids, skip_special_tokens=False)

    # Graph calls ------------------------------------------------------------------------
    def _logits(self, ids: np.ndarray, positions: np.ndarray) -> np.ndarray:
        return self.model.session.run(
            ["logits"], {"input_ids": ids.astype(np.int64), "positions": positions.astype(np.int64)}
        )[0]

    def next_logits(self, ids: list[int]) -> np.ndarray:
        """Logits (V,) of the token after ``ids``; only the last position reaches the output
        layer, and the model sees at most its context."""
        window = np.asarray(ids[-self.context :], dtype=np.int64)[None]
        return self._logits(window, np.asarray([[window.shape[1] - 1]]))[0, 0]

    # Endpoints --------------------------------------------------------------------------
    def next_token(self, prompt: str, top_k: int) -> dict:
        ids = self.prompt_ids(prompt)
        seen = ids[-self.context :]
        logprobs = log_softmax(self.next_logits(ids))
        top = np.argsort(-logprobs, kind="stable")[:top_k]
        return {
            "tokens": self.token_texts(seen),
            "token_ids": seen,
            "truncated": len(ids) > self.context,
            "top": [
                {
                    "id": int(i),
                    "token": self.decode([int(i)]),
                    "probability": float(np.exp(logprobs[i])),
                    "logprob": float(logprobs[i]),
                }
                for i in top
            ],
            "entropy_bits": entropy_bits(logprobs),
        }

    def generate(
        self,
        prompt: str,
        max_new_tokens: int,
        params: SamplingParams,
        seed: int | None,
        stop: list[str],
        logprobs: int,
        deadline: float | None = None,
    ) -> Iterator[Step | Generation]:
        """Yields each new token as it comes, then the finished Generation."""
        ids = self.prompt_ids(prompt)
        result = Generation(
            prompt_ids=ids[-self.context :], prompt_truncated=len(ids) > self.context
        )
        rng = np.random.default_rng(seed)
        generated: list[int] = []
        cache = (
            CachedContext(self.model.decoder_session, self.context)
            if uses_kv_cache(self.model)
            else None
        )
        text = ""
        for _ in range(max_new_tokens):
            if deadline is not None and time.monotonic() > deadline:
                raise APIError(504, "timeout", "the request ran past its time limit")
            logits = self.next_logits(ids) if cache is None else cache.next_logits(ids)
            token = choose(logits, params, ids[-self.context :], rng)
            if token == self.eot:
                result.finish_reason = "end_of_text"
                break
            logp = log_softmax(logits)
            top = []
            if logprobs:
                best = np.argsort(-logp, kind="stable")[:logprobs]
                top = [(int(i), float(logp[i])) for i in best]
            ids.append(token)
            generated.append(token)
            full = self.decode(generated)
            piece = full[len(text) :] if full.startswith(text) else ""
            step = Step(token, piece, float(logp[token]), top)
            cut = first_stop(full, stop)
            if cut >= 0:
                text = full[:cut]
                result.steps.append(step)
                result.finish_reason = "stop"
                break
            text = full
            result.steps.append(step)
            yield step
        result.text = text
        yield result

    def score(
        self, text: str, per_token: bool, batch: int = 8, deadline: float | None = None
    ) -> dict:
        """NLL of ``text`` after an end-of-text token, with half-overlapping windows."""
        ids = self.prompt_ids(text)
        stream = np.asarray(ids, dtype=np.int64)
        plan = window_plan(len(ids), self.score_window)
        length = min(self.score_window, len(ids) - 1)
        offsets = np.arange(length)
        token_logprobs = np.zeros(len(ids) - 1, dtype=np.float64)
        for i in range(0, len(plan), batch):
            if deadline is not None and time.monotonic() > deadline:
                raise APIError(504, "timeout", "the request ran past its time limit")
            chunk = plan[i : i + batch]
            starts = np.asarray([s for s, _ in chunk])[:, None]
            x = stream[starts + offsets]  # (B, L)
            positions = np.broadcast_to(offsets, x.shape)
            logp = log_softmax(self._logits(x, positions))  # (B, L, V)
            targets = stream[starts + offsets + 1]  # (B, L)
            picked = np.take_along_axis(logp, targets[..., None], -1)[..., 0]  # (B, L)
            for row, (start, first) in enumerate(chunk):
                token_logprobs[start + first : start + length] = picked[row, first:]
        nll = float(-token_logprobs.sum())
        chars = (
            len(self.tokenizer.normalizer.normalize_str(text))
            if self.tokenizer.normalizer
            else len(text)
        )
        result = {
            "tokens": len(ids) - 1,
            "characters": chars,
            "nll_nats": nll,
            "nll_bits": nll / math.log(2),
            "perplexity": math.exp(nll / (len(ids) - 1)),
            "bits_per_character": nll / math.log(2) / chars,
            "window": length,
            "stride": max(1, length // 2),
        }
        if per_token:
            targets = ids[1:]
            result["token_logprobs"] = [
                {"id": t, "token": s, "logprob": float(lp)}
                for t, s, lp in zip(targets, self.token_texts(targets), token_logprobs, strict=True)
            ]
        return result

    def attention(self, prompt: str, max_tokens: int, layer: int | None, head: int | None) -> dict:
        if not self.model.has_attention:
            raise APIError(
                422,
                "no_attention",
                f"model {self.name} ({self.card['kind']}) has no attention layers; "
                "ask a model whose has_attention is true in GET /models",
                "model",
            )
        config = self.card["config"]
        layers, heads = int(config["n_layer"]), int(config["n_head"])
        if layer is not None and layer >= layers:
            raise APIError(
                404,
                "layer_not_found",
                f"layer {layer} does not exist: {self.name} has layers 0..{layers - 1}",
                "layer",
            )
        if head is not None and head >= heads:
            raise APIError(
                404,
                "head_not_found",
                f"head {head} does not exist: {self.name} has heads 0..{heads - 1}",
                "head",
            )
        ids = self.prompt_ids(prompt)
        keep = min(max_tokens, self.context)
        window = np.asarray(ids[-keep:], dtype=np.int64)[None]
        weights = self.model.attention_session.run(
            ["attentions"], {"input_ids": window, "positions": np.asarray([[window.shape[1] - 1]])}
        )[0][0]  # (L, H, T, T)
        layer_ids = [layer] if layer is not None else list(range(layers))
        head_ids = [head] if head is not None else list(range(heads))
        selected = weights[np.ix_(layer_ids, head_ids)]  # (l, h, T, T)
        return {
            "tokens": self.token_texts(window[0].tolist()),
            "token_ids": window[0].tolist(),
            "truncated": len(ids) > keep,
            "layers": layer_ids,
            "heads": head_ids,
            "attention": np.round(selected.astype(np.float64), 5).tolist(),
        }
