"""``GET /metrics`` in Prometheus' text format (``prometheus_client``).

Counted in the serving processes, correct across gunicorn workers: with
``PROMETHEUS_MULTIPROC_DIR`` set (``gunicorn.conf.py`` sets it up before the
workers fork, and marks each dead worker's files), every worker writes its
counts there and a scrape of any worker adds them all up; without it (the dev
server, tests) they are this process's.

- ``uie_http_requests_total{endpoint, method, status}`` and
  ``uie_http_request_duration_seconds{endpoint, method, status}`` (histogram);
  ``endpoint`` is the route (``/predict``), or ``other`` for unknown paths;
- ``uie_predicted_tasks_total{project}``, ``uie_predicted_regions_total{project}``;

read from ``MODEL_DIR`` (and Redis) at each scrape, the same on every worker and replica:

- ``uie_served_model_info{project, version}``: the version each project is served by
  (``project="_base"`` for the base model);
- ``uie_jobs{state}``: training jobs kept per state (queued, running, failed, done);
- ``uie_training_duration_seconds{state}`` (histogram): how long finished jobs ran, by
  outcome: counted by the process that ran the job (embedded), or in Redis for every
  replica (scale-out).

``GET /metrics?format=json`` (``as_json``) is a view of the same collection, not a count of
its own: the request and prediction counts are therefore the whole replica's (every gunicorn
worker's, those gone included) in multiprocess mode, and this process's otherwise, as
``"counted_in"`` says. It holds every sample of the text format but the ``*_created``
timestamps, as ``"samples": {name: [{"labels": {...}, "value": v}, ...]}``, and totals of them:

- ``predict_requests`` and ``predict_seconds``: ``POST /predict`` answered 200, and the time
  they took (whole requests);
- ``predicted_tasks``, ``predicted_regions``: over every project;
- ``errors_4xx``, ``errors_5xx``: requests answered so, on every route;
- ``jobs``: ``{state: count}``, as ``uie_jobs``.
"""

from __future__ import annotations

import os

from prometheus_client import (CONTENT_TYPE_PLAIN_0_0_4, CollectorRegistry, Counter, Histogram,
                               generate_latest)
from prometheus_client.core import GaugeMetricFamily, HistogramMetricFamily, InfoMetricFamily

from service.job_records import STATES
from service.jobs import TRAINING_BUCKETS

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300)
TRAINING = "uie_training_duration_seconds"

# Process-wide (registered in _LOCAL; in multiprocess mode their values go to files).
_LOCAL = CollectorRegistry(auto_describe=True)
REQUESTS = Counter("uie_http_requests", "HTTP requests answered, by route and status",
                   ["endpoint", "method", "status"], registry=_LOCAL)
LATENCY = Histogram("uie_http_request_duration_seconds", "Time to answer an HTTP request",
                    ["endpoint", "method", "status"], buckets=LATENCY_BUCKETS, registry=_LOCAL)
TASKS = Counter("uie_predicted_tasks", "Tasks predicted by /predict", ["project"], registry=_LOCAL)
REGIONS = Counter("uie_predicted_regions", "Regions (spans) predicted by /predict", ["project"],
                  registry=_LOCAL)
TRAINING_SECONDS = Histogram(TRAINING, "Duration of finished training jobs, by outcome",
                             ["state"], buckets=TRAINING_BUCKETS, registry=_LOCAL)


def multiprocess() -> bool:
    return bool(os.environ.get("PROMETHEUS_MULTIPROC_DIR"))


def observe_request(endpoint: str, method: str, status: int, seconds: float):
    labels = (endpoint, method, str(status))
    REQUESTS.labels(*labels).inc()
    LATENCY.labels(*labels).observe(seconds)


def observe_prediction(project: str, tasks: int, regions: int):
    TASKS.labels(project).inc(tasks)
    REGIONS.labels(project).inc(regions)


def observe_training(project: str, state: str, seconds: float):
    """``JobRunner.on_finish`` of the embedded mode."""
    TRAINING_SECONDS.labels(state).observe(seconds)


class _Counted:
    """The process-wide metrics: this process's, or every worker's in multiprocess mode."""

    def __init__(self, skip=()):
        self.skip = set(skip)

    def collect(self):
        if multiprocess():
            from prometheus_client import multiprocess as mp

            workers = CollectorRegistry()
            mp.MultiProcessCollector(workers)
            families = workers.collect()
        else:
            families = _LOCAL.collect()
        for family in families:
            if family.name not in self.skip:
                yield family


