"""A hostile or careless client through Flask's test client: 4xx with a message, never a 500.

Content type, size limits, basic auth with non-ASCII credentials, 500s
without exception text, deeply nested JSON and lone surrogates
(issue 13, items 2-7).
"""

from __future__ import annotations

import base64
import json
import logging
import shutil

import pytest

from helpers import EDGE_CASES, LABEL_CONFIG, PERSON, load_request, spans_of, tasks_for, wait_until

SURROGATE = "\ud800"


@pytest.fixture
def scratch_app(make_app, scratch_small):
    return make_app(uie_model=str(scratch_small))


def raw_json(value) -> bytes:
    """``value`` as JSON bytes; a lone surrogate goes out as the escape ``"\\ud800"``."""
    return json.dumps(value, ensure_ascii=True).encode("ascii")


def post_raw(client, path, body: bytes, content_type="application/json", **kwargs):
    return client.post(path, data=body, content_type=content_type, **kwargs)


def predict_body(tasks=None, label_config=LABEL_CONFIG, **extra):
    return dict({"tasks": tasks if tasks is not None else tasks_for(EDGE_CASES[:1]),
                 "label_config": label_config}, **extra)


def assert_json_error(answer, status, message):
    assert answer.status_code == status, (answer.status_code, answer.get_data(as_text=True)[:500])
    assert answer.mimetype == "application/json"
    assert message in answer.json["error"], answer.json


# -- 2. JSON only, request size limits ---------------------------------------------------
@pytest.mark.parametrize("content_type", ["text/plain", "application/x-www-form-urlencoded",
                                          "multipart/form-data; boundary=x", None])
def test_a_body_not_declared_as_json_is_refused(scratch_app, content_type):
    client = scratch_app.test_client()
    body = raw_json(predict_body())
    headers = {} if content_type is None else {"Content-Type": content_type}
    answer = client.post("/predict", data=body, headers=headers)
    assert_json_error(answer, 415, "Content-Type: application/json")
    # a cross-site webhook post stores nothing
    created = raw_json(load_request("post_webhook_annotation_created.json")["body"])
    assert client.post("/webhook", data=created, headers=headers).status_code == 415
    assert scratch_app.extensions["uie"]["annotations"].tasks("1") == []


def test_json_with_a_charset_is_accepted(scratch_app):
    answer = post_raw(scratch_app.test_client(), "/predict", raw_json(predict_body()),
                      content_type="application/json; charset=utf-8")
    assert answer.status_code == 200 and len(answer.json["results"]) == 1


def test_a_body_larger_than_max_request_mb_is_413(make_app, scratch_small):
    client = make_app(uie_model=str(scratch_small), max_request_mb=1).test_client()
    text = "张三在北京。" * 100_000                    # 600,000 characters, 1.8 MB as UTF-8
    body = json.dumps(predict_body([{"id": 1, "data": {"text": text}}]), ensure_ascii=False)
    assert len(body.encode("utf-8")) > 1024 * 1024
    assert_json_error(post_raw(client, "/predict", body.encode("utf-8")), 413, "MAX_REQUEST_MB=1")
    assert client.post("/predict", json=predict_body()).status_code == 200


def test_more_tasks_than_max_tasks_per_request_is_413(make_app, scratch_small):
    client = make_app(uie_model=str(scratch_small), max_tasks_per_request=3).test_client()
    four = tasks_for(EDGE_CASES[:4])
    assert_json_error(client.post("/predict", json=predict_body(four)), 413,
                      "MAX_TASKS_PER_REQUEST=3")
    assert len(client.post("/predict", json=predict_body(four[:3])).json["results"]) == 3


def test_more_model_inputs_than_max_queries_per_request_is_413(make_app, scratch_small):
    client = make_app(uie_model=str(scratch_small), max_queries_per_request=5).test_client()
    three = tasks_for(EDGE_CASES[:3])          # 3 short texts x 2 labels = 6 model inputs
    answer = client.post("/predict", json=predict_body(three))
    assert_json_error(answer, 413, "MAX_QUERIES_PER_REQUEST=5")
    assert "3 tasks need more than 5 model inputs" in answer.json["error"]
    assert client.post("/predict", json=predict_body(three[:2])).status_code == 200


