"""Relations: UIE's relation prompts pre-annotate Label Studio relations, and training learns them."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

from helpers import (EDGE_RELATION_CASES, FILLER, FOUNDER, LONG_TEXT, ORG, PERSON, PLAIN_CONFIG, RELATION_CASES,
                     RELATION_CONFIG, SEQ_LEN, annotation_result, case, relation_tasks, start_training_body, wait_job, webhook_body)

def gold_relations(cases, start_id=1):
    """{(task, (subject start, end), (object start, end), label)}"""
    return {(start_id + i, subj, obj, label)
            for i, (_, _, rels) in enumerate(cases) for subj, obj, label, _ in rels}


def predicted_relations(predictions, start_id=1):
    """The relations of Label Studio predictions, by their regions' offsets; checks the ids."""
    out = set()
    for i, prediction in enumerate(predictions):
        regions = {r["id"]: r for r in prediction["result"] if r["type"] == "labels"}
        assert len(regions) == len([r for r in prediction["result"] if r["type"] == "labels"])
        for item in prediction["result"]:
            if item["type"] != "relation":
                continue
            assert item["from_id"] in regions and item["to_id"] in regions, (item, prediction)
            assert item["direction"] == "right" and 0 < item["score"] <= 1
            subj, obj = regions[item["from_id"]]["value"], regions[item["to_id"]]["value"]
            out.add((start_id + i, (subj["start"], subj["end"]), (obj["start"], obj["end"]),
                     item["labels"][0]))
    return out


def test_the_cases_are_what_they_claim():
    texts = [text for text, _, _ in RELATION_CASES]
    assert len(RELATION_CASES) == 12
    assert any(ord(ch) > 0xFFFF for t in texts for ch in t) and any("\r\n" in t for t in texts)
    assert any(0xFF01 <= ord(ch) <= 0xFF5E for t in texts for ch in t)
    assert sum(len(rels) for _, _, rels in RELATION_CASES) == 12
    assert {d for _, _, rels in RELATION_CASES for *_, d in rels} == {"right", "left"}
    for text, spans, rels in RELATION_CASES + EDGE_RELATION_CASES:
        for subj, obj, _, _ in rels:
            assert text[slice(*subj)] and text[slice(*obj)]


# ---------------------------------------------------------------------------
# a model trained until it knows the edge cases
# ---------------------------------------------------------------------------
class ExtractCalls:
    """Records every ``extract`` call of the served predictor, and calls it."""

    def __init__(self, predictor):
        self.calls = []
        self._extract = predictor.extract
        predictor.extract = self

    def __call__(self, queries):
        queries = list(queries)
        self.calls.append(queries)
        return self._extract(queries)


@pytest.fixture
def relation_app(make_app, relation_model):
    return make_app(uie_model=str(relation_model), task_score="min")   # scores checked as min over items


def spy(app, project="1"):
    return ExtractCalls(app.extensions["uie"]["store"].live(project).predictor)


def predict(client, tasks, config=RELATION_CONFIG, project="1.1"):
    answer = client.post("/predict", json={"tasks": tasks, "label_config": config, "project": project})
    assert answer.status_code == 200, answer.json
    return answer.json["results"]


def tasks_of(cases, start_id=1):
    return [{"id": start_id + i, "data": {"text": text}} for i, (text, _, _) in enumerate(cases)]


