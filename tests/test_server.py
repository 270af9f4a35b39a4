"""The HTTP protocol Label Studio 1.23 speaks, through Flask's test client."""

from __future__ import annotations

import json

import pytest

from helpers import EDGE_CASES, LABEL_CONFIG, PERSON, PLACE, SEQ_LEN, load_request, spans_of, tasks_for


@pytest.fixture
def scratch_client(make_app, scratch_small):
    return make_app(uie_model=str(scratch_small)).test_client()


def check_prediction_shape(prediction, version):
    assert set(prediction) == {"result", "score", "model_version"}
    assert prediction["model_version"] == version
    assert isinstance(prediction["score"], float)
    for region in prediction["result"]:
        assert region["type"] == "labels"
        assert set(region["value"]) == {"start", "end", "text", "labels"}
        assert 0.0 < region["score"] <= 1.0


def test_real_label_studio_requests(scratch_client):
    health = scratch_client.get("/health")
    assert health.status_code == 200 and health.json["status"] == "UP"
    assert health.json["model_class"] == "UIEBackend" and health.json["device"] == "cpu"

    before = scratch_client.get("/metrics?format=json").json     # counted in this process
    setup = scratch_client.post("/setup", json=load_request("post_setup.json")["body"])
    assert setup.status_code == 200
    version = setup.json["model_version"]
    assert version and version == health.json["model_version"]

    batch = load_request("post_predict_batch.json")["body"]
    answer = scratch_client.post("/predict", json=batch)
    assert answer.status_code == 200
    results = answer.json["results"]
    assert len(results) == len(batch["tasks"]) == 5
    for prediction, task in zip(results, batch["tasks"]):
        check_prediction_shape(prediction, version)
        for region in prediction["result"]:
            assert (region["from_name"], region["to_name"]) == ("label", "text")
            assert region["value"]["labels"][0] in {"place name", "name", "organization", "time"}
            text = task["data"]["text"]
            assert text[region["value"]["start"]:region["value"]["end"]] == region["value"]["text"]

    interactive = scratch_client.post("/predict", json=load_request("post_predict_interactive.json")["body"])
    assert interactive.status_code == 200 and len(interactive.json["results"]) == 1
    check_prediction_shape(interactive.json["results"][0], version)

    versions = scratch_client.get("/versions")
    assert versions.status_code == 200 and version in versions.json["versions"]

    for name in ("post_webhook_annotation_created.json", "post_webhook_annotation_updated.json",
                 "post_webhook_annotations_deleted.json", "post_webhook_project_updated.json",
                 "post_webhook_tasks_created.json"):
        ack = scratch_client.post("/webhook", json=load_request(name)["body"])
        assert ack.status_code == 200, (name, ack.json)
        assert ack.json["action"] == load_request(name)["body"]["action"]

    metrics = scratch_client.get("/metrics?format=json").json
    assert metrics["predict_requests"] - before["predict_requests"] == 2
    assert metrics["predicted_tasks"] - before["predicted_tasks"] == 6


def test_trained_model_spans_come_back_with_exact_offsets(trained_client):
    tasks = tasks_for()
    answer = trained_client.post("/predict", json={"tasks": tasks, "label_config": LABEL_CONFIG,
                                                   "project": "7.123"})
    assert answer.status_code == 200
    results = answer.json["results"]
    assert len(results) == len(tasks)
    for (text, gold), prediction in zip(EDGE_CASES, results):
        for region in prediction["result"]:
            value = region["value"]
            assert text[value["start"]:value["end"]] == value["text"]
        assert spans_of(prediction) == sorted(gold), text
    # the long text was longer than MAX_SEQ_LEN: found in several windows, none twice
    long_text = EDGE_CASES[5][0]
    assert len(long_text) > 2 * SEQ_LEN
    assert len(results[5]["result"]) == 4
    assert results[6]["result"] == [] and 0 < results[6]["score"] <= 1    # TASK_SCORE=entropy


def test_task_score_min_and_mean(make_app, trained_model):
    body = {"tasks": tasks_for(EDGE_CASES[:2]), "label_config": LABEL_CONFIG}
    by_kind = {}
    for kind in ("min", "mean"):
        client = make_app(uie_model=str(trained_model), task_score=kind).test_client()
        by_kind[kind] = client.post("/predict", json=body).json["results"]
    for lo, avg in zip(by_kind["min"], by_kind["mean"]):
        scores = [r["score"] for r in lo["result"]]
        assert lo["score"] == pytest.approx(min(scores), abs=1e-6)
        assert avg["score"] == pytest.approx(sum(scores) / len(scores), abs=1e-6)


