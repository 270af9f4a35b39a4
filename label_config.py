"""Read a Label Studio label config: which ``<Labels>`` tag UIE fills, on which text.

Only ``<Labels>`` controls bound (``toName``) to a ``<Text>`` object are
used; a config may hold several. A label's UIE prompts are its ``value``, or
the comma-separated words of its ``predicted_values`` attribute when present.

``<Relations><Relation value="..."/></Relations>`` (``parse_relations``) are
the relations UIE predicts between those regions. A relation's prompt words
are its ``value`` or its ``predicted_values``, as for labels; its
``subject_labels`` attribute (comma-separated entity labels) narrows which
regions it starts from (default: every entity label of the config). The tag
is read here from the XML: label-studio-sdk drops a ``<Relations>`` without
``name``/``toName``, and Label Studio's own relation template has none.
"""

from __future__ import annotations

import xml.etree.ElementTree as ET
from dataclasses import dataclass

from checks import require_unicode


class LabelConfigError(ValueError):
    """The label config is not XML or has nothing UIE can predict."""


@dataclass(frozen=True)
class Control:
    """One ``<Labels>`` control bound to one ``<Text>`` object."""

    from_name: str
    to_name: str
    data_key: str
    labels: tuple[tuple[str, tuple[str, ...]], ...]   # (label, prompts)

    @property
    def prompts(self) -> list[str]:
        return list(dict.fromkeys(p for _, prompts in self.labels for p in prompts))

    def labels_for(self, prompt: str) -> list[str]:
        return [label for label, prompts in self.labels if prompt in prompts]


@dataclass(frozen=True)
class RelationLabel:
    """One ``<Relation>`` of a ``<Relations>`` block."""

    value: str                          # the label Label Studio shows and stores
    prompts: tuple[str, ...]            # UIE's words for it (value or predicted_values)
    subject_labels: tuple[str, ...] = ()   # entity labels it starts from; () = every one

    def starts_from(self, label: str) -> bool:
        return not self.subject_labels or label in self.subject_labels


def _tag(element) -> str:
    return element.tag.rsplit("}", 1)[-1]


def _words(raw: str | None) -> tuple[str, ...]:
    """The distinct non-empty comma-separated words of an attribute."""
    return tuple(dict.fromkeys(w.strip() for w in (raw or "").split(",") if w.strip()))


def _parse_xml(xml: str):
    if not isinstance(xml, str) or not xml.strip():
        raise LabelConfigError("label config is missing or empty")
    require_unicode(xml, "label config", LabelConfigError)
    try:
        root = ET.fromstring(xml)
    except ET.ParseError as exc:
        raise LabelConfigError(f"label config is not valid XML: {exc}") from None
    return root


def parse_label_config(xml: str) -> list[Control]:
    """All Labels→Text controls of ``xml``; ``LabelConfigError`` if there are none."""
    root = _parse_xml(xml)
    texts = {}
    for element in root.iter():
        if _tag(element) == "Text" and element.get("name"):
            value = element.get("value", "")
            if value.startswith("$") and len(value) > 1:
                texts[element.get("name")] = value[1:]
    controls = []
    for element in root.iter():
        if _tag(element) != "Labels" or not element.get("name"):
            continue
        labels = []
        for child in element.iter():
            if _tag(child) != "Label":
                continue
            value = child.get("value") or child.get("alias")
            if not value:
                continue
            predicted = child.get("predicted_values")
            prompts = [p.strip() for p in predicted.split(",")] if predicted else [value]
            prompts = tuple(dict.fromkeys(p for p in prompts if p))
            if prompts:
                labels.append((value, prompts))
        for to_name in (element.get("toName") or "").split(","):
            to_name = to_name.strip()
            if to_name in texts and labels:
                controls.append(Control(element.get("name"), to_name, texts[to_name], tuple(labels)))
    if not controls:
        raise LabelConfigError(
            "label config has no <Labels> control with <Label> values bound (toName) to a "
            "<Text> object with value=\"$key\"; UIE can only pre-annotate text spans")
    return controls


def parse_relations(xml: str) -> tuple[RelationLabel, ...]:
    """The ``<Relation>`` values of every ``<Relations>`` block of ``xml`` (``()`` if none).

    ``LabelConfigError`` for XML that is no label config, and, when it has
    relations, for a config ``parse_label_config`` refuses and for a
    ``subject_labels`` word that is no label of a Labels→Text control (a typo
    would otherwise silently predict nothing). A ``<Relations>`` without
    ``<Relation>`` values has nothing UIE can ask: ``()``.
    """
    root = _parse_xml(xml)
    found = [child for block in root.iter() if _tag(block) == "Relations"
             for child in block.iter() if _tag(child) == "Relation"]
    if not found:
        return ()
    controls = parse_label_config(xml)
    entity_labels = {label for control in controls for label, _ in control.labels}
    out: dict[str, RelationLabel] = {}
    for child in found:
        value = child.get("value") or child.get("alias")
        if not value or value in out:
            continue
        prompts = _words(child.get("predicted_values")) or (value,)
        subjects = _words(child.get("subject_labels"))
        unknown = [label for label in subjects if label not in entity_labels]
        if unknown:
            raise LabelConfigError(
                f"<Relation value={value!r}> has subject_labels {', '.join(map(repr, unknown))}, "
                f"which no <Labels> on a <Text> has (labels: {', '.join(sorted(entity_labels))})")
        out[value] = RelationLabel(value, prompts, subjects)
    return tuple(out.values())
