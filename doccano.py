"""Turn doccano JSONL records into UIE training examples (PaddleNLP semantics).

This mirrors PaddleNLP's ``model_zoo/uie/doccano.py`` (and the
``convert_ext_examples`` logic it uses) without importing paddle/paddlenlp:

* entity examples: one per (record, entity label) holding every span of the
  label, ``prompt`` = the label;
* relation examples: one per (record, relation prompt); the prompt is
  ``subject + "的" + type`` (``schema_lang="ch"``) or ``type + " of " + subject``
  (``schema_lang="en"``), the result is the object span;
* entity-level classification (label ``"X##正向"`` with ``separator="##"``):
  an extra example with prompt ``"<span>的情感倾向[正向,负向]"``; as in PaddleNLP its
  result offsets are *negative* and index the prompt, not the content;
* text classification of a Label Studio ``<Choices>`` (``choices``: the
  record's ``"choices": {control: [option words]}``, ``convert.py``'s): one
  example per (record, control) with the control's prompt
  ``prefix[opt1,opt2,...]``, options in the config's order (what the server
  asks, ``choices.py``), the chosen options its (negative-offset) answers;
* negatives (examples with an empty ``result_list``): for the train split they
  are sampled as PaddleNLP does (at most ``negative_ratio`` per positive), for
  dev/test every candidate negative is kept. Relation negatives are PaddleNLP's
  three pools: the inverse prompt of each relation (``<object>的<relation>``),
  the split's other entity names with one of the record's relation types, and
  a subject with each entity label the record lacks. A prompt that is also a
  positive of the record (both directions of a ``bi`` relation) is never made
  a negative of it, and a prompt is kept once (PaddleNLP may repeat one);
  otherwise the examples are those of PaddleNLP 2.8.1's ``convert_ext_examples``
  (tests/test_doccano.py compares them). The server's jobs add the prompts the
  server asks (``asked_relations``) and bound the pools
  (``relation_negative_ratio``);

Entity labels and relation types that make up the schema are collected over all
records given; entity names used to build relation negatives come from the
split's own records (so dev/test names never leak into train prompts).
All randomness comes from one ``random.Random(seed)``.

Examples: ``{"content": str, "result_list": [{"text", "start", "end"}], "prompt": str}``.

CLI (PaddleNLP's flags)::

    python doccano.py --doccano_file ./data/doccano_ext.jsonl --task_type ext \\
        --save_dir ./data --splits 0.8 0.1 0.1 --negative_ratio 5

On a terminal (stderr a TTY) it shows a progress bar; to a pipe or a log, no bar.
"""

from __future__ import annotations

import argparse
import logging
import math
import os
import random
import sys
from dataclasses import dataclass
from decimal import Decimal, InvalidOperation
from typing import Any, Callable, Sequence

from convert import read_jsonl, write_jsonl
from choices import cls_prompt, option_offsets
from relations import relation_prompt

logger = logging.getLogger(__name__)

__all__ = ["convert_doccano", "write_splits", "read_doccano", "main"]

# PaddleNLP conventions: entities with these labels only serve as relation
# objects (no entity example of their own) ...
IGNORED_ENTITY_LABELS = ("属性值", "object")
# ... and opinion words get positives but are never used as entity negatives.
NO_NEGATIVE_LABELS = ("观点词",)
# A Choices example is trained with its options in this many orders (the server's and
# rotations of it): more examples of each choice per epoch, and each option in other places.
CHOICE_ORDERS = 4


# --------------------------------------------------------------------------
# parsing doccano records
# --------------------------------------------------------------------------
def _describe(record: dict, index: int) -> str:
    rid = record.get("id") if isinstance(record, dict) else None
    return f"record {index}" + (f" (id={rid})" if rid is not None else "")


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _parse_ext_record(record: Any, index: int) -> tuple[str, list[dict], list[dict]]:
    """Return (text, entities, relations) of a doccano record; ValueError if malformed."""
    if not isinstance(record, dict):
        raise ValueError(f"record {index} is not a JSON object")
    where = _describe(record, index)
    text = record.get("text", record.get("data"))
    if not isinstance(text, str):
        raise ValueError(f"{where}: missing string 'text'")
    entities, relations = _annotations(record, where)
    _check_entities(entities, text, where)
    _check_relations(relations, entities, where)
    return text, entities, relations


