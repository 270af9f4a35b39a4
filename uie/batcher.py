"""Dynamic batching: the model inputs of concurrent requests share forward passes.

One thread per loaded model runs every forward pass. A request hands in all
of its inputs (``Batcher.run``) and waits; the thread fills each batch of up to
``batch_size`` inputs from every request waiting at that moment, a fair share
each, shortest inputs first, so that an annotator's one-task request joins the
next batch instead of waiting for a 1,000-task "Retrieve predictions" to end.
A batch also holds at most ``max_tokens`` tokens (the engine's bound), counted as the engine
pads them (``batch_tokens(rows, width)``).
When fewer than ``batch_size`` inputs wait, and they fill less than ``max_tokens``,
it waits at most ``wait_ms`` after the oldest of them arrived for others to join (a
batch already full by its tokens cannot take anyone else: an interactive request for
one long task runs at once). A request's rows come back
trimmed to its inputs' lengths, whichever batch they ran in.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import Counter, deque

log = logging.getLogger(__name__)


class _Request:
    """One caller's inputs, shortest first, and the rows computed for them so far."""

    def __init__(self, inputs):
        self.inputs = inputs
        self.order = sorted(range(len(inputs)), key=lambda k: len(inputs[k].ids))
        self.taken = 0                      # inputs handed to a batch
        self.done = 0                       # inputs whose rows came back
        self.rows = [None] * len(inputs)
        self.error = None
        self.arrived = time.monotonic()
        self.finished = threading.Event()

    def take(self, n):
        out = self.order[self.taken: self.taken + n]
        self.taken += len(out)
        return out


class Batcher:
    """Runs ``forward(inputs) -> (start, end)`` for many callers, batch by batch, in one thread."""

    def __init__(self, forward, batch_size: int, wait_ms: float = 5.0, max_tokens=None,
                 name: str = "batcher", batch_tokens=None):
        self.forward = forward
        self.batch_tokens = batch_tokens or (lambda rows, width: rows * width)
        self.batch_size = max(1, batch_size)
        self.max_tokens = max_tokens
        self.wait = max(0.0, wait_ms) / 1000.0
        self._waiting: deque[_Request] = deque()
        self._cv = threading.Condition()
        self._closed = False
        self._thread = threading.Thread(target=self._loop, name=name, daemon=True)
        self._thread.start()

    def run(self, inputs) -> list[tuple]:
        """``(start_row, end_row)`` per input (numpy, its own length), in input order."""
        if not inputs:
            return []
        request = _Request(inputs)
        with self._cv:
            if self._closed:
                raise RuntimeError("the model was unloaded")
            self._waiting.append(request)
            self._cv.notify()
        request.finished.wait()
        if request.error is not None:
            raise request.error
        return request.rows

    def close(self):
        """Stop the thread once the batches already waiting have run."""
        with self._cv:
            self._closed = True
            self._cv.notify()

    # -- the batching thread -----------------------------------------------
    def _unstarted(self) -> list:
        return [r.inputs[k] for r in self._waiting for k in r.order[r.taken:]]

    def _room_left(self) -> bool:
        """Whether the next batch could still take inputs that have not arrived yet."""
        unstarted = self._unstarted()
        if len(unstarted) >= self.batch_size:
            return False
        if not self.max_tokens or not unstarted:
            return True
        return self.batch_tokens(len(unstarted), max(len(x.ids) for x in unstarted)) < self.max_tokens

    def _next_batch(self):
        """Wait for work, then take a fair share of every waiting request's inputs."""
        with self._cv:
            while not self._waiting and not self._closed:
                self._cv.wait()
            if not self._waiting:
                return None
            deadline = self._waiting[0].arrived + self.wait
            while self._room_left() and (left := deadline - time.monotonic()) > 0:
                self._cv.wait(left)
            batch, room = [], self.batch_size
            pending = [r for r in self._waiting if r.taken < len(r.inputs)]
            for n, request in enumerate(pending):
                share = -(-room // (len(pending) - n))          # ceil: the rest, spread evenly
                batch += [(request, k) for k in request.take(share)]
                room = self.batch_size - len(batch)
            self._fit(batch)
            for request in [r for r in self._waiting if r.taken == len(r.inputs)]:
                self._waiting.remove(request)
            return batch

    def _fit(self, batch):
        """Trim ``batch`` to ``max_tokens`` padded tokens, handing inputs back to their requests:
        each time the widest one of the request with the most inputs in the batch (the one with
        more left to run on a tie), so that every waiting request keeps a row in it."""
        while self.max_tokens and len(batch) > 1 and self._tokens(batch) > self.max_tokens:
            in_batch = Counter(id(r) for r, _ in batch)
            drop = max(range(len(batch)), key=lambda i: (
                in_batch[id(batch[i][0])], len(batch[i][0].inputs) - batch[i][0].done, i))
            request, _ = batch.pop(drop)       # its request's last (widest) input in the batch
            request.taken -= 1

    def _fail(self, batch, exc):
        """Hand ``exc`` to the callers of ``batch`` (``(request, k)`` pairs); none of their inputs
        runs any more. Called holding ``_cv``."""
        for request, _ in batch:
            request.error = exc
            request.taken = len(request.inputs)
            if request in self._waiting:
                self._waiting.remove(request)
            request.finished.set()

    def _tokens(self, batch) -> int:
        """Tokens of ``batch``: its rows, each as wide as the widest input, as the engine pads them."""
        return self.batch_tokens(len(batch), max(len(r.inputs[k].ids) for r, k in batch))

    def _loop(self):
        while True:
            try:
                batch = self._next_batch()
            except Exception as exc:   # noqa: BLE001  (a bug here must not leave callers waiting forever)
                log.exception("batching failed")
                with self._cv:
                    self._fail([(r, None) for r in self._waiting], exc)
                continue
            if batch is None:
                return
            try:
                start, end = self.forward([request.inputs[k] for request, k in batch])
            except Exception as exc:   # noqa: BLE001  (handed to every caller in the batch)
                log.exception("forward pass failed")
                with self._cv:
                    self._fail(batch, exc)
                continue
            for row, (request, k) in enumerate(batch):
                n = len(request.inputs[k].ids)
                request.rows[k] = (start[row, :n], end[row, :n])
                request.done += 1
                if request.done == len(request.inputs):
                    request.finished.set()
