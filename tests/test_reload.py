"""A graceful reload (SIGHUP) or stop (SIGTERM) of a real gunicorn: requests in flight are
answered, the old worker exits on its own, and the metrics folder gunicorn.conf.py made is
removed at exit, a reload before it or not."""

from __future__ import annotations

import re
import signal
import threading
import time

import requests

from harness.gunicorn_process import cpu_seconds
from helpers import EDGE_CASES, LABEL_CONFIG, SEQ_LEN, tasks_for

# One task of 100,000 characters (MAX_TEXT_CHARS' default): with MAX_SEQ_LEN=48 it is
# about 6,700 model inputs (more than MAX_QUERIES_PER_REQUEST's default, raised here), run four
# at a time on one math thread: seconds of work even for the tiny model.
_UNIT = "".join(text for text, _ in EDGE_CASES)
LONG_TEXT = (_UNIT * (100_000 // len(_UNIT) + 1))[:100_000]
LONG_BODY = {"tasks": [{"id": 1, "data": {"text": LONG_TEXT}}], "label_config": LABEL_CONFIG}
SHORT_BODY = {"tasks": tasks_for(EDGE_CASES), "label_config": LABEL_CONFIG}
SLOW = dict(MAX_SEQ_LEN=str(SEQ_LEN), BATCH_SIZE="4", CPU_THREADS="1",
            MAX_QUERIES_PER_REQUEST="100000", ANSWER_CACHE="0",   # the same body runs the model again
            # the worker's pid and the request's X-Test-Id in each access log line
            GUNICORN_CMD_ARGS="--access-logformat 'ACCESS pid=%(p)s id=%({x-test-id}i)s "
                              "status=%(s)s'")
BUSY_CPU_SECONDS = 1.0      # the worker has spent this long on the long request: it is in flight
IN_FLIGHT_TIMEOUT = 120     # seconds


def _post(server, body, test_id, timeout=IN_FLIGHT_TIMEOUT):
    return requests.post(server.url + "/predict", json=body, headers={"X-Test-Id": test_id},
                         timeout=timeout)


def _answered_by(server, test_id) -> int:
    """The pid of the worker whose access log line names ``test_id`` (the worker writes it
    after the answer: it may come a moment after the client has the answer)."""
    pattern = re.compile(rf"ACCESS pid=<(\d+)> id={re.escape(test_id)} status=(\d+)")
    deadline = time.monotonic() + 10
    while not (found := pattern.findall(server.log_text())) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert len(found) == 1, f"{test_id}: {found}\n{server.log_text()[-3000:]}"
    return int(found[0][0])


def _in_flight(server, worker):
    """Send the long request in a thread; return once ``worker`` is surely working on it.

    Returns ``(thread, outcome)``: ``outcome`` gets ``"reply"`` or ``"error"`` when it ends.
    """
    outcome = {}

    def send():
        try:
            outcome["reply"] = _post(server, LONG_BODY, "in-flight")
        except requests.RequestException as exc:
            outcome["error"] = exc

    start = cpu_seconds(worker)
    thread = threading.Thread(target=send, daemon=True)
    thread.start()
    deadline = time.monotonic() + 60
    while cpu_seconds(worker) - start < BUSY_CPU_SECONDS:
        assert thread.is_alive(), f"the long request ended before it was seen at work: {outcome}"
        assert time.monotonic() < deadline, "the worker did not start on the long request"
        time.sleep(0.05)
    assert thread.is_alive(), "the long request was answered too soon to test anything"
    return thread, outcome


def _result_of(thread, outcome, server):
    thread.join(IN_FLIGHT_TIMEOUT)
    assert not thread.is_alive(), "no answer to the request in flight"
    assert "error" not in outcome, (f"the request in flight was cut: {outcome['error']!r}\n"
                                    f"{server.log_text()[-3000:]}")
    reply = outcome["reply"]
    assert reply.status_code == 200, reply.text[:1000]
    return reply.json()


def _wait_for(condition, timeout, what):
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.1)


def _one_worker(server) -> int:
    workers = server.worker_pids()
    assert len(workers) == 1, workers
    return workers.pop()


def _exited_cleanly(server, worker):
    log = server.log_text()
    assert f"Worker exiting (pid: {worker})" in log, log[-3000:]
    assert f"Worker (pid:{worker}) was sent" not in log, log[-3000:]   # killed by a signal
    assert "FatalError" not in log, log[-3000:]                         # Paddle's C++ handler


def test_a_reload_answers_the_request_in_flight_and_a_new_worker_serves(gunicorn, trained_model):
    server = gunicorn(UIE_MODEL=str(trained_model), **SLOW)
    undisturbed = _post(server, LONG_BODY, "undisturbed")
    assert undisturbed.status_code == 200, undisturbed.text[:1000]
    expected = undisturbed.json()
    assert len(expected["results"][0]["result"]) > 100     # the trained model finds the names
    old = _one_worker(server)

    thread, outcome = _in_flight(server, old)
    server.signal(signal.SIGHUP)
    assert _result_of(thread, outcome, server) == expected
    assert _answered_by(server, "in-flight") == old

    _wait_for(lambda: old not in server.worker_pids() and len(server.worker_pids()) == 1, 60,
              "the old worker to exit and a new one to run")
    new = _one_worker(server)
    assert new != old
    server.wait(60)
    after = _post(server, SHORT_BODY, "after-reload", timeout=60)
    assert after.status_code == 200 and len(after.json()["results"]) == len(EDGE_CASES)
    assert _answered_by(server, "after-reload") == new
    _exited_cleanly(server, old)
    assert server.proc.poll() is None           # the master goes on


def test_a_stop_answers_the_request_in_flight_then_everything_exits(gunicorn, trained_model):
    server = gunicorn(UIE_MODEL=str(trained_model), **SLOW)
    undisturbed = _post(server, LONG_BODY, "undisturbed")
    assert undisturbed.status_code == 200, undisturbed.text[:1000]
    worker = _one_worker(server)

    thread, outcome = _in_flight(server, worker)
    server.signal(signal.SIGTERM)
    assert _result_of(thread, outcome, server) == undisturbed.json()
    assert _answered_by(server, "in-flight") == worker
    assert server.wait_exit(60) == 0
    assert server.group_pids() == set(), "processes of the server are left"
    _exited_cleanly(server, worker)


def test_the_metrics_folder_made_by_the_config_is_removed_at_exit_after_a_reload(
        gunicorn, scratch_small, tmp_path):
    tmp = tmp_path / "tmp"              # where the master's tempfile.mkdtemp makes it
    tmp.mkdir()
    server = gunicorn(UIE_MODEL=str(scratch_small), TMPDIR=str(tmp), PROMETHEUS_MULTIPROC_DIR=None)
    folders = list(tmp.glob("uie-prometheus-*"))
    assert len(folders) == 1, folders
    for _ in range(2):
        assert _post(server, SHORT_BODY, "count", timeout=60).status_code == 200
    assert list(folders[0].glob("*.db")), "the workers count into it"
    old = _one_worker(server)

    server.signal(signal.SIGHUP)
    _wait_for(lambda: old not in server.worker_pids() and len(server.worker_pids()) == 1, 60,
              "the old worker to exit and a new one to run")
    server.wait(60)
    assert list(tmp.glob("uie-prometheus-*")) == folders     # the same one, kept by the reload
    counted = server.get("/metrics", format="json")
    assert counted["predict_requests"] == 2                     # the counts go on across the reload

    server.signal(signal.SIGTERM)
    assert server.wait_exit(60) == 0
    assert not folders[0].exists(), "the metrics folder is left after a reload and a stop"
