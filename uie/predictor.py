"""Span extraction: ``UIEPredictor`` over many (text, prompts) queries at once.

Texts are tokenised once, long texts are split into overlapping windows, every
(window, prompt) input is batched by length and padded only to the longest
input of its batch. A model with a span tagger (``uie.tagger``, scratch models)
answers the labels the tagger knows from one prompt-free pass per window, and
only the others from prompts.

A classification prompt (PaddleNLP's ``prefix[option1,option2]``,
``uie.tokenizer.prompt_options``) is answered on its own tokens: UIE marks the
chosen option's span in the prompt. Such spans are reported with the offsets
PaddleNLP's ``doccano.py`` writes for them: the offsets into the prompt less
``len(prompt) + 1`` (negative), the best score over the text's windows. A model
with a choice head (``uie.choice_head``, scratch models trained on ``<Choices>``)
answers the classification prompts of the controls it learned from it instead,
one prompt-free pass per window, with the same offsets; its score is the
option's softmax (single choice) or sigmoid (``multiple``) probability.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import paddle

from uie import choice_head as choice_heads
from uie import engine as engines
from uie import tagger as span_tagger
from uie.batcher import Batcher
from uie.checkpoint import ModelLoadError, load_tokenizer, max_position_of
from uie.tokenizer import (OffsetTokenizer, encode_windows, pad_batch, prompt_options,
                           window_budget, windows)


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


def decision_margins(probs, threshold: float):
    """How far each start/end probability sits from the decision threshold, scaled to
    [0, 1] on its side: 0 is a coin toss at the threshold, 1 a sure yes (p=1) or no (p=0)."""
    probs = np.asarray(probs, dtype="float64")
    return np.where(probs >= threshold, (probs - threshold) / max(1.0 - threshold, 1e-9),
                    (threshold - probs) / max(threshold, 1e-9))


def binary_entropy(probs):
    """The entropy (nats) of each yes/no decision of probability ``probs``."""
    p = np.clip(np.asarray(probs, dtype="float64"), 1e-12, 1 - 1e-12)
    return -(p * np.log(p) + (1 - p) * np.log(1 - p))


@dataclass
class Doubt:
    """How unsure the model was of one prompt's answer on one text, over every start and
    end decision it took there (returned or not): ``margin``, the smallest of their
    ``decision_margins`` (1.0 when none was taken), and ``entropy``, the sum of their
    ``binary_entropy``."""

    margin: float = 1.0
    entropy: float = 0.0

    def add(self, other: "Doubt") -> "Doubt":
        return Doubt(min(self.margin, other.margin), self.entropy + other.entropy)


class Answer(dict):
    """One query's answer, ``{prompt: [Span]}``, and ``doubt``: ``{prompt: Doubt}``. A label
    whose probability sat near the threshold has a small margin whether or not it was
    returned."""

    def __init__(self, spans=(), doubt=None):
        super().__init__(spans)
        self.doubt = dict(doubt or {})

    def update_from(self, other: "Answer"):
        self.update(other)
        self.doubt.update(getattr(other, "doubt", {}))


class UIEPredictor:
    """Batched UIE span extraction over many texts and prompts.

    ``engine`` runs the forward pass (``uie.engine``: Paddle Inference or
    dygraph; a dygraph ``UIE`` module is taken as it is). With ``batch_wait_ms``
    the forward passes of concurrent ``extract`` calls are batched together
    (``uie.batcher.Batcher``); otherwise each call runs its own batches.
    ``tagger`` (a ``span_tagger.SpanTagger``, or what runs one: ``engines.tagger_runner``) answers the
    prompts that are its classes, one pass per window for all of them;
    ``choice_head`` (a ``choice_heads.ChoiceHead`` or ``HeadRunner``) the
    classification prompts of the controls it knows (always in dygraph).
    """

    def __init__(self, engine, tokenizer: OffsetTokenizer, device="cpu", max_seq_len=512,
                 batch_size=16, threshold=0.5, max_position=None, batch_wait_ms=None, tagger=None,
                 choice_head=None):
        if isinstance(tagger, span_tagger.SpanTagger):
            tagger = span_tagger.TaggerRunner(tagger)
        self.tagger = tagger
        if isinstance(choice_head, choice_heads.ChoiceHead):
            choice_head = choice_heads.HeadRunner(choice_head)
        self.choice_head = choice_head

        if isinstance(engine, paddle.nn.Layer):
            max_position = max_position or engine.config.max_position_embeddings
            engine = engines.DygraphEngine(engine, device)
        self.engine = engine
        self.tokenizer = tokenizer
        self.device = device
        self.max_seq_len = min(max_seq_len, max_position or 512)
        self.batch_size = batch_size
        self.max_batch_tokens = getattr(engine, "max_batch_tokens", None)
        self.batch_tokens = getattr(engine, "batch_tokens", engines.DygraphEngine.batch_tokens)
        self.threshold = threshold
        self._batcher = None
        if batch_wait_ms is not None:
            self._batcher = Batcher(self.forward, batch_size, batch_wait_ms, self.max_batch_tokens,
                                    batch_tokens=self.batch_tokens)

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
        try:
            head = choice_heads.load(path)
        except choice_heads.ChoiceHeadError as exc:
            raise ModelLoadError(str(exc)) from None
        if head is not None and head.config["vocab_size"] < len(tokenizer.vocab):
            raise ModelLoadError(f"{path}: the choice head embeds {head.config['vocab_size']} tokens, "
                                 f"vocab.txt has {len(tokenizer.vocab)}")
        engine = engine or engines.DygraphEngine.from_dir(path, device)
        runner = engines.tagger_runner(path, tagger, engine) if tagger is not None else None
        return cls(engine, tokenizer, device=device, max_position=max_position_of(path),
                   tagger=runner, choice_head=head, **kwargs)

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
        most ``max_batch_tokens`` tokens as the engine pads them (a longer input still runs alone)."""
        batch = []
        for k in order:
            rows, width = len(batch) + 1, len(encoded[k].ids)
            if batch and (rows > self.batch_size or (self.max_batch_tokens and
                                                     self.batch_tokens(rows, width) > self.max_batch_tokens)):
                yield batch
                batch = []
            batch.append(k)
        if batch:
            yield batch

    def extract(self, queries) -> list[dict[str, list[Span]]]:
        """Spans for every ``(text, prompts)`` query, as ``{prompt: [Span]}`` per query.

        Span offsets are Python string indices into the query's text; those of a
        classification prompt's spans index the prompt (negative, see above).
        """
        queries = [(text, list(dict.fromkeys(prompts))) for text, prompts in queries]
        tagged = self.tagger.classes if self.tagger is not None else ()
        headed = self._headed(queries)
        asked = [(text, [p for p in prompts if p not in tagged and p not in headed]) for text, prompts in queries]
        inputs, tokens = self.build_inputs(asked)
        results = [{p: {} for p in prompts} for _, prompts in queries]
        doubts = [{p: Doubt() for p in prompts} for _, prompts in queries]
        rows = self.rows([x for _, _, x in inputs])
        classifying = {p: self.tokenizer.tokenize(p) for _, prompts in asked for p in prompts
                       if prompt_options(p)}
        for (q, prompt, x), (start, end) in zip(inputs, rows):
            if prompt in classifying:
                self._collect_prompt(x, start, end, classifying[prompt], len(prompt), results[q][prompt])
            else:
                self._collect(x, start, end, tokens[q], results[q][prompt])
            self._note_doubt(x, start, end, doubts[q], prompt, on_prompt=prompt in classifying)
        if tagged:
            self._tag(queries, tokens, results, doubts)
        if headed:
            self._classify(queries, tokens, results, doubts, headed)
        return [Answer({p: [Span(s, e, sc) for (s, e), sc in sorted(spans.items())]
                        for p, spans in res.items()}, doubt)
                for res, doubt in zip(results, doubts)]

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
        found = [Answer() for _ in queries]
        for piece in _pieces(units, piece_inputs):
            if stop():
                raise Stopped(done, total)
            answers = self.extract([(queries[q][0], prompts) for _, q, prompts, _ in piece])
            for (_, q, _, _), answer in zip(piece, answers):
                found[q].update_from(answer)
            done += sum(u[3] for u in piece)
        return [Answer({p: found[q].get(p, []) for p in dict.fromkeys(prompts)},
                       {p: found[q].doubt.get(p, Doubt()) for p in dict.fromkeys(prompts)})
                for q, (_, prompts) in enumerate(queries)]

    def _n_tokens(self, text: str) -> int:
        return len(self.tokenizer.tokenize(text)[0])

    def _units(self, text, prompts, n_tokens) -> list[tuple[list[str], int]]:
        """The prompts of one query that can run apart, with their model inputs: each prompt
        the UIE answers, one window at a time; those the tagger answers, together; those the
        choice head answers, together."""
        tagged = self.tagger.classes if self.tagger is not None else ()
        prompts = list(dict.fromkeys(prompts))
        headed = self._headed([(None, prompts)])
        units = [([p], self._n_windows(n_tokens, len(self.tokenizer.encode(p))))
                 for p in prompts if p not in tagged and p not in headed]
        by_tagger = [p for p in prompts if p in tagged]
        if by_tagger:
            units.append((by_tagger, self._n_windows(n_tokens, 0)))
        if headed:
            units.append((list(headed), self._n_windows(n_tokens, 0)))
        return units

    def _headed(self, queries) -> set[str]:
        """The prompts of ``queries`` the choice head answers (classification prompts of
        the controls it learned)."""
        if self.choice_head is None:
            return set()
        return {p for _, prompts in queries for p in prompts
                if prompt_options(p) and self.choice_head.find(p) is not None}

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

    def _note_doubt(self, x, start, end, doubts: dict, prompt: str, on_prompt=False):
        """Add the decisions on the content tokens that input ``x``'s window owns (with
        ``on_prompt``, a classification prompt's: on its prompt tokens, where it decides)
        to ``doubts[prompt]`` (a ``Doubt``)."""
        if on_prompt:
            c0, c1 = 1, x.content_start - 1         # [CLS] prompt [SEP] content
        else:
            c0 = x.content_start + x.own_lo - x.lo
            c1 = x.content_start + x.own_hi - x.lo
        if c1 > c0:
            s, e = start[c0:c1], end[c0:c1]
            lowest = min(decision_margins(s, self.threshold).min(), decision_margins(e, self.threshold).min())
            entropy = binary_entropy(s).sum() + binary_entropy(e).sum()
            doubts[prompt] = doubts[prompt].add(Doubt(float(lowest), float(entropy)))

    def _collect_prompt(self, x, start, end, prompt_tokens, n_chars, found):
        """Add the spans of a classification prompt's input on its prompt tokens to ``found``,
        with offsets into the prompt less ``n_chars + 1`` (PaddleNLP's negative offsets)."""
        _, p_starts, p_ends = prompt_tokens
        n = x.content_start - 2                 # the prompt tokens the input holds
        for s, e, score in pair_spans(start[1:1 + n], end[1:1 + n], self.threshold):
            key = (p_starts[s] - n_chars - 1, p_ends[e] - n_chars - 1)
            if score > found.get(key, -1.0):
                found[key] = score

    def _tag(self, queries, tokens, results, doubts):
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
                        self._note_doubt(x, start[:, k], end[:, k], doubts[q], p)

    def _classify(self, queries, tokens, results, doubts, headed):
        """The choice head's answers to the ``headed`` prompts of ``queries``: one
        prompt-free input per window of each distinct text, its windows pooled together."""
        windows_of, inputs = {}, []
        for q, (text, prompts) in enumerate(queries):
            if text not in windows_of and any(p in headed for p in prompts):
                windows_of[text] = encode_windows(self.tokenizer, [], tokens[q][0], self.max_seq_len)
                inputs += windows_of[text]
        order = sorted(range(len(inputs)), key=lambda k: len(inputs[k].ids))
        features = [None] * len(inputs)
        for batch in self._batches(order, inputs):
            rows = self.choice_head.features([inputs[k] for k in batch], self.tokenizer.pad_id)
            for r, k in enumerate(batch):
                features[k] = rows[r]
        row_of = {id(x): f for x, f in zip(inputs, features)}
        logits = {text: self.choice_head.logits(np.stack([row_of[id(x)] for x in ws]))
                  for text, ws in windows_of.items() if ws}
        for q, (text, prompts) in enumerate(queries):
            for p in prompts:
                if p in headed and text in logits:
                    for s, e, score in self.choice_head.answer(p, logits[text], self.threshold):
                        results[q][p][(s, e)] = score
                    margin, entropy = self.choice_head.doubt(p, logits[text], self.threshold)
                    doubts[q][p] = doubts[q][p].add(Doubt(margin, entropy))


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