# -- 3. basic auth compares UTF-8 bytes --------------------------------------------------------
def basic(user: str, password: str, encoding="utf-8") -> dict:
    token = base64.b64encode(f"{user}:{password}".encode(encoding)).decode("ascii")
    return {"Authorization": f"Basic {token}"}


def test_non_ascii_basic_auth_credentials_work_and_wrong_ones_are_401(make_app, scratch_small):
    user, password = "标注员", "pässwörd-密码-🔑"
    client = make_app(uie_model=str(scratch_small), basic_auth_user=user,
                      basic_auth_pass=password).test_client()
    body = predict_body()
    assert client.post("/predict", json=body, headers=basic(user, password)).status_code == 200
    for wrong_user, wrong_password in ((user, "pässwörd-密码-🔒"), ("标注", password),
                                       ("ls", "s3cret"), (user, "")):
        answer = client.post("/predict", json=body, headers=basic(wrong_user, wrong_password))
        assert_json_error(answer, 401, "authentication required")


def requests_basic_auth(user: str, password: str) -> dict:
    """The ``Authorization`` header exactly as requests' ``HTTPBasicAuth`` (what Label Studio
    uses to reach an ML backend) sends it: Latin-1 bytes for non-ASCII credentials."""
    import requests

    prepared = requests.Request("POST", "http://backend/predict",
                                auth=requests.auth.HTTPBasicAuth(user, password)).prepare()
    return {"Authorization": prepared.headers["Authorization"]}


def test_latin1_basic_auth_as_label_studio_sends_it_is_accepted(make_app, scratch_small):
    """Hardening II, 7: Label Studio (requests' HTTPBasicAuth) encodes credentials as Latin-1."""
    client = make_app(uie_model=str(scratch_small), basic_auth_user="prüfer",
                      basic_auth_pass="pässwort").test_client()
    body = predict_body()
    header = requests_basic_auth("prüfer", "pässwort")
    assert header == basic("prüfer", "pässwort", encoding="latin-1")   # what went on the wire
    assert client.post("/predict", json=body, headers=header).status_code == 200
    assert client.post("/predict", json=body,
                       headers=basic("prüfer", "pässwort")).status_code == 200     # UTF-8 too
    assert client.get("/jobs", headers=header).status_code == 200
    for wrong in (requests_basic_auth("prüfer", "passwort"), requests_basic_auth("prufer", "pässwort"),
                  requests_basic_auth("prüfer", "pässwort!"), basic("prüfer", "pässwort", "utf-16"),
                  {"Authorization": "Basic !!!"}, {"Authorization": "Bearer pässwort"}):
        assert_json_error(client.post("/predict", json=body, headers=wrong), 401,
                          "authentication required")
    # /health shows its details to an authenticated Label Studio as well
    health = client.get("/health", headers=header).json
    assert "loaded_models" in health and "path" in health["model"]


# -- 4. 500s carry a request id, not the exception ----------------------------------------------
def test_an_unexpected_error_answers_a_request_id_and_logs_the_details(scratch_app, caplog):
    client = scratch_app.test_client()
    db = scratch_app.extensions["uie"]["annotations"].path
    db.unlink()
    db.mkdir()                    # the webhook store can no longer be opened: a real failure
    with caplog.at_level(logging.ERROR):
        answer = client.post("/predict", json={"tasks": tasks_for(EDGE_CASES[:1])})
    assert answer.status_code == 500
    request_id = answer.headers["X-Request-Id"]
    assert answer.json == {"error": "internal error; the server log has the details under "
                                    f"request id {request_id}", "request_id": request_id}
    assert "sqlite" not in answer.get_data(as_text=True).lower()
    assert f"request {request_id}: unexpected error on POST /predict" in caplog.text
    assert "OperationalError" in caplog.text
    shutil.rmtree(db)


def test_every_answer_has_a_request_id(scratch_app):
    client = scratch_app.test_client()
    ids = {client.get("/health").headers["X-Request-Id"],
           client.post("/predict", data=b"{", content_type="application/json").headers["X-Request-Id"],
           client.post("/predict", data=b"{}", content_type="text/plain").headers["X-Request-Id"]}
    assert len(ids) == 3 and all(len(i) == 16 for i in ids)


