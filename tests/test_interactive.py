"""Interactive pre-annotation: the annotator's regions in ``params.context`` shape the answer.

Through the real Flask app and small models trained for real (``trained_model``
knows EDGE_CASES' persons and places; ``relation_model`` RELATION_CASES' founders).
"""

from __future__ import annotations

import pytest

import interactive
from helpers import (EDGE_CASES, FOUNDER, LABEL_CONFIG, ORG, PERSON, PLACE, RELATION_CASES,
                     RELATION_CONFIG, load_request, spans_of)


def mark(text, word, label, region_id="m1", nth=0):
    """The annotator's region on the ``nth`` occurrence of ``word``, as Label Studio sends it."""
    start = -1
    for _ in range(nth + 1):
        start = text.index(word, start + 1)
    return {"id": region_id, "from_name": "label", "to_name": "text", "type": "labels",
            "origin": "manual",
            "value": {"start": start, "end": start + len(word), "text": word, "labels": [label]}}


def ask(client, text, context, config=LABEL_CONFIG, tasks=None):
    body = {"tasks": tasks or [{"id": 7, "data": {"text": text}}], "label_config": config,
            "project": "3", "params": {"login": None, "password": None, "context": context}}
    return client.post("/predict", json=body)


def overlapping(a, b):
    return a["start"] < b["end"] and b["start"] < a["end"]


def test_occurrences_respect_latin_word_boundaries_only():
    text = "Bob met Bobby and bob, then Bob left; 北京市和北京"
    assert list(interactive.occurrences(text, "Bob")) == [(0, 3), (28, 31)]
    assert list(interactive.occurrences(text, "北京")) == [(38, 40), (42, 44)]
    assert list(interactive.occurrences("aaa", "aa")) == [] and list(interactive.occurrences("x aa", "")) == []
    assert list(interactive.occurrences("2月8日和188", "8")) == [(2, 3)]


def test_the_answer_without_context_is_the_model_s(trained_client):
    text = EDGE_CASES[0][0]
    plain = ask(trained_client, text, None).json["results"][0]
    empty = ask(trained_client, text, {"result": []}).json["results"][0]
    assert spans_of(plain) == spans_of(empty) == sorted(EDGE_CASES[0][1])


def test_a_marked_span_is_copied_to_its_other_occurrences_and_never_returned(trained_client):
    text = "😀张三在北京工作。北京很大，张三很忙。"
    context = {"result": [mark(text, "北京", PERSON)]}     # a relabel: the model says place
    reply = ask(trained_client, text, context)
    assert reply.status_code == 200, reply.json
    result = reply.json["results"][0]["result"]
    marked = context["result"][0]["value"]
    assert not any(overlapping(r["value"], marked) for r in result), result
    second = text.index("北京", marked["end"])
    copies = [r for r in result if r["value"]["start"] == second]
    assert [(c["value"]["labels"], c["value"]["text"], c["score"]) for c in copies] == [([PERSON], "北京", 1.0)]
    # the model's own regions elsewhere are still there (the persons it knows)
    assert any(r["value"]["text"] == "张三" and r["value"]["labels"] == [PERSON] for r in result), result


def test_regions_the_annotator_has_are_never_returned_and_the_answer_is_repeatable(trained_client):
    text, spans = EDGE_CASES[1]
    context = {"result": [mark(text, "李四", PERSON, "a"), mark(text, "上海", PLACE, "b"),
                          {"type": "keypointlabels"}, {"id": "z", "type": "labels", "value": {"start": 99}}]}
    first = ask(trained_client, text, context).json["results"][0]
    again = ask(trained_client, text, context).json["results"][0]
    assert first == again
    assert spans_of(first) == sorted(s for s in spans if text[s[1]:s[2]] not in ("李四", "上海"))
    assert len({r["id"] for r in first["result"]}) == len(first["result"])


def test_label_studio_s_recorded_interactive_request_is_answered(trained_client):
    body = load_request("post_predict_interactive.json")["body"]
    reply = trained_client.post("/predict", json=body)
    assert reply.status_code == 200, reply.json
    assert len(reply.json["results"]) == 1


