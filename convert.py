"""Convert Label Studio text-span annotations into doccano JSONL records.

The output is the doccano "relation" JSONL layout that PaddleNLP's UIE
``doccano.py`` reads::

    {"id": 1, "text": "...",
     "entities": [{"id": 0, "label": "name", "start_offset": 0, "end_offset": 5}],
     "relations": [{"id": 0, "from_id": 0, "to_id": 1, "type": "works for"}]}

An annotation's ``choices`` results (``<Choices>`` on the text) add
``"choices": {"<from_name>": ["value", ...]}``, and, when they come from one
Choices control only, also PaddleNLP's classification field ``"label": [...]``
(what ``doccano.py --task_type cls`` reads).

Offsets are Python ``str`` indices (code points) into the task text, taken
exactly as Label Studio reports them: nothing is stripped or shifted.

Pure standard library; safe to import without paddle / paddlenlp.

CLI::

    python convert.py --label_studio_file export.json --doccano_file out.jsonl [--text_key KEY]
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Iterable, Iterator, Sequence

from checks import require_unicode

logger = logging.getLogger(__name__)

__all__ = [
    "parse_time",
    "select_annotation",
    "task_text",
    "TaskTextError",
    "task_to_doccano",
    "label_studio_to_doccano",
    "expand_prompts",
    "expand_relation_types",
    "load_tasks",
    "write_jsonl",
    "read_jsonl",
    "main",
]


# --------------------------------------------------------------------------
# annotation choice
# --------------------------------------------------------------------------
def parse_time(value: Any) -> datetime | None:
    """Parse a Label Studio ISO timestamp; None when missing or unparsable."""
    if not isinstance(value, str) or not value:
        return None
    text = value.strip()
    if text.endswith(("Z", "z")):
        text = text[:-1] + "+00:00"
    try:
        parsed = datetime.fromisoformat(text)
    except ValueError:
        return None
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=timezone.utc)
    return parsed


_EPOCH = datetime.min.replace(tzinfo=timezone.utc)


def _recency_key(annotation: dict) -> tuple:
    """Sort key: newer annotations compare greater (updated_at, created_at, id)."""
    updated = parse_time(annotation.get("updated_at"))
    created = parse_time(annotation.get("created_at"))
    ann_id = annotation.get("id")
    id_key = (1, ann_id) if isinstance(ann_id, (int, float)) and not isinstance(ann_id, bool) else (0, 0)
    return (
        updated is not None,
        updated or _EPOCH,
        created is not None,
        created or _EPOCH,
        id_key,
    )


def select_annotation(task: dict) -> dict | None:
    """Return the annotation to train on: ground truth first, else the newest.

    Cancelled (skipped) annotations never count, and neither do drafts.
    Returns None when the task has no usable annotation.
    """
    annotations = task.get("annotations") if isinstance(task, dict) else None
    if not isinstance(annotations, list):
        return None
    usable = [a for a in annotations if isinstance(a, dict) and not a.get("was_cancelled")]
    if not usable:
        return None
    ground_truth = [a for a in usable if a.get("ground_truth") is True]
    pool = ground_truth or usable
    return max(pool, key=_recency_key)


# --------------------------------------------------------------------------
# one task -> one doccano record
# --------------------------------------------------------------------------
class TaskTextError(ValueError):
    """A task has no text that can be predicted or trained on; the message says why."""


def task_text(task: Any, text_key: str | None) -> str:
    """The text of a task, the same for prediction (the server) and training (this script).

    ``data[text_key]``; without a key (this script's CLI), the only string in
    ``data``, else ``data["text"]``. The server always passes the ``$key`` of
    the ``<Text>`` object. A missing, non-string or empty text, or one that is
    not valid Unicode (a lone surrogate, which UTF-8 cannot hold), raises
    ``TaskTextError``.
    """
    data = task.get("data") if isinstance(task, dict) else None
    if not isinstance(data, dict):
        raise TaskTextError("the task has no 'data' object")
    if text_key is None:
        string_keys = [k for k, v in data.items() if isinstance(v, str)]
        text_key = string_keys[0] if len(string_keys) == 1 else "text"
    text = data.get(text_key)
    if not isinstance(text, str) or not text:
        raise TaskTextError(f"data.{text_key} is missing, empty or not a string")
    return require_unicode(text, f"data.{text_key}", TaskTextError)


def task_to_doccano(
    task: dict,
    text_key: str | None = None,
    from_names: set[str] | None = None,
    choice_names: set[str] | None = None,
) -> dict | None:
    """Convert one Label Studio task into a doccano record, or None if unusable.

    ``from_names`` are the Labels controls whose regions count (None: all),
    ``choice_names`` the Choices controls whose choices count (None: all).
    """
    usable = _usable_task(task, text_key)
    if usable is None:
        return None
    task_id, text, result = usable
    entities, region_entities = _collect_entities(result, text, task_id, from_names)
    relations = _collect_relations(result, region_entities, task_id)
    record = {"id": task_id, "text": text, "entities": entities, "relations": relations}
    chosen = _collect_choices(result, choice_names)
    if chosen:
        record["choices"] = chosen
    if len(chosen) == 1:
        record["label"] = next(iter(chosen.values()))
    return record


def _collect_choices(result: list, choice_names: set[str] | None) -> dict[str, list[str]]:
    """``{from_name: [values]}`` of the annotation's ``choices`` results, each value once."""
    chosen: dict[str, list[str]] = {}
    for item in result:
        if not isinstance(item, dict) or item.get("type") != "choices":
            continue
        name = item.get("from_name")
        if not isinstance(name, str) or (choice_names is not None and name not in choice_names):
            continue
        values = _label_list((item.get("value") or {}).get("choices"))
        for value in values if isinstance(values, list) else ():
            if isinstance(value, str) and value and value not in chosen.get(name, []):
                chosen.setdefault(name, []).append(value)
    return chosen


def _usable_task(task: Any, text_key: str | None) -> tuple[Any, str, list] | None:
    """(task id, text, annotation result) of a task; None (logged if malformed) if unusable."""
    if not isinstance(task, dict):
        logger.warning("Skipping a task that is not a JSON object: %r", type(task).__name__)
        return None
    task_id = task.get("id")
    annotation = select_annotation(task)
    if annotation is None:
        return None
    try:
        text = task_text(task, text_key)
    except TaskTextError as exc:
        logger.warning("Task %s: no text found (%s); skipped", task_id, exc)
        return None
    result = annotation.get("result") or []
    if not isinstance(result, list):
        logger.warning("Task %s: annotation result is not a list; skipped", task_id)
        return None
    return task_id, text, result


def _label_list(labels: Any) -> Any:
    """A region's or relation's labels as a list (a lone string is one label)."""
    labels = labels or []
    return [labels] if isinstance(labels, str) else labels


# ---- entities: the "labels" regions --------------------------------------
def _collect_entities(
    result: list, text: str, task_id: Any, from_names: set[str] | None
) -> tuple[list[dict], dict[Any, list[int]]]:
    """The entities, each (label, start, end) once, and the entity ids of each region id."""
    entities: list[dict] = []
    seen: dict[tuple, int] = {}  # (label, start, end) -> entity id
    region_entities: dict[Any, list[int]] = {}  # Label Studio region id -> entity ids
    for item in result:
        span = _labeled_span(item, text, task_id, from_names)
        if span is None:
            continue
        labels, start, end = span
        ids = region_entities.setdefault(item.get("id"), []) if item.get("id") is not None else []
        for label in labels:
            ent_id = _entity_id(entities, seen, str(label), start, end)
            if ent_id not in ids:
                ids.append(ent_id)
    return entities, region_entities


def _labeled_span(item: Any, text: str, task_id: Any, from_names: set[str] | None) -> tuple | None:
    """(labels, start, end) of a usable labels region; None (logged if malformed) otherwise."""
    if not isinstance(item, dict) or item.get("type") != "labels":
        return None
    if from_names is not None and item.get("from_name") not in from_names:
        return None
    value = item.get("value") or {}
    start, end = value.get("start"), value.get("end")
    labels = _label_list(value.get("labels"))
    if not labels:
        logger.warning("Task %s: region %s has no label; skipped", task_id, item.get("id"))
        return None
    if not _span_in_text(start, end, text):
        logger.warning("Task %s: span [%r, %r) is out of range for a text of %d characters; skipped",
                       task_id, start, end, len(text))
        return None
    _warn_if_text_differs(value.get("text"), text, start, end, task_id)
    return labels, start, end


def _span_in_text(start: Any, end: Any, text: str) -> bool:
    """Whether [start, end) are int (not bool) offsets of a non-empty span of text."""
    ints = all(isinstance(offset, int) and not isinstance(offset, bool) for offset in (start, end))
    return ints and 0 <= start < end <= len(text)


def _warn_if_text_differs(span_text: Any, text: str, start: int, end: int, task_id: Any) -> None:
    """Log a region whose own text is not text[start:end] (the offsets win)."""
    if isinstance(span_text, str) and span_text != text[start:end]:
        logger.warning("Task %s: region text %r differs from text[%d:%d]=%r; using the offsets",
                       task_id, span_text, start, end, text[start:end])


def _entity_id(entities: list[dict], seen: dict[tuple, int], label: str, start: int, end: int) -> int:
    """The id of entity (label, start, end), appending it to entities the first time."""
    key = (label, start, end)
    if key not in seen:
        seen[key] = len(entities)
        entities.append({"id": seen[key], "label": label, "start_offset": start, "end_offset": end})
    return seen[key]


# ---- relations: the "relation" items between regions ---------------------
def _collect_relations(result: list, region_entities: dict[Any, list[int]], task_id: Any) -> list[dict]:
    """The relations between entities, each (from_id, to_id, type) once."""
    relations: list[dict] = []
    seen: set[tuple] = set()
    for item in result:
        if not isinstance(item, dict) or item.get("type") != "relation":
            continue
        usable = _usable_relation(item, region_entities, task_id)
        if usable is None:
            continue
        pairs, labels = usable
        for head, tail in _entity_pairs(pairs):
            for label in labels:
                if (head, tail, label) not in seen:
                    seen.add((head, tail, label))
                    relations.append({"id": len(relations), "from_id": head, "to_id": tail, "type": label})
    return relations


def _usable_relation(item: dict, region_entities: dict[Any, list[int]], task_id: Any) -> tuple | None:
    """(directed pairs of entity-id lists, labels) of a relation; None (logged) if unusable."""
    src = region_entities.get(item.get("from_id"))
    dst = region_entities.get(item.get("to_id"))
    if not src or not dst:
        _skip_relation(task_id, item, "refers to a region that is not an entity; skipped")
        return None
    labels = [str(label) for label in _label_list(item.get("labels")) if isinstance(label, str) and label]
    if not labels:
        _skip_relation(task_id, item, "has no label (a <Relations> without <Relation> "
                       "values?); skipped: UIE asks for a relation by its label")
        return None
    pairs = _directed_pairs(src, dst, item, task_id)
    return None if pairs is None else (pairs, labels)


def _directed_pairs(src: list[int], dst: list[int], item: dict, task_id: Any) -> list[tuple] | None:
    """(subjects, objects) of a relation by its direction; None (logged) for an unknown one."""
    # Label Studio's direction: "right" points from_id -> to_id, "left" the other
    # way, "bi" both; UIE's subject is where the arrow starts.
    direction = item.get("direction") or "right"
    if direction == "right":
        return [(src, dst)]
    if direction == "left":
        return [(dst, src)]
    if direction == "bi":
        return [(src, dst), (dst, src)]
    _skip_relation(task_id, item, "has direction %r (not right, left or bi); skipped", direction)
    return None


def _skip_relation(task_id: Any, item: dict, why: str, *args: Any) -> None:
    """Log why a relation item is skipped (``why`` continues 'Task <id>: relation <from> -> <to> ')."""
    logger.warning("Task %s: relation %s -> %s " + why, task_id, item.get("from_id"), item.get("to_id"), *args)


def _entity_pairs(pairs: list[tuple]) -> Iterator[tuple[int, int]]:
    """Every (head, tail) entity id of the (subjects, objects) pairs, but an entity with itself."""
    for heads, tails in pairs:
        for head in heads:
            for tail in tails:
                if head != tail:
                    yield head, tail


def label_studio_to_doccano(
    tasks: Iterable[dict],
    text_key: str | None = None,
    from_names: set[str] | None = None,
    choice_names: set[str] | None = None,
) -> list[dict]:
    """Convert many tasks, dropping those without a usable annotation."""
    records = []
    for task in tasks:
        record = task_to_doccano(task, text_key=text_key, from_names=from_names,
                                 choice_names=choice_names)
        if record is not None:
            records.append(record)
    return records


# --------------------------------------------------------------------------
# file helpers
# --------------------------------------------------------------------------
def _normalize_tasks(obj: Any, source: str) -> list[dict]:
    """Turn any accepted top-level JSON shape into a list of task dicts."""
    # A recorded HTTP request ({"method", "path", "body"}): use its body.
    if isinstance(obj, dict) and isinstance(obj.get("body"), dict) and "method" in obj:
        obj = obj["body"]
    if isinstance(obj, dict):
        if "data" in obj:  # a single task
            tasks = [obj]
        elif isinstance(obj.get("task"), dict) and isinstance(obj.get("annotation"), dict):
            # ANNOTATION_CREATED / ANNOTATION_UPDATED webhook body
            task = dict(obj["task"])
            task["annotations"] = [obj["annotation"]]
            tasks = [task]
        elif isinstance(obj.get("annotations"), list):  # legacy /train body
            tasks = obj["annotations"]
        elif isinstance(obj.get("tasks"), list):
            tasks = obj["tasks"]
        else:
            raise ValueError(
                f"{source}: a JSON object must be a task (with 'data') or a /train body "
                f"(with an 'annotations' list of tasks); found keys {sorted(obj)[:10]}"
            )
    elif isinstance(obj, list):
        tasks = obj
    else:
        raise ValueError(f"{source}: expected a list of Label Studio tasks, got {type(obj).__name__}")
    for index, task in enumerate(tasks):
        if not isinstance(task, dict) or "data" not in task:
            raise ValueError(
                f"{source}: item {index} is not a Label Studio task (a JSON object with 'data')"
            )
    return list(tasks)


def expand_prompts(examples: list[dict], prompts_by_label: dict[str, Sequence[str]]) -> list[dict]:
    """UIE examples whose prompt is a label, repeated once per prompt of that label.

    A Label Studio label may be predicted through other words
    (``predicted_values``); training on those words teaches the model what
    the server will ask. Other examples (relation prompts) pass unchanged.
    """
    out = []
    for example in examples:
        for prompt in prompts_by_label.get(example["prompt"], (example["prompt"],)):
            out.append(dict(example, prompt=prompt))
    return out


def expand_relation_types(records: list[dict], words_by_type: dict[str, Sequence[str]]) -> list[dict]:
    """Doccano records whose relations of a type are repeated once per word of that type.

    A Label Studio relation may be predicted through other words
    (``predicted_values``): the server asks ``<subject>的<word>``, so training
    builds its relation prompts (and their negatives) from those words. Records
    are copied, not changed; other relations pass unchanged.
    """
    out = []
    for record in records:
        relations = []
        for relation in record.get("relations") or []:
            for word in words_by_type.get(relation.get("type"), (relation.get("type"),)):
                relations.append(dict(relation, id=len(relations), type=word))
        out.append(dict(record, relations=relations))
    return out


def load_tasks(path) -> list[dict]:
    """Load Label Studio tasks from a JSON export, /train body, single task or JSONL file."""
    raw = _read_text(path)
    if not raw.strip():
        raise ValueError(f"{path}: file is empty")
    try:
        obj = json.loads(raw)
    except json.JSONDecodeError as whole_error:
        if "\n" not in raw.strip():    # one line that is not JSON: not JSON Lines either
            raise ValueError(f"{path}: not valid JSON (line {whole_error.lineno}, column "
                             f"{whole_error.colno}: {whole_error.msg})") from None
        return _normalize_tasks(_parse_lines(raw, path), str(path))
    return _normalize_tasks(obj, str(path))


def write_jsonl(records: Iterable[dict], path) -> int:
    """Write records as UTF-8 JSON Lines; return how many were written."""
    path = Path(path)
    if path.parent and not path.parent.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
    count = 0
    with path.open("w", encoding="utf-8", newline="\n") as handle:
        for record in records:
            handle.write(json.dumps(record, ensure_ascii=False) + "\n")
            count += 1
    return count


def _read_text(path) -> str:
    path = Path(path)
    try:
        return path.read_text(encoding="utf-8-sig")
    except FileNotFoundError:
        raise ValueError(f"{path}: file not found") from None
    except IsADirectoryError:
        raise ValueError(f"{path}: is a directory, not a file") from None
    except UnicodeDecodeError as exc:
        raise ValueError(f"{path}: not UTF-8 text ({exc})") from None


def _parse_lines(raw: str, path) -> list:
    records = []
    # Split on "\n" only: str.splitlines() would also split on \r, \x1c, \u2028 ...
    # that may legitimately sit inside a JSON string.
    for lineno, line in enumerate(raw.split("\n"), 1):
        if not line.strip():
            continue
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError as exc:
            raise ValueError(f"{path}: line {lineno} is not valid JSON ({exc.msg})") from None
    return records


def read_jsonl(path) -> list:
    """Read UTF-8 JSON Lines; blank lines are ignored. ValueError names a bad line."""
    return _parse_lines(_read_text(path), path)


# --------------------------------------------------------------------------
# CLI
# --------------------------------------------------------------------------
def main(argv: list[str] | None = None) -> int:
    """Command-line entry point; returns the process exit code."""
    parser = argparse.ArgumentParser(description="Convert a Label Studio export to doccano JSONL.")
    parser.add_argument("--label_studio_file", required=True, help="Label Studio JSON/JSONL export")
    parser.add_argument("--doccano_file", default="./data/doccano_ext.jsonl", help="output JSONL")
    parser.add_argument("--text_key", default=None, help="key of the text in task['data']")
    parser.add_argument(
        "--from_name",
        action="append",
        default=None,
        help="only use Labels control(s) with this name (repeatable)",
    )
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s: %(message)s")

    try:
        tasks = load_tasks(args.label_studio_file)
        records = label_studio_to_doccano(
            tasks,
            text_key=args.text_key,
            from_names=set(args.from_name) if args.from_name else None,
        )
        written = write_jsonl(records, args.doccano_file)
    except (ValueError, OSError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(
        f"Wrote {written} records to {args.doccano_file} "
        f"({len(tasks) - written} of {len(tasks)} tasks skipped)"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
