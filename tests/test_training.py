"""Training from Label Studio annotations, in the background, through HTTP."""

from __future__ import annotations

import copy
import json
import os
import signal
import subprocess
import time
from pathlib import Path

import pytest
import requests

from train_job import build_examples, should_promote

from helpers import (CLUENER_CONFIG, cluener_tasks, gold_spans, load_request, predicted_spans,
                     start_training_body, wait_job, webhook_body)

def test_webhooks_start_training_new_version_reproduces_annotations(make_app, caplog):
    """Default settings, UIE_MODEL=scratch: a dozen annotated tasks, START_TRAINING, predictions."""
    app = make_app(uie_model="scratch", max_seq_len=512)   # the README's defaults otherwise
    client = app.test_client()

    def get(path):
        return client.get(path).json

    project, setup_body = 5, {"project": "5.1795892522", "schema": CLUENER_CONFIG}
    base_version = client.post("/setup", json=setup_body).json["model_version"]
    tasks = cluener_tasks(12)
    for task in tasks:
        ack = client.post("/webhook", json=webhook_body("ANNOTATION_CREATED", task, task["annotations"][0],
                                                        project, CLUENER_CONFIG))
        assert ack.status_code == 200 and ack.json["job"] is None
    assert app.extensions["uie"]["annotations"].count("5") == 12

    started = time.perf_counter()
    ack = client.post("/webhook", json=start_training_body(project, CLUENER_CONFIG))
    answered = time.perf_counter() - started
    assert ack.status_code == 200 and ack.json["job"]["state"] == "queued"
    assert answered < 5, f"START_TRAINING took {answered:.1f}s to answer"
    # while it trains, predictions are served by the base model
    during = client.post("/predict", json={"tasks": tasks[:1], "project": setup_body["project"],
                                           "label_config": CLUENER_CONFIG}).json
    assert during["results"][0]["model_version"] == base_version

    job = wait_job(get, project, ack.json["job"]["id"])
    elapsed = time.perf_counter() - started
    assert job["state"] == "done", job
    assert job["promoted"] and job["source"] == "webhooks" and job["annotated_tasks"] == 12
    new_version = job["model_version"]
    assert client.post("/setup", json=setup_body).json["model_version"] == new_version != base_version

    predictions = client.post("/predict", json={"tasks": tasks, "project": setup_body["project"],
                                                "label_config": CLUENER_CONFIG}).json["results"]
    assert {p["model_version"] for p in predictions} == {new_version}
    gold, found = gold_spans(tasks), predicted_spans(predictions, tasks)
    reproduced = len(gold & found) / len(gold)
    annotated = len(gold & found) / max(1, len(found))
    print(f"\nscratch, defaults: {len(gold)} annotated spans, {reproduced:.0%} reproduced, "
          f"{annotated:.0%} of predicted spans annotated, START_TRAINING -> new version in {elapsed:.0f}s")
    assert reproduced >= 0.9 and annotated >= 0.9

    versions = get("/versions?project=5")
    entry = versions["projects"]["5"]
    assert entry["current"] == new_version
    assert [v["model_version"] for v in entry["versions"]] == [new_version]
    assert entry["versions"][0]["dev"]["f1"] > 0 and entry["versions"][0]["train_seconds"] > 0
    assert entry["versions"][0]["metrics_on"] == "training annotations"
    # another project is untouched: it still has the base model
    assert client.post("/setup", json={"project": "6.1", "schema": CLUENER_CONFIG}).json[
        "model_version"] == base_version


@pytest.fixture
def quick_app(make_app, scratch_small):
    """A backend on the tiny scratch model with a few training epochs."""
    return make_app(uie_model=str(scratch_small), train_epochs=20, train_max_seq_len=64)


def test_legacy_train_body_trains_from_its_own_annotations(quick_app):
    client = quick_app.test_client()
    body = copy.deepcopy(load_request("post_train.json")["body"])
    body["annotations"] = cluener_tasks(6)
    body["label_config"] = CLUENER_CONFIG
    started = time.perf_counter()
    answer = client.post("/train", json=body)
    assert answer.status_code == 201 and time.perf_counter() - started < 5
    job = wait_job(lambda p: client.get(p).json, "1", answer.json["job"]["id"])
    assert job["state"] == "done", job
    assert job["source"] == "train request" and job["annotated_tasks"] == 6
    assert client.post("/setup", json={"project": body["project"]}).json["model_version"] == job["model_version"]


