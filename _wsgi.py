"""HTTP layer: the Flask app Label Studio connects to, and its gunicorn entry.

    gunicorn -c gunicorn.conf.py _wsgi:app        # what `make run` does
    python _wsgi.py --host 127.0.0.1 --port 9090  # Flask's development server

Endpoints follow what Label Studio 1.23 sends (see the README): ``/health``,
``/setup``, ``/predict``, ``/webhook``, ``/train``, ``/versions``, ``/jobs``,
``/metrics``. Bad input is answered 4xx with ``{"error": ...}``.
"""

from __future__ import annotations

import argparse
import hmac
import logging
import os
import threading
import time

from flask import Flask, jsonify, request
from werkzeug.exceptions import BadRequest, HTTPException

from label_config import LabelConfigError
from my_ml_backend import UIEBackend
from settings import Settings

log = logging.getLogger("uie-backend")


class Metrics:
    """Request counters for ``GET /metrics``."""

    def __init__(self):
        self._lock = threading.Lock()
        self.started = time.time()
        self.counts = {"predict_requests": 0, "predicted_tasks": 0, "predicted_regions": 0,
                       "setup_requests": 0, "webhooks": 0, "train_requests": 0, "errors_4xx": 0,
                       "errors_5xx": 0}
        self.predict_seconds = 0.0

    def add(self, **kwargs):
        with self._lock:
            for key, value in kwargs.items():
                if key == "predict_seconds":
                    self.predict_seconds += value
                else:
                    self.counts[key] = self.counts.get(key, 0) + value

    def snapshot(self):
        with self._lock:
            return dict(self.counts, predict_seconds=round(self.predict_seconds, 3),
                        uptime_seconds=round(time.time() - self.started, 1))


def _json_body() -> dict:
    body = request.get_json(silent=True, force=True)
    if body is None:
        raise BadRequest("request body is not valid JSON")
    if not isinstance(body, dict):
        raise BadRequest("request body must be a JSON object")
    return body


def _project(raw):
    from model_store import project_key

    try:
        return project_key(raw)
    except ValueError as exc:
        raise BadRequest(str(exc)) from None


def configure_logging(level: str):
    """Log at ``LOG_LEVEL`` through the root logger (gunicorn's stderr)."""
    root = logging.getLogger()
    if not root.handlers:
        handler = logging.StreamHandler()
        handler.setFormatter(logging.Formatter("[%(asctime)s] %(levelname)s %(name)s: %(message)s"))
        root.addHandler(handler)
    root.setLevel(level)


