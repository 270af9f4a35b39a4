"""The endpoints Label Studio 1.23 calls (see the README): ``/health``, ``/setup``,
``/predict``, ``/train``, ``/versions``, ``/jobs``, ``/metrics``; ``/webhook`` is
``service/webhooks.py``.

They are module-level views on the ``api`` blueprint and find the process-wide parts
through ``request_guards.parts()``; ``_wsgi.create_app`` wires them together. A view
checks its input (400 with ``{"error": ...}``) and hands the work to a
``UIEBackend`` for the project, which reads the model store once per request.
"""

from __future__ import annotations

import logging
import socket

from flask import Blueprint, current_app, jsonify, request
from werkzeug.exceptions import BadRequest, RequestEntityTooLarge

import service.metrics
from label_config import LabelConfigError
from my_ml_backend import UIEBackend
from service.projects import project_key
from service.request_guards import credentials_match, json_body, parts

log = logging.getLogger("uie-backend")
api = Blueprint("uie", __name__)


# -- what the views share ------------------------------------------------------------
def project_of(raw) -> str:
    """The project a request names (``service.projects.project_key``); 400 when it names none."""
    try:
        return project_key(raw)
    except ValueError as exc:
        raise BadRequest(str(exc)) from None


def _optional_str(body: dict, key: str, what: str) -> str | None:
    value = body.get(key)
    if value is not None and not isinstance(value, str):
        raise BadRequest(f"'{key}' must be {what}")
    return value


def backend_for(project: str, label_config: str | None = None) -> UIEBackend:
    """The project's ``UIEBackend``, with ``label_config`` or the one stored for it."""
    ext = parts()
    if label_config is None:
        label_config = ext["annotations"].label_config(project)
    return UIEBackend(ext["store"], project, label_config, ext["jobs"])


def keep_label_config(project: str, label_config: str):
    """Store a project's label config; 422 when it cannot be stored (not valid Unicode)."""
    try:
        parts()["annotations"].set_label_config(project, label_config)
    except ValueError as exc:
        raise LabelConfigError(str(exc)) from None


# -- /health ---------------------------------------------------------------------
@api.get("/")
@api.get("/health")
def health():
    """UP, and which model serves. Paths and error texts only to whom may see them:
    everyone when basic auth is off, else the authenticated (``/health`` is open)."""
    ext = parts()
    store, settings = ext["store"], ext["settings"]
    base = store.base
    engines = store.engines()
    model = {"uie_model": settings.uie_model, "kind": base.kind, "path": base.path,
             "fallback": bool(base.fallback_reason), "fallback_reason": base.fallback_reason or None,
             **engines.get(base.path, {})}
    details = {"loaded_models": engines, "problems": store.problems()}
    _queue_health(ext, details)     # scale-out mode: RQ workers alive, Redis, spooled webhooks
    missing = {} if "redis" in details["problems"] else _labels_without_examples(store.projects())
    details["labels_without_examples"] = {p: m for p, m in missing.items() if m and any(m.values())}
    if settings.basic_auth_user and not credentials_match(request.authorization, settings):
        model = {k: v for k, v in model.items() if k in ("uie_model", "kind", "fallback", "engine",
                                                         "threads", "device", "precision")}
        details = {"problems": sorted(details["problems"]),     # which projects, not why
                   "labels_without_examples": sorted(details["labels_without_examples"])}
    return jsonify(status="UP", model_class=UIEBackend.__name__, model_version=base.version,
                   model=model, device=store.device, **details)


def _labels_without_examples(projects) -> dict:
    """``{project: ModelStore.labels_without_examples}`` against each project's stored label
    config (None where not known). Nothing is read while the scale-out mode holds Redis to
    be down, nor after the first config that cannot be read: an outage must not cost
    ``/health`` or ``/versions`` one timeout per project."""
    ext = parts()
    out = dict.fromkeys(projects)
    spool = ext.get("spool")
    if spool is not None and spool.breaker.is_open():
        return out
    for project in projects:
        try:
            label_config = ext["annotations"].label_config(project)
        except Exception:   # noqa: BLE001  (Redis down, a damaged store: the rest still answers)
            log.warning("the label configs cannot be read; labels_without_examples left out", exc_info=True)
            break
        out[project] = ext["store"].labels_without_examples(project, label_config)
    return out


def _queue_health(ext: dict, details: dict):
    """Add the scale-out mode's ``workers``, ``queued_jobs``, ``spooled_webhooks`` and problems."""
    if "queue_health" not in ext:
        return
    queue = ext["queue_health"]()
    details["problems"].update(queue.pop("problems"))
    details.update(queue, spooled_webhooks=ext["spool"].total_waiting())


# -- /setup, /predict --------------------------------------------------------------
@api.post("/setup")
def setup():
    body = json_body()
    project = project_of(body.get("project"))
    schema = _optional_str(body, "schema", "the label config XML string")
    version = backend_for(project, schema).setup()
    if schema:
        keep_label_config(project, schema)
    return jsonify(model_version=version)


