"""``labels_without_examples``: the labels, relations and Choices options of a project's label
config that its served version has no training example for (a scratch version never predicts
them), in ``/versions`` and ``/health``; the next job trains them."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from helpers import (EDGE_CASES, FOUNDER, ORG, PERSON, PLACE, RELATION_CASES, RELATION_CONFIG, TOPIC_CASES,
                     TOPICS, annotated_tasks, relation_tasks, wait_job)

AB = ('<View><Labels name="label" toName="text">'
      f'<Label value="{PERSON}"/><Label value="{PLACE}"/>'
      '</Labels><Text name="text" value="$text"/></View>')
ABC = AB.replace(f'<Label value="{PLACE}"/>', f'<Label value="{PLACE}"/><Label value="{ORG}"/>')
TOPIC_CONFIG = ('<View><Text name="text" value="$text"/>'
                '<Choices name="topic" toName="text" predicted_values="主题">'
                + "".join(f'<Choice value="{t}"/>' for t in TOPICS) + '</Choices></View>')
NOTHING = {"labels": [], "relations": [], "choices": {}}


def _topic_tasks(cases):
    return [{"id": 1 + i, "data": {"text": text}, "annotations": [{
        "id": 500 + i, "was_cancelled": False, "result": [{
            "id": f"c{i}", "from_name": "topic", "to_name": "text", "type": "choices",
            "value": {"choices": [topic]}}]}]} for i, (text, topic) in enumerate(cases)]


def test_a_job_records_the_labels_relations_and_options_it_has_examples_of():
    from training_examples import untrained_labels
    from training_examples import build_examples, trained_labels

    config = RELATION_CONFIG.replace("</Labels>", f'<Label value="{PLACE}"/></Labels>')   # nobody's
    train = build_examples(relation_tasks(RELATION_CASES), config, min_dev_tasks=50).train
    trained = trained_labels(train, config, "ch")
    assert trained == {"labels": sorted([PERSON, ORG]), "relations": [FOUNDER], "choices": {}}
    assert untrained_labels(config, trained) == {"labels": [PLACE], "relations": [], "choices": {}}
    assert untrained_labels(config, {}) == {"labels": [PERSON, ORG, PLACE], "relations": [FOUNDER],
                                                 "choices": {}}

    no_weather = [c for c in TOPIC_CASES if c[1] != "天气"]      # an option nobody chose
    train = build_examples(_topic_tasks(no_weather), TOPIC_CONFIG, min_dev_tasks=50).train
    trained = trained_labels(train, TOPIC_CONFIG, "ch")
    assert trained == {"labels": [], "relations": [], "choices": {"topic": sorted(["体育", "财经"])}}
    assert untrained_labels(TOPIC_CONFIG, trained) == {"labels": [], "relations": [],
                                                       "choices": {"topic": ["天气"]}}


def test_what_each_kind_of_served_model_lacks(store_for, scratch_small):
    """The untrained scratch base lacks everything; a version trained from a pretrained UIE
    answers any prompt; a scratch version lacks what it has no example of; a scratch version
    that does not record it: not known (None)."""
    store = store_for()
    assert store.labels_without_examples("1", ABC) == {"labels": [PERSON, PLACE, ORG], "relations": [],
                                                       "choices": {}}
    assert store.labels_without_examples("1", None) is None
    store.promote("2", scratch_small, {"kind": "pretrained"})
    assert store.labels_without_examples("2", ABC) == NOTHING
    store.promote("3", scratch_small, {"kind": "scratch", "trained_labels": {"labels": [PERSON, PLACE]}})
    assert store.labels_without_examples("3", ABC) == {"labels": [ORG], "relations": [], "choices": {}}
    store.promote("4", scratch_small, {"kind": "scratch"})
    assert store.labels_without_examples("4", ABC) is None


@pytest.fixture
def coverage_app(make_app, scratch_small):
    return make_app(uie_model=str(scratch_small), train_epochs=30, train_max_seq_len=64)


def _train(client, project, tasks, config) -> dict:
    job = client.post("/train", json={"annotations": tasks, "project": f"{project}.1",
                                      "label_config": config}).json["job"]
    done = wait_job(lambda p: client.get(p).json, project, job["id"])
    assert done["state"] == "done" and done["promoted"], done
    return done


def test_a_label_added_after_training_is_listed_until_a_job_trains_it(coverage_app):
    client = coverage_app.test_client()

    def lacking():
        versions = client.get("/versions?project=7").json["projects"]["7"]["labels_without_examples"]
        health = client.get("/health").json["labels_without_examples"]
        every = client.get("/versions").json["projects"]        # the projects on disk
        assert every["7"]["labels_without_examples"] == versions if "7" in every else "7" not in health
        return versions, health.get("7")

    client.post("/setup", json={"project": "7.1", "schema": AB})          # the scratch base knows none
    assert lacking()[0] == {"labels": [PERSON, PLACE], "relations": [], "choices": {}}

    _train(client, "7", annotated_tasks(EDGE_CASES), AB)
    assert lacking() == (NOTHING, None)

    client.post("/setup", json={"project": "7.1", "schema": ABC})          # the config gains ORG
    assert lacking() == ({"labels": [ORG], "relations": [], "choices": {}},) * 2

    with_org = EDGE_CASES + [(text, spans) for text, spans, _ in RELATION_CASES[:6]]
    done = _train(client, "7", annotated_tasks(with_org), ABC)
    assert lacking() == (NOTHING, None)
    # the job trained ORG: positive examples, and a class of the version's span tagger
    train = Path(done["log"]).parent / "work" / "data" / "train.txt"
    examples = [json.loads(line) for line in train.read_text(encoding="utf-8").splitlines()]
    assert any(ex["prompt"] == ORG and ex["result_list"] for ex in examples)
    meta = next(v for v in client.get("/versions?project=7").json["projects"]["7"]["versions"]
                if v["model_version"] == done["model_version"])
    assert meta["trained_labels"]["labels"] == sorted([PERSON, PLACE, ORG])
    assert ORG in meta["tagger"]["classes"]


def test_health_names_only_the_projects_without_basic_auth(make_app, scratch_small, tmp_path):
    import base64

    client = make_app(uie_model=str(scratch_small), basic_auth_user="u", basic_auth_pass="p").test_client()
    auth = {"Authorization": "Basic " + base64.b64encode(b"u:p").decode()}
    client.post("/setup", json={"project": "5.1", "schema": AB}, headers=auth)
    (tmp_path / "models" / "5").mkdir()         # /health looks at the projects on disk
    assert client.get("/health").json["labels_without_examples"] == ["5"]
    assert client.get("/health", headers=auth).json["labels_without_examples"] == {
        "5": {"labels": [PERSON, PLACE], "relations": [], "choices": {}}}