def create_app(settings: Settings | None = None) -> Flask:
    """Build the app: load the base model once, start the job runner."""
    from annotation_store import AnnotationStore
    from jobs import JobRunner
    from model_store import ModelStore

    settings = settings or Settings.from_env()
    configure_logging(settings.log_level)
    store = ModelStore(settings)
    annotations = AnnotationStore(store.root / "annotations.sqlite3")
    jobs = JobRunner(store, annotations)
    metrics = Metrics()

    app = Flask(__name__)
    app.json.ensure_ascii = False
    app.json.sort_keys = False
    app.extensions["uie"] = {"store": store, "annotations": annotations, "jobs": jobs,
                             "metrics": metrics, "settings": settings}

    def backend(project, label_config=None):
        if label_config is None:
            label_config = annotations.label_config(project)
        return UIEBackend(store, project, label_config, jobs)

    @app.before_request
    def check_auth():
        if not settings.basic_auth_user or request.path == "/health" or request.path == "/":
            return None
        auth = request.authorization
        ok = (auth is not None and auth.type == "basic"
              and hmac.compare_digest(auth.username or "", settings.basic_auth_user)
              and hmac.compare_digest(auth.password or "", settings.basic_auth_pass))
        if ok:
            return None
        response = jsonify(error="authentication required")
        response.status_code = 401
        response.headers["WWW-Authenticate"] = 'Basic realm="uie-backend"'
        return response

    @app.errorhandler(HTTPException)
    def http_error(exc):
        metrics.add(errors_4xx=1 if exc.code < 500 else 0, errors_5xx=1 if exc.code >= 500 else 0)
        return jsonify(error=exc.description), exc.code

    @app.errorhandler(LabelConfigError)
    def config_error(exc):
        metrics.add(errors_4xx=1)
        return jsonify(error=str(exc)), 422

    @app.errorhandler(Exception)
    def unexpected(exc):
        log.exception("unexpected error on %s %s", request.method, request.path)
        metrics.add(errors_5xx=1)
        return jsonify(error=f"internal error: {type(exc).__name__}: {exc}"), 500

    @app.get("/")
    @app.get("/health")
    def health():
        base = store.base
        return jsonify(status="UP", model_class=UIEBackend.__name__, model_version=base.version,
                       model={"uie_model": settings.uie_model, "kind": base.kind, "path": base.path,
                              "fallback": bool(base.fallback_reason),
                              "fallback_reason": base.fallback_reason or None},
                       device=store.device)

    @app.post("/setup")
    def setup():
        body = _json_body()
        metrics.add(setup_requests=1)
        project = _project(body.get("project"))
        schema = body.get("schema")
        if schema is not None and not isinstance(schema, str):
            raise BadRequest("'schema' must be the label config XML string")
        model = backend(project, schema)
        version = model.setup()
        if schema:
            annotations.set_label_config(project, schema)
        return jsonify(model_version=version)

    @app.post("/predict")
    def predict():
        body = _json_body()
        tasks = body.get("tasks")
        if tasks is None:
            raise BadRequest("'tasks' is missing")
        if not isinstance(tasks, list):
            raise BadRequest("'tasks' must be a list of tasks")
        label_config = body.get("label_config")
        if label_config is not None and not isinstance(label_config, str):
            raise BadRequest("'label_config' must be the label config XML string")
        project = _project(body.get("project"))
        model = backend(project, label_config)
        if not model.label_config:
            raise BadRequest("'label_config' is missing and no /setup was received for this project")
        started = time.perf_counter()
        results = model.predict(tasks, context=(body.get("params") or {}).get("context"))
        metrics.add(predict_requests=1, predicted_tasks=len(tasks),
                    predicted_regions=sum(len(r["result"]) for r in results),
                    predict_seconds=time.perf_counter() - started)
        return jsonify(results=results, model_version=results[0]["model_version"] if results
                       else model.model_version)

    @app.post("/webhook")
    def webhook():
        body = _json_body()
        metrics.add(webhooks=1)
        action = body.get("action")
        if not isinstance(action, str):
            raise BadRequest("'action' is missing")
        project = _project(body.get("project"))
        project_obj = body.get("project") if isinstance(body.get("project"), dict) else {}
        if isinstance(project_obj.get("label_config"), str):
            annotations.set_label_config(project, project_obj["label_config"])
        answer = {"status": "ok", "action": action, "project": project}
        if action in ("ANNOTATION_CREATED", "ANNOTATION_UPDATED"):
            annotation, task = body.get("annotation"), body.get("task")
            if not isinstance(annotation, dict) or not isinstance(task, dict):
                raise BadRequest(f"{action} needs 'annotation' and 'task' objects")
            annotations.upsert(project, task, annotation)
            answer["job"] = jobs.annotation_changed(project, 1)
        elif action == "ANNOTATIONS_DELETED":
            deleted = body.get("annotations")
            if not isinstance(deleted, list):
                raise BadRequest("ANNOTATIONS_DELETED needs an 'annotations' list")
            ids = [a.get("id") for a in deleted if isinstance(a, dict)]
            annotations.delete(project, ids)
            answer["job"] = jobs.annotation_changed(project, len(ids))
        elif action == "START_TRAINING":
            metrics.add(train_requests=1)
            answer["job"] = backend(project).fit(action)
        else:
            answer["status"] = "ignored"
        return jsonify(answer)

    @app.post("/train")
    def train():
        body = _json_body()
        metrics.add(train_requests=1)
        tasks = body.get("annotations")
        if tasks is not None and not isinstance(tasks, list):
            raise BadRequest("'annotations' must be a list of tasks with their annotations")
        project = _project(body.get("project"))
        label_config = body.get("label_config")
        if isinstance(label_config, str):
            annotations.set_label_config(project, label_config)
        job = backend(project).fit("TRAIN", {"tasks": tasks})
        return jsonify(status="ok", job=job), 201

    @app.get("/versions")
    def versions():
        project = request.args.get("project")
        projects = [_project(project)] if project else store.projects()
        details = {p: {"current": store.live(p).version, "versions": store.versions(p)}
                   for p in projects}
        names = [store.base.version] + [v["model_version"] for d in details.values()
                                        for v in d["versions"]]
        return jsonify(versions=list(dict.fromkeys(names)), base=store.base.version,
                       projects=details)

    @app.get("/jobs")
    def job_list():
        project = request.args.get("project")
        return jsonify(jobs=jobs.list(_project(project) if project else None))

    @app.get("/metrics")
    def metrics_view():
        return jsonify(dict(metrics.snapshot(), jobs=jobs.summary()))

    return app


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


def main(argv=None):
    parser = argparse.ArgumentParser(description="UIE ML backend for Label Studio (dev server)")
    parser.add_argument("--host", default=os.environ.get("HOST", "127.0.0.1"))
    parser.add_argument("--port", type=int, default=int(os.environ.get("PORT", "9090")))
    parser.add_argument("--debug", action="store_true")
    args = parser.parse_args(argv)
    create_app().run(host=args.host, port=args.port, debug=args.debug, threaded=True,
                     use_reloader=False)


if __name__ == "__main__":
    main()