def test_relations_link_regions_of_the_same_prediction_with_exact_offsets(relation_app):
    client = relation_app.test_client()
    calls = spy(relation_app)
    predictions = predict(client, tasks_of(EDGE_RELATION_CASES))
    assert len(calls.calls) == 2, "one entity round and one relation round for the whole request"
    for (text, spans, rels), prediction in zip(EDGE_RELATION_CASES, predictions):
        regions = [r for r in prediction["result"] if r["type"] == "labels"]
        assert sorted((r["value"]["labels"][0], r["value"]["start"], r["value"]["end"])
                      for r in regions) == sorted(spans), text
        for r in regions:
            assert text[r["value"]["start"]:r["value"]["end"]] == r["value"]["text"]
        items = [r for r in prediction["result"] if r["type"] == "relation"]
        assert len(items) == len(rels), (text, items)         # the model was trained on these
        for item in items:
            assert set(item) == {"from_id", "to_id", "type", "direction", "labels", "score"}, item
        # the task score takes the relations into account: the least sure item (0.0 for none)
        assert prediction["score"] == (min(r["score"] for r in prediction["result"])
                                       if prediction["result"] else 0.0), text
        assert all(prediction["score"] <= item["score"] for item in items)
    assert predicted_relations(predictions) == gold_relations(EDGE_RELATION_CASES)
    # what Label Studio checks when its prediction validation is on (label-studio-sdk 2.1.2)
    from label_studio_sdk.label_interface import LabelInterface

    interface = LabelInterface(RELATION_CONFIG)
    assert [interface.validate_prediction(p, return_errors=True) for p in predictions] == [[]] * len(predictions)
    # the long text: its subject and object lie in different windows of SEQ_LEN tokens
    long = next(p for (t, _, _), p in zip(EDGE_RELATION_CASES, predictions) if t == LONG_TEXT)
    [relation] = [r for r in long["result"] if r["type"] == "relation"]
    by_id = {r["id"]: r["value"]["text"] for r in long["result"] if r["type"] == "labels"}
    assert (by_id[relation["from_id"]], by_id[relation["to_id"]]) == ("华为公司", "任正非")
    predictor = relation_app.extensions["uie"]["store"].live("1").predictor
    _, starts, _ = predictor.tokenizer.tokenize(LONG_TEXT)
    prompt = len(predictor.tokenizer.encode("华为公司的创始人"))
    windows = [(lo, hi) for lo, hi, _, _ in __import__("uie.tokenizer", fromlist=["windows"]).windows(len(starts), SEQ_LEN - 3 - prompt)]
    subject_token = starts.index(LONG_TEXT.index("华为公司"))
    object_token = starts.index(LONG_TEXT.index("任正非"))
    assert not any(lo <= subject_token and object_token < hi for lo, hi in windows)


def test_the_relation_round_asks_every_subject_of_every_task_in_one_call(relation_app):
    client = relation_app.test_client()
    calls = spy(relation_app)
    tasks = tasks_of(EDGE_RELATION_CASES)
    predictions = predict(client, tasks)
    entity_round, relation_round = calls.calls
    assert entity_round == [(t["data"]["text"], [PERSON, ORG]) for t in tasks]
    # every text with a region is asked "<region text>的创始人" for each distinct region text
    expected = []
    for task, prediction in zip(tasks, predictions):
        names = list(dict.fromkeys(r["value"]["text"] for r in prediction["result"] if r["type"] == "labels"))
        if names:
            expected.append((task["data"]["text"], [name + "的" + FOUNDER for name in names]))
    assert relation_round == expected
    assert len(relation_round) == 5      # the filler text has no region, so no relation prompt


def test_a_config_without_relations_is_served_as_before(relation_app):
    """Same requests to the model, same answers: one call, the entity prompts, no relation item."""
    client = relation_app.test_client()
    calls = spy(relation_app)
    tasks = tasks_of(EDGE_RELATION_CASES)
    plain = predict(client, tasks, PLAIN_CONFIG)
    assert calls.calls == [[(t["data"]["text"], [PERSON, ORG]) for t in tasks]]
    with_relations = predict(client, tasks)
    assert len(calls.calls) == 2       # the entity round's answers are the same texts': from the cache
    for before, after in zip(plain, with_relations):
        assert all(r["type"] == "labels" for r in before["result"])
        assert before["result"] == [r for r in after["result"] if r["type"] == "labels"]
        assert before["score"] == (min(r["score"] for r in before["result"]) if before["result"] else 0.0)
    # a relation config whose tasks have no region asks nothing more
    predict(client, tasks_of([case(FILLER + "。", [])]))
    assert len(calls.calls) == 3