def _annotations(record: dict, where: str) -> tuple[list[dict], list[dict]]:
    """The record's (entities, relations) in any of doccano's export formats, unchecked
    but for being lists."""
    entities: list[dict] = []
    relations: list[dict] = []
    label = record.get("label")
    if "entities" in record or "relations" in record:
        entities = record.get("entities") or []
        relations = record.get("relations") or []
    elif isinstance(label, dict):  # old doccano relation export
        entities = label.get("entities") or []
        relations = label.get("relations") or []
    elif isinstance(label, list):  # [[start, end, label], ...]
        entities = _label_list_entities(label, where)
    if not isinstance(entities, list) or not isinstance(relations, list):
        raise ValueError(f"{where}: 'entities' and 'relations' must be lists")
    return entities, relations


def _label_list_entities(label: list, where: str) -> list[dict]:
    """The entities of a sequence-labeling export's ``[[start, end, label], ...]``, their
    ids their positions."""
    entities = []
    for k, item in enumerate(label):
        if not isinstance(item, (list, tuple)) or len(item) < 3:
            raise ValueError(f"{where}: label {k} is not [start, end, label]")
        entities.append({"id": k, "start_offset": item[0], "end_offset": item[1], "label": item[2]})
    return entities


def _check_entities(entities: list, text: str, where: str) -> None:
    """ValueError for an entity that is no object, lies outside ``text`` or has no label."""
    for ent in entities:
        if not isinstance(ent, dict):
            raise ValueError(f"{where}: an entity is not a JSON object")
        start, end, lab = ent.get("start_offset"), ent.get("end_offset"), ent.get("label")
        if not _is_int(start) or not _is_int(end) or not 0 <= start < end <= len(text):
            raise ValueError(
                f"{where}: entity {ent.get('id')!r} has offsets [{start!r}, {end!r}) outside "
                f"a text of {len(text)} characters"
            )
        if not isinstance(lab, str) or not lab:
            raise ValueError(f"{where}: entity {ent.get('id')!r} has no label")


def _check_relations(relations: list, entities: list[dict], where: str) -> None:
    """ValueError for a relation that is no object or joins ids no entity has."""
    ids = {ent.get("id") for ent in entities}
    for rel in relations:
        if not isinstance(rel, dict):
            raise ValueError(f"{where}: a relation is not a JSON object")
        if rel.get("from_id") not in ids or rel.get("to_id") not in ids:
            raise ValueError(
                f"{where}: relation {rel.get('id')!r} refers to an unknown entity id "
                f"({rel.get('from_id')!r} -> {rel.get('to_id')!r})"
            )


def _split_cls_label(label: str, separator: str) -> tuple[str, list[str] | None]:
    parts = label.split(separator) if separator else [label]
    if len(parts) == 1:
        return parts[0], None
    return parts[0], parts[1:]


def _cls_example(text, labels, prompt_prefix, options, rng: random.Random, where: str,
                 shuffle: bool = True) -> dict:
    """A classification example: prompt 'prefix[opt1,opt2]' (options shuffled, as PaddleNLP
    does, unless ``shuffle`` is False), offsets index the prompt (negative)."""
    opts = list(options)
    if shuffle:
        rng.shuffle(opts)
    prompt = cls_prompt(prompt_prefix, opts)
    where_is = {option: offsets for offsets, option in option_offsets(prompt, opts).items()}
    result_list = []
    for label in labels:
        if label not in where_is:
            raise ValueError(f"{where}: class label {label!r} is not one of the options {list(options)}")
        start, end = where_is[label]
        result_list.append({"text": label, "start": start, "end": end})
    return {"content": text, "result_list": result_list, "prompt": prompt}


def _choice_items(record: dict, where: str) -> list[tuple[str, list[str]]]:
    """``[(control, option words)]`` of a record's ``"choices"``; ValueError if malformed."""
    chosen = record.get("choices") or {}
    if not isinstance(chosen, dict) or not all(
            isinstance(words, list) and all(isinstance(w, str) for w in words) for words in chosen.values()):
        raise ValueError(f"{where}: 'choices' must map each Choices control to a list of strings")
    return [(name, words) for name, words in chosen.items() if words]


