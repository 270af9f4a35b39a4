"""The training inputs of a UIE and of a scratch model's span tagger, from UIE examples
(PaddleNLP's ``doccano.py`` format: ``content``, ``prompt``, ``result_list``).

- ``encode_examples``: the UIE's inputs (``[CLS] prompt [SEP] window [SEP]``, the windows
  prediction uses) with the token positions of each answer's start and end;
- ``encode_tagging``: a span tagger's prompt-free inputs, every class marked at once; its
  classes are the examples' prompts but relation and classification prompts
  (``tagger_classes``, ``relation_prompts``);
- ``to_tensors``, ``tagging_tensors``, ``correction_weights``: one batch of either as
  Paddle tensors; ``batches`` and ``sample_negatives``: which inputs an epoch trains on, in
  which batches.

``finetune.py`` trains on them; the encoding rule itself is ``uie.tokenizer``'s, the one
of training and serving.
"""

from __future__ import annotations

import bisect
import logging
import os
from dataclasses import dataclass

import numpy as np

import uie.tokenizer

log = logging.getLogger("finetune")
# An annotator's correction of a suggestion (an example's ``"negatives"``: a region the
# model suggested and the annotator deleted or relabelled, ``training_examples.add_corrections``)
# counts this many times as much as any other token without a span boundary, at the
# start and end tokens of the region, for the UIE's prompt or the tagger's class.
# CORRECTION_WEIGHT=1 in the environment trains corrections as plain absent spans.
CORRECTION_WEIGHT = float(os.environ.get("CORRECTION_WEIGHT") or 5.0)


def token_span(t_starts, t_ends, start, end):
    """Token indices (first, last) covering characters ``start:end``, or None."""
    first = bisect.bisect_right(t_ends, start)
    last = bisect.bisect_left(t_starts, end) - 1
    return (first, last) if first <= last else None


@dataclass(frozen=True, slots=True)
class TrainingInput:
    """A UIE input and its targets: positions in ``input.ids`` of the span starts and ends;
    ``classifies``: a classification prompt's input (its answer is in the prompt)."""

    input: "uie.tokenizer.EncodedInput"
    starts: tuple[int, ...]
    ends: tuple[int, ...]
    classifies: bool = False
    not_starts: tuple[int, ...] = ()     # the start and end positions of corrected regions
    not_ends: tuple[int, ...] = ()


@dataclass(frozen=True, slots=True)
class TaggingInput:
    """A prompt-free input of the tagging task and its targets.

    ``asked``: the prompt classes the examples ask about this content;
    ``starts``/``ends``: ``(position in input.ids, class)`` of every span;
    ``not_starts``/``not_ends``: the same of every corrected region (``CORRECTION_WEIGHT``).
    """

    input: "uie.tokenizer.EncodedInput"
    asked: tuple[int, ...]
    starts: tuple[tuple[int, int], ...]
    ends: tuple[tuple[int, int], ...]
    not_starts: tuple[tuple[int, int], ...] = ()
    not_ends: tuple[tuple[int, int], ...] = ()


def in_window(encoded, first, last):
    """Positions in ``encoded.ids`` of a span's first and last content tokens,
    or None when the window does not hold the span whole."""
    if encoded.lo <= first and last < encoded.hi:
        return encoded.content_start + first - encoded.lo, encoded.content_start + last - encoded.lo
    return None


