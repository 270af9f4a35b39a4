"""The annotators' corrections of what ``/predict`` suggested: known false positives.

``/predict`` remembers, per project, task and model version, the regions it answered
(``suggested_items``; the annotation stores keep them: ``remember_suggestions``). An
annotation made from a suggestion (Label Studio's ``parent_prediction``) that deleted a
suggested region, or gave it another label, corrected it, and so did one that does not keep
a suggested relation between the regions at its subject's and object's offsets:
``find_corrections`` lists those regions and relations, and the next training job weighs
them as negatives of their label on their text, or of the relation's prompt for its subject
(``training_examples.add_corrections``, ``uie.train_inputs.CORRECTION_WEIGHT``).
"""

from __future__ import annotations

from typing import Iterable

from convert import select_annotation
from service.annotation_store import _key, annotation_time

# An annotation saved this long before a suggestion was remembered may still have been made
# from it (Label Studio's clock and this server's may differ a little).
CLOCK_SLACK = 60.0


def suggested_items(result: list) -> list[dict]:
    """What is remembered of a prediction's ``result``: its ``labels`` regions (id, control,
    offsets, text, labels) and its relations (ids, labels), nothing else (scores, choices)."""
    items = []
    for item in result or ():
        if not isinstance(item, dict):
            continue
        if item.get("type") == "labels":
            value = item.get("value") or {}
            items.append({"id": item.get("id"), "from_name": item.get("from_name"),
                          "to_name": item.get("to_name"), "type": "labels", "start": value.get("start"),
                          "end": value.get("end"), "text": value.get("text"),
                          "labels": list(value.get("labels") or ())})
        elif item.get("type") == "relation":
            items.append({"type": "relation", "from_id": item.get("from_id"), "to_id": item.get("to_id"),
                          "labels": list(item.get("labels") or ())})
    return items


def find_corrections(tasks: Iterable[dict], suggestions: dict) -> list[dict]:
    """The known false positives in ``tasks``: every region of a remembered suggestion
    (``suggestions``: ``{task key: [{"model_version", "at", "regions"}]}``) that the task's
    annotation (the one training reads, ``convert.select_annotation``) was made from but does
    not keep with that label at those offsets (deleted, or relabelled).

    One correction per (region, label): ``{"task", "from_name", "to_name", "label", "start",
    "end", "text", "model_version"}``, and per (relation, label) not kept: ``{"task",
    "from_name", "to_name", "relation", "subject", "object", "model_version"}``, subject and
    object as ``[start, end, text]`` (``corrected_relations``). An annotation not made from a
    suggestion (neither ``parent_prediction`` nor ``prediction`` set) corrects nothing."""
    out = []
    for task in tasks:
        if not isinstance(task, dict) or task.get("id") is None:
            continue
        remembered = suggestions.get(_key(task["id"]))
        annotation = select_annotation(task) if remembered else None
        if annotation is None or not made_from_suggestion(annotation):
            continue
        suggestion = suggestion_seen(remembered, annotation)
        if suggestion is not None:
            out += corrected_regions(task["id"], suggestion, annotation)
            out += corrected_relations(task["id"], suggestion, annotation)
    return out


def made_from_suggestion(annotation: dict) -> bool:
    """Whether Label Studio says the annotation started from a prediction."""
    return annotation.get("parent_prediction") not in (None, "", False) or bool(annotation.get("prediction"))


def suggestion_seen(remembered: list[dict], annotation: dict) -> dict | None:
    """The suggestion an annotation was made from: the one of the model version it names
    (``annotation.prediction.model_version``), else the newest remembered before it was last
    saved (``CLOCK_SLACK`` allowed), else, for an annotation without a time, the newest."""
    prediction = annotation.get("prediction")
    version = prediction.get("model_version") if isinstance(prediction, dict) else None
    named = [s for s in remembered if version is not None and s["model_version"] == version]
    if named:
        return max(named, key=lambda s: s["at"])
    saved = annotation_time(annotation)
    seen = [s for s in remembered if saved is None or s["at"] <= saved + CLOCK_SLACK]
    return max(seen, key=lambda s: s["at"]) if seen else None


def corrected_regions(task_id, suggestion: dict, annotation: dict) -> list[dict]:
    """The suggested regions (one per label) the annotation does not keep with that label."""
    kept: dict[tuple, set] = {}
    for item in annotation.get("result") or ():
        if isinstance(item, dict) and item.get("type") == "labels" and isinstance(item.get("value"), dict):
            value = item["value"]
            kept.setdefault((item.get("from_name"), value.get("start"), value.get("end")), set()).update(
                label for label in value.get("labels") or () if isinstance(label, str))
    out = []
    for region in suggestion["regions"]:
        if region.get("type") != "labels":
            continue
        where = (region["from_name"], region["start"], region["end"])
        for label in region["labels"]:
            if label not in kept.get(where, ()):
                out.append({"task": task_id, "from_name": region["from_name"], "to_name": region["to_name"],
                            "label": label, "start": region["start"], "end": region["end"],
                            "text": region["text"], "model_version": suggestion["model_version"]})
    return out


def corrected_relations(task_id, suggestion: dict, annotation: dict) -> list[dict]:
    """The suggested relations (one per label) the annotation does not keep: no relation of
    that label from a region at the subject's offsets to one at the object's (its arrow's
    ``direction`` read as Label Studio draws it), whether the relation or a region was deleted."""
    regions = {r.get("id"): r for r in suggestion["regions"] if r.get("type") == "labels"}
    kept = kept_relations(annotation)
    out = []
    for item in suggestion["regions"]:
        subject, obj = regions.get(item.get("from_id")), regions.get(item.get("to_id"))
        if item.get("type") != "relation" or subject is None or obj is None:
            continue
        for label in item["labels"]:
            if ((subject["start"], subject["end"]), (obj["start"], obj["end"]), label) not in kept:
                out.append({"task": task_id, "from_name": subject["from_name"], "to_name": subject["to_name"],
                            "relation": label, "subject": [subject["start"], subject["end"], subject["text"]],
                            "object": [obj["start"], obj["end"], obj["text"]],
                            "model_version": suggestion["model_version"]})
    return out


def kept_relations(annotation: dict) -> set[tuple]:
    """``{((subject start, end), (object start, end), label)}`` of an annotation's relations."""
    where = {}
    for item in annotation.get("result") or ():
        if isinstance(item, dict) and item.get("type") == "labels" and isinstance(item.get("value"), dict):
            where[item.get("id")] = (item["value"].get("start"), item["value"].get("end"))
    kept = set()
    for item in annotation.get("result") or ():
        if not (isinstance(item, dict) and item.get("type") == "relation"):
            continue
        a, b = where.get(item.get("from_id")), where.get(item.get("to_id"))
        if a is None or b is None:
            continue
        direction = item.get("direction") or "right"
        pairs = {"right": [(a, b)], "left": [(b, a)], "bi": [(a, b), (b, a)]}.get(direction, [])
        kept.update((s, o, label) for s, o in pairs for label in item.get("labels") or () if isinstance(label, str))
    return kept