class _Record:
    """Positive examples and negative-sampling material of one doccano record."""

    def __init__(self, record, index, schema_lang, separator, prompt_prefix):
        text, entities, relations = _parse_ext_record(record, index)
        self.where = _describe(record, index)
        self.text = text
        self.entity_examples: dict[str, dict] = {}
        self.entity_labels: set[str] = set()
        self.entity_names: list[str] = []
        self.named_labels: list[tuple[str, str]] = []   # (entity text, label), each once
        self.cls_items: list[tuple[list[str], str]] = []  # (class labels, prompt prefix)
        self.choice_items = _choice_items(record, self.where)   # [(Choices control, option words)]
        self.relation_examples: dict[str, dict] = {}
        self.subjects: list[str] = []
        self.inverse_prompts: list[str] = []
        self.predicates: list[str] = []
        self.schema_lang = schema_lang

        spans = {}          # entity id -> (text, start, end), relation objects' too
        for ent in entities:
            spans[ent.get("id")] = span = self._span(ent)
            if ent["label"] not in IGNORED_ENTITY_LABELS:
                self._add_entity(span, ent["label"], separator, prompt_prefix)
        for rel in relations:
            self._add_relation(rel, spans)

    def _span(self, ent: dict) -> tuple[str, int, int]:
        start, end = ent["start_offset"], ent["end_offset"]
        return self.text[start:end], start, end

    def _add_entity(self, span: tuple[str, int, int], raw_label: str, separator: str, prompt_prefix: str):
        """An entity's example (its label's, less any ``separator`` classes, which make
        a classification item) and the names and labels it adds to the record's."""
        name, start, end = span
        label, cls_labels = _split_cls_label(raw_label, separator)
        if cls_labels is not None:
            self.cls_items.append((cls_labels, self._cls_prefix(name, prompt_prefix)))
        self._add(self.entity_examples, label, {"text": name, "start": start, "end": end})
        self.entity_labels.add(label)
        if name not in self.entity_names:
            self.entity_names.append(name)
        if (name, label) not in self.named_labels:
            self.named_labels.append((name, label))

    def _cls_prefix(self, name: str, prompt_prefix: str) -> str:
        """The prompt prefix of an entity's classes: ``name的prefix`` or ``prefix of name``."""
        if self.schema_lang == "ch":
            return name + "的" + prompt_prefix
        return prompt_prefix + " of " + name

    def _add_relation(self, rel: dict, spans: dict):
        """A relation's example (prompt: its subject and type; result: its object), its
        inverse prompt and its subject and type; a relation without a type is skipped."""
        predicate = rel.get("type")
        if not isinstance(predicate, str) or not predicate:
            logger.warning("%s: relation %r has no type; skipped", self.where, rel.get("id"))
            return
        subj, obj = spans[rel["from_id"]], spans[rel["to_id"]]
        prompt = self.relation_prompt(subj[0], predicate)
        self._add(self.relation_examples, prompt, {"text": obj[0], "start": obj[1], "end": obj[2]})
        if subj[0] not in self.subjects:
            self.subjects.append(subj[0])
        self.inverse_prompts.append(self.relation_prompt(obj[0], predicate))
        self.predicates.append(predicate)

    def relation_prompt(self, subject: str, predicate: str) -> str:
        """The prompt the server asks too (``relations.relation_prompt``)."""
        return relation_prompt(subject, predicate, self.schema_lang)

    def _add(self, table: dict, prompt: str, result: dict) -> None:
        example = table.get(prompt)
        if example is None:
            table[prompt] = {"content": self.text, "result_list": [result], "prompt": prompt}
        elif not any(
            r["start"] == result["start"] and r["end"] == result["end"] for r in example["result_list"]
        ):
            example["result_list"].append(result)

    def negative(self, prompt: str) -> dict:
        return {"content": self.text, "result_list": [], "prompt": prompt}

    def asked_prompts(self, asked_relations) -> list[str]:
        """The relation prompts a server asks of this text: every entity text whose label a
        relation starts from, with every word of that relation."""
        out = []
        for predicate, subject_labels in asked_relations.items():
            for name, label in self.named_labels:
                if not subject_labels or label in subject_labels:
                    out.append(self.relation_prompt(name, predicate))
        return _unique(out)