class _State:
    """What ``MODEL_DIR`` (and Redis) say now: served versions, jobs, training durations."""

    def __init__(self, store, jobs):
        self.store, self.jobs = store, jobs

    def collect(self):
        yield self._served()
        yield self._jobs()
        durations = getattr(self.jobs, "training_durations", None)
        if durations is not None:       # scale-out: every replica's, from Redis
            yield _durations(durations())

    def _served(self) -> InfoMetricFamily:
        base = self.store.base
        info = InfoMetricFamily("uie_served_model", "The model version each project is served by",
                                labels=["project"])
        info.add_metric(["_base"], {"version": base.version, "kind": base.kind})
        for project in self.store.projects():
            version = self.store.current_version(project) or base.version
            kind = "trained" if version != base.version else base.kind
            info.add_metric([project], {"version": version, "kind": kind})
        return info

    def _jobs(self) -> GaugeMetricFamily:
        counts = self.jobs.summary()
        jobs = GaugeMetricFamily("uie_jobs", "Training jobs kept on disk, by state", labels=["state"])
        for state in sorted(set(STATES) | set(counts)):
            jobs.add_metric([state], counts.get(state, 0))
        return jobs


def _durations(by_state: dict) -> HistogramMetricFamily:
    family = HistogramMetricFamily(TRAINING, "Duration of finished training jobs, by outcome",
                                   labels=["state"])
    for state, h in by_state.items():
        family.add_metric([state], [(_bound(b), c) for b, c in h["buckets"]], h["sum"])
    return family


def _bound(value) -> str:
    return "+Inf" if value == float("inf") else repr(float(value))


def registry(store, jobs) -> CollectorRegistry:
    """Every metric: the counted ones and those read from ``MODEL_DIR`` (and Redis) now."""
    out = CollectorRegistry(auto_describe=False)
    cluster_durations = hasattr(jobs, "training_durations")
    out.register(_Counted(skip={TRAINING} if cluster_durations else ()))
    out.register(_State(store, jobs))
    return out


def render(store, jobs) -> tuple[bytes, str]:
    """The exposition of every metric and its content type."""
    return generate_latest(registry(store, jobs)), CONTENT_TYPE_PLAIN_0_0_4   # what every Prometheus reads


def as_json(store, jobs) -> dict:
    """``GET /metrics?format=json``: the samples of ``render`` and their totals (see above)."""
    samples = _samples(registry(store, jobs))
    counted_in = "every gunicorn worker of this replica" if multiprocess() else "this process"
    return {"counted_in": counted_in, **_totals(samples), "samples": samples}


def _samples(source: CollectorRegistry) -> dict[str, list[dict]]:
    """Each sample name's ``{"labels", "value"}`` list, ``*_created`` left out."""
    out: dict[str, list[dict]] = {}
    for family in source.collect():
        for sample in family.samples:
            if not sample.name.endswith("_created"):
                out.setdefault(sample.name, []).append({"labels": sample.labels, "value": sample.value})
    return out


def _totals(samples: dict[str, list[dict]]) -> dict:
    requests = samples.get("uie_http_requests_total", ())
    return {"predict_requests": int(_sum(requests, _predict_ok)),
            "predicted_tasks": int(_sum(samples.get("uie_predicted_tasks_total", ()))),
            "predicted_regions": int(_sum(samples.get("uie_predicted_regions_total", ()))),
            "predict_seconds": round(_sum(samples.get("uie_http_request_duration_seconds_sum", ()),
                                          _predict_ok), 3),
            "errors_4xx": int(_sum(requests, lambda labels: labels["status"].startswith("4"))),
            "errors_5xx": int(_sum(requests, lambda labels: labels["status"].startswith("5"))),
            "jobs": {s["labels"]["state"]: int(s["value"]) for s in samples.get("uie_jobs", ())}}


def _sum(samples, where=lambda labels: True) -> float:
    return sum(s["value"] for s in samples if where(s["labels"]))


def _predict_ok(labels: dict) -> bool:
    return (labels["endpoint"], labels["method"], labels["status"]) == ("/predict", "POST", "200")
