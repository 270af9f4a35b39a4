"""The backend as `make run` starts it: a real gunicorn process, over HTTP."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor

import requests

from harness.gunicorn_process import free_port
from helpers import EDGE_CASES, LABEL_CONFIG, REPO, SEQ_LEN, load_request, spans_of, tasks_for


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
    env = dict(os.environ, UIE_MODEL=str(tmp_path / "nowhere"), MODEL_DIR=str(tmp_path / "m"),
               PORT=str(free_port()))
    proc = subprocess.run([sys.executable, "-m", "gunicorn", "-c", "gunicorn.conf.py", "_wsgi:app"],
                          cwd=REPO, env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode != 0
    assert "no such checkpoint directory" in proc.stderr + proc.stdout


def test_hardened_http_through_gunicorn(gunicorn, scratch_small):
    user, password = "标注员", "pässwörd-密码"
    server = gunicorn(UIE_MODEL=str(scratch_small), BASIC_AUTH_USER=user, BASIC_AUTH_PASS=password,
                      MAX_REQUEST_MB="1", MAX_TASKS_PER_REQUEST="2")
    auth = (user.encode("utf-8"), password.encode("utf-8"))    # requests sends str as Latin-1
    body = {"tasks": tasks_for(EDGE_CASES[:2]), "label_config": LABEL_CONFIG}
    assert requests.get(server.url + "/health", timeout=10).status_code == 200
    ok = requests.post(server.url + "/predict", json=body, auth=auth, timeout=60)
    assert ok.status_code == 200 and len(ok.json()["results"]) == 2
    assert len(ok.headers["X-Request-Id"]) == 16
    wrong = requests.post(server.url + "/predict", json=body, timeout=10,
                          auth=(user.encode("utf-8"), "pässwörd".encode("utf-8")))
    assert wrong.status_code == 401 and wrong.json() == {"error": "authentication required"}

    plain = requests.post(server.url + "/predict", data=json.dumps(body), auth=auth, timeout=10,
                          headers={"Content-Type": "text/plain"})
    assert plain.status_code == 415 and "application/json" in plain.json()["error"]
    three = dict(body, tasks=tasks_for(EDGE_CASES[:3]))
    too_many = requests.post(server.url + "/predict", json=three, auth=auth, timeout=10)
    assert too_many.status_code == 413 and "MAX_TASKS_PER_REQUEST=2" in too_many.json()["error"]
    big = dict(body, tasks=[{"id": 1, "data": {"text": "x" * (2 * 1024 * 1024)}}])
    too_big = requests.post(server.url + "/predict", json=big, auth=auth, timeout=30)
    assert too_big.status_code == 413 and "MAX_REQUEST_MB=1" in too_big.json()["error"]
    nested = requests.post(server.url + "/webhook", data=b"[" * 100_000, auth=auth, timeout=10,
                           headers={"Content-Type": "application/json"})
    assert nested.status_code == 400 and "nested" in nested.json()["error"]
    assert requests.post(server.url + "/predict", json=body, auth=auth, timeout=60).status_code == 200


def gunicorn_config(**env):
    """What gunicorn makes of gunicorn.conf.py in ``env`` (``--print-config``, no server)."""
    env = {k: v for k, v in os.environ.items() if k not in {
        "HOST", "PORT", "WORKERS", "THREADS", "GUNICORN_TIMEOUT", "LOG_LEVEL"}} | env
    return subprocess.run([sys.executable, "-m", "gunicorn", "-c", "gunicorn.conf.py", "--print-config",
                           "wsgiref.simple_server:demo_app"], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=120)


def test_gunicorn_reads_its_settings_through_settings_py():
    from settings import Settings

    def printed(proc):
        assert proc.returncode == 0, proc.stderr
        lines = (line.split("=", 1) for line in proc.stdout.splitlines() if "=" in line)
        return {k.strip(): v.strip() for k, v in lines}

    defaults = printed(gunicorn_config())
    assert defaults["bind"] == f"['{Settings.host}:{Settings.port}']"
    assert (defaults["workers"], defaults["threads"], defaults["timeout"], defaults["loglevel"]) == (
        str(Settings.workers), str(Settings.threads), str(Settings.gunicorn_timeout), "info")
    given = printed(gunicorn_config(HOST="::1", PORT="9191", WORKERS="3", THREADS="2",
                                    GUNICORN_TIMEOUT="42", LOG_LEVEL="warning"))
    assert (given["bind"], given["workers"], given["threads"], given["timeout"], given["loglevel"]) == (
        "['[::1]:9191']", "3", "2", "42", "warning")


def test_a_bad_setting_stops_gunicorn_before_any_worker_starts():
    for env, message in (({"WORKERS": "two"}, "WORKERS='two' is not an integer"),
                         ({"BASIC_AUTH_USER": "ls"}, "set both BASIC_AUTH_USER and BASIC_AUTH_PASS"),
                         ({"DEVICE": "tpu"}, "DEVICE='tpu' must be one of")):
        proc = gunicorn_config(**env)
        assert proc.returncode != 0
        assert f"configuration error: {message}" in proc.stderr
        assert "Traceback" not in proc.stderr
