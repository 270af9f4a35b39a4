"""Label Studio's annotations -> the UIE examples a training job trains and scores on.

``build_examples`` converts the annotated tasks (``convert``), builds UIE examples for every
label, relation and ``<Choices>`` of the config (``doccano``), holds out the same texts in
every job of a project (``held_out_split``) and, for scratch models, adds copies with their
mentions swapped (``uie.augment``). ``add_corrections`` marks the regions an annotator
deleted or relabelled as known false positives. ``add_teacher_examples`` adds LAC's names on
the unannotated tasks (``uie.teacher``). ``PromptLabels`` and ``trained_labels`` say
what a prompt, and what a set of examples, mean in the label config's terms. No Paddle here:
``train_job.py`` runs these, the server reads ``trained_labels``.
"""

from __future__ import annotations

import hashlib
import logging
from dataclasses import dataclass

from convert import expand_prompts, expand_relation_types, label_studio_to_doccano
from label_config import LabelConfigError, parse_choices, parse_label_config, parse_relations

log = logging.getLogger("train_job")
# Relation negatives beyond those the server asks, per relation prompt of a task, sampled
# as PaddleNLP samples them (its default negative_ratio). All of them (-1) would be every
# entity text of every annotated task asked on every other task: quadratic in the tasks.
RELATION_NEGATIVE_RATIO = 5
DEV_SHARE = 0.2      # of the texts held out once a project has min_dev_tasks annotated tasks
TEACHER_TEXTS = 1000     # unannotated texts LAC labels for a job (add_teacher_examples), the first ones


class ExamplesError(ValueError):
    """The annotations cannot become training examples; the job fails with this message."""


@dataclass
class Examples:
    """The UIE examples a job trains and scores on."""

    train: list
    dev: list
    records: int        # annotated tasks that became doccano records
    held_out: bool      # dev is held out (else it is the training set)


def build_examples(tasks, label_config: str, min_dev_tasks: int, schema_lang: str = "ch",
                   augment: bool = False) -> Examples:
    """Label Studio tasks -> UIE examples for every (task, label) pair of the config.

    Labels nobody annotated yet are negatives too (``/predict`` asks every label
    of every task), and a label with ``predicted_values`` is trained on the words
    the server prompts with. Relations become PaddleNLP's relation examples
    (``<subject>的<relation>`` with ``schema_lang="ch"``, ``<relation> of <subject>``
    with ``"en"``) and their negatives (PaddleNLP's, ``RELATION_NEGATIVE_RATIO``
    per relation prompt, inverse ones first), plus, as for labels, every relation
    prompt the server would ask of an annotated task that it does not annotate;
    all built from the words of a relation's ``predicted_values`` when it has
    them. A ``<Choices>`` on the same text adds a classification example per task
    annotated with its choices (``choices.py``'s prompt, options in the config's order),
    in the same split. With ``min_dev_tasks`` annotated tasks or more, about 20 % are held
    out, always the same texts (``held_out_split``). With ``augment`` (scratch models), the
    training texts get copies with their mentions swapped (``uie.augment``), fewer as they grow.
    """
    same_text, relations, same_choices = _read_label_config(label_config)
    records = _doccano_records(tasks, same_text, relations, same_choices)
    held_out = len(records) >= min_dev_tasks and len({held_out_split(r) for r in records}) == 2
    train, dev = _convert_records(records, same_text, relations, held_out, schema_lang, same_choices)
    train, dev = _expand_label_prompts(train, dev, same_text)
    annotated = train
    if augment:       # a new list: without held-out texts the job scores on the annotated ones only
        train = train + _swapped_examples([r for r in records if not (held_out and held_out_split(r))],
                                          same_text, relations, schema_lang)
    return Examples(train, dev if held_out else annotated, len(records), held_out)


