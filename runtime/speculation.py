"""Speculative decoding with drafts looked up in the sequence itself (prompt lookup decoding).

A step of one sequence reads every weight of the model to add one token (55 MB for the shipped
attention model in float32): on a CPU it waits on memory, not arithmetic, and a call that adds
several tokens costs little more than one. So when a sequence decodes alone, its next tokens are
guessed and one call checks the guesses (``SlotCache.verify``: the logits after each): the
sequence keeps the guessed tokens that its own choice agrees with, then its own token where they
part (Leviathan et al. 2023, "Fast Inference from Transformers via Speculative Decoding"). Every
token is still the model's own choice from its own logits; a guess decides only how many of them
one call yields.

The guess costs nothing: the tokens that followed the latest earlier occurrence of the
sequence's last few tokens (Saxena 2023, "Prompt lookup decoding"; vLLM's and llama.cpp's
"ngram" drafts). Greedy text repeats itself, its prompt's phrases and its own loops, which is
where the guesses hold; where the ending never came before, the step adds one token as usual
(why not a small drafting model: docs/decisions.md).

Only float32 models on the CPU draft (runtime/loader.py says why not int8), and only greedy
sequences are drafted for: a sampled token depends on its generator's state, so a
seed must give the same completion whether the sequence ran alone (drafted) or in a batch.
runtime/scheduler.py drafts when one sequence is decoding; with more, a batched step already
reads the weights once for all of them.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

# Lengths of the sequence's ending that a draft looks for earlier in it, longest first.
LOOKUP_MATCH = (3, 2)


class Drafter:
    """Guesses of a sequence's next tokens from its own earlier tokens, and their tally."""

    def __init__(self, tokens: int, on_checked: Callable[[int, int], None] | None = None) -> None:
        """``tokens``: the most tokens a draft guesses; ``on_checked(drafted, accepted)``: told
        of each checked draft (metrics)."""
        if tokens < 1:
            raise ValueError(f"a draft guesses at least one token, not {tokens}")
        self.tokens = tokens
        self.on_checked = on_checked
        self.drafted = 0  # tokens guessed and accepted so far (tests, benchmarks)
        self.accepted = 0

    def checked(self, drafted: int, accepted: int) -> None:
        """A draft of ``drafted`` tokens was checked and its first ``accepted`` kept."""
        self.accepted += accepted
        if self.on_checked is not None:
            self.on_checked(drafted, accepted)

    def draft(self, context: list[int]) -> list[int]:
        """Up to ``tokens`` tokens that followed the latest earlier occurrence of the last
        LOOKUP_MATCH tokens of ``context`` (the longest such ending that came before); none
        where no ending did."""
        ids = np.asarray(context)
        last = len(ids) - 1
        if last < 1:
            return []
        # Where earlier runs of 1, 2, ... tokens that equal the sequence's ending end: the
        # earlier places of its last token, kept while the tokens before them match too.
        ends = np.flatnonzero(ids[:last] == ids[last])
        matched = {1: ends}
        for back in range(1, max(LOOKUP_MATCH)):
            ends = ends[ends >= back]
            matched[back + 1] = ends = ends[ids[ends - back] == ids[last - back]]
        for n in LOOKUP_MATCH:
            ends = matched[n]
            if ends.size:
                # The latest with as many tokens after it as a draft takes (in a loop shorter
                # than a draft, the latest has fewer), else the latest.
                whole = ends[ends + 1 + self.tokens <= len(ids)]
                after = int(whole[-1] if whole.size else ends[-1]) + 1
                guess = [int(t) for t in ids[after : after + self.tokens]]
                self.drafted += len(guess)
                return guess
        return []