def encode_examples(examples, tokenizer, max_seq_len, origins=None) -> list[TrainingInput]:
    """The UIE inputs of ``examples`` with their start/end targets.

    Long contents are split into the windows prediction uses
    (``uie.tokenizer.encode_windows``); a window is trained on the spans it holds
    whole. A classification example's answer (negative offsets: PaddleNLP's
    ``doccano.py``'s, indexing its ``prefix[option1,...]`` prompt) marks the
    option's tokens in the prompt, in every window of its content. An example's
    ``"negatives"`` (corrected regions, ``[[start, end], ...]``) mark their tokens to be
    weighed ``CORRECTION_WEIGHT`` times (``correction_weights``). With a list as
    ``origins``, the index of each input's example is appended to it.
    """
    cache, out, dropped = {}, [], 0
    for n, ex in enumerate(examples):
        content = ex["content"]
        if content not in cache:
            cache[content] = tokenizer.tokenize(content)
        ids, t_starts, t_ends = cache[content]
        spans, marks_in_prompt, lost = _example_spans(ex, t_starts, t_ends, tokenizer)
        dropped += lost
        corrected = [ts for s, e in ex.get("negatives") or () if (ts := token_span(t_starts, t_ends, s, e))]
        prompt_ids = tokenizer.encode(ex["prompt"])
        for encoded in uie.tokenizer.encode_windows(tokenizer, prompt_ids, ids, max_seq_len):
            marks = [m for m in (in_window(encoded, first, last) for first, last in spans) if m]
            marks += [(1 + first, 1 + last) for first, last in marks_in_prompt
                      if 1 + last < encoded.content_start - 1]
            wrong = [m for m in (in_window(encoded, first, last) for first, last in corrected) if m]
            out.append(TrainingInput(encoded, tuple(s for s, _ in marks), tuple(e for _, e in marks),
                                     bool(marks_in_prompt), tuple(s for s, _ in wrong), tuple(e for _, e in wrong)))
            if origins is not None:
                origins.append(n)
    if dropped:
        log.warning("%d gold spans cover no token (only whitespace?) and were skipped", dropped)
    return out


def _example_spans(ex, t_starts, t_ends, tokenizer) -> tuple[list, list, int]:
    """``(content token spans, prompt token spans, spans covering no token)`` of an
    example's answers: a negative offset indexes the prompt (``prompt_span``)."""
    content, in_prompt, dropped = [], [], 0
    for r in ex["result_list"]:
        if r["start"] < 0:
            ts = prompt_span(tokenizer, ex["prompt"], r["start"], r["end"])
        else:
            ts = token_span(t_starts, t_ends, r["start"], r["end"])
        if ts is None:
            dropped += 1
        else:
            (in_prompt if r["start"] < 0 else content).append(ts)
    return content, in_prompt, dropped


def prompt_span(tokenizer, prompt, start, end):
    """Prompt token indices (first, last) of the characters PaddleNLP's negative offsets
    ``start:end`` name (``prompt[start + len(prompt) + 1:...]``), or None."""
    _, p_starts, p_ends = tokenizer.tokenize(prompt)
    shift = len(prompt) + 1
    return token_span(p_starts, p_ends, start + shift, end + shift)


def encode_tagging(examples, tokenizer, max_seq_len, max_classes=64):
    """The inputs of a span tagger (``span_tagger``): each distinct content once.

    Inputs are ``[CLS] [SEP] content [SEP]`` (no prompt, windowed as the UIE
    inputs are); the classes are the most frequent prompts but relation
    prompts (``relation_prompts``); targets are start/end marks for every class at once,
    and the classes the examples ask about this content (a prompt nobody asked
    says nothing either way). Returns ``(classes, [TaggingInput])``.
    """
    classes = tagger_classes(examples, max_classes)
    corrected = corrected_by_content(examples, classes)
    out = []
    for content, (asked, spans) in asked_by_content(examples, classes).items():
        out += tagging_windows(tokenizer, content, asked, spans, max_seq_len, corrected.get(content, ()))
    return classes, out


def tagger_classes(examples, max_classes) -> list[str]:
    """The ``max_classes`` most frequent prompts of ``examples`` but relation prompts and
    classification prompts (``uie.tokenizer.prompt_options``: answered in the prompt, which
    a tagger never reads)."""
    counts = {}
    for ex in examples:
        counts[ex["prompt"]] = counts.get(ex["prompt"], 0) + 1
    relational = relation_prompts(examples)
    return sorted((p for p in counts if p not in relational and not uie.tokenizer.prompt_options(p)),
                  key=lambda p: (-counts[p], p))[:max_classes]