def _swapped_examples(records, same_text, relations, schema_lang: str) -> list:
    """Training examples of the records' copies with their mentions swapped (``uie.augment``)."""
    from uie import augment

    copies = augment.swap_mentions(records, augment.copies_for(len(records)))
    if not copies:
        return []
    train, _ = _convert_records(copies, same_text, relations, False, schema_lang)
    train, _ = _expand_label_prompts(train, [], same_text)
    log.info("%d training texts -> %d copies with their mentions swapped", len(records), len(copies))
    return train


def held_out_split(record: dict) -> int:
    """1 (held out) for about ``DEV_SHARE`` of the texts, 0 (train) for the others.

    The split depends on the text alone (its SHA-256), not on which other tasks a job has:
    a task held out by one job is held out by every later job of the project, so the served
    version, trained on an earlier job's train split, is scored on texts it never saw, like
    the candidate; a split drawn anew per job would score it on some of its own training
    texts and keep it served for being graded on them. Equal texts share their split.
    """
    digest = hashlib.sha256(str(record.get("text", "")).encode("utf-8")).digest()
    return int(int.from_bytes(digest[:4], "big") < DEV_SHARE * 2 ** 32)


def _read_label_config(label_config: str):
    """``(controls, relations, choice controls)`` of the label config: the Labels and
    Choices controls on the first one's text (a Labels control's first), and its relations;
    ``ExamplesError`` when it has neither."""
    try:
        controls = parse_label_config(label_config)
        relations = parse_relations(label_config)
        choices = parse_choices(label_config)
    except LabelConfigError as exc:
        raise ExamplesError(f"no usable label config: {exc}") from None
    key = (controls or choices)[0].data_key
    return ([c for c in controls if c.data_key == key], relations,
            [c for c in choices if c.data_key == key])


def _doccano_records(tasks, same_text, relations, same_choices=()) -> list:
    """The annotated tasks as doccano records, relation types and choices written as the
    words the server prompts with (``predicted_values``); ``ExamplesError`` when none is annotated."""
    records = label_studio_to_doccano(tasks, text_key=(same_text or same_choices)[0].data_key,
                                      from_names={c.from_name for c in same_text},
                                      choice_names={c.from_name for c in same_choices})
    if not records:
        raise ExamplesError(f"no annotated tasks to train on ({len(tasks)} tasks)")
    words = {r.value: r.prompts for r in relations if list(r.prompts) != [r.value]}
    if words:
        records = expand_relation_types(records, words)
    return [_choice_words(record, same_choices) for record in records]


def _choice_words(record: dict, same_choices) -> dict:
    """``record`` with its choices' values written as their option words; a value that is
    no ``<Choice>`` of the config (any more) is dropped, logged."""
    if not record.get("choices"):
        return record
    out = {}
    for control in same_choices:
        values = record["choices"].get(control.from_name, [])
        words = [w for v in values if (w := control.word_of(v)) is not None]
        if len(words) < len(values):
            log.warning("task %s: a choice of %s is no <Choice> of the config; dropped",
                        record.get("id"), control.from_name)
        if words:
            out[control.from_name] = words
    return dict(record, choices=out)


def _convert_records(records, same_text, relations, held_out: bool, schema_lang: str, same_choices=()):
    """``(train, dev)`` UIE examples of the records (``doccano.convert_doccano``): every
    label's negatives, the relation prompts the server asks, the choices' classification
    examples; dev empty unless held out."""
    import doccano

    labels = [label for c in same_text for label, _ in c.labels]
    asked = {word: r.subject_labels for r in relations for word in r.prompts}
    choices = {c.from_name: (c.prefix, c.options) for c in same_choices}
    try:
        train, dev, _ = doccano.convert_doccano(records, split_of=held_out_split if held_out else lambda r: 0,
                                                negative_ratio=-1, labels=labels, schema_lang=schema_lang,
                                                relation_negative_ratio=RELATION_NEGATIVE_RATIO,
                                                asked_relations=asked, choices=choices)
    except ValueError as exc:
        raise ExamplesError(f"the annotations cannot be trained on: {exc}") from None
    return train, dev


