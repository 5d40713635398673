"""Next-token graph calls of concurrent requests on one model, run as one batch.

Requests run in worker threads. Whichever thread finds the model idle becomes the leader: it
takes every call queued at that moment (up to ``max_rows`` sequences), runs them as one graph
call and hands each caller its rows; calls that arrive meanwhile queue for the next batch. There
is no timer, so a request alone runs at once, and a batch forms only when requests already wait.

The windows of one batch are padded on the right to the longest, and each row asks for the
logits of its own last position. Both graphs are causal (a position sees only the positions
before it), so the padding changes nothing but the cost.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

# ids (B, T), positions (B, 1) -> logits (B, 1, V)
GraphCall = Callable[[np.ndarray, np.ndarray], np.ndarray]


@dataclass
class _Call:
    windows: list[list[int]]
    done: bool = False
    logits: np.ndarray | None = None
    error: Exception | None = None


class StepBatcher:
    """``batcher(windows)``: the next-token logits (B, V) of each window, batched with the
    windows of concurrent callers."""

    def __init__(
        self,
        run: GraphCall,
        max_rows: int,
        pad_id: int = 0,
        on_batch: Callable[[int], None] | None = None,
    ) -> None:
        """``on_batch(rows)`` hears of every graph call made (the service's metrics)."""
        if max_rows < 1:
            raise ValueError(f"max_rows must be at least 1, not {max_rows}")
        self.run = run
        self.max_rows = max_rows
        self.pad_id = pad_id
        self.on_batch = on_batch
        self._ready = threading.Condition()
        self._queue: list[_Call] = []
        self._busy = False
        self.calls = 0  # graph calls made, for tests and metrics
        self.rows = 0  # rows computed

    def __call__(self, windows: list[list[int]]) -> np.ndarray:
        call = _Call(windows)
        with self._ready:
            self._queue.append(call)
            while True:
                while not call.done and self._busy:
                    self._ready.wait()
                if call.done:
                    return self._result(call)
                # The model is idle: this thread leads, running the queue's oldest calls (its
                # own among them unless older ones fill the batch; then it leads again).
                self._busy = True
                batch = self._take()
                self._ready.release()
                try:
                    self._compute(batch)
                finally:
                    self._ready.acquire()
                    for done in batch:
                        done.done = True
                    self._busy = False
                    self._ready.notify_all()

    def _take(self) -> list[_Call]:
        """The queue's oldest calls, up to max_rows rows (at least one call)."""
        batch, rows = [], 0
        while self._queue and (not batch or rows + len(self._queue[0].windows) <= self.max_rows):
            call = self._queue.pop(0)
            batch.append(call)
            rows += len(call.windows)
        return batch

    def _compute(self, batch: list[_Call]) -> None:
        windows = [w for call in batch for w in call.windows]
        length = max(len(w) for w in windows)
        ids = np.full((len(windows), length), self.pad_id, dtype=np.int64)
        for row, window in enumerate(windows):
            ids[row, : len(window)] = window
        positions = np.asarray([[len(w) - 1] for w in windows], dtype=np.int64)
        try:
            logits = self.run(ids, positions)[:, 0]
        except Exception as error:  # every caller of the batch gets it
            for call in batch:
                call.error = error
            return
        self.calls += 1
        self.rows += len(windows)
        if self.on_batch is not None:
            self.on_batch(len(windows))
        start = 0
        for call in batch:
            call.logits = logits[start : start + len(call.windows)]
            start += len(call.windows)

    @staticmethod
    def _result(call: _Call) -> np.ndarray:
        if call.error is not None:
            raise call.error
        assert call.logits is not None
        return call.logits