def asked_by_content(examples, classes) -> dict:
    """``{content: (classes asked, {(class, start, end)} spans)}`` of the examples whose
    prompt is one of ``classes``, in the order of the examples."""
    index = {p: k for k, p in enumerate(classes)}
    by_content = {}
    for ex in examples:
        k = index.get(ex["prompt"])
        if k is None:
            continue
        asked, spans = by_content.setdefault(ex["content"], (set(), set()))
        asked.add(k)
        spans.update((k, r["start"], r["end"]) for r in ex["result_list"])
    return by_content


def corrected_by_content(examples, classes) -> dict:
    """``{content: {(class, start, end)}}``: the corrected regions (``"negatives"``) of the
    examples whose prompt is one of ``classes``."""
    index = {p: k for k, p in enumerate(classes)}
    out = {}
    for ex in examples:
        k = index.get(ex["prompt"])
        if k is not None and ex.get("negatives"):
            out.setdefault(ex["content"], set()).update((k, s, e) for s, e in ex["negatives"])
    return out


def tagging_windows(tokenizer, content, asked, spans, max_seq_len, corrected=()) -> list[TaggingInput]:
    """The tagging inputs of one content: its windows, each marking the ``spans``
    (``(class, start, end)`` in characters) it holds whole, and the ``corrected`` regions."""
    ids, t_starts, t_ends = tokenizer.tokenize(content)

    def tokens(char_spans):
        return [(k, *ts) for k, s, e in char_spans if (ts := token_span(t_starts, t_ends, s, e))]

    token_spans, wrong_spans = tokens(spans), tokens(corrected)
    out = []
    for encoded in uie.tokenizer.encode_windows(tokenizer, [], ids, max_seq_len):
        marks = [(k, m) for k, first, last in token_spans if (m := in_window(encoded, first, last))]
        wrong = [(k, m) for k, first, last in wrong_spans if (m := in_window(encoded, first, last))]
        out.append(TaggingInput(encoded, tuple(sorted(asked)), tuple((s, k) for k, (s, _) in marks),
                                tuple((e, k) for k, (_, e) in marks), tuple((s, k) for k, (s, _) in wrong),
                                tuple((e, k) for k, (_, e) in wrong)))
    return out


def relation_prompts(examples) -> set[str]:
    """The prompts that ask a relation of a subject (PaddleNLP's ``subject的predicate``
    or ``predicate of subject``, ``relations.relation_prompt``). They are no tagger class:
    the UIE learns them.

    A relation's examples ask its word of a span of their own content, all but PaddleNLP's
    "other entity" negatives (``doccano``), which ask it of an entity of *another* text. So
    the relation words are those some prompt asks of a span of its own content, and a
    relation prompt is any prompt asking one of them of an entity text (a span) of any
    example (``_asks_relation``)."""
    subjects = {}
    for ex in examples:
        subjects.setdefault(ex["content"], set()).update(
            ex["content"][r["start"]: r["end"]] for r in ex["result_list"] if r["start"] >= 0)
    words = set()       # ("的", w) for s的w, (" of ", w) for w of s
    for ex in examples:
        prompt = ex["prompt"]
        for s in subjects.get(ex["content"], ()):
            if s and prompt.startswith(s + "的") and len(prompt) > len(s) + 1:
                words.add(("的", prompt[len(s) + 1:]))
            if s and prompt.endswith(" of " + s) and len(prompt) > len(s) + 4:
                words.add((" of ", prompt[:-len(s) - 4]))
    if not words:
        return set()
    entities = set().union(*subjects.values()) - {""}
    return {p for p in {ex["prompt"] for ex in examples} if _asks_relation(p, entities, words)}


def _asks_relation(prompt: str, entities: set, words: set) -> bool:
    """Whether ``prompt`` is ``<entity>的<word>`` or ``<word> of <entity>`` for one of
    ``entities`` and of the relation ``words`` (``relation_prompts``)."""
    at = prompt.find("的")
    while at != -1:
        if prompt[:at] in entities and ("的", prompt[at + 1:]) in words:
            return True
        at = prompt.find("的", at + 1)
    at = prompt.find(" of ")
    while at != -1:
        if prompt[at + 4:] in entities and (" of ", prompt[:at]) in words:
            return True
        at = prompt.find(" of ", at + 1)
    return False