def _expand_label_prompts(train, dev, same_text):
    """``(train, dev)`` with each label that has ``predicted_values`` asked by those words."""
    prompts = {label: ps for c in same_text for label, ps in c.labels if list(ps) != [label]}
    if prompts:
        train, dev = expand_prompts(train, prompts), expand_prompts(dev, prompts)
    return train, dev


def add_teacher_examples(examples: Examples, tasks, label_config: str, lac, more_texts=()) -> dict:
    """Add LAC's names on unannotated texts to the training examples (``uie.teacher``): ``lac``
    (``uie.lac.Tagger``) tags the annotated training texts, ``uie.teacher.mapping`` keeps the
    LAC types that match a span tagger prompt there, and the first ``TEACHER_TEXTS`` texts of
    the unannotated ``tasks``, then of ``more_texts``, with such a span become one partial example
    per prompt. Returns ``{"texts", "examples", "mapped": {type: prompt}}`` (the job's record)."""
    from uie import teacher
    from uie.train_inputs import tagger_classes

    same_text, _, _ = _read_label_config(label_config)
    known = {ex["content"] for ex in examples.train + examples.dev}
    key = same_text[0].data_key if same_text else None
    texts = unannotated_texts(list(tasks) + [{"data": {key: t}} for t in more_texts], key, known) if key else []
    record = {"texts": len(texts), "examples": 0, "mapped": {}}
    gold = teacher.gold_spans(examples.train, set(tagger_classes(examples.train, 64)))
    if not texts or not gold:
        return record
    mapped = teacher.mapping(gold, dict(zip(gold, lac.spans(list(gold)))))
    new = teacher.examples(texts, lac.spans(texts), mapped) if mapped else []
    examples.train = examples.train + new        # a new list: dev may be the same one
    record.update(examples=len(new), mapped=mapped)
    return record


def unannotated_texts(tasks, data_key: str, known: set) -> list[str]:
    """The first ``TEACHER_TEXTS`` distinct texts (``data[data_key]``) of ``tasks`` not in ``known``."""
    out, seen = [], set(known)
    for task in tasks:
        data = task.get("data") if isinstance(task, dict) else None
        text = data.get(data_key) if isinstance(data, dict) else None
        if isinstance(text, str) and text.strip() and text not in seen:
            seen.add(text)
            out.append(text)
            if len(out) >= TEACHER_TEXTS:
                break
    return out


def add_corrections(examples: Examples, corrections, tasks, label_config: str, schema_lang: str = "ch") -> int:
    """Mark the annotators' corrections on the training examples; returns how many were marked.

    A correction (``service.corrections.find_corrections``) is a region ``/predict``
    suggested that the annotation deleted or relabelled (a known false positive of its label
    on its text), or a suggested relation it did not keep (a false positive of the relation's
    prompts for its subject: ``relations.relation_prompt``, the object's offsets). The
    training example of that text and each such prompt gets the offsets in ``"negatives"``
    (``[[start, end], ...]``), which ``finetune`` weighs ``CORRECTION_WEIGHT`` times as a
    plain absent span; it is already absent from ``result_list``. Only training texts are
    marked (a held-out text stays unseen); a correction whose text no longer has the
    region's text at its offsets, or whose label or relation the config no longer has, is
    dropped."""
    controls = {c.from_name: c for c in parsed(parse_label_config, label_config)}
    relations = {r.value: r for r in parsed(parse_relations, label_config)}
    texts = {}                          # task id -> the task, as training reads it
    for task in tasks:
        if isinstance(task, dict) and task.get("id") is not None:
            texts[str(task["id"])] = task
    by_prompt = {(ex["content"], ex["prompt"]): ex for ex in examples.train}
    contents = {ex["content"] for ex in examples.train}
    marked = 0
    for c in corrections:
        text, prompts, (start, end) = _correction_target(c, texts, controls, relations, schema_lang)
        if text not in contents:
            continue
        for prompt in prompts:
            example = by_prompt.get((text, prompt))
            if example is None:
                example = by_prompt[(text, prompt)] = {"content": text, "result_list": [], "prompt": prompt}
                examples.train.append(example)
            if any(r["start"] == start and r["end"] == end for r in example["result_list"]):
                continue                # annotated with that label after all
            spans = example.setdefault("negatives", [])
            if [start, end] not in spans:
                spans.append([start, end])
                marked += 1
    if corrections:
        log.info("%d corrections of suggested regions and relations -> %d negatives marked", len(corrections), marked)
    return marked