def test_subject_labels_narrow_the_prompts_and_predicted_values_replace_them(relation_app):
    client = relation_app.test_client()
    calls = spy(relation_app)
    config = RELATION_CONFIG.replace(
        f'<Relation value="{FOUNDER}"/>',
        f'<Relation value="org:founded_by" predicted_values="{FOUNDER},创办人" subject_labels="{ORG}"/>')
    text = RELATION_CASES[0][0]
    [prediction] = predict(client, [{"id": 1, "data": {"text": text}}], config)
    assert calls.calls[1] == [(text, ["阿里巴巴的创始人", "阿里巴巴的创办人"])]
    relation = [r for r in prediction["result"] if r["type"] == "relation"]
    assert [r["labels"] for r in relation] == [["org:founded_by"]]
    # the relation starts from persons only: the persons are asked, and nothing is found
    config = RELATION_CONFIG.replace(f'<Relation value="{FOUNDER}"/>',
                                     f'<Relation value="{FOUNDER}" subject_labels="{PERSON}"/>')
    [prediction] = predict(client, [{"id": 1, "data": {"text": text}}], config)
    assert calls.calls[2] == [(text, ["马云的创始人"])]     # the entity round: from the cache
    assert [r for r in prediction["result"] if r["type"] == "relation"] == []


def test_schema_lang_en_asks_relation_of_subject(make_app, relation_model):
    app = make_app(uie_model=str(relation_model), schema_lang="en")
    calls = spy(app)
    text = RELATION_CASES[0][0]
    predict(app.test_client(), [{"id": 1, "data": {"text": text}}])
    assert calls.calls[1] == [(text, [FOUNDER + " of 马云", FOUNDER + " of 阿里巴巴"])]


def test_a_relation_label_that_names_no_entity_label_is_a_422(relation_app):
    config = RELATION_CONFIG.replace(f'<Relation value="{FOUNDER}"/>',
                                     f'<Relation value="{FOUNDER}" subject_labels="公司"/>')
    answer = relation_app.test_client().post("/setup", json={"project": "1.1", "schema": config})
    assert answer.status_code == 422 and "subject_labels" in answer.json["error"]


# ---------------------------------------------------------------------------
# linking, on the predictor's own Span values
# ---------------------------------------------------------------------------
def region(rid, text, start, end, label, score=0.9):
    return {"id": rid, "from_name": "label", "to_name": "text", "type": "labels",
            "value": {"start": start, "end": end, "text": text[start:end], "labels": [label]},
            "score": score}


def test_linking_nearest_subject_best_object_and_dropped_answers():
    from label_config import RelationLabel
    from relations import build_query, link
    from uie.predictor import Span

    text = "小米的雷军说：小米很好，雷军很忙。"
    regions = [region("a", text, 0, 2, ORG), region("b", text, 3, 5, PERSON),
               region("c", text, 7, 9, ORG), region("d", text, 12, 14, PERSON, 0.6),
               region("e", text, 12, 14, ORG, 0.7)]
    founder = RelationLabel(FOUNDER, (FOUNDER,))
    query = build_query(text, regions, [founder], "ch")
    assert query.prompts == ["小米的创始人", "雷军的创始人"]      # one prompt per distinct subject text
    items, dropped = link(query, {"小米的创始人": [Span(3, 5, 0.8), Span(12, 14, 0.5), Span(15, 16, 0.9)],
                                  "雷军的创始人": [Span(3, 5, 0.99)]})
    assert dropped == 1                            # 很 (15, 16) is no region: dropped
    assert items == [
        # 小米 -> 雷军 (3, 5): from the nearer 小米 (a)
        {"from_id": "a", "to_id": "b", "type": "relation", "direction": "right", "labels": [FOUNDER], "score": 0.8},
        # 小米 -> 雷军 (12, 14): from c, to the better-scored of the two regions there (e)
        {"from_id": "c", "to_id": "e", "type": "relation", "direction": "right", "labels": [FOUNDER], "score": 0.5},
    ]                                              # 雷军的创始人 -> 雷军 itself: no self-relation
    assert link(query, {})[0] == []