def to_tensors(items, pad_id):
    """Tensors of a batch of ``TrainingInput``: the UIE's four inputs (the mask as
    float32, it also weighs the loss) and the start/end targets."""
    import paddle

    arrays = uie.tokenizer.pad_batch([x.input for x in items], pad_id)
    start = np.zeros(arrays["input_ids"].shape, dtype="float32")
    end = np.zeros(arrays["input_ids"].shape, dtype="float32")
    for r, x in enumerate(items):
        start[r, list(x.starts)] = 1
        end[r, list(x.ends)] = 1
    t = paddle.to_tensor
    return (t(arrays["input_ids"]), t(arrays["token_type_ids"]), t(arrays["position_ids"]),
            t(arrays["attention_mask"].astype("float32")), t(start), t(end))


def correction_weights(items, shape, starts, ends, where=lambda mark: (mark,)):
    """The ``(start, end)`` loss weights of a batch (tensors of ``shape``), or None when no
    item has a corrected region: 1, but ``CORRECTION_WEIGHT`` at the corrected regions'
    start and end cells that are no span boundary (``starts``/``ends``: the target arrays).
    ``where(mark)``: the cell of one of an item's ``not_starts``/``not_ends``."""
    if not any(x.not_starts or x.not_ends for x in items):
        return None
    import paddle

    weights = []
    for marks, targets in (("not_starts", starts), ("not_ends", ends)):
        w = np.ones(shape, dtype="float32")
        for r, x in enumerate(items):
            for mark in getattr(x, marks):
                w[(r, *where(mark))] = CORRECTION_WEIGHT
        weights.append(paddle.to_tensor(np.where(targets > 0, 1.0, w).astype("float32")))
    return tuple(weights)


def tagging_tensors(items, pad_id, n_classes):
    """Tensors of a batch of ``TaggingInput``: the token ids, the lengths, the
    float32 mask, the asked classes ``(n, 1, classes)`` and the start/end marks
    ``(n, width, classes)``."""
    import paddle

    arrays = uie.tokenizer.pad_batch([x.input for x in items], pad_id)
    n, width = arrays["input_ids"].shape
    asked = np.zeros((n, 1, n_classes), dtype="float32")
    start = np.zeros((n, width, n_classes), dtype="float32")
    end = np.zeros((n, width, n_classes), dtype="float32")
    for r, x in enumerate(items):
        asked[r, 0, list(x.asked)] = 1
        for p, k in x.starts:
            start[r, p, k] = 1
        for p, k in x.ends:
            end[r, p, k] = 1
    t = paddle.to_tensor
    mask = arrays["attention_mask"]
    return (t(arrays["input_ids"]), t(mask.sum(axis=1)), t(mask.astype("float32")), t(asked),
            t(start), t(end))


def sample_negatives(examples, origins, max_negatives, rng):
    """Indices of the inputs to train on this epoch: every example with a span or a
    correction, and at most ``max_negatives`` empty ones (drawn anew) per content."""
    empty = {}
    for n, ex in enumerate(examples):
        if not ex["result_list"] and not ex.get("negatives"):
            empty.setdefault(ex["content"], []).append(n)
    drop = set()
    for group in empty.values():
        if len(group) > max_negatives:
            drop.update(rng.sample(group, len(group) - max_negatives))
    return [k for k, n in enumerate(origins) if n not in drop]


def batches(encoded, batch_size, rng, order=None):
    """Length-bucketed batches in random order (little padding, still shuffled)."""
    order = list(range(len(encoded))) if order is None else list(order)
    rng.shuffle(order)
    chunk = batch_size * 50
    result = []
    for c in range(0, len(order), chunk):
        part = sorted(order[c: c + chunk], key=lambda k: len(encoded[k].input.ids))
        result += [part[b: b + batch_size] for b in range(0, len(part), batch_size)]
    rng.shuffle(result)
    return result