def _correction_target(c: dict, texts: dict, controls: dict, relations: dict, schema_lang: str) -> tuple:
    """``(text, prompts, (start, end))`` a correction marks: its label's prompts at its region,
    or its relation's prompts for its subject at its object; no prompts when the task's text
    no longer holds it or the config no longer asks it."""
    control, task = controls.get(c.get("from_name")), texts.get(str(c.get("task")))
    if "relation" in c:
        return _relation_target(c, task, control, relations.get(c["relation"]), schema_lang)
    text = _corrected_text(task, control, c)
    prompts = dict(control.labels).get(c["label"], ()) if text is not None else ()
    return text, prompts, (c["start"], c["end"])


def _relation_target(c: dict, task, control, relation, schema_lang: str) -> tuple:
    from relations import relation_prompt

    subject, obj = (dict(zip(("start", "end", "text"), c[k])) for k in ("subject", "object"))
    text = _corrected_text(task, control, subject)
    if relation is None or text is None or _corrected_text(task, control, obj) != text:
        return None, (), (None, None)
    prompts = [relation_prompt(subject["text"], word, schema_lang) for word in relation.prompts]
    return text, prompts, (obj["start"], obj["end"])


def _corrected_text(task, control, correction) -> str | None:
    """The text of ``task`` the correction is on, if it still holds the region's text there."""
    from convert import TaskTextError, task_text

    if task is None or control is None:
        return None
    try:
        text = task_text(task, control.data_key)
    except TaskTextError:
        return None
    start, end = correction["start"], correction["end"]
    if not (isinstance(start, int) and isinstance(end, int) and 0 <= start < end <= len(text)):
        return None
    return text if text[start:end] == correction["text"] else None


def parsed(parse, label_config: str) -> tuple:
    """What ``parse`` reads of the label config; ``()`` where it has none of it."""
    try:
        return tuple(parse(label_config))
    except LabelConfigError:
        return ()


def label_of_prompt(label_config: str, schema_lang: str) -> "PromptLabels":
    """``evaluate_examples``' ``label_of`` for the job's label config (``PromptLabels``)."""
    return PromptLabels(label_config, schema_lang)


class PromptLabels:
    """``prompt -> [(kind, name, unit)]``: a label's prompt (its value or a word of its
    ``predicted_values``) -> ``("labels", label, "")`` for each label asking it; a relation
    prompt (``<subject>的<word>``, ``<word> of <subject>``) -> ``("relations", relation,
    subject)``; a ``<Choices>``' prompt -> ``("choices", its name, "")``; PaddleNLP's relation
    negatives ``<subject>的<label word>``, which the server never asks -> ``[]``; any other
    prompt -> ``("prompts", prompt, "")``."""

    def __init__(self, label_config: str, schema_lang: str):
        self.controls = parsed(parse_label_config, label_config)
        self.relations = parsed(parse_relations, label_config)
        self.choices = {c.prompt: c.from_name for c in parsed(parse_choices, label_config)}
        self.schema_lang = schema_lang
        self.words = {p for c in self.controls for p in c.prompts}

    def __call__(self, prompt: str) -> list[tuple]:
        labels = dict.fromkeys(label for c in self.controls for label in c.labels_for(prompt))
        if labels:
            return [("labels", label, "") for label in labels]
        if prompt in self.choices:
            return [("choices", self.choices[prompt], "")]
        found = dict.fromkeys(("relations", r.value, subject) for r in self.relations for word in r.prompts
                              if (subject := self.subject(prompt, word)) is not None)
        if found:
            return list(found)
        if self.relations and any(self.subject(prompt, word) is not None for word in self.words):
            return []
        return [("prompts", prompt, "")]

    def subject(self, prompt: str, word: str) -> str | None:
        """The subject of ``prompt`` if it is the relation prompt of ``word``, else None."""
        from relations import relation_prompt

        head, _, tail = relation_prompt("\0", word, self.schema_lang).partition("\0")
        if len(prompt) > len(head) + len(tail) and prompt.startswith(head) and prompt.endswith(tail):
            return prompt[len(head):len(prompt) - len(tail)]
        return None


