"""What one request may cost (issue "Hardening II", items 8 and 9).

- ``MAX_QUERIES_PER_REQUEST`` counts model inputs: one per window of a text and
  prompt, the relation round's prompts included, counted before each round runs;
- a ``/predict`` whose client has gone stops between two pieces of work (a real
  gunicorn, a client that closes its socket);
- a chunked body longer than ``MAX_REQUEST_MB`` is 413, not cut and served.
"""

from __future__ import annotations

import json
import re
import socket
import time

import pytest
import requests

from harness.gunicorn_process import Gunicorn
from helpers import EDGE_CASES, FILLER, LABEL_CONFIG, PERSON, PLACE, SEQ_LEN, tasks_for

REL_CONFIG = LABEL_CONFIG.replace("</View>", '<Relations><Relation value="工作地"/></Relations></View>')
STOPPED = re.compile(r"the client closed its connection; prediction stopped after (\d+) of (\d+) "
                     r"model inputs")


def body(tasks, config=LABEL_CONFIG):
    return {"tasks": tasks, "label_config": config}


def predictor_of(app):
    predictor = app.extensions["uie"]["store"].live("default").predictor
    assert predictor.tagger is None        # build_inputs makes every input of a request
    return predictor


def model_inputs(predictor, tasks, prompts=(PERSON, PLACE)) -> int:
    """What the predictor itself runs for the entity round of ``tasks``."""
    return len(predictor.build_inputs([(t["data"]["text"], list(prompts)) for t in tasks])[0])


class Calls:
    """Counts the ``extract`` calls of a predictor (each one runs the model)."""

    def __init__(self, predictor):
        self.queries, self._extract = [], predictor.extract
        predictor.extract = self

    def __call__(self, queries):
        self.queries.append(list(queries))
        return self._extract(queries)


# -- item 9: windows x prompts, relations included, counted before running -----------------------
def test_long_texts_count_every_window_of_every_prompt(make_app, scratch_small, tmp_path):
    tasks = [{"id": i, "data": {"text": FILLER * 40 + f"吴九在成都{i}。"}} for i in (1, 2)]
    probe = make_app(uie_model=str(scratch_small), model_dir=str(tmp_path / "probe"))
    needed = model_inputs(predictor_of(probe), tasks)
    assert needed > 100           # 2 tasks x 2 prompts, but about 26 windows of 48 tokens each

    at_cap = make_app(uie_model=str(scratch_small), max_queries_per_request=needed,
                      model_dir=str(tmp_path / "at"))
    assert at_cap.test_client().post("/predict", json=body(tasks)).status_code == 200

    below = make_app(uie_model=str(scratch_small), max_queries_per_request=needed - 1,
                     model_dir=str(tmp_path / "below"))
    calls = Calls(predictor_of(below))
    answer = below.test_client().post("/predict", json=body(tasks))
    assert answer.status_code == 413, answer.get_data(as_text=True)
    error = answer.json["error"]
    assert f"MAX_QUERIES_PER_REQUEST={needed - 1}" in error and "2 tasks need more than" in error
    assert "window" in error and f"MAX_SEQ_LEN={SEQ_LEN}" in error
    assert calls.queries == [], "the model must not run for a request over the cap"


def test_the_relation_round_is_counted_before_it_runs(make_app, trained_model, tmp_path):
    tasks = tasks_for(EDGE_CASES)
    probe = make_app(uie_model=str(trained_model), model_dir=str(tmp_path / "probe"))
    entity = model_inputs(predictor_of(probe), tasks)
    assert entity > 2 * len(tasks)          # the long text has several windows

    app = make_app(uie_model=str(trained_model), max_queries_per_request=entity,
                   model_dir=str(tmp_path / "capped"))
    client = app.test_client()
    calls = Calls(predictor_of(app))
    assert client.post("/predict", json=body(tasks)).status_code == 200     # just fits
    assert len(calls.queries) == 1
    answer = client.post("/predict", json=body(tasks, REL_CONFIG))
    assert answer.status_code == 413, answer.get_data(as_text=True)
    assert f"MAX_QUERIES_PER_REQUEST={entity}" in answer.json["error"]
    assert f"{entity} for the entity round + " in answer.json["error"]
    assert "for the relation round" in answer.json["error"]
    # the entity round was answered (from uie.answer_cache: the texts were asked just before),
    # the relation round did not run
    assert len(calls.queries) == 1, calls.queries

    # room for both rounds: served, the relation round asked in one more call
    roomy = make_app(uie_model=str(trained_model), max_queries_per_request=10 * entity,
                     model_dir=str(tmp_path / "roomy"))
    roomy_calls = Calls(predictor_of(roomy))
    results = roomy.test_client().post("/predict", json=body(tasks, REL_CONFIG)).json["results"]
    assert len(results) == len(tasks) and len(roomy_calls.queries) == 2
    relation_prompts = roomy_calls.queries[1]
    relation = len(predictor_of(roomy).build_inputs(relation_prompts)[0])
    assert entity < entity + relation <= 10 * entity


