"""The Flask app Label Studio connects to, its gunicorn entry, the dev server.

    gunicorn -c gunicorn.conf.py _wsgi:app        # what `make run` does
    python _wsgi.py --host 127.0.0.1 --port 9090  # Flask's development server
    label-studio-ml start <this directory>        # the tutorial's command: runs the line above

``create_app`` only wires the parts together: the model store, the annotation store
and the job runner of the mode the settings ask for (one machine, or Redis and RQ
workers), the endpoints (``service/api.py``, ``service/webhooks.py``) and what every
request passes through (``service/request_guards.py``).
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import threading

from flask import Flask

import service.metrics
from my_ml_backend import UIEBackend
from service import request_guards
from service.api import api
from service.webhooks import replay_webhook, webhooks
from settings import ConfigError, Settings


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
    app.config["MAX_CONTENT_LENGTH"] = settings.max_request_mb * 1024 * 1024
    parts = _scale_out_parts(app, settings, store) if settings.redis_url else _embedded_parts(store)
    app.extensions["uie"] = {"store": store, "settings": settings, **parts}
    request_guards.install(app)
    app.register_blueprint(api)
    app.register_blueprint(webhooks)
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
    spool = WebhookSpool(store.root, apply=lambda body: replay_webhook(app, body))
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