# -- 5. deeply nested JSON --------------------------------------------------------------
@pytest.mark.parametrize("body", [
    b"[" * 100_000,
    b'{"a":' * 50_000 + b"1" + b"}" * 50_000,
    b'{"tasks": ' + b"[" * 101 + b"]" * 101 + b"}",      # parses, but deeper than 100 levels
], ids=["lists-100000", "objects-50000", "lists-101"])
def test_deeply_nested_json_is_400(scratch_app, body):
    client = scratch_app.test_client()
    for path in ("/predict", "/webhook", "/setup", "/train"):
        assert_json_error(post_raw(client, path, body), 400, "nested more than 100 levels")
    assert client.post("/predict", json=predict_body()).status_code == 200


def test_nesting_up_to_the_limit_is_served(scratch_app):
    deep = {"x": 1}
    for _ in range(95):
        deep = {"x": deep}
    task = {"id": 1, "data": {"text": EDGE_CASES[0][0], "meta": deep}}
    answer = scratch_app.test_client().post("/predict", json=predict_body([task]))
    assert answer.status_code == 200 and len(answer.json["results"]) == 1


# -- 6. lone surrogates ------------------------------------------------------------------
def test_a_task_text_with_a_lone_surrogate_gets_an_empty_prediction(trained_client, caplog):
    good = tasks_for(EDGE_CASES[:2])
    bad = {"id": 99, "data": {"text": "张三" + SURROGATE + "在北京。"}}
    body = raw_json(predict_body([good[0], bad, good[1]]))
    assert b"\\ud800" in body
    answer = post_raw(trained_client, "/predict", body)
    assert answer.status_code == 200
    results = answer.json["results"]
    assert results[1]["result"] == [] and 0 < results[1]["score"] <= 1
    alone = trained_client.post("/predict", json=predict_body(good)).json["results"]
    assert [spans_of(r) for r in (results[0], results[2])] == [spans_of(r) for r in alone]
    assert len(alone[0]["result"]) == 2
    assert "task 99: data.text is not valid Unicode" in caplog.text


def test_a_label_with_a_lone_surrogate_is_422(scratch_app):
    client = scratch_app.test_client()
    config = LABEL_CONFIG.replace(PERSON, PERSON + SURROGATE)
    assert_json_error(post_raw(client, "/predict", raw_json(predict_body(label_config=config))),
                      422, "not valid Unicode")
    assert_json_error(post_raw(client, "/setup", raw_json({"project": "3.1", "schema": config})),
                      422, "not valid Unicode")
    assert_json_error(post_raw(client, "/train", raw_json({"project": "3", "label_config": config,
                                                           "annotations": []})),
                      422, "not valid Unicode")


def test_webhooks_with_lone_surrogates_are_acknowledged(scratch_app):
    client = scratch_app.test_client()
    created = load_request("post_webhook_annotation_created.json")["body"]
    created["task"]["data"]["text"] += SURROGATE
    created["annotation"]["result"][0]["value"]["text"] += SURROGATE
    answer = post_raw(client, "/webhook", raw_json(created))
    assert answer.status_code == 200, answer.get_data(as_text=True)
    project = str(created["project"]["id"])
    stored = scratch_app.extensions["uie"]["annotations"].tasks(project)
    assert stored[0]["data"]["text"].endswith(SURROGATE)

    # a field echoed in the answer: the answer is still valid JSON that gives it back
    odd = post_raw(client, "/webhook", raw_json({"action": "SOMETHING" + SURROGATE,
                                                 "project": {"id": 1}}))
    assert odd.status_code == 200 and odd.json["status"] == "ignored"
    assert odd.json["action"] == "SOMETHING" + SURROGATE
    assert json.loads(odd.get_data()) == odd.json
    odd_error = post_raw(client, "/webhook", raw_json({"action": "ANNOTATION_CREATED" + SURROGATE,
                                                       "project": {"id": 1}}))
    assert odd_error.status_code == 200

    # a label config that cannot be kept: the webhook is acknowledged with a warning
    updated = load_request("post_webhook_project_updated.json")["body"]
    updated["project"]["label_config"] = LABEL_CONFIG.replace(PERSON, SURROGATE)
    answer = post_raw(client, "/webhook", raw_json(updated))
    assert answer.status_code == 200 and "not valid Unicode" in answer.json["warning"]


# -- 7. wrong types in otherwise valid requests ------------------------------------------------
@pytest.mark.parametrize("params", ["x", ["context"], 3])
def test_params_that_are_not_an_object_are_400(scratch_app, params):
    answer = scratch_app.test_client().post("/predict", json=predict_body(params=params))
    assert_json_error(answer, 400, "'params' must be an object")


