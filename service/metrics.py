"""``GET /metrics`` in Prometheus' text format (``prometheus_client``).

Counted in the serving processes, correct across gunicorn workers: with
``PROMETHEUS_MULTIPROC_DIR`` set (``gunicorn.conf.py`` sets it up before the
workers fork, and marks each dead worker's files), every worker writes its
counts there and a scrape of any worker adds them all up; without it (the dev
server, tests) they are this process's.

- ``uie_http_requests_total{endpoint, method, status}`` and
  ``uie_http_request_duration_seconds{endpoint, method, status}`` (histogram);
  ``endpoint`` is the route (``/predict``), or ``other`` for unknown paths;
- ``uie_predicted_tasks_total{project}``, ``uie_predicted_regions_total{project}``: the
  ``MAX_PROJECT_LABELS`` most recently predicted projects by name, every other one added up
  in ``project="_other"`` (project ids come from the requests: unbounded);

read from ``MODEL_DIR`` (and Redis) at each scrape, the same on every worker and replica:

- ``uie_served_model_info{project, version}``: the version each project is served by
  (``project="_base"`` for the base model), as far as known without loading a model (a
  version that failed to load is replaced by the one served instead); for the same
  ``MAX_PROJECT_LABELS`` projects (the most recently predicted, then the most recently
  promoted); ``uie_metrics_projects_folded{metric}`` counts the projects left out or
  added up in ``_other``;
- ``uie_version_label_{precision,recall,f1}{project, label, kind}``: the served version's
  scores per Label Studio label (``kind="label"``) and relation (``"relation"``), from its
  ``meta.json`` (``per_label``), for the same projects as ``uie_served_model_info``;
- ``uie_jobs{state}``: training jobs kept per state (queued, running, failed, done);
- each running job's progress (``JOB_GAUGES``, from its ``progress.json`` through the job
  records): ``uie_job_phase{project, phase}`` (1), ``uie_job_progress_ratio{project}`` (the
  phase's steps done), ``uie_job_eta_seconds{project}``, ``uie_job_best_dev_f1{project}``;
  for ``MAX_PROJECT_LABELS`` projects (most recently predicted, then started), the others
  counted in ``uie_metrics_projects_folded{metric="uie_job"}``;
- ``uie_training_duration_seconds{state}`` (histogram): how long finished jobs ran, by
  outcome: counted by the process that ran the job (embedded), or in Redis for every
  replica (scale-out);
- ``uie_metrics_source_up{source="redis"}`` (scale-out): 0 when Redis could not be read at
  this scrape: the scrape still answers, without the durations, and ``uie_jobs`` from
  ``MODEL_DIR`` alone (lapsed leases not reaped).

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

import logging
import os
import time

from prometheus_client import (CONTENT_TYPE_PLAIN_0_0_4, CollectorRegistry, Counter, Gauge, Histogram,
                               generate_latest)
from prometheus_client.core import GaugeMetricFamily, HistogramMetricFamily, InfoMetricFamily
from prometheus_client.metrics_core import Metric

import files
from service.job_records import STATES
from service.jobs import TRAINING_BUCKETS

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300)
TRAINING = "uie_training_duration_seconds"
MAX_PROJECT_LABELS = 50     # default of the projects named in labels (``Settings.metrics_max_projects`` if set)
OTHER = "_other"
LAST_ACTIVE = "uie_project_last_predicted_timestamp_seconds"   # ranks projects; never exposed
PER_PROJECT = ("uie_predicted_tasks", "uie_predicted_regions")
JOB_GAUGES = (    # running jobs' progress: (name, help, labels)
    ("uie_job_phase", "1 for the phase each running job is in (gathering, converting, training, "
     "exporting, evaluating, promoting)", ["project", "phase"]),
    ("uie_job_progress_ratio", "Share of the current phase's steps a running job has done", ["project"]),
    ("uie_job_eta_seconds", "Estimated seconds left in a running job's phase (from the time per step)",
     ["project"]),
    ("uie_job_best_dev_f1", "Best dev F1 a running job's training has reached so far", ["project"]),
)

log = logging.getLogger(__name__)

# Process-wide (registered in _LOCAL; in multiprocess mode their values go to files).
_LOCAL = CollectorRegistry(auto_describe=True)
REQUESTS = Counter("uie_http_requests", "HTTP requests answered, by route and status",
                   ["endpoint", "method", "status"], registry=_LOCAL)
LATENCY = Histogram("uie_http_request_duration_seconds", "Time to answer an HTTP request",
                    ["endpoint", "method", "status"], buckets=LATENCY_BUCKETS, registry=_LOCAL)
TASKS = Counter("uie_predicted_tasks", "Tasks predicted by /predict", ["project"], registry=_LOCAL)
REGIONS = Counter("uie_predicted_regions", "Regions (spans) predicted by /predict", ["project"],
                  registry=_LOCAL)
PREDICTED_AT = Gauge(LAST_ACTIVE, "When a project was last predicted (ranks the projects named)",
                     ["project"], multiprocess_mode="max", registry=_LOCAL)
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
    PREDICTED_AT.labels(project).set(time.time())


def observe_training(project: str, state: str, seconds: float):
    """``JobRunner.on_finish`` of the embedded mode."""
    TRAINING_SECONDS.labels(state).observe(seconds)


class _Scrape:
    """One scrape: the process-wide metrics (this process's, or every worker's in
    multiprocess mode), collected once, and which projects are named in labels."""

    def __init__(self, max_projects: int):
        self.max_projects = max(1, int(max_projects))
        self._families = None

    def families(self) -> list:
        if self._families is None:
            if multiprocess():
                from prometheus_client import multiprocess as mp

                workers = CollectorRegistry()
                mp.MultiProcessCollector(workers)
                self._families = list(workers.collect())
            else:
                self._families = list(_LOCAL.collect())
        return self._families

    def last_predicted(self) -> dict[str, float]:
        """project -> when it was last predicted."""
        return {sample.labels["project"]: sample.value for family in self.families()
                if family.name == LAST_ACTIVE for sample in family.samples}

    def predicted(self) -> tuple[set, set]:
        """``(every project predicted, those named in labels)``."""
        projects = {sample.labels["project"] for family in self.families() if family.name in PER_PROJECT
                    for sample in family.samples}
        return projects, set(self.named(projects))

    def named(self, projects, fallback_rank=None) -> list[str]:
        """The ``max_projects`` of ``projects`` most recently predicted (then by
        ``fallback_rank``, higher first), in that order."""
        last = self.last_predicted()
        rank = fallback_rank or (lambda project: 0.0)
        ordered = sorted(projects, key=lambda p: (-last.get(p, 0.0), -rank(p), p))
        return ordered[: self.max_projects]


class _Counted:
    """The process-wide metrics, the project label bounded (``_bounded``)."""

    def __init__(self, scrape: _Scrape, skip=()):
        self.scrape = scrape
        self.skip = set(skip) | {LAST_ACTIVE}

    def collect(self):
        projects, named = self.scrape.predicted()
        for family in self.scrape.families():
            if family.name in self.skip:
                continue
            yield _bounded(family, named) if family.name in PER_PROJECT else family


def _bounded(family, named: set):
    """``family`` with the samples of projects not in ``named`` added up as ``project="_other"``."""
    out = Metric(family.name, family.documentation, family.type, family.unit)
    other: dict[str, float] = {}
    for sample in family.samples:
        if sample.labels.get("project") in named:
            out.add_sample(sample.name, sample.labels, sample.value, sample.timestamp)
        elif sample.name.endswith("_created"):
            other[sample.name] = min(other.get(sample.name, sample.value), sample.value)
        else:
            other[sample.name] = other.get(sample.name, 0.0) + sample.value
    for name, value in other.items():
        out.add_sample(name, {"project": OTHER}, value)
    return out


class _State:
    """What ``MODEL_DIR`` (and Redis) say now: served versions, jobs, training durations."""

    def __init__(self, store, jobs, scrape: _Scrape):
        self.store, self.jobs, self.scrape = store, jobs, scrape
        self._folded_jobs = 0

    def collect(self):
        yield from self._running()      # first: _served counts the jobs left out
        yield from self._served()
        durations = getattr(self.jobs, "training_durations", None)
        if durations is None:           # embedded: MODEL_DIR only
            yield self._jobs(self.jobs.summary)
            return
        redis_up = True                 # scale-out: Redis may be down; answer without it
        try:
            summary = self.jobs.summary     # reaps lapsed leases (Redis) first
            counts = summary()
        except Exception as exc:   # noqa: BLE001  (any Redis failure)
            redis_up = False
            log.warning("/metrics: Redis cannot be read (%s: %s); answering without it",
                        type(exc).__name__, exc)
            counts = self.jobs.records.summary()
        yield self._jobs(lambda: counts)
        if redis_up:
            try:
                by_state = durations()
            except Exception as exc:   # noqa: BLE001
                redis_up = False
                log.warning("/metrics: Redis cannot be read (%s: %s); answering without it",
                            type(exc).__name__, exc)
            else:
                yield _durations(by_state)
        up = GaugeMetricFamily("uie_metrics_source_up", "Whether a source of /metrics could be "
                               "read at this scrape (1) or was left out (0)", labels=["source"])
        up.add_metric(["redis"], 1 if redis_up else 0)
        yield up

    def _served(self):
        base = self.store.base
        info = InfoMetricFamily("uie_served_model", "The model version each project is served by",
                                labels=["project"])
        info.add_metric(["_base"], {"version": base.version, "kind": base.kind})
        projects = self.store.projects()
        named = self.scrape.named(projects, fallback_rank=self._promoted_at)
        for project in sorted(named):
            version = self.store.served_version(project)
            kind = "trained" if version != base.version else base.kind
            info.add_metric([project], {"version": version, "kind": kind})
        yield info
        predicted, predicted_named = self.scrape.predicted()
        folded = GaugeMetricFamily("uie_metrics_projects_folded",
                                   "Projects not named in a metric's project label (added up in "
                                   "project=\"_other\", or left out)", labels=["metric"])
        folded.add_metric(["uie_predicted"], len(predicted - predicted_named))
        folded.add_metric(["uie_served_model_info"], len(projects) - len(named))
        folded.add_metric(["uie_job"], self._folded_jobs)
        yield folded
        yield from _label_quality({p: self._served_meta(p) for p in sorted(named)})

    def _served_meta(self, project: str) -> dict:
        """The ``meta.json`` of the version serving ``project`` ({} for the base model or unreadable)."""
        version = self.store.served_version(project)
        if version == self.store.base.version:
            return {}
        try:
            return files.read_json_object(self.store.project_dir(project) / version / "meta.json")
        except ValueError:
            return {}

    def _running(self):
        """Gauges of each running job's progress (``JobRecords`` merges its ``progress.json``):
        for the ``max_projects`` projects most recently predicted, then most recently started."""
        jobs = {j["project"]: j for j in self.jobs.records.list() if j.get("state") == "running"}
        named = self.scrape.named(jobs, fallback_rank=lambda p: jobs[p].get("started") or 0.0)
        self._folded_jobs = len(jobs) - len(named)
        families = {name: GaugeMetricFamily(name, doc, labels=labels) for name, doc, labels in JOB_GAUGES}
        for project in sorted(named):
            progress = jobs[project].get("progress") or {}
            families["uie_job_phase"].add_metric([project, progress.get("phase") or "starting"], 1)
            for name, key in (("uie_job_progress_ratio", "ratio"), ("uie_job_eta_seconds", "eta_seconds"),
                              ("uie_job_best_dev_f1", "best_dev_f1")):
                if isinstance(progress.get(key), (int, float)):
                    families[name].add_metric([project], progress[key])
        yield from families.values()

    def _promoted_at(self, project: str) -> float:
        try:
            return (self.store.project_dir(project) / "current").stat().st_mtime
        except OSError:
            return 0.0

    def _jobs(self, summary) -> GaugeMetricFamily:
        counts = summary()
        jobs = GaugeMetricFamily("uie_jobs", "Training jobs kept on disk, by state", labels=["state"])
        for state in sorted(set(STATES) | set(counts)):
            jobs.add_metric([state], counts.get(state, 0))
        return jobs


def _label_quality(metas: dict) -> list:
    """``uie_version_label_{precision,recall,f1}{project,label,kind}`` of each project's served
    version, from its ``meta.json``'s ``per_label`` (kind: ``label``, ``relation``, ``prompt``)."""
    families = [GaugeMetricFamily(f"uie_version_label_{m}", f"The served version's {m} on its held-out "
                                  "annotations (or training ones), per Label Studio label or relation",
                                  labels=["project", "label", "kind"]) for m in ("precision", "recall", "f1")]
    for project, meta in metas.items():
        per_label = meta.get("per_label")
        for kind, names in (per_label.items() if isinstance(per_label, dict) else ()):
            for name, scores in (names.items() if isinstance(names, dict) else ()):
                for family, m in zip(families, ("precision", "recall", "f1")):
                    if isinstance(scores, dict) and isinstance(scores.get(m), (int, float)):
                        family.add_metric([project, name, kind.rstrip("s")], scores[m])
    return families


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
    scrape = _Scrape(getattr(store.settings, "metrics_max_projects", None) or MAX_PROJECT_LABELS)
    out.register(_Counted(scrape, skip={TRAINING} if cluster_durations else ()))
    out.register(_State(store, jobs, scrape))
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
