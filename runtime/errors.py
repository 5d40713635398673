"""What the inference core refuses or stops, as exceptions of its own.

Each says what was asked and what exists, and names the request field it concerns (``field``).
The core knows no protocol: the service maps these to HTTP statuses in one table
(``service.errors.STATUS``); a script or a report reads the message.
"""

from __future__ import annotations


class InferenceError(Exception):
    """A request the core cannot serve, with the field it concerns (or None)."""

    def __init__(self, message: str, field: str | None = None) -> None:
        super().__init__(message)
        self.message, self.field = message, field


class NoAttention(InferenceError):
    """Attention maps asked of a model without attention layers."""


class LayerNotFound(InferenceError):
    """A layer index past the model's last layer."""


class HeadNotFound(InferenceError):
    """A head index past the model's last head."""


class VectorsNotServed(InferenceError):
    """Queries and keys asked of a model whose attention graph does not expose them."""


class TokenNotFound(InferenceError):
    """A token id outside the model's vocabulary."""


class Stopped(InferenceError):
    """Work stopped between two graph calls; the Deadline that stopped it says why."""


class TimedOut(Stopped):
    """The request ran past its time limit."""

    def __init__(self, seconds: float) -> None:
        super().__init__(f"the request ran past its time limit of {seconds:g} s")
        self.seconds = seconds


class Cancelled(Stopped):
    """The caller went away (its client hung up): nobody will read the answer."""


class ShuttingDown(Stopped):
    """The process is shutting down and the work could not finish within its drain time."""
