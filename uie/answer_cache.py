"""Recent answers of a loaded model, per (text, prompt): asked again, answered at once.

An annotator's interactive requests send the same task again and again, each
time with one more region marked; "Retrieve predictions" may be run twice over
the same tasks. A loaded model's answers never change, so each ``UIEPredictor``
keeps its last ``SIZE`` (text, prompt) answers (spans and ``Doubt``),
keyed by the text's sha1 (a long text is not kept twice in memory). Only the
prompts not answered before reach the model. A new version is a new predictor,
with an empty cache.
"""

from __future__ import annotations

import hashlib
import threading
import weakref
from collections import OrderedDict

from uie.predictor import Answer, Doubt

SIZE = 4096
_caches: "weakref.WeakKeyDictionary" = weakref.WeakKeyDictionary()
_caches_lock = threading.Lock()


class AnswerCache:
    """The ``SIZE`` most recently used (text, prompt) answers of one predictor."""

    def __init__(self, size: int = SIZE):
        self.size = size
        self._items: OrderedDict = OrderedDict()     # (sha1 of text, prompt) -> (spans, Doubt)
        self._lock = threading.Lock()
        self.hits = self.misses = 0

    def extract(self, run, queries) -> list[Answer]:
        """``run(queries)`` (an ``extract``) for what is not cached, answers for all."""
        if self.size <= 0:
            return run(queries)
        keys = [hashlib.sha1(text.encode("utf-8", "surrogatepass")).hexdigest() for text, _ in queries]
        prompts = [list(dict.fromkeys(ps)) for _, ps in queries]
        known = [{p: hit for p in ps if (hit := self._get((k, p))) is not None}
                 for k, ps in zip(keys, prompts)]
        todo = [(q, [p for p in ps if p not in have])
                for q, (ps, have) in enumerate(zip(prompts, known)) if len(have) < len(ps)]
        answers = run([(queries[q][0], missing) for q, missing in todo]) if todo else []
        for (q, missing), answer in zip(todo, answers):
            for p in missing:
                known[q][p] = (answer.get(p, []), getattr(answer, "doubt", {}).get(p, Doubt()))
                self._put((keys[q], p), known[q][p])
        return [Answer({p: have[p][0] for p in ps}, {p: have[p][1] for p in ps})
                for ps, have in zip(prompts, known)]

    def clear(self):
        with self._lock:
            self._items.clear()

    def _get(self, key):
        with self._lock:
            hit = self._items.get(key)
            if hit is None:
                self.misses += 1
                return None
            self._items.move_to_end(key)
            self.hits += 1
            return hit

    def _put(self, key, value):
        with self._lock:
            self._items[key] = value
            self._items.move_to_end(key)
            while len(self._items) > self.size:
                self._items.popitem(last=False)


def cache_for(predictor, size: int = SIZE) -> AnswerCache:
    """The cache of ``predictor`` (made on first use with ``size`` entries, 0: none; gone
    with the predictor)."""
    with _caches_lock:
        cache = _caches.get(predictor)
        if cache is None:
            cache = _caches[predictor] = AnswerCache(size)
        return cache
