"""Text classification for ``<Choices>`` on a ``<Text>``, with UIE's classification prompts.

UIE classifies a text the way PaddleNLP's Taskflow and ``doccano.py --task_type
cls`` ask it to: the prompt lists the options, ``prefix[option1,option2,...]``
(``label_config.ChoiceControl.prompt``, options always in the config's order),
and UIE answers with the span of the chosen option *in the prompt*
(``uie.predictor`` reports it with PaddleNLP's negative offsets). The choices
round of a ``/predict`` asks every (task, Choices control) its prompt in one
``extract`` call, and turns the answers into Label Studio ``choices`` items:

* single choice (Choices without ``choice="multiple"``): the best-scored option
  UIE found (start and end above the threshold), none when it found none;
* ``choice="multiple"``: every option it found, in the config's order; the
  item's score is the lowest of theirs (the least sure choice);
* an answer that is no option's exact span (a piece of the prefix, two options
  at once) is dropped.

A scratch model that learned a Choices control answers its prompt from its choice head
(``uie.choice_head``) instead of the UIE, in the same form: spans at the options'
offsets, a single-choice control's argmax option (its softmax probability), a multiple
one's options above the threshold (their sigmoids); so what is built here is the same.

Pure standard library, like ``relations.py``; ``doccano.py`` builds its
training prompts with ``cls_prompt`` too.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass


def cls_prompt(prefix: str, options) -> str:
    """PaddleNLP's classification prompt: ``prefix[option1,option2,...]``."""
    return f"{prefix}[{','.join(options)}]"


def option_offsets(prompt: str, options) -> dict[tuple[int, int], str]:
    """``{(start, end): option}``: where each option of ``cls_prompt(prefix, options)`` ==
    ``prompt`` lies, as PaddleNLP writes it (offsets into the prompt less ``len(prompt) + 1``)."""
    out, at = {}, prompt.rfind("[") + 1
    for option in options:
        out[(at - len(prompt) - 1, at + len(option) - len(prompt) - 1)] = option
        at += len(option) + 1
    return out


@dataclass(frozen=True)
class ChoiceQuery:
    """One (task, Choices control) to classify: its text and the control's prompt."""

    task: int                  # index of the task in the request
    control: object            # label_config.ChoiceControl
    text: str


def build_queries(texts) -> list[ChoiceQuery]:
    """``texts`` is ``[(task index, control, text)]``: every text a Choices control labels."""
    return [ChoiceQuery(t, control, text) for t, control, text in texts]


def asked(queries: list[ChoiceQuery]) -> list[tuple[str, list[str]]]:
    """The ``(text, [prompt])`` the choices round asks, one per query."""
    return [(q.text, [q.control.prompt]) for q in queries]


def choose(control, spans) -> list[tuple[str, float]]:
    """``[(value, score)]`` UIE chose among ``control``'s options from the ``spans`` (``Span``)
    of its prompt: the best one, or with ``multiple`` all of them in the config's order."""
    where = option_offsets(control.prompt, control.options)
    best: dict[str, float] = {}
    for span in spans:
        word = where.get((span.start, span.end))
        if word is not None:
            best[word] = max(best.get(word, 0.0), span.score)
    found = [(control.value_of(word), best[word]) for word in control.options if word in best]
    if control.multiple or not found:
        return found
    return [max(found, key=lambda vs: vs[1])]


def choice_item(control, chosen: list[tuple[str, float]]) -> dict:
    """A Label Studio ``choices`` result for ``chosen`` ``[(value, score)]`` (not empty)."""
    values = [value for value, _ in chosen]
    item_id = hashlib.sha1(f"{control.from_name}|{control.to_name}|choices".encode()).hexdigest()[:10]
    return {"id": item_id, "from_name": control.from_name, "to_name": control.to_name,
            "type": "choices", "value": {"choices": values},
            "score": round(min(score for _, score in chosen), 6)}


def items(queries: list[ChoiceQuery], answers) -> list[tuple[int, dict]]:
    """``[(task index, choices item)]`` from ``answers`` (``extract``'s answers to
    ``asked(queries)``, in order); a query whose answer chose nothing has no item."""
    out = []
    for q, by_prompt in zip(queries, answers):
        chosen = choose(q.control, by_prompt.get(q.control.prompt, ()))
        if chosen:
            out.append((q.task, choice_item(q.control, chosen)))
    return out
