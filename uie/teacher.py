"""LAC as a teacher: its names on a project's unannotated texts, as partial training examples.

A scratch model's first tasks hold a dozen mentions per label; LAC (``uie.lac.Tagger``)
knows persons, places, organisations and titles in any text. ``mapping`` reads, on the
annotated texts, which LAC type matches which of the span tagger's prompts (at least
``MIN_MATCHES`` exact spans, at least ``MIN_PRECISION`` of the type's spans there); ``examples``
then turns LAC's spans of those types on unannotated texts into one example per text and
mapped prompt. Such an example asks only its prompt, and the tagger trains only the classes
an example asks about a text, so a text says nothing about the other labels.

Measured on CLUENER's selection split (bench/notes.md): +8 F1 points after 50 tasks (0.205 ->
0.283), +4.5 after 100, nothing after 200: the annotations then teach what LAC would, and LAC's errors
(CLUENER's names are LAC's persons at a precision of 0.45) cost as much as it adds.
"""

from __future__ import annotations

from collections import Counter

MIN_MATCHES = 3
MIN_PRECISION = 0.25


def gold_spans(examples, prompts) -> dict[str, set]:
    """``{content: {(prompt, start, end)}}`` of the examples asking one of ``prompts``."""
    out: dict[str, set] = {}
    for ex in examples:
        if ex["prompt"] in prompts:
            spans = out.setdefault(ex["content"], set())
            spans.update((ex["prompt"], r["start"], r["end"]) for r in ex["result_list"])
    return out


def mapping(gold: dict[str, set], lac_spans: dict[str, list]) -> dict[str, str]:
    """``{LAC type: prompt}``: for each type, the prompt its spans match exactly most often on
    the annotated texts (``gold``, ``gold_spans``; ``lac_spans``: ``{content: [(type, start,
    end)]}``), kept with ``MIN_MATCHES`` matches and ``MIN_PRECISION``."""
    seen, matched = Counter(), Counter()
    for content, spans in lac_spans.items():
        by_offsets = {(s, e): p for p, s, e in gold.get(content, ())}
        for kind, start, end in spans:
            seen[kind] += 1
            if (start, end) in by_offsets:
                matched[kind, by_offsets[start, end]] += 1
    out = {}
    for (kind, prompt), n in sorted(matched.items(), key=lambda x: -x[1]):
        if kind not in out and n >= MIN_MATCHES and n / seen[kind] >= MIN_PRECISION:
            out[kind] = prompt
    return out


def examples(texts: list[str], lac_spans: list[list], mapped: dict[str, str]) -> list[dict]:
    """One UIE example per text and mapped prompt with at least one of LAC's spans of a type
    mapped to it (``result_list``: those spans)."""
    out = []
    for text, spans in zip(texts, lac_spans):
        by_prompt: dict[str, set] = {}
        for kind, start, end in spans:
            if kind in mapped:
                by_prompt.setdefault(mapped[kind], set()).add((start, end))
        for prompt, found in by_prompt.items():
            out.append({"content": text, "prompt": prompt,
                        "result_list": [{"text": text[s:e], "start": s, "end": e} for s, e in sorted(found)]})
    return out
