"""HTTP layer: the Flask app Label Studio connects to, its gunicorn entry, the dev server.

    gunicorn -c gunicorn.conf.py _wsgi:app        # what `make run` does
    python _wsgi.py --host 127.0.0.1 --port 9090  # Flask's development server
    label-studio-ml start <this directory>        # the tutorial's command: runs the line above

Endpoints follow what Label Studio 1.23 sends (see the README): ``/health``,
``/setup``, ``/predict``, ``/webhook``, ``/train``, ``/versions``, ``/jobs``,
``/metrics``. They are module-level views on the ``api`` blueprint and find
the process-wide parts in ``current_app.extensions["uie"]``; ``create_app``
only wires them together. Bad input is answered 4xx with ``{"error": ...}``;
an unexpected error 500 with a request id only (the details go to the log).
"""

from __future__ import annotations

import argparse
import base64
import binascii
import hmac
import json
import logging
import os
import re
import socket
import sys
import threading
import time
import uuid

from flask import Blueprint, Flask, current_app, g, has_request_context, jsonify, request
from flask.json.provider import DefaultJSONProvider
from werkzeug.exceptions import BadRequest, HTTPException, RequestEntityTooLarge, UnsupportedMediaType

import service.metrics
from label_config import LabelConfigError
from my_ml_backend import UIEBackend
from projects import project_key
from settings import ConfigError, Settings

log = logging.getLogger("uie-backend")
api = Blueprint("uie", __name__)

OPEN_PATHS = ("/", "/health")     # answered without basic auth (Label Studio's health check)
MAX_JSON_DEPTH = 100               # Label Studio's requests nest about 8 levels deep
_SURROGATE = re.compile("[\ud800-\udfff]")


class JSONProvider(DefaultJSONProvider):
    """UTF-8 JSON answers in the given key order.

    A string holding a lone surrogate (which JSON input may carry as
    ``"\\ud800"`` but UTF-8 cannot) makes the whole answer ASCII-escaped
    instead of failing to encode.
    """

    ensure_ascii = False
    sort_keys = False

    def dumps(self, obj, **kwargs) -> str:
        text = super().dumps(obj, **kwargs)
        if _SURROGATE.search(text):
            text = super().dumps(obj, **dict(kwargs, ensure_ascii=True))
        return text


# -- request parsing ------------------------------------------------------------
def _ext() -> dict:
    """The app's process-wide parts: store, annotations, jobs, settings."""
    return current_app.extensions["uie"]


def _json_body() -> dict:
    """The request body as a JSON object (400 otherwise; 413 past ``MAX_REQUEST_MB``)."""
    try:
        data = _body_bytes()
    except RequestEntityTooLarge:
        raise RequestEntityTooLarge(f"the request body is larger than MAX_REQUEST_MB="
                                    f"{_ext()['settings'].max_request_mb} MB") from None
    try:
        body = json.loads(data)
    except RecursionError:
        raise BadRequest(f"request body is nested more than {MAX_JSON_DEPTH} levels deep") from None
    except ValueError:          # also bytes that are not UTF-8
        raise BadRequest("request body is not valid JSON") from None
    if not isinstance(body, dict):
        raise BadRequest("request body must be a JSON object")
    _check_depth(body)
    return body


def _body_bytes() -> bytes:
    """The whole request body; ``RequestEntityTooLarge`` past ``MAX_CONTENT_LENGTH``.

    A body with a ``Content-Length`` over the limit is refused by werkzeug unread. A
    chunked one (no ``Content-Length``) werkzeug reads up to the limit and stops there
    without a word, as if the body ended: whatever came after would be cut off and the
    prefix served. So one more byte is asked of the server's own stream; there is one
    when the body is longer than the limit.
    """
    data = request.get_data(cache=True)
    limit = current_app.config["MAX_CONTENT_LENGTH"]
    if request.content_length is None and limit is not None and len(data) >= limit:
        stream = request.environ.get("wsgi.input")
        if stream is not None and stream.read(1):
            raise RequestEntityTooLarge()
    return data


