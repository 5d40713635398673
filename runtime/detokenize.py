"""A generation's text, decoded as it grows without decoding every token again at each step.

Byte-level BPE tokens are bytes, not characters: a character can span tokens, and until its last
byte comes the decoded text ends in U+FFFD. Decoding the whole generation at every new token
costs more with every token; but the text of tokens that end on a whole character never changes
again, so only the tokens after the last such point are decoded anew.
"""

from __future__ import annotations

from collections.abc import Callable

REPLACEMENT = "\ufffd"  # what a decoder writes for bytes that are not (yet) a whole character


class IncrementalText:
    """The text of one growing list of tokens (``text`` is called after each new token)."""

    def __init__(self) -> None:
        self.settled = 0  # tokens whose text ends on a whole character
        self.settled_text = ""

    def text(self, tokens: list[int], decode: Callable[[list[int]], str]) -> str:
        """``decode(tokens)``, decoding only the tokens after the settled ones."""
        tail = decode(tokens[self.settled :])
        text = self.settled_text + tail
        if not tail.endswith(REPLACEMENT):
            self.settled, self.settled_text = len(tokens), text
        return text
