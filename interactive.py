"""Interactive pre-annotation: answer the regions an annotator has just marked.

With "Use for interactive preannotations" on, Label Studio sends one task and
the annotator's current regions in ``params.context.result``. The answer
(``my_ml_backend.UIEBackend.predict``) is built from three parts:

* copies: each marked span's label on every other occurrence of its text in
  the same ``<Text>``; an occurrence that overlaps a region the annotator has
  is skipped, and in Latin script (letters, digits) an occurrence must start
  and end on word boundaries ("Bob" is not copied into "Bobby");
* the relation round with the marked regions among the subjects and objects
  (``relations``), so each ``<Relation>`` is asked of the marked span;
* the model's own regions, less every one that overlaps a marked region or a
  copy.

It never returns a region the annotator has (a copy never overlaps one) nor a
relation the annotator has drawn, and region ids are derived from their
content, so the same context gives the same answer.
"""

from __future__ import annotations

import unicodedata
from dataclasses import dataclass

ANNOTATOR_SCORE = 1.0     # a copy of the annotator's own label: no model probability stands behind it


class ContextError(ValueError):
    """``params.context`` is not what Label Studio sends (400)."""


@dataclass(frozen=True)
class Marked:
    """The annotator's regions (as Label Studio items, score ``ANNOTATOR_SCORE``) and the
    relations they drew, ``{(from_id, to_id, label)}``."""

    regions: tuple
    relations: frozenset

    def on(self, to_name: str) -> list[dict]:
        return [r for r in self.regions if r["to_name"] == to_name]


def read_context(context, controls, n_tasks: int, text_of) -> Marked | None:
    """The marked regions of ``params.context`` that lie on a text of ``controls``, or
    None without any. ``text_of(control)`` is the task's text for that control (None
    when it has none). Items of other types or tags, or whose offsets do not fit the
    text, are skipped; ``ContextError`` for a context that is no object with a
    ``result`` list, or that comes with more than one task."""
    if context is None:
        return None
    if not isinstance(context, dict) or not isinstance(context.get("result", []), list):
        raise ContextError("'params.context' must be an object whose 'result' is a list of regions")
    items = [i for i in context.get("result", []) if isinstance(i, dict)]
    by_names = {(c.from_name, c.to_name): c for c in controls}
    regions = []
    for item in items:
        control = by_names.get((item.get("from_name"), item.get("to_name")))
        region = _region_of(item, control, text_of(control)) if control else None
        if region is not None:
            regions.append(region)
    if not regions:
        return None
    if n_tasks != 1:
        raise ContextError(f"'params.context' holds the regions of one task; the request has {n_tasks} tasks")
    return Marked(tuple(regions), frozenset(_relations_of(items)))


def _region_of(item: dict, control, text: str | None) -> dict | None:
    """The annotator's ``labels`` item as a region on ``text``, or None if it is none."""
    value = item.get("value")
    if item.get("type") != "labels" or not isinstance(value, dict) or text is None:
        return None
    start, end, labels = value.get("start"), value.get("end"), value.get("labels")
    if not (_offset(start) and _offset(end) and 0 <= start < end <= len(text)):
        return None
    known = dict(control.labels)
    if not isinstance(labels, list) or not labels or labels[0] not in known:
        return None
    return {"id": str(item.get("id") or f"marked-{start}-{end}"), "from_name": control.from_name,
            "to_name": control.to_name, "type": "labels",
            "value": {"start": start, "end": end, "text": text[start:end], "labels": [labels[0]]},
            "score": ANNOTATOR_SCORE}


def _offset(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _relations_of(items) -> set:
    return {(i.get("from_id"), i.get("to_id"), label) for i in items
            if i.get("type") == "relation" for label in (i.get("labels") or [None])}


def occurrences(text: str, needle: str):
    """Every ``(start, end)`` of ``needle`` in ``text`` (overlapping ones too) that
    respects word boundaries in Latin script."""
    start = text.find(needle)
    while start != -1 and needle:
        end = start + len(needle)
        if _on_boundary(text, start, end):
            yield start, end
        start = text.find(needle, start + 1)


def _word_char(ch: str) -> bool:
    """A letter or digit of a script that separates words with spaces (Latin, Greek,
    Cyrillic, digits), not a CJK character."""
    if not ch.isalnum():
        return False
    name = unicodedata.name(ch, "")
    return not name.startswith(("CJK", "HIRAGANA", "KATAKANA", "HANGUL", "HALFWIDTH KATAKANA"))


def _on_boundary(text: str, start: int, end: int) -> bool:
    before = start > 0 and _word_char(text[start - 1]) and _word_char(text[start])
    after = end < len(text) and _word_char(text[end]) and _word_char(text[end - 1])
    return not (before or after)


def overlaps(a: dict, b: dict) -> bool:
    """Whether two regions on the same ``<Text>`` share a character."""
    a, b = a["value"], b["value"]
    return a["start"] < b["end"] and b["start"] < a["end"]


def copies(marked: Marked, to_name: str, text: str, make_region) -> list[dict]:
    """The marked regions' labels on the other occurrences of their texts in ``text``,
    none overlapping a marked region or another copy (the first marked region wins).
    ``make_region(region, text, start, end)`` builds a copy of ``region`` at ``start:end``."""
    taken = list(marked.on(to_name))
    out = []
    for region in marked.on(to_name):
        for start, end in occurrences(text, region["value"]["text"]):
            copy = make_region(region, text, start, end)
            if not any(overlaps(copy, other) for other in taken):
                taken.append(copy)
                out.append(copy)
    return out


def answer(marked: Marked, to_name: str, text: str, predicted: list[dict], make_region):
    """``(regions, all_regions)`` for one ``<Text>``: the regions to return (copies, then
    the predicted ones that overlap neither a marked region nor a copy) and those plus the
    marked ones, which the relation round links (``relations.build_query``)."""
    added = copies(marked, to_name, text, make_region)
    blocked = marked.on(to_name) + added
    kept = [r for r in predicted if not any(overlaps(r, b) for b in blocked)]
    regions = added + kept
    return regions, marked.on(to_name) + regions


def new_relations(marked: Marked, items: list[dict]) -> list[dict]:
    """The relation items the annotator has not drawn already."""
    return [i for i in items if (i["from_id"], i["to_id"], i["labels"][0]) not in marked.relations]