def test_a_job_trains_the_words_the_server_prompts_with_and_every_label(quick_app, tmp_path):
    """predicted_values are trained as prompts; labels nobody annotated are negatives."""
    client = quick_app.test_client()
    config = ('<View><Labels name="label" toName="text">'
              '<Label value="name" predicted_values="人名,person"/><Label value="address"/>'
              '<Label value="天气"/></Labels><Text name="text" value="$text"/></View>')
    tasks = cluener_tasks(3)        # names and addresses only, no 天气
    for task in tasks:
        task["annotations"][0]["result"] = [r for r in task["annotations"][0]["result"]
                                            if r["value"]["labels"][0] in ("name", "address")]
    job = client.post("/train", json={"annotations": tasks, "project": "11.1", "label_config": config}).json["job"]
    done = wait_job(lambda p: client.get(p).json, "11", job["id"])
    assert done["state"] == "done", done
    train = Path(done["log"]).parent / "work" / "data" / "train.txt"
    prompts = {json.loads(line)["prompt"] for line in train.read_text(encoding="utf-8").splitlines()}
    assert prompts == {"人名", "person", "address", "天气"}


def test_every_n_annotation_changes_trigger_one_job(make_app, scratch_small):
    app = make_app(uie_model=str(scratch_small), train_every_n=3, train_epochs=1, train_max_seq_len=64)
    client = app.test_client()
    jobs = []
    for task in cluener_tasks(7):
        ack = client.post("/webhook", json=webhook_body("ANNOTATION_CREATED", task, task["annotations"][0],
                                                        9, CLUENER_CONFIG)).json
        jobs.append(ack["job"])
    assert [j is not None for j in jobs] == [False, False, True, False, False, True, False]
    for job in (jobs[2], jobs[5]):
        finished = wait_job(lambda p: client.get(p).json, "9", job["id"])
        assert finished["state"] == "done", finished


def test_triggers_during_a_job_collapse_into_one_follow_up(quick_app):
    client = quick_app.test_client()
    tasks = cluener_tasks(4)
    for task in tasks:
        client.post("/webhook", json=webhook_body("ANNOTATION_CREATED", task, task["annotations"][0],
                                                  3, CLUENER_CONFIG))
    ids = [client.post("/webhook", json=start_training_body(3, CLUENER_CONFIG)).json["job"]["id"]
           for _ in range(5)]
    # the first is running (or queued) while the others collapse into one follow-up
    assert len(set(ids)) <= 2
    for job_id in dict.fromkeys(ids):
        assert wait_job(lambda p: client.get(p).json, "3", job_id)["state"] == "done"
    jobs = client.get("/jobs?project=3").json["jobs"]
    assert len(jobs) == len(set(ids))
    versions = client.get("/versions?project=3").json["projects"]["3"]["versions"]
    assert len(versions) == len(set(ids))


def test_a_failing_job_leaves_the_served_version(quick_app):
    client = quick_app.test_client()
    get = lambda p: client.get(p).json  # noqa: E731
    good = cluener_tasks(4)
    job = client.post("/train", json={"annotations": good, "project": "4.1",
                                      "label_config": CLUENER_CONFIG}).json["job"]
    first = wait_job(get, "4", job["id"])
    assert first["state"] == "done"
    served = client.post("/setup", json={"project": "4.1"}).json["model_version"]

    cancelled = copy.deepcopy(good)
    for task in cancelled:
        task["annotations"][0]["was_cancelled"] = True
    job = client.post("/train", json={"annotations": cancelled, "project": "4.1",
                                      "label_config": CLUENER_CONFIG}).json["job"]
    failed = wait_job(get, "4", job["id"])
    assert failed["state"] == "failed" and "no annotated tasks" in failed["error"]
    assert client.post("/setup", json={"project": "4.1"}).json["model_version"] == served
    predicted = client.post("/predict", json={"tasks": good[:1], "project": "4.1",
                                              "label_config": CLUENER_CONFIG}).json
    assert predicted["results"][0]["model_version"] == served
    # the first job's version, served or (a tie at F1 0) only kept: the failed job added none
    assert [v["model_version"] for v in get("/versions?project=4")["projects"]["4"]["versions"]] == [
        first["model_version"]]


def _children(pid):
    out = subprocess.run(["ps", "-ww", "-o", "pid=,args=", "--ppid", str(pid)],   # -ww: whole lines
                         capture_output=True, text=True)
    return [line.split(None, 1) for line in out.stdout.splitlines() if line.strip()]


def _alive(pid):
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    state = Path(f"/proc/{pid}/stat").read_text().split(")")[-1].split()[0]
    return state != "Z"


def _still_alive(pid, seconds=5.0):
    """Whether ``pid`` is alive after up to ``seconds`` for a killed process to go."""
    deadline = time.time() + seconds
    while _alive(pid) and time.time() < deadline:
        time.sleep(0.1)
    return _alive(pid)


