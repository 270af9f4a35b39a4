"""Relations between predicted regions, with UIE's relation prompts.

UIE answers a relation the way PaddleNLP's Taskflow does: for each subject it
found, the prompt ``"<subject>的<relation>"`` (``SCHEMA_LANG=ch``) or
``"<relation> of <subject>"`` (``en``) extracts the relation's objects from
the text. ``relation_round`` does that for a whole ``/predict`` request in
one ``extract`` call, after the entity round, and turns the answers into
Label Studio relation items between the entity regions:

* subjects: the regions whose label the ``<Relation>`` starts from
  (``subject_labels``, default every label). The prompt holds only the
  subject's *text*, so a text is asked once per distinct subject text and
  word of the relation, however many regions hold that text;
* objects: an answer is linked to the entity region with exactly its offsets
  (the best-scored one when several labels share them). An answer that is no
  entity region is dropped: its label is unknown, the entity round did not
  find it, and a relation to a region that was never predicted is not one
  Label Studio can show as an arrow between two regions;
* the arrow starts at the subject region with that text nearest to the
  object (the first on a tie); an object with the subject's own text (the
  subject itself, or another mention of it) is no relation;
* each relation item carries the score of its object's span for the
  relation prompt (the best over the relation's words), as Taskflow reports
  it.

Pure standard library, like ``doccano.py``, which builds its training
prompts with ``relation_prompt`` too.
"""

from __future__ import annotations

from dataclasses import dataclass, field

SCHEMA_LANGS = ("ch", "en")


def relation_prompt(subject: str, predicate: str, schema_lang: str = "ch") -> str:
    """PaddleNLP's relation prompt: ``subject的predicate`` or ``predicate of subject``."""
    if schema_lang == "ch":
        return subject + "的" + predicate
    if schema_lang == "en":
        return predicate + " of " + subject
    raise ValueError(f"schema_lang must be one of {', '.join(SCHEMA_LANGS)}, got {schema_lang!r}")


@dataclass
class RelationQuery:
    """The relation prompts of one text and what each of them asks."""

    text: str
    regions: list[dict]                 # the entity regions of that text (Label Studio items)
    asks: dict[str, list[tuple]] = field(default_factory=dict)   # prompt -> [(relation, subject text)]

    @property
    def prompts(self) -> list[str]:
        return list(self.asks)


def build_query(text: str, regions: list[dict], relations, schema_lang: str) -> RelationQuery:
    """Which prompts ``text`` needs: every (subject text, word) of every relation.

    ``relations`` are ``label_config.RelationLabel``; ``regions`` the entity
    regions predicted on ``text``. A text costs, in prompts, the sum over
    relations of (distinct subject texts it starts from) x (its words).
    """
    query = RelationQuery(text, regions)
    for relation in relations:
        subjects = dict.fromkeys(r["value"]["text"] for r in regions
                                 if relation.starts_from(r["value"]["labels"][0]))
        for subject in subjects:
            for word in relation.prompts:
                query.asks.setdefault(relation_prompt(subject, word, schema_lang), []).append(
                    (relation, subject))
    return query


def _distance(a: dict, b: dict) -> int:
    """Characters between two regions (0 when they overlap)."""
    a, b = a["value"], b["value"]
    return max(0, b["start"] - a["end"], a["start"] - b["end"])


def link(query: RelationQuery, by_prompt) -> tuple[list[dict], int]:
    """The relation items ``by_prompt`` ({prompt: [Span]}) gives, and how many answers
    matched no entity region (dropped)."""
    by_offsets: dict[tuple[int, int], dict] = {}
    for region in query.regions:          # the best-scored region of each (start, end)
        key = (region["value"]["start"], region["value"]["end"])
        if key not in by_offsets or region["score"] > by_offsets[key]["score"]:
            by_offsets[key] = region
    best: dict[tuple, float] = {}         # (from_id, to_id, relation) -> score
    dropped = 0
    for prompt, asked in query.asks.items():
        for span in by_prompt.get(prompt, ()):
            obj = by_offsets.get((span.start, span.end))
            if obj is None:
                dropped += 1
                continue
            for relation, subject in asked:
                if obj["value"]["text"] == subject:     # the subject itself (or another mention)
                    continue
                candidates = [r for r in query.regions
                              if r["value"]["text"] == subject
                              and relation.starts_from(r["value"]["labels"][0])]
                head = min(candidates, key=lambda r: (_distance(r, obj), r["value"]["start"],
                                                      r["value"]["end"], r["id"]))
                key = (head["id"], obj["id"], relation.value)
                best[key] = max(best.get(key, 0.0), span.score)
    order = {region["id"]: k for k, region in enumerate(query.regions)}
    items = [{"from_id": from_id, "to_id": to_id, "type": "relation", "direction": "right",
              "labels": [label], "score": round(score, 6)}
             for (from_id, to_id, label), score in sorted(
                 best.items(), key=lambda kv: (order[kv[0][0]], order[kv[0][1]], kv[0][2]))]
    return items, dropped


def relation_round(extract, texts, relations, schema_lang: str = "ch") -> tuple[list[list[dict]], int]:
    """Relations for many texts with one call of ``extract`` (``UIEPredictor.extract``).

    ``texts`` is ``[(text, regions)]``: every text of a request with the entity
    regions predicted on it. Returns the relation items of each text, in order,
    and how many answers were dropped for matching no region. No call is made
    when no text has a subject. The same as ``build_queries``, ``extract`` on
    ``asked(queries)``, then ``link_all``: the steps a caller that counts or
    splits the round's work takes one by one.
    """
    queries = build_queries(texts, relations, schema_lang)
    prompts = asked(queries)
    return link_all(queries, extract(prompts) if prompts else [])


def build_queries(texts, relations, schema_lang: str = "ch") -> list[RelationQuery]:
    """The ``RelationQuery`` of each ``(text, regions)``, in order (``build_query``)."""
    return [build_query(text, regions, relations, schema_lang) for text, regions in texts]


def asked(queries: list[RelationQuery]) -> list[tuple[str, list[str]]]:
    """The ``(text, prompts)`` the relation round asks: one per query with a subject."""
    return [(q.text, q.prompts) for q in queries if q.asks]


def link_all(queries: list[RelationQuery], answers) -> tuple[list[list[dict]], int]:
    """The relation items of every query from ``answers`` (``extract``'s answers to
    ``asked(queries)``, in order), and how many answers matched no region."""
    answers = iter(answers)
    out, dropped = [], 0
    for q in queries:
        if not q.asks:
            out.append([])
            continue
        items, lost = link(q, next(answers))
        out.append(items)
        dropped += lost
    return out, dropped