# ---------------------------------------------------------------------------
# training from Label Studio relations
# ---------------------------------------------------------------------------
def test_a_job_builds_paddlenlp_relation_examples_with_the_servers_words():
    from training_examples import build_examples

    tasks = relation_tasks(RELATION_CASES[:3])
    examples = build_examples(tasks, RELATION_CONFIG, min_dev_tasks=50)
    by = {(ex["content"], ex["prompt"]): ex["result_list"] for ex in examples.train}
    text = RELATION_CASES[1][0]           # drawn "left": from the person back to the organisation
    founder = [{"text": "马化腾", "start": text.index("马化腾"), "end": text.index("马化腾") + 3}]
    assert by[(text, "腾讯公司的创始人")] == founder
    assert by[(text, "马化腾的创始人")] == []          # PaddleNLP's inverse negative
    assert by[(text, "阿里巴巴的创始人")] == []        # another record's subject (PaddleNLP's second pool)
    words = RELATION_CONFIG.replace(f'<Relation value="{FOUNDER}"/>',
                                    '<Relation value="org:founded_by" predicted_values="创始人,founder"/>')
    for task in tasks:
        for item in task["annotations"][0]["result"]:
            if item["type"] == "relation":
                item["labels"] = ["org:founded_by"]
    examples = build_examples(tasks, words, min_dev_tasks=50)
    by = {(ex["content"], ex["prompt"]): ex["result_list"] for ex in examples.train}
    assert by[(text, "腾讯公司的创始人")] == by[(text, "腾讯公司的founder")] == founder
    assert not any("org:founded_by" in prompt for _, prompt in by)
    examples = build_examples(tasks, words, min_dev_tasks=50, schema_lang="en")
    prompts = {ex["prompt"] for ex in examples.train}
    assert {"创始人 of 腾讯公司", "founder of 腾讯公司", "founder of 马化腾"} <= prompts


def test_a_job_takes_schema_lang_from_its_spec_or_the_servers_environment(monkeypatch):
    from train_job import JobSpec, schema_lang_of

    spec = JobSpec(project="1", label_config=RELATION_CONFIG, tasks=[], source="test", model_path="m",
                   model_version="v")
    monkeypatch.delenv("SCHEMA_LANG", raising=False)
    assert schema_lang_of(spec) == "ch"
    monkeypatch.setenv("SCHEMA_LANG", "en")        # the job process inherits the server's environment
    assert schema_lang_of(spec) == "en"
    spec.schema_lang = "ch"
    assert schema_lang_of(spec) == "ch"


def test_webhooks_start_training_new_version_predicts_the_relations(make_app):
    """Default settings, UIE_MODEL=scratch: a dozen tasks with relations, START_TRAINING, predictions."""
    app = make_app(uie_model="scratch", max_seq_len=512)   # the README's defaults otherwise
    client = app.test_client()
    project, setup_body = 21, {"project": "21.1795892522", "schema": RELATION_CONFIG}
    base_version = client.post("/setup", json=setup_body).json["model_version"]
    tasks = relation_tasks(RELATION_CASES)
    for task in tasks:
        ack = client.post("/webhook", json=webhook_body("ANNOTATION_CREATED", task, task["annotations"][0],
                                                        project, RELATION_CONFIG))
        assert ack.status_code == 200
    started = time.perf_counter()
    ack = client.post("/webhook", json=start_training_body(project, RELATION_CONFIG))
    job = wait_job(lambda p: client.get(p).json, project, ack.json["job"]["id"])
    elapsed = time.perf_counter() - started
    assert job["state"] == "done" and job["promoted"], job
    assert job["model_version"] != base_version

    train = Path(job["log"]).parent / "work" / "data" / "train.txt"
    prompts = {json.loads(line)["prompt"] for line in train.read_text(encoding="utf-8").splitlines()}
    assert {"阿里巴巴的创始人", "马云的创始人"} <= prompts

    predictions = predict(client, [{"id": t["id"], "data": t["data"]} for t in tasks],
                          project=setup_body["project"])
    assert {p["model_version"] for p in predictions} == {job["model_version"]}
    gold, found = gold_relations(RELATION_CASES), predicted_relations(predictions)
    reproduced = len(gold & found) / len(gold)
    precision = len(gold & found) / max(1, len(found))
    print(f"\nscratch, defaults: {len(gold)} annotated relations, {reproduced:.0%} reproduced, "
          f"{precision:.0%} of predicted relations annotated, START_TRAINING -> new version in "
          f"{elapsed:.0f}s; missed {sorted(gold - found)}; extra {sorted(found - gold)}")
    assert reproduced >= 0.8