def trained_labels(examples, label_config: str, schema_lang: str) -> dict:
    """What ``examples`` teach, in the config's terms: ``{"labels": [...], "relations": [...],
    "choices": {Choices name: [option values]}}``, each label, relation and option with at
    least one positive example (a span, or the option chosen), sorted. A version's
    ``meta.json`` keeps it (``trained_labels``): a scratch version predicts nothing else
    (``service.model_store.labels_without_examples``)."""
    of, kinds = PromptLabels(label_config, schema_lang), {}
    choices = parsed(parse_choices, label_config)
    labels, relations, chosen = set(), set(), {}
    for ex in examples:
        if not ex["result_list"]:
            continue
        prompt = ex["prompt"]
        control = _choice_control(prompt, choices)
        if control is not None:
            chosen.setdefault(control.from_name, set()).update(
                v for r in ex["result_list"] if (v := control.value_of(r["text"])) is not None)
            continue
        if prompt not in kinds:
            kinds[prompt] = of(prompt)
        for kind, name, _ in kinds[prompt]:
            if kind == "labels":
                labels.add(name)
            elif kind == "relations":
                relations.add(name)
    return {"labels": sorted(labels), "relations": sorted(relations),
            "choices": {name: sorted(values) for name, values in sorted(chosen.items()) if values}}


def untrained_labels(label_config: str, trained: dict) -> dict:
    """The labels, relations and Choices options (values) of ``label_config`` that
    ``trained`` (``trained_labels``: what a version has training examples of) does
    not name: ``{"labels": [...], "relations": [...], "choices": {Choices name: [values]}}``,
    in the config's order (a Choices without any missing left out)."""
    labels, relations = _named(trained, "labels"), _named(trained, "relations")
    chosen = trained.get("choices") if isinstance(trained.get("choices"), dict) else {}
    choices = {}
    for control in parsed(parse_choices, label_config):
        known = set(chosen.get(control.from_name)) if isinstance(chosen.get(control.from_name), list) else set()
        if missing := [value for value, _ in control.choices if value not in known]:
            choices[control.from_name] = missing
    all_labels = (label for c in parsed(parse_label_config, label_config) for label, _ in c.labels)
    all_relations = (r.value for r in parsed(parse_relations, label_config))
    return {"labels": list(dict.fromkeys(x for x in all_labels if x not in labels)),
            "relations": list(dict.fromkeys(x for x in all_relations if x not in relations)),
            "choices": choices}


def _named(trained: dict, key: str) -> set:
    """The names a ``trained_labels`` record lists under ``key`` (none if it is not a list)."""
    value = trained.get(key)
    return {v for v in value if isinstance(v, str)} if isinstance(value, list) else set()


def _choice_control(prompt: str, choices):
    """The ``<Choices>`` whose classification prompt ``prompt`` is (its options in any
    order: ``doccano`` trains rotations of them), or None."""
    at = prompt.rfind("[")
    if at <= 0 or not prompt.endswith("]"):
        return None
    options = set(prompt[at + 1:-1].split(","))
    return next((c for c in choices if c.prefix == prompt[:at] and set(c.options) == options), None)
