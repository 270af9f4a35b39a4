"""GET /metrics: Prometheus' text format, counted across gunicorn workers; JSON on ?format=json."""

from __future__ import annotations

import requests
from prometheus_client.parser import text_string_to_metric_families

from helpers import CLUENER_CONFIG, EDGE_CASES, LABEL_CONFIG, cluener_tasks, tasks_for, wait_job


def parse(text: str) -> dict:
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


def value(samples, name, **labels):
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


def scrape(client) -> dict:
    reply = client.get("/metrics")
    assert reply.status_code == 200
    assert reply.headers["Content-Type"].startswith("text/plain; version=0.0.4")
    return parse(reply.get_data(as_text=True))


def scrape_json(client) -> dict:
    reply = client.get("/metrics?format=json")
    assert reply.status_code == 200 and reply.is_json
    return reply.json


def json_samples(body) -> dict:
    """``?format=json``'s samples, keyed as ``parse`` keys those of the text format."""
    return {(name, tuple(sorted(s["labels"].items()))): s["value"]
            for name, samples in body["samples"].items() for s in samples}


def not_metrics_or_created(samples) -> dict:
    """All but the counts of GET /metrics itself (one scrape apart) and ``*_created``."""
    return {k: v for k, v in samples.items()
            if ("endpoint", "/metrics") not in k[1] and not k[0].endswith("_created")}


def test_prometheus_text_and_json(make_app, trained_model):
    client = make_app(uie_model=str(trained_model)).test_client()
    before_json, before = scrape_json(client), scrape(client)
    body = {"tasks": tasks_for(EDGE_CASES[:3]), "label_config": LABEL_CONFIG, "project": "31.5"}
    assert client.post("/predict", json=body).status_code == 200
    assert client.post("/predict", data="x", content_type="text/plain").status_code == 415
    assert client.get("/no-such-page").status_code == 404
    after, after_json = scrape(client), scrape_json(client)

    def delta(name, **labels):
        return value(after, name, **labels) - value(before, name, **labels)

    assert delta("uie_http_requests_total", endpoint="/predict", method="POST", status="200") == 1
    assert delta("uie_http_requests_total", endpoint="/predict", method="POST", status="415") == 1
    assert delta("uie_http_requests_total", endpoint="other", method="GET", status="404") == 1
    assert delta("uie_http_request_duration_seconds_count", endpoint="/predict", method="POST",
                 status="200") == 1
    assert delta("uie_http_request_duration_seconds_bucket", endpoint="/predict", method="POST",
                 status="200", le="+Inf") == 1
    assert delta("uie_predicted_tasks_total", project="31") == 3
    regions = sum(len(gold) for _, gold in EDGE_CASES[:3])    # what the trained model finds
    assert regions == 8 and delta("uie_predicted_regions_total", project="31") == regions
    health = client.get("/health").json
    assert value(after, "uie_served_model_info", project="_base", kind=health["model"]["kind"],
                 version=health["model_version"]) == 1
    assert {labels for name, labels in after if name == "uie_jobs"} == {
        (("state", s),) for s in ("done", "failed", "queued", "running")}

    # JSON is a view of the same registry: the same samples, and totals of them
    assert not_metrics_or_created(json_samples(after_json)) == not_metrics_or_created(after)
    assert after_json["counted_in"] == "this process"
    assert after_json["predict_requests"] == value(after, "uie_http_requests_total",
                                                   endpoint="/predict", method="POST", status="200")
    moved = {key: after_json[key] - before_json[key] for key in
             ("predict_requests", "predicted_tasks", "predicted_regions", "errors_4xx", "errors_5xx")}
    assert moved == {"predict_requests": 1, "predicted_tasks": 3, "predicted_regions": regions,
                     "errors_4xx": 2, "errors_5xx": 0}
    assert after_json["predict_seconds"] > before_json["predict_seconds"]
    assert after_json["jobs"] == {"done": 0, "failed": 0, "queued": 0, "running": 0}


def test_a_finished_job_is_counted_with_its_duration(make_app, scratch_small):
    app = make_app(uie_model=str(scratch_small), train_epochs=1, train_max_seq_len=64)
    client = app.test_client()
    before = scrape(client)
    job = client.post("/train", json={"annotations": cluener_tasks(3), "project": "32.1",
                                      "label_config": CLUENER_CONFIG}).json["job"]
    done = wait_job(lambda p: client.get(p).json, "32", job["id"])
    assert done["state"] == "done", done
    after = scrape(client)
    count = "uie_training_duration_seconds_count"
    assert value(after, count, state="done") - value(before, count, state="done") == 1
    seconds = (value(after, "uie_training_duration_seconds_sum", state="done")
               - value(before, "uie_training_duration_seconds_sum", state="done"))
    assert 0 < seconds < done["finished"] - done["created"] + 1
    assert value(after, "uie_jobs", state="done") == 1
    if done["promoted"]:
        assert value(after, "uie_served_model_info", project="32", kind="trained",
                     version=done["model_version"]) == 1
    else:   # F1 0 after one epoch, as the served model's: kept, not served (a tie at 0 promotes nothing)
        assert done["metrics"]["f1"] == 0
        health = client.get("/health").json
        assert value(after, "uie_served_model_info", project="32", kind=health["model"]["kind"],
                     version=health["model_version"]) == 1


def test_counts_add_up_across_gunicorn_workers(gunicorn):
    """Workers that each answer at most 3 requests (then gunicorn replaces them): every
    scrape still counts all 12 predictions, those of the workers gone included."""
    server = gunicorn(WORKERS="2", THREADS="2", GUNICORN_CMD_ARGS="--max-requests 3")
    body = {"tasks": tasks_for(EDGE_CASES[:2]), "label_config": LABEL_CONFIG, "project": "33"}
    for _ in range(12):
        reply = requests.post(server.url + "/predict", json=body, timeout=60)
        assert reply.status_code == 200
    for _ in range(3):
        samples = parse(requests.get(server.url + "/metrics", timeout=60).text)
        assert value(samples, "uie_http_requests_total", endpoint="/predict", method="POST",
                     status="200") == 12
        assert value(samples, "uie_http_request_duration_seconds_count", endpoint="/predict",
                     method="POST", status="200") == 12
        assert value(samples, "uie_predicted_tasks_total", project="33") == 24
    # JSON is built from the same multiprocess collection: every worker's counts too
    as_json = requests.get(server.url + "/metrics?format=json", timeout=60).json()
    assert as_json["counted_in"] == "every gunicorn worker of this replica"
    assert as_json["predict_requests"] == 12 and as_json["predicted_tasks"] == 24
