"""Span extraction: ``UIEPredictor`` over many (text, prompts) queries at once.

Texts are tokenised once, long texts are split into overlapping windows, every
(window, prompt) input is batched by length and padded only to the longest
input of its batch. A model with a span tagger (``uie.tagger``, scratch models)
answers the labels the tagger knows from one prompt-free pass per window, and
only the others from prompts.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import paddle

from uie import engine as engines
from uie import tagger as span_tagger
from uie.batcher import Batcher
from uie.checkpoint import ModelLoadError, load_tokenizer, max_position_of
from uie.tokenizer import OffsetTokenizer, encode_windows, pad_batch, window_budget, windows


def pair_spans(start_probs, end_probs, threshold):
    """UIE decoding: each end token pairs with the nearest unused start at or before it.

    Returns ``[(start_token, end_token, score)]`` with score = p_start * p_end.
    """
    starts = np.flatnonzero(start_probs > threshold)
    ends = np.flatnonzero(end_probs > threshold)
    spans, si, current = [], 0, None
    for e in ends:
        while si < len(starts) and starts[si] <= e:
            current = starts[si]
            si += 1
        if current is not None:
            spans.append((int(current), int(e), float(start_probs[current] * end_probs[e])))
            current = None
    return spans


class Stopped(RuntimeError):
    """``extract_in_pieces`` was told to stop: ``done`` of its ``total`` model inputs had run."""

    def __init__(self, done: int, total: int):
        super().__init__(f"stopped after {done} of {total} model inputs")
        self.done, self.total = done, total


@dataclass(frozen=True)
class Span:
    start: int
    end: int
    score: float


class UIEPredictor:
    """Batched UIE span extraction over many texts and prompts.

    ``engine`` runs the forward pass (``uie.engine``: Paddle Inference or
    dygraph; a dygraph ``UIE`` module is taken as it is). With ``batch_wait_ms``
    the forward passes of concurrent ``extract`` calls are batched together
    (``uie.batcher.Batcher``); otherwise each call runs its own batches.
    ``tagger`` (a ``span_tagger.SpanTagger`` or ``TaggerRunner``) answers the
    prompts that are its classes, one pass per window for all of them.
    """

    def __init__(self, engine, tokenizer: OffsetTokenizer, device="cpu", max_seq_len=512,
                 batch_size=16, threshold=0.5, max_position=None, batch_wait_ms=None, tagger=None):
        if isinstance(tagger, span_tagger.SpanTagger):
            tagger = span_tagger.TaggerRunner(tagger)
        self.tagger = tagger

        if isinstance(engine, paddle.nn.Layer):
            max_position = max_position or engine.config.max_position_embeddings
            engine = engines.DygraphEngine(engine, device)
        self.engine = engine
        self.tokenizer = tokenizer
        self.device = device
        self.max_seq_len = min(max_seq_len, max_position or 512)
        self.batch_size = batch_size
        self.max_batch_tokens = getattr(engine, "max_batch_tokens", None)
        self.threshold = threshold
        self._batcher = None
        if batch_wait_ms is not None:
            self._batcher = Batcher(self.forward, batch_size, batch_wait_ms, self.max_batch_tokens)

    @classmethod
    def from_dir(cls, path, device="cpu", engine=None, **kwargs) -> "UIEPredictor":
        """The model in ``path``, run by ``engine`` (default: its dygraph module)."""
        paddle.set_device(device)
        tokenizer = load_tokenizer(path)   # first: a broken vocabulary loads no model
        try:
            tagger = span_tagger.load(path)
        except span_tagger.TaggerError as exc:
            raise ModelLoadError(str(exc)) from None
        if tagger is not None and tagger.config["vocab_size"] < len(tokenizer.vocab):
            raise ModelLoadError(f"{path}: the tagger embeds {tagger.config['vocab_size']} tokens, "
                                 f"vocab.txt has {len(tokenizer.vocab)}")
        engine = engine or engines.DygraphEngine.from_dir(path, device)
        return cls(engine, tokenizer, device=device, max_position=max_position_of(path),
                   tagger=tagger, **kwargs)

    def close(self):
        """Stop the batching thread (the model is being unloaded)."""
        if self._batcher is not None:
            self._batcher.close()

    def build_inputs(self, queries):
        """Tokenise ``queries`` [(text, prompts)] into model inputs.

        Returns ``(inputs, tokens)``: ``inputs`` is ``[(query, prompt,
        EncodedInput)]`` (``query`` indexes ``queries``), window by window and
        prompt by prompt within a window; ``tokens[query]`` is ``(ids,
        starts, ends)`` of its text.
        """
        tok = self.tokenizer
        text_cache, prompt_cache = {}, {}
        inputs, tokens = [], []
        for q, (text, prompts) in enumerate(queries):
            if text not in text_cache:
                text_cache[text] = tok.tokenize(text)
            ids, starts, ends = text_cache[text]
            tokens.append((ids, starts, ends))
            per_prompt = []
            for prompt in prompts:
                if prompt not in prompt_cache:
                    prompt_cache[prompt] = tok.encode(prompt)
                per_prompt.append(encode_windows(tok, prompt_cache[prompt], ids, self.max_seq_len))
            for k in range(max(map(len, per_prompt), default=0)):
                inputs += [(q, prompt, encoded[k]) for prompt, encoded in zip(prompts, per_prompt)
                           if k < len(encoded)]
        return inputs, tokens

    def forward(self, inputs):
        """Start/end probabilities (numpy) for a batch of ``EncodedInput`` (padded here)."""
        return self.engine(pad_batch(inputs, self.tokenizer.pad_id))

    def rows(self, encoded) -> list[tuple]:
        """``(start_probs, end_probs)`` of every ``EncodedInput``, each of its own length.

        Batches hold inputs of similar length (little padding); through the
        batcher they also hold the inputs of concurrent calls.
        """
        if self._batcher is not None:
            return self._batcher.run(encoded)
        out = [None] * len(encoded)
        order = sorted(range(len(encoded)), key=lambda k: len(encoded[k].ids))
        for batch in self._batches(order, encoded):
            start, end = self.forward([encoded[k] for k in batch])
            for row, k in enumerate(batch):
                n = len(encoded[k].ids)
                out[k] = (start[row, :n], end[row, :n])
        return out

    def _batches(self, order, encoded):
        """``order`` (shortest first) cut into batches of ``batch_size`` inputs and at
        most ``max_batch_tokens`` padded tokens (a longer input still runs alone)."""
        batch = []
        for k in order:
            rows, width = len(batch) + 1, len(encoded[k].ids)
            if batch and (rows > self.batch_size or
                          (self.max_batch_tokens and rows * width > self.max_batch_tokens)):
                yield batch
                batch = []
            batch.append(k)
        if batch:
            yield batch

    def extract(self, queries) -> list[dict[str, list[Span]]]:
        """Spans for every ``(text, prompts)`` query, as ``{prompt: [Span]}`` per query.

        Span offsets are Python string indices into the query's text.
        """
        queries = [(text, list(dict.fromkeys(prompts))) for text, prompts in queries]
        tagged = self.tagger.classes if self.tagger is not None else ()
        asked = [(text, [p for p in prompts if p not in tagged]) for text, prompts in queries]
        inputs, tokens = self.build_inputs(asked)
        results = [{p: {} for p in prompts} for _, prompts in queries]
        rows = self.rows([x for _, _, x in inputs])
        for (q, prompt, x), (start, end) in zip(inputs, rows):
            self._collect(x, start, end, tokens[q], results[q][prompt])
        if tagged:
            self._tag(queries, tokens, results)
        return [{p: [Span(s, e, sc) for (s, e), sc in sorted(spans.items())]
                 for p, spans in res.items()} for res in results]

    def count_inputs(self, queries, limit=None) -> int:
        """How many model inputs ``extract(queries)`` runs (what a request costs); counting
        stops once past ``limit``."""
        total = 0
        for text, prompts in queries:
            total += sum(n for _, n in self._units(text, prompts, self._n_tokens(text)))
            if limit is not None and total > limit:
                break
        return total

    def extract_in_pieces(self, queries, stop, piece_inputs: int) -> list[dict[str, list[Span]]]:
        """``extract(queries)``, in pieces of about ``piece_inputs`` model inputs (texts of
        similar length together); ``stop()`` is asked before each piece, ``Stopped`` raised
        when it says so."""
        units = sorted(((n_tokens, q, prompts, n) for q, (text, all_prompts) in enumerate(queries)
                        for n_tokens in [self._n_tokens(text)]
                        for prompts, n in self._units(text, all_prompts, n_tokens)), key=lambda u: u[0])
        total, done = sum(u[3] for u in units), 0
        found = [{} for _ in queries]
        for piece in _pieces(units, piece_inputs):
            if stop():
                raise Stopped(done, total)
            answers = self.extract([(queries[q][0], prompts) for _, q, prompts, _ in piece])
            for (_, q, _, _), answer in zip(piece, answers):
                found[q].update(answer)
            done += sum(u[3] for u in piece)
        return [{p: found[q].get(p, []) for p in dict.fromkeys(prompts)}
                for q, (_, prompts) in enumerate(queries)]

    def _n_tokens(self, text: str) -> int:
        return len(self.tokenizer.tokenize(text)[0])

    def _units(self, text, prompts, n_tokens) -> list[tuple[list[str], int]]:
        """The prompts of one query that can run apart, with their model inputs: each prompt
        the UIE answers, one window at a time; those the tagger answers, together."""
        tagged = self.tagger.classes if self.tagger is not None else ()
        prompts = list(dict.fromkeys(prompts))
        units = [([p], self._n_windows(n_tokens, len(self.tokenizer.encode(p))))
                 for p in prompts if p not in tagged]
        by_tagger = [p for p in prompts if p in tagged]
        if by_tagger:
            units.append((by_tagger, self._n_windows(n_tokens, 0)))
        return units

    def _n_windows(self, n_tokens: int, n_prompt: int) -> int:
        return len(windows(n_tokens, window_budget(n_prompt, self.max_seq_len))) if n_tokens else 0

    def _collect(self, x, start, end, tokens, found):
        """Add the spans of one input's start/end rows that its window owns to
        ``found`` {(char start, char end): score} (the best score of a span seen twice)."""
        c0, c1 = x.content_start, x.content_start + x.n_content
        _, t_starts, t_ends = tokens
        for s, e, score in pair_spans(start[c0:c1], end[c0:c1], self.threshold):
            if not x.own_lo <= x.lo + s < x.own_hi:
                continue
            key = (t_starts[x.lo + s], t_ends[x.lo + e])
            if score > found.get(key, -1.0):
                found[key] = score

    def _tag(self, queries, tokens, results):
        """The tagger's spans for the prompts of ``queries`` that are its classes:
        one prompt-free input per window of each distinct text."""
        classes = {p: k for k, p in enumerate(self.tagger.classes)}
        windows_of, inputs = {}, []
        for q, (text, prompts) in enumerate(queries):
            if text not in windows_of and any(p in classes for p in prompts):
                windows_of[text] = encode_windows(self.tokenizer, [], tokens[q][0], self.max_seq_len)
                inputs += windows_of[text]
        order = sorted(range(len(inputs)), key=lambda k: len(inputs[k].ids))
        rows = [None] * len(inputs)
        for batch in self._batches(order, inputs):
            start, end = self.tagger(pad_batch([inputs[k] for k in batch], self.tokenizer.pad_id))
            for r, k in enumerate(batch):
                rows[k] = (start[r], end[r])
        row_of = {id(x): row for x, row in zip(inputs, rows)}
        for q, (text, prompts) in enumerate(queries):
            for x in windows_of.get(text, ()):
                start, end = row_of[id(x)]
                for p in prompts:
                    if p in classes:
                        k = classes[p]
                        self._collect(x, start[:, k], end[:, k], tokens[q], results[q][p])


def _pieces(units, size: int):
    """``units`` (their last item: model inputs) cut into runs of at least ``size`` inputs
    (the last one may be smaller)."""
    piece, inputs = [], 0
    for unit in units:
        piece.append(unit)
        inputs += unit[-1]
        if inputs >= size:
            yield piece
            piece, inputs = [], 0
    if piece:
        yield piece