@api.post("/predict")
def predict():
    body = json_body()
    tasks = body.get("tasks")
    if tasks is None:
        raise BadRequest("'tasks' is missing")
    if not isinstance(tasks, list):
        raise BadRequest("'tasks' must be a list of tasks")
    label_config = _optional_str(body, "label_config", "the label config XML string")
    params = body.get("params")
    if params is not None and not isinstance(params, dict):
        raise BadRequest("'params' must be an object")
    project = project_of(body.get("project"))
    model = backend_for(project, label_config)
    if not model.label_config:
        raise BadRequest("'label_config' is missing and no /setup was received for this project")
    _check_predict_size(len(tasks), model)
    context = (params or {}).get("context")
    results = model.predict(tasks, context=context)   # reads the store once
    regions = sum(len(r["result"]) for r in results)
    service.metrics.observe_prediction(project, len(tasks), regions)
    _remember_suggestions(project, model, tasks, results, context)
    return jsonify(results=results, model_version=results[0]["model_version"] if results
                   else model.model_version)


def _remember_suggestions(project: str, model: UIEBackend, tasks: list, results: list[dict], context):
    """Keep what ``/predict`` suggested for each task with an id, and the task's text, in one
    write (``remember_suggestions``): a training job trains the regions an annotator deletes or
    relabels as negatives (README, *Learning from corrections*), and a small scratch project's
    job learns LAC's names on the texts (README, *Training a scratch model*). An interactive answer is
    partial and not kept. Never fails nor holds up the request: an error is logged; in the
    scale-out mode nothing is written while Redis is held to be down (the webhook spool's
    breaker, which an unreachable Redis here opens too)."""
    if context or not results:
        return
    from service.corrections import suggested_items

    ext = parts()
    spool = ext.get("spool")
    if spool is not None and spool.breaker.is_open():
        return
    try:
        suggested = [(task.get("id"), suggested_items(result["result"]), model.text_of(task))
                     for task, result in zip(tasks, results) if isinstance(task, dict)]
        ext["annotations"].remember_suggestions(project, results[0]["model_version"], suggested)
    except Exception as exc:   # noqa: BLE001  a prediction never fails for it
        if spool is not None and isinstance(exc, spool.down_errors):
            spool.breaker.failed()
        log.warning("project %s: the suggestions of /predict were not remembered", project, exc_info=True)


def _check_predict_size(n_tasks: int, model: UIEBackend):
    """413 past ``MAX_TASKS_PER_REQUEST`` tasks; and arm ``model`` for the rest.

    ``MAX_QUERIES_PER_REQUEST`` bounds the model inputs (windows x prompts, the
    relation round's included): ``model.predict`` counts them before each round
    runs, and answers 413 (``TooManyInputs``) past it. ``model.client_gone`` lets
    it stop between two pieces of work once the client has closed its connection
    (Label Studio gives up after 100 s).
    """
    settings = parts()["settings"]
    if n_tasks > settings.max_tasks_per_request:
        raise RequestEntityTooLarge(
            f"{n_tasks} tasks in one request; at most MAX_TASKS_PER_REQUEST="
            f"{settings.max_tasks_per_request}: send fewer tasks at a time")
    model.client_gone = _client_gone_probe()


def _client_gone_probe():
    """A function telling whether this request's client has closed its connection, or
    None when the server does not say which socket it is (gunicorn and Flask's
    development server do).

    It peeks at the socket without waiting: end of stream (the client closed it) or a
    reset is gone; nothing to read yet, or the next pipelined request, is still there.
    A socket that cannot be peeked at (TLS) never counts as gone.
    """
    sock = request.environ.get("gunicorn.socket") or request.environ.get("werkzeug.socket")
    if sock is None or not hasattr(sock, "recv"):
        return None

    def gone() -> bool:
        try:
            return sock.recv(1, socket.MSG_PEEK | socket.MSG_DONTWAIT) == b""
        except (BlockingIOError, InterruptedError):
            return False
        except (ConnectionResetError, ConnectionAbortedError, BrokenPipeError):
            return True
        except (OSError, ValueError):
            return False

    return gone


# -- /train, /versions, /jobs, /metrics ------------------------------------------------
@api.post("/train")
def train():
    body = json_body()
    tasks = body.get("annotations")
    if tasks is not None and not isinstance(tasks, list):
        raise BadRequest("'annotations' must be a list of tasks with their annotations")
    project = project_of(body.get("project"))
    label_config = body.get("label_config")
    if isinstance(label_config, str):
        keep_label_config(project, label_config)
    job = backend_for(project).fit("TRAIN", {"tasks": tasks})
    return jsonify(status="ok", job=job), 201


@api.get("/versions")
def versions():
    """Read from ``current``, each version's ``meta.json`` and the projects' label configs
    (``labels_without_examples``): no model is loaded (Label Studio asks without
    ``project``, with a 3 s timeout)."""
    store = parts()["store"]
    project = request.args.get("project")
    projects = [project_of(project)] if project else store.projects()
    missing = _labels_without_examples(projects)
    details = {p: {"current": store.served_version(p), "versions": store.versions(p),
                   "labels_without_examples": missing[p]} for p in projects}
    names = [store.base.version] + [v["model_version"] for d in details.values()
                                    for v in d["versions"]]
    return jsonify(versions=list(dict.fromkeys(names)), base=store.base.version,
                   projects=details)


@api.get("/jobs")
def job_list():
    project = request.args.get("project")
    return jsonify(jobs=parts()["jobs"].list(project_of(project) if project else None))


@api.get("/metrics")
def metrics_view():
    """Prometheus' text format; ``?format=json``: the same samples and their totals, as JSON
    (``service.metrics.as_json``)."""
    ext = parts()
    if request.args.get("format") == "json":
        return jsonify(service.metrics.as_json(ext["store"], ext["jobs"]))
    body, content_type = service.metrics.render(ext["store"], ext["jobs"])
    return current_app.response_class(body, content_type=content_type)