def test_task_score_margin_is_low_when_a_label_nearly_found_was_not_returned(make_app, trained_model):
    """``margin`` tells "sure there is nothing" from "almost found something", which the
    scores of returned regions cannot: both return nothing, ``min`` scores both 0."""
    body = {"tasks": tasks_for([EDGE_CASES[6], EDGE_CASES[0]]), "label_config": LABEL_CONFIG}
    sure = make_app(uie_model=str(trained_model), task_score="margin").test_client()
    nothing, found = sure.post("/predict", json=body).json["results"]
    assert nothing["result"] == [] and nothing["score"] > 0.5, nothing
    assert found["result"] and found["score"] > 0.3, found
    highest = 0.5 * (1 - nothing["score"])     # the most probable start or end of no span
    near = make_app(uie_model=str(trained_model), task_score="margin", score_threshold=highest * 1.05)
    nearly = near.test_client().post("/predict", json=body).json["results"][0]
    assert nearly["result"] == [] and nearly["score"] < 0.1, nearly
    by_min = make_app(uie_model=str(trained_model), task_score="min",
                      score_threshold=highest * 1.05).test_client()
    assert by_min.post("/predict", json=body).json["results"][0]["score"] == 0.0


def test_task_score_entropy_sums_the_doubt_of_every_decision(make_app, trained_model):
    """``entropy``: 1 / (1 + the summed binary entropy of every start and end probability
    the model produced on the task's text, for every label asked)."""
    import numpy as np

    text = EDGE_CASES[3][0]
    app = make_app(uie_model=str(trained_model), task_score="entropy")
    score = app.test_client().post("/predict", json={"tasks": tasks_for([EDGE_CASES[3]]),
                                                     "label_config": LABEL_CONFIG}).json["results"][0]["score"]
    predictor = app.extensions["uie"]["store"].live("default").predictor
    inputs, _ = predictor.build_inputs([(text, [PERSON, PLACE])])
    total = 0.0
    for (_, _, x), (start, end) in zip(inputs, predictor.rows([x for _, _, x in inputs])):
        for probs in (start, end):
            p = np.clip(probs[x.content_start: x.content_start + x.n_content], 1e-12, 1 - 1e-12)
            total += float(-(p * np.log(p) + (1 - p) * np.log(1 - p)).sum())
    assert len(inputs) == 2 and total > 0
    assert score == pytest.approx(1 / (1 + total), rel=1e-4)


def test_predicted_values_prompt_and_several_controls(trained_client):
    config = ('<View><Text name="a" value="$first"/><Text name="b" value="$second"/>'
              f'<Labels name="who" toName="a"><Label value="ANY" predicted_values="{PERSON}, {PLACE}"/>'
              '</Labels>'
              f'<Labels name="where" toName="b"><Label value="LOC" predicted_values="{PLACE}"/></Labels>'
              '</View>')
    task = {"id": 1, "data": {"first": EDGE_CASES[0][0], "second": EDGE_CASES[2][0]}}
    result = trained_client.post("/predict", json={"tasks": [task], "label_config": config}).json
    regions = result["results"][0]["result"]
    got = sorted((r["from_name"], r["to_name"], r["value"]["labels"][0], r["value"]["text"])
                 for r in regions)
    assert got == [("where", "b", "LOC", "广州"), ("who", "a", "ANY", "北京"), ("who", "a", "ANY", "张三")]


def test_bad_tasks_get_empty_predictions_and_the_rest_is_predicted(trained_client, caplog):
    good = EDGE_CASES[0][0]
    tasks = [{"id": 1, "data": {"text": good}}, {"id": 2, "data": {}}, {"id": 3, "data": {"text": 42}},
             {"id": 4, "data": {"text": ""}}, {"id": 5}, "not a task", {"id": 6, "data": {"text": good}}]
    answer = trained_client.post("/predict", json={"tasks": tasks, "label_config": LABEL_CONFIG})
    assert answer.status_code == 200
    results = answer.json["results"]
    assert len(results) == len(tasks)
    assert [len(r["result"]) for r in results] == [2, 0, 0, 0, 0, 0, 2]
    assert "empty prediction" in caplog.text