# --------------------------------------------------------------------------
# negatives
# --------------------------------------------------------------------------
def _sample_indices(n_candidates, n_positive, ratio, rng) -> list[int]:
    """PaddleNLP's rule: keep all when within ratio (or ratio == -1), else sample ratio*positives."""
    if n_positive == 0:
        return list(range(n_candidates))
    if ratio == -1 or math.ceil(n_candidates / n_positive) <= ratio:
        return list(range(n_candidates))
    return rng.sample(range(n_candidates), min(n_candidates, max(ratio, 0) * n_positive))


def _unique(items, exclude=()) -> list[str]:
    seen, out = set(exclude), []
    for item in items:
        if item not in seen:
            seen.add(item)
            out.append(item)
    return out


@dataclass(frozen=True)
class _SplitPlan:
    """What every split of one conversion shares: the schema, the ratios and the one rng."""

    label_set: list[str]          # entity labels an absent one of which is a negative
    predicate_set: list[str]      # relation types (and the words a server asks)
    negative_ratio: int
    relation_negative_ratio: int
    asked_relations: dict
    options: Sequence[str]
    rng: random.Random
    choices: dict                 # Choices control -> (prompt prefix, option words)


def _build_split(recs: list[_Record], plan: _SplitPlan, *, is_train: bool) -> list[dict]:
    """A split's examples: entity positives, entity negatives, relations, then classification."""
    ratio = plan.negative_ratio if is_train else -1
    entity_pos, entity_neg = _entity_examples(recs, plan.label_set, ratio, plan.rng)
    relation_pos, relation_neg = [], []
    if plan.predicate_set:
        relation_pos, relation_neg = _relation_examples(recs, is_train, plan)
    cls_examples = [
        _cls_example(rec.text, labels, prefix, plan.options, plan.rng, rec.where)
        for rec in recs
        for labels, prefix in rec.cls_items
    ]
    choice_examples = _choice_examples(recs, plan, is_train)
    return entity_pos + entity_neg + relation_pos + relation_neg + cls_examples + choice_examples


def _choice_examples(recs: list[_Record], plan: _SplitPlan, is_train: bool) -> list[dict]:
    """The classification examples of the records' choices: the server's option order, and
    in the train split its rotations too (``_rotations``)."""
    out = []
    for rec in recs:
        for name, words in rec.choice_items:
            if name not in plan.choices:
                continue
            prefix, options = plan.choices[name]
            for order in _rotations(options) if is_train else [options]:
                out.append(_cls_example(rec.text, words, prefix, order, plan.rng, rec.where, shuffle=False))
    return out


def _rotations(options, most: int = CHOICE_ORDERS) -> list[tuple]:
    """The server's option order and up to ``most - 1`` rotations of it, evenly spaced: each
    option in other places, so the model reads an option's words, not its place."""
    step = max(1, math.ceil(len(options) / most))
    return [tuple(options[k:]) + tuple(options[:k]) for k in range(0, len(options), step)]


def _entity_examples(recs: list[_Record], label_set: list[str], ratio: int, rng) -> tuple[list[dict], list[dict]]:
    """Entity positives, and negatives (each label a record lacks) sampled at ratio."""
    positives, negatives = [], []
    for rec in recs:
        candidates = [label for label in label_set if label not in rec.entity_labels]
        idxs = _sample_indices(len(candidates), len(rec.entity_examples), ratio, rng)
        positives.extend(rec.entity_examples.values())
        negatives.extend(rec.negative(candidates[i]) for i in idxs)
    return positives, negatives


def _relation_examples(recs: list[_Record], is_train: bool, plan: _SplitPlan) -> tuple[list[dict], list[dict]]:
    """Relation positives and negatives; dev/test keep a record's negatives beside its positives."""
    positives, negatives = [], []
    split_names = _unique(name for rec in recs for name in rec.entity_names)
    for rec in recs:
        positives.extend(rec.relation_examples.values())
        asked = rec.asked_prompts(plan.asked_relations)
        if is_train:
            prompts = _train_relation_negatives(rec, split_names, asked, plan)
            negatives.extend(rec.negative(p) for p in prompts)
        else:
            # PaddleNLP keeps dev/test relation negatives next to their record's positives.
            positives.extend(rec.negative(p) for p in _eval_relation_negatives(rec, plan.predicate_set, asked))
    return positives, negatives


