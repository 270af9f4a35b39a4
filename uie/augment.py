"""More training texts for a small project: its annotated mentions swapped among themselves.

A scratch model's first few hundred annotated tasks hold a dozen mentions per label, and
the tagger learns those mentions more than what surrounds them. Mention replacement
(Dai and Adel, 2020) writes copies of an annotated text in which every annotated mention
is swapped for another mention of the same label from the project's training texts: new
(context, mention) pairs with exact spans. On CLUENER, three copies per text took the
server's scratch jobs from 0.107 to 0.128 selection F1 after 50 tasks and from 0.314 to
0.338 after 200, and one copy per text from 0.554 to 0.565 after 1,000 (``bench/notes.md``).
A job adds them for scratch models only, to the training split only (never to the texts it
holds out), and fewer as the project grows (``copies_for``): the copies bring the set up to
``AUGMENT_UP_TO`` texts, never past it. A scratch job trains about ``finetune.SCRATCH_STEPS``
steps, 20 epochs at least, so copies add steps only past 1,600 texts (batch 16), and at most a
quarter more (2,000 texts).

Records are doccano records (``convert.task_to_doccano``). A copy keeps its entities'
ids, so its relations still hold; records with overlapping entities or with choices
are not copied (a swap would change what the overlap or the choice was about).
"""

from __future__ import annotations

import math
import os
import random

MAX_COPIES = 3
# The training texts (originals and copies) a job's copies bring the set up to. Past the
# 1,600 texts of a scratch job's 20 epochs of 100 steps, each text lengthens training.
AUGMENT_UP_TO = int(os.environ.get("AUGMENT_UP_TO") or 2000)


def copies_for(n_records: int, up_to: int = AUGMENT_UP_TO) -> int:
    """Copies to write of each of ``n_records`` training texts: as many as keep the set
    within ``up_to`` texts, at most ``MAX_COPIES``; 0 from half of ``up_to`` on."""
    if n_records <= 0:
        return 0
    return max(0, min(MAX_COPIES, math.floor(up_to / n_records) - 1))


def swap_mentions(records: list[dict], copies: int, seed: int = 0) -> list[dict]:
    """``copies`` new records per record that has entities, each entity's text replaced
    by a mention of its label drawn from all of ``records`` (another one where it can)."""
    mentions = _mentions_by_label(records)
    rng = random.Random(seed)
    out = []
    for record in records:
        if _swappable(record):
            out.extend(_swapped(record, mentions, rng, k) for k in range(copies))
    return out


def _mentions_by_label(records) -> dict[str, list[str]]:
    found: dict[str, set] = {}
    for record in records:
        for e in record.get("entities") or ():
            found.setdefault(e["label"], set()).add(record["text"][e["start_offset"]:e["end_offset"]])
    return {label: sorted(words) for label, words in found.items()}


def _swappable(record: dict) -> bool:
    """Entities to swap, none overlapping another, and no choices."""
    entities = sorted(record.get("entities") or (), key=lambda e: e["start_offset"])
    if not entities or record.get("choices") or "label" in record:
        return False
    return all(a["end_offset"] <= b["start_offset"] for a, b in zip(entities, entities[1:]))


def _swapped(record: dict, mentions: dict, rng: random.Random, k: int) -> dict:
    """One copy of ``record``, every entity's text another mention of its label."""
    text, pieces, entities, last = record["text"], [], [], 0
    for e in sorted(record["entities"], key=lambda e: e["start_offset"]):
        own = text[e["start_offset"]:e["end_offset"]]
        others = [m for m in mentions[e["label"]] if m != own] or [own]
        word = rng.choice(others)
        pieces.append(text[last:e["start_offset"]])
        start = sum(len(p) for p in pieces)
        pieces.append(word)
        entities.append(dict(e, start_offset=start, end_offset=start + len(word)))
        last = e["end_offset"]
    pieces.append(text[last:])
    return {"id": f"{record.get('id')}~{k + 1}", "text": "".join(pieces), "entities": entities,
            "relations": [dict(r) for r in record.get("relations") or ()]}
