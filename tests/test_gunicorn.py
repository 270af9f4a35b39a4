"""The backend as `make run` starts it: a real gunicorn process, over HTTP."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import requests

from conftest import EDGE_CASES, LABEL_CONFIG, SEQ_LEN, load_request, spans_of, tasks_for


def test_gunicorn_serves_label_studio_requests_and_concurrent_ones_equal_sequential(gunicorn, trained_model):
    server = gunicorn(UIE_MODEL=str(trained_model), MAX_SEQ_LEN=str(SEQ_LEN), THREADS="4",
                      BATCH_SIZE="4")
    health = requests.get(server.url + "/health", timeout=10).json()
    assert health["status"] == "UP" and health["model"]["kind"] == "checkpoint"

    setup = requests.post(server.url + "/setup", json=load_request("post_setup.json")["body"], timeout=30)
    assert setup.status_code == 200
    version = setup.json()["model_version"]
    batch = load_request("post_predict_batch.json")["body"]
    answer = requests.post(server.url + "/predict", json=batch, timeout=60)
    assert answer.status_code == 200 and len(answer.json()["results"]) == 5
    assert {r["model_version"] for r in answer.json()["results"]} == {version}

    # Different requests, first one by one, then all at once on 4 threads.
    bodies = [{"tasks": tasks_for(EDGE_CASES[i:] + EDGE_CASES[:i]), "label_config": LABEL_CONFIG}
              for i in range(len(EDGE_CASES))] * 2

    def send(body):
        reply = requests.post(server.url + "/predict", json=body, timeout=120)
        assert reply.status_code == 200
        return reply.json()["results"]

    sequential = [send(b) for b in bodies]
    with ThreadPoolExecutor(max_workers=8) as pool:
        concurrent = list(pool.map(send, bodies))
    assert concurrent == sequential
    # and they are right: task order kept, spans exact
    for i, results in enumerate(sequential[: len(EDGE_CASES)]):
        cases = EDGE_CASES[i:] + EDGE_CASES[:i]
        assert [spans_of(r) for r in results] == [sorted(gold) for _, gold in cases]

    bad = requests.post(server.url + "/predict", data=b"{oops", timeout=10,
                        headers={"Content-Type": "application/json"})
    assert bad.status_code == 400 and "not valid JSON" in bad.json()["error"]
    assert requests.get(server.url + "/health", timeout=10).status_code == 200


def test_two_workers_report_the_same_version(gunicorn, scratch_small):
    server = gunicorn(UIE_MODEL=str(scratch_small), WORKERS="2", THREADS="2")
    versions = set()
    for _ in range(12):
        reply = requests.post(server.url + "/setup", json={"project": "1.1", "schema": LABEL_CONFIG},
                              timeout=30)
        versions.add(reply.json()["model_version"])
    assert len(versions) == 1


def test_a_missing_checkpoint_path_stops_gunicorn_with_a_clear_message(tmp_path):
    import os
    import subprocess
    import sys

    from conftest import REPO, free_port

    env = dict(os.environ, UIE_MODEL=str(tmp_path / "nowhere"), MODEL_DIR=str(tmp_path / "m"),
               PORT=str(free_port()))
    proc = subprocess.run([sys.executable, "-m", "gunicorn", "-c", "gunicorn.conf.py", "_wsgi:app"],
                          cwd=REPO, env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode != 0
    assert "no such checkpoint directory" in proc.stderr + proc.stdout