def _eval_relation_negatives(rec: _Record, predicate_set: list[str], asked: list[str]) -> list[str]:
    """Dev/test: every (subject, relation type) prompt, then what a server asks, bar positives."""
    every = [rec.relation_prompt(subject, predicate) for subject in rec.subjects for predicate in predicate_set]
    return _unique(every + asked, exclude=rec.relation_examples)


def _train_relation_negatives(rec: _Record, split_names, asked, plan: _SplitPlan) -> list[str]:
    """Train: PaddleNLP's three pools sampled to the ratio, then what a server asks, bar positives."""
    taken = set(rec.relation_examples)
    pools = _relation_negative_pools(rec, split_names, plan.label_set, taken, plan.rng)
    chosen = _sample_pools(pools, len(rec.relation_examples), plan.relation_negative_ratio, plan.rng)
    chosen.extend(p for p in asked if p not in taken and p not in chosen)
    return chosen


def _relation_negative_pools(rec: _Record, split_names, label_set, taken, rng) -> list[list[str]]:
    """PaddleNLP's three pools: inverse relations, other entity names, subject x absent label."""
    pools = [_unique(rec.inverse_prompts, taken)]
    if rec.predicates:
        names = sorted(n for n in split_names if n not in rec.subjects)
        pools.append(_unique((rec.relation_prompt(n, _pick(rec.predicates, rng)) for n in names), taken))
    if rec.subjects:
        labels = sorted(label for label in label_set if label not in rec.entity_labels)
        pools.append(_unique((rec.relation_prompt(_pick(rec.subjects, rng), lab) for lab in labels), taken))
    return pools


def _pick(items: list[str], rng: random.Random) -> str:
    return items[rng.randrange(len(items))]