@pytest.mark.parametrize("job_survives", [False, True], ids=["job-killed-too", "job-orphaned"])
def test_a_killed_server_leaves_no_partial_version(gunicorn, scratch_small, tmp_path, job_survives):
    """The server dies at once (master, worker, maybe the job's process); a restart recovers.

    A job process that outlived its server is stopped by the restarted server,
    and its partial checkpoint removed."""
    env = dict(UIE_MODEL=str(scratch_small), TRAIN_EPOCHS="500", TRAIN_MAX_SEQ_LEN="64",
               MODEL_DIR=str(tmp_path / "models"))
    server = gunicorn(**env)
    tasks = cluener_tasks(8)
    job = requests.post(server.url + "/train", json={"annotations": tasks, "project": "2.1",
                                                     "label_config": CLUENER_CONFIG}, timeout=10).json()["job"]
    base = requests.post(server.url + "/setup", json={"project": "2.1"}, timeout=10).json()["model_version"]
    job_dir = tmp_path / "models" / "2" / "jobs" / job["id"]
    deadline = time.time() + 120
    while time.time() < deadline:   # wait until the job process is training
        procs = [p for w in _children(server.proc.pid) for p in _children(int(w[0]))]
        if any("train_job.py" in args for _, args in procs) and (job_dir / "work" / "ckpt").is_dir():
            break
        time.sleep(0.5)
    else:
        raise AssertionError("train_job.py never started training")
    time.sleep(3)
    job_pids = [int(pid) for pid, args in procs if "train_job.py" in args]
    state = json.loads((job_dir / "state.json").read_text())
    assert state["job_pid"] == job_pids[0] and os.getpgid(job_pids[0]) == job_pids[0]
    for w in _children(server.proc.pid):
        if not job_survives:
            for pid in job_pids:
                os.kill(pid, signal.SIGKILL)
        os.kill(int(w[0]), signal.SIGKILL)
    server.proc.kill()
    server.proc.wait()
    assert _still_alive(job_pids[0], 0 if job_survives else 5) == job_survives

    project_dir = tmp_path / "models" / "2"
    assert not (project_dir / "current").exists()
    assert not [p for p in project_dir.iterdir() if p.name.startswith("v")]

    again = gunicorn(**env)
    jobs = requests.get(again.url + "/jobs?project=2", timeout=10).json()["jobs"]
    assert [(j["id"], j["state"]) for j in jobs] == [(job["id"], "failed")]
    assert "interrupted" in jobs[0]["error"]
    assert not _still_alive(job_pids[0]), "the orphaned job process was not stopped"
    assert not (job_dir / "work" / "ckpt").exists()
    assert requests.post(again.url + "/setup", json={"project": "2.1"}, timeout=10).json()["model_version"] == base
    assert not [p for p in project_dir.iterdir() if p.name.startswith((".tmp", "v"))]


def test_enough_annotations_are_scored_on_held_out_ones_against_the_served_model(make_app, scratch_small):
    app = make_app(uie_model=str(scratch_small), train_epochs=2, train_max_seq_len=64,
                   train_min_dev_tasks=8, max_seq_len=512)
    client = app.test_client()
    job = client.post("/train", json={"annotations": cluener_tasks(10), "project": "8.1",
                                      "label_config": CLUENER_CONFIG}).json["job"]
    done = wait_job(lambda p: client.get(p).json, "8", job["id"])
    assert done["state"] == "done", done
    assert done["held_out"] is True and done["previous_metrics"] is not None
    assert done["promoted"] == should_promote(done["metrics"]["f1"], done["previous_metrics"]["f1"])
    version = client.get("/versions?project=8").json["projects"]["8"]["versions"][0]
    assert version["metrics_on"] == "held-out annotations" and version["dev"]["examples"] > 0
    # a scratch model is served with windows no longer than it was trained on
    store = app.extensions["uie"]["store"]
    assert store.serving_seq_len(store.project_dir("8") / version["model_version"]) == 64


def test_held_out_tasks_stay_held_out_as_the_project_grows():
    """A job scores the served version on texts it never trained on: the texts held out at
    60 annotated tasks are held out at 200 too, and none of the 60-task job's training texts is."""
    def texts(examples):
        return {e["content"] for e in examples}

    first = build_examples(cluener_tasks(60), CLUENER_CONFIG, min_dev_tasks=50)
    later = build_examples(cluener_tasks(200), CLUENER_CONFIG, min_dev_tasks=50)
    assert first.held_out and later.held_out
    assert texts(first.dev) <= texts(later.dev)
    assert not texts(first.train) & texts(later.dev)
    assert 0.1 < len(texts(later.dev)) / 200 < 0.3