def test_pieces_answer_as_one_call_and_stop_once_the_client_has_gone(make_app, trained_model,
                                                                      monkeypatch, caplog):
    import my_ml_backend
    from uie import answer_cache

    app = make_app(uie_model=str(trained_model))
    store = app.extensions["uie"]["store"]
    tasks = tasks_for(EDGE_CASES)
    whole = my_ml_backend.UIEBackend(store, "default", REL_CONFIG).predict(tasks)
    monkeypatch.setattr(my_ml_backend, "PIECE_INPUTS", 3)
    calls = Calls(predictor_of(app))
    cache = answer_cache.cache_for(predictor_of(app))
    cache.clear()          # the texts are asked again: by the model, not the cache
    watched = my_ml_backend.UIEBackend(store, "default", REL_CONFIG)
    looks = []
    watched.client_gone = lambda: looks.append(1) and False
    assert watched.predict(tasks) == whole
    assert len(calls.queries) > 5 and len(looks) == len(calls.queries)

    # the client goes after the third piece: the fourth is never run
    gone_after = iter([False, False, False, True])
    stopping = my_ml_backend.UIEBackend(store, "default", REL_CONFIG)
    stopping.client_gone = lambda: next(gone_after)
    calls.queries.clear()
    cache.clear()
    with pytest.raises(my_ml_backend.ClientGone):
        stopping.predict(tasks)
    assert len(calls.queries) == 3
    [(done, total)] = STOPPED.findall(caplog.text)
    assert 0 < int(done) < int(total)


# -- a real gunicorn: a client that goes, a chunked body -------------------------------------------
@pytest.fixture(scope="module")
def server(tmp_path_factory, scratch_small):
    tmp = tmp_path_factory.mktemp("cost-caps")
    env = {"UIE_MODEL": str(scratch_small), "MODEL_DIR": str(tmp / "models"),
           "MAX_SEQ_LEN": str(SEQ_LEN), "BATCH_SIZE": "4", "THREADS": "2", "LOG_LEVEL": "INFO",
           "MAX_REQUEST_MB": "1", "MAX_QUERIES_PER_REQUEST": "100000000"}
    gunicorn = Gunicorn(env, tmp / "gunicorn.log")
    try:
        yield gunicorn.wait()
    finally:
        gunicorn.stop()


def test_a_chunked_body_longer_than_max_request_mb_is_413(server):
    """Item 8: werkzeug reads a chunked body up to the limit and serves that prefix."""
    head = json.dumps(body([])).encode("utf-8")
    limit = 1024 * 1024

    def chunked(*parts):
        for part in parts:
            yield part

    def post(data):
        return requests.post(server.url + "/predict", data=data, timeout=120,
                             headers={"Content-Type": "application/json"})

    # valid JSON, then 10 MB of whitespace (or of garbage): 413, not the JSON's answer
    for filler in (b" ", b"x"):
        answer = post(chunked(head, *[filler * limit] * 10))
        assert answer.status_code == 413, answer.text[:300]
        assert "MAX_REQUEST_MB=1" in answer.json()["error"]
    # one byte over is over; exactly the limit, or less, is served
    over = post(chunked(head, b" " * (limit - len(head) + 1)))
    assert over.status_code == 413, over.text[:300]
    exact = post(chunked(head, b" " * (limit - len(head))))
    assert exact.status_code == 200 and exact.json()["results"] == []
    assert post(chunked(head[:7], head[7:])).json()["results"] == []


def test_a_prediction_stops_once_its_client_has_gone(server):
    """Item 9: Label Studio gives up after 100 s and closes its connection; the work stops."""
    text = ("Alice met Bob in Paris. " * 2600)[:60000]
    tasks = [{"id": i, "data": {"text": f"{i} {text}"}} for i in range(10)]   # ~30,000 inputs
    payload = json.dumps(body(tasks)).encode("utf-8")
    assert len(payload) < 1024 * 1024
    head = (f"POST /predict HTTP/1.1\r\nHost: 127.0.0.1:{server.port}\r\n"
            f"Content-Type: application/json\r\nContent-Length: {len(payload)}\r\n\r\n")
    with socket.create_connection(("127.0.0.1", server.port), timeout=30) as conn:
        conn.sendall(head.encode("ascii") + payload)
        time.sleep(1.5)
    deadline = time.time() + 90
    found = []
    while time.time() < deadline and not found:
        time.sleep(0.5)
        found = STOPPED.findall(server.log_path.read_text(encoding="utf-8", errors="replace"))
    assert found, "the prediction did not stop: " + server.log_path.read_text()[-3000:]
    [(done, total)] = found
    assert int(done) < int(total), found       # on 2 busy cores: 6,552 of 32,760 after 4 s
    # counted as an abandoned request (499), and the server serves on
    metrics = requests.get(server.url + "/metrics", timeout=30).text
    abandoned = [line for line in metrics.splitlines() if line.startswith("uie_http_requests")
                 and 'endpoint="/predict"' in line and 'status="499"' in line]
    assert abandoned and abandoned[0].endswith(" 1.0"), metrics[-3000:]
    short = requests.post(server.url + "/predict", json=body(tasks_for(EDGE_CASES[:2])), timeout=60)
    assert short.status_code == 200 and len(short.json()["results"]) == 2
