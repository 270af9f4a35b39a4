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

``<Choices>`` bound to a ``<Text>`` (``parse_choices``) classify the whole
text with UIE's classification prompt ``prefix[option1,option2,...]``
(``choices.py``). The prefix is the Choices' ``predicted_values`` (its first
word) or else its ``name``; a ``<Choice>``'s option word is its
``predicted_values`` (first word) or else its ``value``, with ``,``, ``[`` and
``]`` (the prompt's own syntax) written ``，``, ``(`` and ``)``. A config with
only ``<Choices>`` is served and trained as well as one with ``<Labels>``:
``parse_label_config`` then answers ``[]``.
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


@dataclass(frozen=True)
class ChoiceControl:
    """One ``<Choices>`` control bound to one ``<Text>`` object."""

    from_name: str
    to_name: str
    data_key: str
    prefix: str                                  # the prompt's words before the options
    choices: tuple[tuple[str, str], ...]         # (value Label Studio stores, option word)
    multiple: bool = False                       # choice="multiple": several may be chosen

    @property
    def options(self) -> tuple[str, ...]:
        return tuple(word for _, word in self.choices)

    @property
    def prompt(self) -> str:
        """UIE's classification prompt, PaddleNLP's ``prefix[opt1,opt2,...]``."""
        return f"{self.prefix}[{','.join(self.options)}]"

    def value_of(self, word: str) -> str | None:
        return next((value for value, w in self.choices if w == word), None)

    def word_of(self, value: str) -> str | None:
        return next((w for v, w in self.choices if v == value), None)


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


def _texts(root) -> dict[str, str]:
    """``{name: data key}`` of the ``<Text>`` objects with ``value="$key"``."""
    texts = {}
    for element in root.iter():
        if _tag(element) == "Text" and element.get("name"):
            value = element.get("value", "")
            if value.startswith("$") and len(value) > 1:
                texts[element.get("name")] = value[1:]
    return texts


def parse_label_config(xml: str) -> list[Control]:
    """All Labels→Text controls of ``xml`` (``[]`` for a config with only Choices→Text
    ones); ``LabelConfigError`` if it has neither."""
    root = _parse_xml(xml)
    texts = _texts(root)
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
    if not controls and not _choice_controls(root, texts):
        raise LabelConfigError(
            "label config has no <Labels> control with <Label> values, nor a <Choices> control "
            "with <Choice> values, bound (toName) to a <Text> object with value=\"$key\"; UIE "
            "can only pre-annotate text spans and classify texts")
    return controls


def parse_choices(xml: str) -> tuple[ChoiceControl, ...]:
    """The Choices→Text controls of ``xml`` (``()`` if none); ``LabelConfigError`` for XML
    that is no label config. A ``perRegion`` Choices (it classifies regions) is not one."""
    root = _parse_xml(xml)
    return tuple(_choice_controls(root, _texts(root)))


def _option_word(raw: str) -> str:
    return raw.replace(",", "，").replace("[", "(").replace("]", ")").strip()


def _choice_controls(root, texts) -> list[ChoiceControl]:
    """The ChoiceControl of each (``<Choices>`` with values, ``<Text>`` it is bound to)."""
    out = []
    for element in root.iter():
        if _tag(element) != "Choices" or not element.get("name") \
                or (element.get("perRegion") or "").lower() == "true":
            continue
        choices = _choice_values(element)
        prefix = _option_word((_words(element.get("predicted_values")) or (element.get("name"),))[0])
        multiple = (element.get("choice") or "").lower() == "multiple"
        for to_name in (t.strip() for t in (element.get("toName") or "").split(",")):
            if to_name in texts and choices and prefix:
                out.append(ChoiceControl(element.get("name"), to_name, texts[to_name], prefix,
                                         choices, multiple))
    return out


def _choice_values(element) -> tuple[tuple[str, str], ...]:
    """``(value, option word)`` of each ``<Choice>`` of a ``<Choices>``, each word once."""
    choices = {}
    for child in element.iter():
        value = (child.get("value") or child.get("alias")) if _tag(child) == "Choice" else None
        word = _option_word((_words(child.get("predicted_values")) or (value or "",))[0])
        if value and word and word not in choices:
            choices[word] = value
    return tuple((value, word) for word, value in choices.items())


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