def _check_depth(value, limit=MAX_JSON_DEPTH):
    """400 when ``value`` nests lists/objects deeper than ``limit`` (no recursion)."""
    stack = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        if depth > limit:
            raise BadRequest(f"request body is nested more than {limit} levels deep")
        children = item.values() if isinstance(item, dict) else item
        stack.extend((child, depth + 1) for child in children if isinstance(child, (dict, list)))


def _project(raw) -> str:
    try:
        return project_key(raw)
    except ValueError as exc:
        raise BadRequest(str(exc)) from None


def _optional_str(body: dict, key: str, what: str) -> str | None:
    value = body.get(key)
    if value is not None and not isinstance(value, str):
        raise BadRequest(f"'{key}' must be {what}")
    return value


def _backend(project: str, label_config: str | None = None) -> UIEBackend:
    ext = _ext()
    if label_config is None:
        label_config = ext["annotations"].label_config(project)
    return UIEBackend(ext["store"], project, label_config, ext["jobs"])


def _keep_label_config(project: str, label_config: str):
    """Store a project's label config; 422 when it cannot be stored (not valid Unicode)."""
    try:
        _ext()["annotations"].set_label_config(project, label_config)
    except ValueError as exc:
        raise LabelConfigError(str(exc)) from None


# -- views ----------------------------------------------------------------------
@api.get("/")
@api.get("/health")
def health():
    """UP, and which model serves. Paths and error texts only to whom may see them:
    everyone when basic auth is off, else the authenticated (``/health`` is open)."""
    ext = _ext()
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
    if settings.basic_auth_user and not _credentials_match(request.authorization, settings):
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
    ext = _ext()
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


@api.post("/setup")
def setup():
    body = _json_body()
    project = _project(body.get("project"))
    schema = _optional_str(body, "schema", "the label config XML string")
    version = _backend(project, schema).setup()
    if schema:
        _keep_label_config(project, schema)
    return jsonify(model_version=version)


@api.post("/predict")
def predict():
    body = _json_body()
    tasks = body.get("tasks")
    if tasks is None:
        raise BadRequest("'tasks' is missing")
    if not isinstance(tasks, list):
        raise BadRequest("'tasks' must be a list of tasks")
    label_config = _optional_str(body, "label_config", "the label config XML string")
    params = body.get("params")
    if params is not None and not isinstance(params, dict):
        raise BadRequest("'params' must be an object")
    project = _project(body.get("project"))
    model = _backend(project, label_config)
    if not model.label_config:
        raise BadRequest("'label_config' is missing and no /setup was received for this project")
    _check_predict_size(len(tasks), model)
    context = (params or {}).get("context")
    results = model.predict(tasks, context=context)   # reads the store once
    regions = sum(len(r["result"]) for r in results)
    service.metrics.observe_prediction(project, len(tasks), regions)
    _remember_suggestions(project, tasks, results, context)
    return jsonify(results=results, model_version=results[0]["model_version"] if results
                   else model.model_version)