def _sample_pools(pools: list[list[str]], num_positive: int, ratio: int, rng) -> list[str]:
    """Each pool sampled at ratio // 3, then topped up from the leftovers to ratio * positives."""
    chosen: list[str] = []
    rest: list[str] = []
    for pool in pools:
        pool = [p for p in pool if p not in chosen and p not in rest]
        idxs = _sample_indices(len(pool), num_positive, ratio // 3, rng)
        picked = set(idxs)
        chosen.extend(pool[i] for i in idxs)
        rest.extend(p for k, p in enumerate(pool) if k not in picked)
    chosen.extend(_top_up(rest, num_positive * ratio - len(chosen), rng))
    return chosen


def _top_up(rest: list[str], missing: int, rng) -> list[str]:
    """``missing`` prompts of rest, drawn at random (all of rest when that is not more)."""
    if missing <= 0 or not rest:
        return []
    if missing >= len(rest):
        return list(rest)
    return [rest[i] for i in rng.sample(range(len(rest)), missing)]


# --------------------------------------------------------------------------
# splitting
# --------------------------------------------------------------------------
def _check_splits(splits: Sequence[float]) -> list[Decimal]:
    """Validate splits ([], [train, dev] or [train, dev, test], summing to 1)."""
    splits = list(splits)
    if len(splits) == 0:
        return [Decimal(1), Decimal(0), Decimal(0)]
    if len(splits) not in (2, 3):
        raise ValueError(
            f"splits must be 2 or 3 numbers ([train, dev] or [train, dev, test]), got {splits}"
        )
    try:
        parts = [Decimal(str(float(x))) for x in splits]
    except (TypeError, ValueError, InvalidOperation):
        raise ValueError(f"splits must be numbers, got {splits}") from None
    if any(p < 0 or not p.is_finite() for p in parts):
        raise ValueError(f"splits must be non-negative, got {splits}")
    if abs(sum(parts) - 1) > Decimal("1e-9"):
        raise ValueError(f"splits must sum to 1, got {splits} (sum {float(sum(parts))})")
    while len(parts) < 3:
        parts.append(Decimal(0))
    return parts


def _cut(n: int, parts: list[Decimal]) -> tuple[int, int]:
    p1 = int(n * parts[0])
    p2 = n if parts[2] == 0 else int(n * (parts[0] + parts[1]))
    return min(p1, n), min(max(p2, p1), n)


def _split_sizes_ok(n: int, parts: list[Decimal]) -> bool:
    p1, p2 = _cut(n, parts)
    sizes = (p1, p2 - p1, n - p2)
    return all(size > 0 for size, part in zip(sizes, parts) if part > 0)


def _split_records(n: int, parts: list[Decimal]) -> tuple[int, int]:
    """Cut points; ValueError when a split with a nonzero ratio would be empty."""
    if n == 0:
        raise ValueError("no doccano records to convert")
    p1, p2 = _cut(n, parts)
    sizes = {"train": p1, "dev": p2 - p1, "test": n - p2}
    empty = [name for (name, size), part in zip(sizes.items(), parts) if part > 0 and size == 0]
    if empty:
        needed = next((m for m in range(n + 1, 100_001) if _split_sizes_ok(m, parts)), None)
        ratios = ", ".join(f"{name} {float(part):g}" for name, part in zip(sizes, parts))
        hint = f"; at least {needed} records are needed" if needed else ""
        raise ValueError(
            f"too few records: {n} record(s) cannot fill splits ({ratios}): the "
            f"{' and '.join(empty)} split would get 0 records{hint} "
            f"(or set that ratio to 0)"
        )
    return p1, p2


# --------------------------------------------------------------------------
# public API
# --------------------------------------------------------------------------
def convert_doccano(
    records: list[dict],
    task_type: str = "ext",
    splits: Sequence[float] = (0.8, 0.1, 0.1),
    negative_ratio: int = 5,
    schema_lang: str = "ch",
    seed: int = 1000,
    is_shuffle: bool = True,
    separator: str = "##",
    prompt_prefix: str = "情感倾向",
    options: Sequence[str] = ("正向", "负向"),
    labels: Sequence[str] = (),
    relation_negative_ratio: int | None = None,
    asked_relations: dict[str, Sequence[str]] | None = None,
    choices: dict[str, tuple[str, Sequence[str]]] | None = None,
    split_of: Callable[[dict], int] | None = None,
) -> tuple[list[dict], list[dict], list[dict]]:
    """Convert doccano records into (train, dev, test) UIE examples, split by record.

    ``labels`` adds entity labels that no record uses (a project's labels nobody
    has annotated yet): they become negative examples like any absent label.

    Relation negatives of the train split are sampled at ``relation_negative_ratio``
    (default: ``negative_ratio``) as PaddleNLP samples them. ``asked_relations``
    (``{relation word: subject labels}``, no labels meaning every label) are the
    relation prompts a server asks: with it, every record also gets a negative for
    each (entity text whose label the relation starts from, word) it does not
    annotate, in every split, and those words join the relation types.

    ``choices`` (``{Choices control: (prompt prefix, option words)}``) makes, for each
    record's ``"choices"`` of those controls, a classification example with the options
    in that order (the server's prompt); a record with choices alone is trained on too.

    ``split_of(record)`` (0 train, 1 dev, 2 test), when given, puts each record in its split
    in place of cutting the shuffled records by ``splits``: a training job's held-out tasks
    stay held out as the project grows (``training_examples.held_out_split``).
    """
    relation_negative_ratio, asked_relations = _checked_options(
        task_type, schema_lang, negative_ratio, relation_negative_ratio, asked_relations
    )
    parts = _check_splits(splits)
    records = list(records)
    rng = random.Random(seed)
    if split_of is None:
        chunks = _record_chunks(len(records), parts, is_shuffle, rng)
    else:
        chunks = [[i for i, r in enumerate(records) if split_of(r) == k] for k in range(3)]
    if task_type == "cls":
        return tuple(_cls_split([(records[i], i) for i in chunk], prompt_prefix, options, rng) for chunk in chunks)

    recs = [_Record(records[i], i, schema_lang, separator, prompt_prefix) for i in range(len(records))]
    plan = _SplitPlan(
        label_set=_negative_labels(recs, labels),
        predicate_set=_unique([p for rec in recs for p in rec.predicates] + list(asked_relations)),
        negative_ratio=negative_ratio,
        relation_negative_ratio=relation_negative_ratio,
        asked_relations=asked_relations,
        options=options,
        rng=rng,
        choices={name: (prefix, tuple(words)) for name, (prefix, words) in (choices or {}).items()},
    )
    _require_annotations(recs, plan.choices)
    return _ext_splits(recs, chunks, is_shuffle, plan)


def _checked_options(task_type, schema_lang, negative_ratio, relation_negative_ratio, asked_relations):
    """Validate convert_doccano's options; (relation_negative_ratio, asked_relations) with defaults."""
    if schema_lang not in ("ch", "en"):
        raise ValueError(f"schema_lang must be 'ch' or 'en', got {schema_lang!r}")
    _check_ratio("negative_ratio", negative_ratio)
    if relation_negative_ratio is None:
        relation_negative_ratio = negative_ratio
    _check_ratio("relation_negative_ratio", relation_negative_ratio)
    asked_relations = {str(p): tuple(labs) for p, labs in (asked_relations or {}).items() if p}
    if task_type not in ("ext", "cls"):
        raise ValueError(f"task_type must be 'ext' or 'cls', got {task_type!r}")
    return relation_negative_ratio, asked_relations


def _check_ratio(name: str, value: Any) -> None:
    if not _is_int(value) or value < -1:
        raise ValueError(f"{name} must be an integer >= -1, got {value!r}")


def _record_chunks(n: int, parts: list[Decimal], is_shuffle: bool, rng: random.Random) -> list[list[int]]:
    """Record indices of train, dev and test (shuffled before they are cut when asked)."""
    p1, p2 = _split_records(n, parts)
    order = list(range(n))
    if is_shuffle:
        rng.shuffle(order)
    return [order[:p1], order[p1:p2], order[p2:]]


def _negative_labels(recs: list[_Record], labels: Sequence[str]) -> list[str]:
    """Entity labels of the records and of ``labels``, less NO_NEGATIVE_LABELS, sorted."""
    return sorted(
        {lab for rec in recs for lab in rec.entity_labels if lab not in NO_NEGATIVE_LABELS}
        | {lab for lab in labels if lab not in NO_NEGATIVE_LABELS}
    )


def _require_annotations(recs: list[_Record], choices: dict) -> None:
    """ValueError when no record has an entity, a relation or a choice to learn."""
    if not any(rec.entity_examples or rec.relation_examples
               or any(name in choices for name, _ in rec.choice_items) for rec in recs):
        raise ValueError(
            f"none of the {len(recs)} records has an entity{' or a choice' if choices else ''}: "
            "there is nothing to train on"
        )


def _ext_splits(recs: list[_Record], chunks: list[list[int]], is_shuffle: bool, plan: _SplitPlan):
    """(train, dev, test) extraction examples; train's are shuffled when the records were."""
    train = _build_split([recs[i] for i in chunks[0]], plan, is_train=True)
    if is_shuffle:
        plan.rng.shuffle(train)
    dev = _build_split([recs[i] for i in chunks[1]], plan, is_train=False)
    test = _build_split([recs[i] for i in chunks[2]], plan, is_train=False)
    return train, dev, test


def _cls_split(items, prompt_prefix, options, rng) -> list[dict]:
    """Sentence-level classification examples ({"text", "label": [...]} records)."""
    examples = []
    for record, index in items:
        if not isinstance(record, dict):
            raise ValueError(f"record {index} is not a JSON object")
        where = _describe(record, index)
        text = record.get("text", record.get("data"))
        labels = record.get("label")
        if isinstance(labels, str):
            labels = [labels]
        if not isinstance(text, str) or not isinstance(labels, list) or not labels:
            raise ValueError(f"{where}: a cls record needs a string 'text' and a 'label' list")
        examples.append(_cls_example(text, labels, prompt_prefix, options, rng, where))
    return examples


def read_doccano(path) -> list[dict]:
    """Read a doccano JSONL file; ValueError names the first malformed line."""
    records = read_jsonl(path)
    for lineno, obj in enumerate(records, 1):
        if not isinstance(obj, dict):
            raise ValueError(f"{path}: record {lineno} is not a JSON object")
    if not records:
        raise ValueError(f"{path}: no records")
    return records


def write_splits(train: list[dict], dev: list[dict], test: list[dict], save_dir) -> dict[str, str]:
    """Write train.txt / dev.txt / test.txt (JSONL) under save_dir; return their paths."""
    os.makedirs(save_dir, exist_ok=True)
    paths = {}
    for name, examples in (("train", train), ("dev", dev), ("test", test)):
        paths[name] = os.path.join(save_dir, f"{name}.txt")
        write_jsonl(examples, paths[name])
    return paths


# --------------------------------------------------------------------------
# CLI
# --------------------------------------------------------------------------
def _str2bool(value: str) -> bool:
    lowered = str(value).strip().lower()
    if lowered in ("true", "t", "yes", "y", "1"):
        return True
    if lowered in ("false", "f", "no", "n", "0"):
        return False
    raise argparse.ArgumentTypeError(f"expected True or False, got {value!r}")


def build_parser() -> argparse.ArgumentParser:
    """PaddleNLP doccano.py's flags (and ``--labels``)."""
    parser = argparse.ArgumentParser(description="Convert doccano JSONL into UIE train/dev/test files.")
    parser.add_argument("--doccano_file", default="./data/doccano.json", type=str,
                        help="the doccano JSONL file (one record a line, as exported by doccano or convert.py)")
    parser.add_argument("--save_dir", default="./data", type=str,
                        help="where train.txt, dev.txt and test.txt are written")
    parser.add_argument("--negative_ratio", default=5, type=int,
                        help="extraction only: at most this many negative examples (an absent label, an "
                             "unrelated relation prompt) per positive one of a training record (a record without "
                             "positives keeps all); -1 keeps them all. Dev and test keep every negative")
    parser.add_argument("--splits", default=[0.8, 0.1, 0.1], type=float, nargs="*",
                        help="shares of the records for train, dev and test (2 or 3 numbers summing to 1; "
                             "none: everything is train), e.g. 0.8 0.1 0.1")
    parser.add_argument("--task_type", choices=["ext", "cls"], default="ext", type=str,
                        help="ext: entity and relation extraction; cls: text classification")
    parser.add_argument("--options", default=["正向", "负向"], type=str, nargs="+",
                        help="classification only: the class names listed in the prompt")
    parser.add_argument("--prompt_prefix", default="情感倾向", type=str,
                        help="classification only: the prompt before the options, e.g. 情感倾向[正向,负向]")
    parser.add_argument("--is_shuffle", default="True", type=_str2bool,
                        help="shuffle the records before splitting them (True or False)")
    parser.add_argument("--seed", type=int, default=1000,
                        help="seed of the shuffling and of the negative sampling")
    parser.add_argument("--separator", type=str, default="##",
                        help="entity-level classification: separates an entity label from its class, "
                             "e.g. 手机##正向")
    parser.add_argument("--schema_lang", choices=["ch", "en"], default="ch",
                        help="language of relation prompts: ch gives 'subject的relation', "
                             "en gives 'relation of subject'")
    parser.add_argument("--labels", nargs="*", default=[],
                        help="entity labels beyond those in the data, used as negatives")
    return parser


def main(argv: list[str] | None = None) -> int:
    """Command-line entry point (PaddleNLP doccano.py flags); returns the exit code."""
    from evaluate import terminal_bar

    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s: %(message)s")
    bar = terminal_bar(3, "reading", unit="step")    # on a terminal only: read, convert, write

    try:
        records = read_doccano(args.doccano_file)
        _next_step(bar, f"converting {len(records)} records")
        train, dev, test = convert_doccano(
            records,
            task_type=args.task_type,
            splits=args.splits,
            negative_ratio=args.negative_ratio,
            schema_lang=args.schema_lang,
            seed=args.seed,
            is_shuffle=args.is_shuffle,
            separator=args.separator,
            prompt_prefix=args.prompt_prefix,
            options=args.options,
            labels=args.labels,
        )
        _next_step(bar, "writing")
        paths = write_splits(train, dev, test, args.save_dir)
        _next_step(bar, "done")
    except (ValueError, NotImplementedError, OSError) as exc:
        if bar is not None:
            bar.close()
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if bar is not None:
        bar.close()
    for name, examples in (("train", train), ("dev", dev), ("test", test)):
        print(f"Saved {len(examples)} examples to {paths[name]}")
    return 0


def _next_step(bar, what: str) -> None:
    """Move the terminal's progress bar (None: there is none) to its next step, named ``what``."""
    if bar is not None:
        bar.set_description_str(what, refresh=False)
        bar.update(1)


if __name__ == "__main__":
    sys.exit(main())