def test_prediction_and_training_read_the_same_text_of_a_task(trained_client):
    """Exactly the tasks convert.py trains on (``convert.task_text``) get a prediction."""
    import convert

    good = EDGE_CASES[0][0]
    tasks = [{"id": 1, "data": {"text": good, "title": "标题"}}, {"id": 2, "data": {"text": ""}},
             {"id": 3, "data": {"text": 42}}, {"id": 4, "data": {"content": good}},
             {"id": 5, "data": {"text": good + "\ud800"}}, {"id": 6, "data": "text"}]
    body = json.dumps({"tasks": tasks, "label_config": LABEL_CONFIG}, ensure_ascii=True)
    answer = trained_client.post("/predict", data=body, content_type="application/json")
    assert answer.status_code == 200
    predicted = [bool(r["result"]) for r in answer.json["results"]]
    annotated = [dict(t, annotations=[{"id": 1, "result": []}]) for t in tasks]
    trained = [convert.task_to_doccano(t, text_key="text") is not None for t in annotated]
    assert predicted == trained == [True, False, False, False, False, False]


def test_text_longer_than_max_text_chars_is_not_predicted(make_app, trained_model, caplog):
    client = make_app(uie_model=str(trained_model), max_text_chars=30).test_client()
    long_text = EDGE_CASES[5][0]
    tasks = [{"id": 1, "data": {"text": long_text}}, {"id": 2, "data": {"text": EDGE_CASES[0][0]}}]
    results = client.post("/predict", json={"tasks": tasks, "label_config": LABEL_CONFIG}).json["results"]
    assert results[0]["result"] == [] and len(results[1]["result"]) == 2
    assert "MAX_TEXT_CHARS" in caplog.text


@pytest.mark.parametrize("path, data, status, message", [
    ("/predict", b"{not json", 400, "not valid JSON"),
    ("/predict", b"[1, 2]", 400, "JSON object"),
    ("/predict", json.dumps({"label_config": LABEL_CONFIG}).encode(), 400, "'tasks' is missing"),
    ("/predict", json.dumps({"tasks": {"id": 1}, "label_config": LABEL_CONFIG}).encode(), 400,
     "must be a list"),
    ("/predict", json.dumps({"tasks": [{"data": {"text": "x"}}],
                             "label_config": "<View><Text name='t' value='$t'/></View>"}).encode(),
     422, "no <Labels>"),
    ("/predict", json.dumps({"tasks": [], "label_config": "<View"}).encode(), 422, "not valid XML"),
    ("/predict", json.dumps({"tasks": [], "project": "../../etc"}).encode(), 400, "project"),
    ("/predict", json.dumps({"tasks": []}).encode(), 400, "label_config"),
    ("/setup", json.dumps({"project": "1.2", "schema": "<View/>"}).encode(), 422, "no <Labels>"),
    ("/setup", b"", 400, "not valid JSON"),
    ("/webhook", json.dumps({"project": {"id": 1}}).encode(), 400, "'action' is missing"),
    ("/webhook", json.dumps({"action": "ANNOTATION_CREATED", "project": {"id": 1}}).encode(), 400,
     "needs 'annotation'"),
    ("/train", json.dumps({"annotations": "x"}).encode(), 400, "must be a list"),
])
def test_bad_input_is_a_4xx_with_a_json_message(scratch_client, path, data, status, message):
    answer = scratch_client.post(path, data=data, content_type="application/json")
    assert answer.status_code == status, answer.json
    assert message in answer.json["error"]
    # and the server goes on answering
    ok = scratch_client.post("/predict", json={"tasks": tasks_for(EDGE_CASES[:1]),
                                               "label_config": LABEL_CONFIG})
    assert ok.status_code == 200 and len(ok.json["results"]) == 1


