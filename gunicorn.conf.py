"""gunicorn settings from the environment (HOST, PORT, WORKERS, THREADS, LOG_LEVEL)."""

import os

bind = f"{os.environ.get('HOST') or '127.0.0.1'}:{os.environ.get('PORT') or '9090'}"
workers = int(os.environ.get("WORKERS") or 1)
threads = int(os.environ.get("THREADS") or 4)
worker_class = "gthread"
# A large batch on a big model on the CPU can take minutes; Label Studio waits 100 s.
timeout = int(os.environ.get("GUNICORN_TIMEOUT") or 300)
graceful_timeout = 30
loglevel = (os.environ.get("LOG_LEVEL") or "info").lower()
accesslog = "-"
preload_app = False   # each worker loads its model after the fork (Paddle is not fork-safe)