def _remember_suggestions(project: str, tasks: list, results: list[dict], context):
    """Keep what ``/predict`` suggested for each task with an id, in one write
    (``remember_suggestions``): a training job trains the regions an annotator deletes or
    relabels as negatives (README, *Learning from corrections*). An interactive answer is
    partial and not kept. Never fails nor holds up the request: an error is logged; in the
    scale-out mode nothing is written while Redis is held to be down (the webhook spool's
    breaker, which an unreachable Redis here opens too)."""
    if context or not results:
        return
    from service.corrections import suggested_items

    ext = _ext()
    spool = ext.get("spool")
    if spool is not None and spool.breaker.is_open():
        return
    try:
        suggested = [(task.get("id"), suggested_items(result["result"]))
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
    settings = _ext()["settings"]
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


@api.post("/webhook")
def webhook():
    """Apply a webhook; in the scale-out mode, while Redis is unreachable (or older events
    wait in the spool), keep it durably under ``MODEL_DIR/_spool`` and answer 200
    ``"status": "spooled"``: Label Studio never sends a webhook twice."""
    body = _json_body()
    action = body.get("action")
    if not isinstance(action, str):
        raise BadRequest("'action' is missing")
    project = _project(body.get("project"))
    check = WEBHOOK_CHECKS.get(action)
    if check is not None:
        check(action, body)         # 400 for a bad event, before anything is kept
    spool = _ext().get("spool")
    if spool is None:
        return jsonify(_apply_webhook(body))
    spool.start()               # its replayer also adopts the spools of processes that died
    if not spool.should_spool():
        try:
            answer = _apply_webhook(body)
            spool.breaker.succeeded()
            return jsonify(answer)
        except spool.down_errors as exc:
            spool.breaker.failed()
            log.warning("project %s: Redis unreachable, %s webhook spooled: %s", project, action, exc)
    waiting = spool.add(body)
    return jsonify(status="spooled", action=action, project=project, waiting=waiting)


def _apply_webhook(body: dict) -> dict:
    """What a webhook changes (checked already): its label config, then its action's handler."""
    action = body["action"]
    project = _project(body.get("project"))
    answer = {"status": "ok", "action": action, "project": project}
    warning = _webhook_label_config(project, body.get("project"))
    if warning:
        answer["warning"] = warning
    handler = WEBHOOK_HANDLERS.get(action)
    if handler is None:
        answer["status"] = "ignored"
    else:
        answer["job"] = handler(project, action, body)
    return answer


def _replay_webhook(app: Flask, body: dict):
    """Apply a spooled webhook (``WebhookSpool``'s replayer thread)."""
    with app.app_context():
        _apply_webhook(body)


def _webhook_label_config(project: str, project_obj) -> str | None:
    """Keep the label config a webhook carries; a warning (not an error) if it cannot be kept."""
    config = project_obj.get("label_config") if isinstance(project_obj, dict) else None
    if not isinstance(config, str):
        return None
    try:
        _keep_label_config(project, config)
    except LabelConfigError as exc:
        log.warning("project %s: webhook label config not kept: %s", project, exc)
        return f"label config not kept: {exc}"
    return None


def _check_annotation_changed(action: str, body: dict):
    annotation, task = body.get("annotation"), body.get("task")
    if not isinstance(annotation, dict) or not isinstance(task, dict):
        raise BadRequest(f"{action} needs 'annotation' and 'task' objects")
    annotation_id = annotation.get("id")
    if isinstance(annotation_id, bool) or not isinstance(annotation_id, (int, str)) \
            or annotation_id == "":
        raise BadRequest(f"{action} needs 'annotation.id' (a number or a string)")


def _check_annotations_deleted(action: str, body: dict):
    if not isinstance(body.get("annotations"), list):
        raise BadRequest(f"{action} needs an 'annotations' list")


def _annotation_changed(project: str, action: str, body: dict):
    _check_annotation_changed(action, body)
    ext = _ext()
    stored = ext["annotations"].upsert(project, body["task"], body["annotation"])
    if stored is False:         # an older copy than the one kept, or a deleted annotation
        return None
    return ext["jobs"].annotation_changed(project, 1)


def _annotations_deleted(project: str, action: str, body: dict):
    _check_annotations_deleted(action, body)
    ids = [a.get("id") for a in body["annotations"] if isinstance(a, dict)]
    ext = _ext()
    ext["annotations"].delete(project, ids)
    return ext["jobs"].annotation_changed(project, len(ids))


def _start_training(project: str, action: str, body: dict):
    return _backend(project).fit(action)


WEBHOOK_HANDLERS = {"ANNOTATION_CREATED": _annotation_changed,
                    "ANNOTATION_UPDATED": _annotation_changed,
                    "ANNOTATIONS_DELETED": _annotations_deleted,
                    "START_TRAINING": _start_training}
WEBHOOK_CHECKS = {"ANNOTATION_CREATED": _check_annotation_changed,
                  "ANNOTATION_UPDATED": _check_annotation_changed,
                  "ANNOTATIONS_DELETED": _check_annotations_deleted}


@api.post("/train")
def train():
    body = _json_body()
    tasks = body.get("annotations")
    if tasks is not None and not isinstance(tasks, list):
        raise BadRequest("'annotations' must be a list of tasks with their annotations")
    project = _project(body.get("project"))
    label_config = body.get("label_config")
    if isinstance(label_config, str):
        _keep_label_config(project, label_config)
    job = _backend(project).fit("TRAIN", {"tasks": tasks})
    return jsonify(status="ok", job=job), 201


@api.get("/versions")
def versions():
    """Read from ``current``, each version's ``meta.json`` and the projects' label configs
    (``labels_without_examples``): no model is loaded (Label Studio asks without
    ``project``, with a 3 s timeout)."""
    store = _ext()["store"]
    project = request.args.get("project")
    projects = [_project(project)] if project else store.projects()
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
    return jsonify(jobs=_ext()["jobs"].list(_project(project) if project else None))


@api.get("/metrics")
def metrics_view():
    """Prometheus' text format; ``?format=json``: the same samples and their totals, as JSON
    (``service.metrics.as_json``)."""
    ext = _ext()
    if request.args.get("format") == "json":
        return jsonify(service.metrics.as_json(ext["store"], ext["jobs"]))
    body, content_type = service.metrics.render(ext["store"], ext["jobs"])
    return current_app.response_class(body, content_type=content_type)


# -- hooks and error handlers -------------------------------------------------------
def start_request():
    """Give every request an id: in the ``X-Request-Id`` answer header and the error log."""
    g.request_started = time.perf_counter()
    g.request_id = uuid.uuid4().hex[:16]


def count_request(response):
    """Count the request and its latency by route and status (``GET /metrics``)."""
    started = g.get("request_started")
    if started is not None:
        rule = request.url_rule.rule if request.url_rule is not None else "other"
        service.metrics.observe_request(rule, request.method, response.status_code,
                                       time.perf_counter() - started)
    return response


def check_auth():
    """401 unless the request carries ``BASIC_AUTH_USER``/``BASIC_AUTH_PASS`` (when set)."""
    settings = _ext()["settings"]
    if not settings.basic_auth_user or request.path in OPEN_PATHS:
        return None
    if _credentials_match(request.authorization, settings):
        return None
    response = jsonify(error="authentication required")
    response.status_code = 401
    response.headers["WWW-Authenticate"] = 'Basic realm="uie-backend", charset="UTF-8"'
    return response


def _credentials_match(auth, settings: Settings) -> bool:
    """Whether the request's basic credentials are ``BASIC_AUTH_USER``/``BASIC_AUTH_PASS``.

    ``auth`` is the ``Authorization`` header as a string; anything else (werkzeug's
    ``request.authorization``, None) means the current request's header. The decoded
    bytes are compared, in constant time, with both the UTF-8 and the Latin-1 bytes
    of the configured pair: RFC 7617 clients send UTF-8, requests' ``HTTPBasicAuth``
    (what Label Studio uses) Latin-1. werkzeug's own parsing drops the latter.
    """
    if not isinstance(auth, str):
        auth = request.headers.get("Authorization") if has_request_context() else None
    sent = _basic_credentials(auth)
    if sent is None:
        return False
    user_ok = _bytes_match(sent[0], settings.basic_auth_user)
    password_ok = _bytes_match(sent[1], settings.basic_auth_pass)
    return user_ok and password_ok


def _basic_credentials(header: str | None) -> tuple[bytes, bytes] | None:
    """``(user, password)`` bytes of a ``Basic`` ``Authorization`` header, or None."""
    scheme, _, token = (header or "").strip().partition(" ")
    if scheme.lower() != "basic":
        return None
    try:
        decoded = base64.b64decode(token.strip().encode("ascii"), validate=True)
    except (UnicodeEncodeError, binascii.Error):
        return None
    user, colon, password = decoded.partition(b":")
    return (user, password) if colon else None


def _bytes_match(sent: bytes, expected: str) -> bool:
    """``sent`` is ``expected`` as UTF-8 or as Latin-1; every encoding compared in constant
    time (``compare_digest`` refuses non-ASCII ``str``)."""
    match = False
    for encoded in _encodings(expected):
        match |= hmac.compare_digest(sent, encoded)
    return match


def _encodings(text: str) -> list[bytes]:
    """``text`` as UTF-8 and, when it can be, as Latin-1."""
    out = [_utf8(text)]
    try:
        out.append(text.encode("latin-1"))
    except UnicodeEncodeError:
        pass
    return out


def _utf8(text: str) -> bytes:
    return text.encode("utf-8", "surrogatepass")


def require_json():
    """415 for a body that is not declared ``application/json``.

    A web page can post ``text/plain`` or a form to any address without asking;
    ``application/json`` needs a CORS preflight, which this server never grants.
    """
    has_body = request.content_length or request.headers.get("Transfer-Encoding")
    if has_body and request.mimetype != "application/json":
        raise UnsupportedMediaType("the request body must be JSON sent with "
                                   "'Content-Type: application/json'")


def add_request_id(response):
    response.headers["X-Request-Id"] = _request_id()
    return response


def _request_id() -> str:
    return g.get("request_id") or "-"


def http_error(exc: HTTPException):
    return jsonify(error=exc.description), exc.code


def config_error(exc: LabelConfigError):
    return jsonify(error=str(exc)), 422


def unexpected_error(exc: Exception):
    """500 with a request id only; the exception and its traceback go to the log."""
    request_id = _request_id()
    log.exception("request %s: unexpected error on %s %s", request_id, request.method, request.path)
    return jsonify(error=f"internal error; the server log has the details under request id "
                         f"{request_id}", request_id=request_id), 500


# -- the app --------------------------------------------------------------------
def configure_logging(level: str):
    """Log at ``LOG_LEVEL`` through the root logger (gunicorn's stderr)."""
    root = logging.getLogger()
    if not root.handlers:
        handler = logging.StreamHandler()
        handler.setFormatter(logging.Formatter("[%(asctime)s] %(levelname)s %(name)s: %(message)s"))
        root.addHandler(handler)
    root.setLevel(level)


def create_app(settings: Settings | None = None) -> Flask:
    """Build the app: load the base model once, start the job runner, wire the views."""
    from service.model_store import ModelStore

    settings = settings or Settings.from_env()
    configure_logging(settings.log_level)
    store = ModelStore(settings)
    app = Flask(__name__)
    app.json = JSONProvider(app)
    app.config["MAX_CONTENT_LENGTH"] = settings.max_request_mb * 1024 * 1024
    parts = _scale_out_parts(app, settings, store) if settings.redis_url else _embedded_parts(store)
    app.extensions["uie"] = {"store": store, "settings": settings, **parts}
    app.before_request(start_request)      # in this order: id, auth, content type
    app.before_request(check_auth)
    app.before_request(require_json)
    app.after_request(add_request_id)
    app.after_request(count_request)
    app.register_error_handler(HTTPException, http_error)
    app.register_error_handler(LabelConfigError, config_error)
    app.register_error_handler(Exception, unexpected_error)
    app.register_blueprint(api)
    return app


def _embedded_parts(store) -> dict:
    """One machine: annotations in SQLite under ``MODEL_DIR``, jobs in this server's processes."""
    from service.annotation_store import AnnotationStore
    from service.jobs import JobRunner

    annotations = AnnotationStore(store.root / "annotations.sqlite3")
    return {"annotations": annotations,
            "jobs": JobRunner(store, annotations, on_finish=service.metrics.observe_training)}


def _scale_out_parts(app: Flask, settings: Settings, store) -> dict:
    """``REDIS_URL`` set: annotations in Redis, jobs on RQ workers, webhooks spooled on disk
    while Redis is down; Redis must answer at start (not on the first webhook)."""
    from service.job_queue import WEBHOOK_TIMEOUT, connect, queue_health, queue_runner
    from service.redis_annotation_store import RedisAnnotationStore
    from service.webhook_spool import WebhookSpool

    conn = connect(settings.redis_url)
    conn.ping()
    fast = connect(settings.redis_url, timeout=WEBHOOK_TIMEOUT)   # webhooks: fail fast, spool
    annotations = RedisAnnotationStore(fast)
    jobs = queue_runner(store, annotations, conn)
    spool = WebhookSpool(store.root, apply=lambda body: _replay_webhook(app, body))
    return {"annotations": annotations, "jobs": jobs, "spool": spool,
            "queue_health": lambda: queue_health(fast, jobs.records, spool.breaker)}


_app = None
_app_lock = threading.Lock()


def __getattr__(name):
    """``_wsgi.app`` is built on first access (gunicorn's ``_wsgi:app``), once."""
    global _app
    if name != "app":
        raise AttributeError(name)
    with _app_lock:
        if _app is None:
            _app = create_app()
    return _app


# -- the development server, with label-studio-ml 1.0.9's flags ---------------------------
def _key_value(text: str) -> tuple[str, str]:
    key, sep, value = text.partition("=")
    if not sep or not key.strip():
        raise argparse.ArgumentTypeError(f"{text!r} is not KEY=VAL")
    return key.strip(), value


def build_parser() -> argparse.ArgumentParser:
    """The flags of label-studio-ml 1.0.9's ``_wsgi.py`` template, mapped to settings.

    Every flag overrides the environment variable named in its help; the
    rest of the configuration comes from the environment as for gunicorn.
    """
    parser = argparse.ArgumentParser(
        description="UIE ML backend for Label Studio on Flask's development server "
                    "(`make run` serves it with gunicorn). Settings not given here come from "
                    "the environment; see the README.")
    parser.add_argument("-p", "--port", type=int, default=None,
                        help="port to listen on (PORT; default 9090)")
    parser.add_argument("--host", default=None,
                        help="address to listen on (HOST; default 127.0.0.1, not the template's "
                             "0.0.0.0: pass --host 0.0.0.0 to listen on every interface)")
    parser.add_argument("--kwargs", "--with", dest="kwargs", metavar="KEY=VAL", nargs="+",
                        type=_key_value, default=[],
                        help="any setting by name, case-insensitive: uie_model=uie-nano sets "
                             "UIE_MODEL (see the README's configuration table)")
    parser.add_argument("-d", "--debug", action="store_true",
                        help="log at DEBUG (LOG_LEVEL=DEBUG) unless --log-level is given; "
                             "Flask's interactive debugger stays off, since it would run code "
                             "for anyone who can reach the port")
    parser.add_argument("--log-level", dest="log_level",
                        choices=["DEBUG", "INFO", "WARNING", "ERROR"], default=None,
                        help="logging level (LOG_LEVEL; default INFO)")
    parser.add_argument("--model-dir", dest="model_dir", default=None,
                        help="where base models, trained versions, jobs and webhook annotations "
                             "are kept (MODEL_DIR; default checkpoint/, relative to the current "
                             "directory)")
    parser.add_argument("--check", action="store_true",
                        help="check the configuration and load the model as the server would, "
                             "then exit: 0 when it serves what UIE_MODEL asks for, 1 with a "
                             "message otherwise (no server is started)")
    return parser


def cli_env(args: argparse.Namespace, env) -> dict:
    """``env`` with the variables the given flags set (``ConfigError`` for an unknown key)."""
    out = dict(env)
    flags = {"PORT": args.port, "HOST": args.host, "MODEL_DIR": args.model_dir,
             "LOG_LEVEL": args.log_level or ("DEBUG" if args.debug else None)}
    out.update({name: str(value) for name, value in flags.items() if value is not None})
    for key, value in args.kwargs:
        out[Settings.env_name(key)] = value
    return out


def check(settings: Settings) -> int:
    """``--check``: load the model as the server would; 0 if it serves what was asked for."""
    from service.model_store import ModelStore
    from uie.checkpoint import ModelLoadError

    configure_logging(settings.log_level)
    try:
        store = ModelStore(settings)
    except (ModelLoadError, OSError) as exc:
        print(f"check failed: {exc}", file=sys.stderr)
        return 1
    base = store.base
    if base.fallback_reason:
        print(f"check failed: {base.fallback_reason}; the server would serve an untrained "
              f"scratch model instead", file=sys.stderr)
        return 1
    print(f"check ok: {UIEBackend.__name__} serves {base.version} ({base.kind} model {base.path}) "
          f"on {store.device}; MODEL_DIR={settings.model_dir}")
    return 0


def main(argv=None, env=None) -> int:
    """``python _wsgi.py [flags]``: check the configuration, or serve it on Flask's dev server."""
    args = build_parser().parse_args(argv)
    try:
        settings = Settings.from_env(cli_env(args, os.environ if env is None else env))
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if args.check:
        return check(settings)
    from uie.checkpoint import ModelLoadError

    try:
        app = create_app(settings)
    except ModelLoadError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    app.run(host=settings.host, port=settings.port, threaded=True, use_reloader=False, debug=False)
    return 0


if __name__ == "__main__":
    sys.exit(main())