@pytest.mark.parametrize("context, message", [
    ("regions", "'params.context' must be an object"),
    ({"result": {"id": 1}}, "'params.context' must be an object"),
])
def test_a_malformed_context_is_a_400(trained_client, context, message):
    reply = ask(trained_client, EDGE_CASES[0][0], context)
    assert reply.status_code == 400 and message in reply.json["error"], reply.json


def test_a_context_for_several_tasks_is_a_400(trained_client):
    text = EDGE_CASES[0][0]
    tasks = [{"id": 1, "data": {"text": text}}, {"id": 2, "data": {"text": text}}]
    reply = ask(trained_client, text, {"result": [mark(text, "北京", PLACE)]}, tasks=tasks)
    assert reply.status_code == 400 and "one task" in reply.json["error"], reply.json


def test_relations_start_from_the_marked_span(make_app, relation_model):
    client = make_app(uie_model=str(relation_model)).test_client()
    text = RELATION_CASES[0][0]                  # 😀马云在杭州创办了阿里巴巴。 (阿里巴巴 的创始人 马云)
    company = mark(text, "阿里巴巴", ORG, "ann-1")
    answer = ask(client, text, {"result": [company]}, config=RELATION_CONFIG).json["results"][0]
    regions = {r["id"]: r for r in answer["result"] if r["type"] == "labels"}
    relations = [r for r in answer["result"] if r["type"] == "relation"]
    assert "ann-1" not in regions and not any(r["value"]["text"] == "阿里巴巴" for r in regions.values())
    assert [(r["from_id"], regions[r["to_id"]]["value"]["text"], r["labels"]) for r in relations] == \
        [("ann-1", "马云", [FOUNDER])], answer
    # a relation the annotator has drawn already is not suggested again
    person = mark(text, "马云", PERSON, "ann-2")
    drawn = {"from_id": "ann-1", "to_id": "ann-2", "type": "relation", "direction": "right",
             "labels": [FOUNDER]}
    answer = ask(client, text, {"result": [company, person, drawn]}, config=RELATION_CONFIG).json["results"][0]
    assert [r for r in answer["result"] if r["type"] == "relation"] == []
    assert not any(r["value"]["text"] in ("马云", "阿里巴巴") for r in answer["result"] if r["type"] == "labels")


class Spy:
    """Records the queries of every ``extract`` call of a served predictor, and runs them."""

    def __init__(self, predictor):
        self.calls, self._extract = [], predictor.extract
        predictor.extract = self

    def __call__(self, queries):
        self.calls.append([(text, list(prompts)) for text, prompts in queries])
        return self._extract(queries)


def test_what_the_model_answered_lately_is_not_run_again(make_app, relation_model):
    app = make_app(uie_model=str(relation_model))
    client = app.test_client()
    spy = Spy(app.extensions["uie"]["store"].live("3").predictor)
    text = RELATION_CASES[0][0]
    opened = ask(client, text, None, config=RELATION_CONFIG).json["results"][0]
    assert len(spy.calls) == 2            # the entity round, then the relation round
    spy.calls.clear()
    assert ask(client, text, None, config=RELATION_CONFIG).json["results"][0] == opened
    assert spy.calls == []
    # the annotator marks a span the model did not find: only its relation prompts run
    context = {"result": [mark(text, "杭州", ORG, "ann-9")]}
    ask(client, text, context, config=RELATION_CONFIG)
    assert spy.calls == [[(text, ["杭州的" + FOUNDER])]], spy.calls
    # another text is asked in full, and a known text among new ones is not asked again
    other = RELATION_CASES[2][0]
    spy.calls.clear()
    both = client.post("/predict", json={"tasks": [{"id": 1, "data": {"text": text}},
                                                   {"id": 2, "data": {"text": other}}],
                                         "label_config": RELATION_CONFIG, "project": "3"}).json["results"]
    assert both[0] == opened
    assert [t for t, _ in spy.calls[0]] == [other]