def test_setup_and_predict_agree_on_a_stable_version(make_app, trained_model, tmp_path):
    body = {"project": "3.1700000000", "schema": LABEL_CONFIG}
    versions = []
    for _ in range(2):   # two processes' worth of apps over the same MODEL_DIR
        client = make_app(uie_model=str(trained_model), model_dir=str(tmp_path / "m")).test_client()
        setup = client.post("/setup", json=body).json["model_version"]
        predict = client.post("/predict", json={"tasks": tasks_for(EDGE_CASES[:2]),
                                                "project": body["project"]}).json
        assert {r["model_version"] for r in predict["results"]} == {setup}
        versions.append(setup)
    assert versions[0] == versions[1]


def test_basic_auth_guards_everything_but_health(make_app, scratch_small):
    client = make_app(uie_model=str(scratch_small), basic_auth_user="ls",
                      basic_auth_pass="s3cret").test_client()
    assert client.get("/health").status_code == 200
    body = {"tasks": tasks_for(EDGE_CASES[:1]), "label_config": LABEL_CONFIG}
    denied = client.post("/predict", json=body)
    assert denied.status_code == 401 and denied.json["error"] == "authentication required"
    wrong = client.post("/predict", json=body, auth=("ls", "nope"))
    assert wrong.status_code == 401
    for path in ("/versions", "/metrics", "/jobs"):
        assert client.get(path).status_code == 401
    assert client.post("/predict", json=body, auth=("ls", "s3cret")).status_code == 200


def test_a_name_that_cannot_be_downloaded_falls_back_to_scratch(make_app, monkeypatch, caplog):
    # Make every download fail fast, whatever network the machine has.
    for var in ("HTTP_PROXY", "HTTPS_PROXY", "http_proxy", "https_proxy"):
        monkeypatch.setenv(var, "http://127.0.0.1:9")
    monkeypatch.delenv("NO_PROXY", raising=False)
    monkeypatch.delenv("no_proxy", raising=False)
    client = make_app(uie_model="uie-nano").test_client()
    health = client.get("/health").json
    assert health["model"]["fallback"] is True and health["model"]["kind"] == "scratch"
    assert "uie-nano" in health["model"]["fallback_reason"]
    assert health["model_version"].startswith("scratch-")
    assert "SERVING AN UNTRAINED SCRATCH MODEL" in caplog.text
    answer = client.post("/predict", json={"tasks": tasks_for(EDGE_CASES[:2]), "label_config": LABEL_CONFIG})
    assert answer.status_code == 200 and len(answer.json["results"]) == 2


def test_a_checkpoint_path_that_does_not_exist_is_a_startup_error(make_app, tmp_path):
    import uie.checkpoint

    with pytest.raises(uie.checkpoint.ModelLoadError, match="no such checkpoint directory"):
        make_app(uie_model=str(tmp_path / "nowhere"))
    (tmp_path / "half").mkdir()
    (tmp_path / "half" / "config.json").write_text("{}")
    with pytest.raises(uie.checkpoint.ModelLoadError, match="missing model_state.pdparams"):
        make_app(uie_model=str(tmp_path / "half"))


def test_label_studios_tasks_deleted_webhook_forgets_the_tasks_annotations(make_app, scratch_small):
    """Deleting a task in Label Studio 1.23.2 posts TASKS_DELETED (a real request) and no
    ANNOTATIONS_DELETED: the backend drops the task's annotations, so no job trains on them."""
    app = make_app(uie_model=str(scratch_small))
    client = app.test_client()
    body = load_request("post_webhook_tasks_deleted.json")["body"]
    project, [deleted] = body["project"], body["tasks"]
    for task_id in (deleted["id"], deleted["id"] + 1):
        task = {"id": task_id, "data": {"text": "张三来了。"}}
        annotation = {"id": 100 + task_id, "task": task_id, "was_cancelled": False, "result": [
            {"from_name": "label", "to_name": "text", "type": "labels",
             "value": {"start": 0, "end": 2, "text": "张三", "labels": ["人名"]}}]}
        hook = {"action": "ANNOTATION_CREATED", "task": task, "annotation": annotation, "project": project}
        assert client.post("/webhook", json=hook).status_code == 200
    store = app.extensions["uie"]["annotations"]
    assert len(store.tasks(str(project["id"]))) == 2
    answer = client.post("/webhook", json=body)
    assert answer.status_code == 200 and answer.json["status"] == "ok", answer.json
    assert [t["id"] for t in store.tasks(str(project["id"]))] == [deleted["id"] + 1]
    assert client.post("/webhook", json=dict(body, tasks=None)).status_code == 400
