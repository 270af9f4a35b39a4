"""gunicorn settings, read from the environment by ``Settings.from_env`` (see settings.py).

HOST, PORT, WORKERS, THREADS, GUNICORN_TIMEOUT and LOG_LEVEL have their
defaults there, like every other setting; a bad value stops gunicorn with
the message ``Settings`` gives.
"""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))   # gunicorn's cwd may be elsewhere

from settings import ConfigError, Settings  # noqa: E402

try:
    _settings = Settings.from_env()
except ConfigError as exc:
    raise SystemExit(f"configuration error: {exc}") from None

_host = _settings.host
if ":" in _host and not _host.startswith("["):
    _host = f"[{_host}]"                  # an IPv6 address
bind = f"{_host}:{_settings.port}"
workers = _settings.workers
threads = _settings.threads
worker_class = "gthread"
# A large batch on a big model on the CPU can take minutes; Label Studio waits 100 s.
timeout = _settings.gunicorn_timeout
graceful_timeout = 30
loglevel = _settings.log_level.lower()
accesslog = "-"
preload_app = False   # each worker loads its model after the fork (Paddle is not fork-safe)