@pytest.mark.parametrize("annotation_id", ["missing", None, "", True, [1], {"id": 1}])
def test_an_annotation_webhook_without_an_annotation_id_is_400(scratch_app, annotation_id):
    for name in ("post_webhook_annotation_created.json", "post_webhook_annotation_updated.json"):
        body = load_request(name)["body"]
        if annotation_id == "missing":
            del body["annotation"]["id"]
        else:
            body["annotation"]["id"] = annotation_id
        answer = scratch_app.test_client().post("/webhook", json=body)
        assert_json_error(answer, 400, "needs 'annotation.id'")


# -- Hardening II, 13b/13c: what /jobs says of failed jobs -----------------------------------
class ColourfulFailure:
    """A training run that fails after logging in colour, as Paddle's warnings are."""

    def where(self, lease):
        return {}

    def run(self, records, job_dir):
        (job_dir / "job.log").write_text(
            "\x1b[33mW1202 16:00:00.1 init.cc:1]\x1b[0m a warning\n"
            "\x1b[1;31mError\x1b[0m: \x1b]0;title\x07out of memory\x1b[K\n", encoding="utf-8")
        return 3


def wait_failed(client, project, job_id, timeout=60):
    import time

    deadline = time.time() + timeout
    while time.time() < deadline:
        jobs = {j["id"]: j for j in client.get("/jobs", query_string={"project": project}).json["jobs"]}
        if jobs.get(job_id, {}).get("state") == "failed":
            return jobs
        time.sleep(0.1)
    raise AssertionError(f"job {job_id} did not fail: {jobs}")


def test_a_job_folder_without_a_state_is_listed_failed_and_pruned(scratch_app, tmp_path):
    """13b: a trigger that failed on a full disk leaves a job folder without state.json; 13c:
    job errors carry no terminal colour codes."""
    import os
    import time

    client = scratch_app.test_client()
    records = scratch_app.extensions["uie"]["jobs"].records
    records.keep = 1
    broken = records.jobs_dir("7") / "20200101-000000-abcdef"
    broken.mkdir(parents=True)
    (broken / ".state.json.tmp").write_bytes(b"")          # what a full disk left
    young = records.jobs_dir("7") / "29990101-000000-fedcba"
    young.mkdir()                                           # a job being created, maybe
    old = time.time() - 3600
    os.utime(broken, (old, old))
    jobs = client.get("/jobs", query_string={"project": "7"}).json["jobs"]
    assert [(j["id"], j["state"]) for j in jobs] == [(broken.name, "failed")], jobs
    assert "state.json is missing or unreadable" in jobs[0]["error"]
    assert client.get("/jobs").json["jobs"] == jobs
    assert scratch_app.extensions["uie"]["jobs"].summary()["failed"] == 1

    scratch_app.extensions["uie"]["jobs"].training = ColourfulFailure()
    job = client.post("/train", json={"project": "7", "label_config": LABEL_CONFIG,
                                      "annotations": []}).json["job"]
    jobs = wait_failed(client, "7", job["id"])
    error = jobs[job["id"]]["error"]
    assert "\x1b" not in error and "\x07" not in error, error
    assert "Error: out of memory" in error and "W1202 16:00:00.1 init.cc:1] a warning" in error
    # the failed job was pruned with KEEP_JOBS=1 (right after its state said failed): the folder
    # without a state went first
    assert wait_until(lambda: not broken.exists()) and young.exists()
    assert [j["id"] for j in client.get("/jobs", query_string={"project": "7"}).json["jobs"]] == [job["id"]]


def test_job_errors_are_stored_and_shown_without_escape_sequences(scratch_app):
    records = scratch_app.extensions["uie"]["jobs"].records
    state = records.create("8", "TRAIN")
    job_dir = records.job_dir("8", state["id"])
    records.update(job_dir, state="failed", error="\x1b[31mboom\x1b[0m\tat\nline \x9b2Jx")
    assert records.get("8", state["id"])["error"] == "boom\tat\nline x"
    raw = dict(state, state="failed", error="\x1b[1mold\x1b[0m")    # written by an older version
    (job_dir / "state.json").write_text(json.dumps(raw), encoding="utf-8")
    shown = scratch_app.test_client().get("/jobs", query_string={"project": "8"}).json["jobs"]
    assert [j["error"] for j in shown] == ["old"]
