"""Configuration from the environment: one frozen ``Settings`` per process.

Every variable is documented in the README's configuration table; the
defaults below are the ones that table shows, and the only ones: gunicorn
(``gunicorn.conf.py``) and the development server (``python _wsgi.py``) read
their settings here too. Each field ``name`` is read from the environment
variable ``NAME``.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field, fields

from checks import require_unicode

LOG_LEVELS = ("debug", "info", "warning", "error", "critical")


class ConfigError(ValueError):
    """An environment variable has a value the backend cannot use."""


def _int(env, name, default, minimum=None):
    raw = env.get(name, "")
    if raw.strip() == "":
        return default
    try:
        value = int(raw)
    except ValueError:
        raise ConfigError(f"{name}={raw!r} is not an integer") from None
    if minimum is not None and value < minimum:
        raise ConfigError(f"{name}={value} must be at least {minimum}")
    return value


def _float(env, name, default):
    raw = env.get(name, "")
    if raw.strip() == "":
        return default
    try:
        return float(raw)
    except ValueError:
        raise ConfigError(f"{name}={raw!r} is not a number") from None


def _choice(env, name, default, choices):
    value = (env.get(name) or default).strip().lower()
    if value not in choices:
        raise ConfigError(f"{name}={value!r} must be one of {', '.join(choices)}")
    return value


def _text(env, name, default=""):
    """A string that can be sent as UTF-8 (the environment may hold undecodable bytes)."""
    return require_unicode(env.get(name) or default, name, ConfigError)


def _nonnegative(env, name, default):
    value = _float(env, name, default)
    if value < 0:
        raise ConfigError(f"{name}={value} must be 0 or more")
    return value


def _auto_float(env, name):
    """A float, or None for ``auto`` / unset (the model kind decides)."""
    raw = (env.get(name) or "auto").strip().lower()
    return None if raw == "auto" else _float({name: raw}, name, None)


def _auto_int(env, name, minimum=1):
    raw = (env.get(name) or "auto").strip().lower()
    return None if raw == "auto" else _int({name: raw}, name, None, minimum)


def cpu_threads(env=os.environ) -> int | None:
    """``CPU_THREADS``: math threads, or ``None`` for ``auto`` (the one reading of it: the
    server's settings, the scripts and training jobs)."""
    return _auto_int(env, "CPU_THREADS")


def available_cores() -> int:
    """The cores this process may run on."""
    return len(os.sched_getaffinity(0))


def _redis_url(env):
    value = _text(env, "REDIS_URL").strip()
    if value and not value.startswith(("redis://", "rediss://", "unix://")):
        raise ConfigError("REDIS_URL must start with redis://, rediss:// or unix:// "
                          "(e.g. redis://redis-host:6379/0)")
    return value


def _train_devices(env):
    """``""``, GPU ids (``0,1,3``) or ``cpu:N`` (N CPU processes); spaces removed."""
    value = _text(env, "TRAIN_DEVICES").replace(" ", "").lower()
    if not value:
        return ""
    if value.startswith("cpu:"):
        count = value[4:]
        if not count.isdigit() or int(count) < 1:
            raise ConfigError(f"TRAIN_DEVICES={value!r}: cpu:N needs a number of processes N >= 1")
        return f"cpu:{int(count)}"
    ids = value.split(",")
    if not all(i.isdigit() for i in ids) or len(set(ids)) != len(ids):
        raise ConfigError(f"TRAIN_DEVICES={value!r} must be GPU ids (0,1,2,3) or cpu:N")
    return ",".join(str(int(i)) for i in ids)


@dataclass(frozen=True)
class Settings:
    host: str = "127.0.0.1"
    port: int = 9090
    uie_model: str = "uie-base"
    model_dir: str = "checkpoint"
    device: str = "auto"
    max_seq_len: int = 512
    batch_size: int = 16
    max_text_chars: int = 100_000
    task_score: str = "entropy"
    score_threshold: float = 0.5
    basic_auth_user: str = ""
    basic_auth_pass: str = field(default="", repr=False)
    log_level: str = "INFO"
    # gunicorn
    workers: int = 1
    threads: int = 4
    gunicorn_timeout: int = 300
    # request limits
    max_request_mb: int = 100
    max_tasks_per_request: int = 1000
    max_queries_per_request: int = 5000      # model inputs (windows x prompts) of one /predict
    # training
    train_epochs: int | None = None          # None: chosen by model kind
    train_learning_rate: float | None = None  # None: chosen by model kind
    train_batch_size: int = 16
    train_max_seq_len: int = 128
    train_every_n: int = 0
    train_min_dev_tasks: int = 50
    # retention
    keep_versions: int = 5
    keep_jobs: int = 20
    max_loaded_models: int = 4
    # inference
    inference_engine: str = "paddle-inference"
    inference_precision: str = "auto"        # auto | fp32 | int8 (INT8: CPU, ONNX Runtime)
    cpu_threads: int | None = None           # None: the cores divided by WORKERS
    batch_wait_ms: float = 5.0
    answer_cache: int = 4096
    # relations: the relation prompt template, "<subject>的<relation>" or "<relation> of <subject>"
    schema_lang: str = "ch"
    label_studio_url: str = ""
    label_studio_api_key: str = field(default="", repr=False)
    # scale-out: training on RQ workers over Redis (empty: the embedded mode)
    redis_url: str = field(default="", repr=False)   # may hold a password
    job_lease_seconds: int = 30
    train_devices: str = ""                  # "": one process; "0,1": GPUs; "cpu:2": CPU processes

    @classmethod
    def env_name(cls, key: str) -> str:
        """The environment variable of the field ``key`` (any case); ``ConfigError`` if none."""
        names = [f.name for f in fields(cls)]
        if key.strip().lower() not in names:
            raise ConfigError(f"{key!r} is not a setting; settings are: {', '.join(names)}")
        return key.strip().upper()

    @classmethod
    def from_env(cls, env=None) -> "Settings":
        """Read every setting from ``env`` (``os.environ``); ``ConfigError`` names a bad one."""
        env = os.environ if env is None else env
        user, password = _text(env, "BASIC_AUTH_USER"), _text(env, "BASIC_AUTH_PASS")
        if bool(user) != bool(password):
            raise ConfigError("set both BASIC_AUTH_USER and BASIC_AUTH_PASS, or neither")
        return cls(
            host=env.get("HOST") or cls.host,
            port=_int(env, "PORT", cls.port, 1),
            uie_model=(env.get("UIE_MODEL") or cls.uie_model).strip(),
            model_dir=env.get("MODEL_DIR") or cls.model_dir,
            device=_choice(env, "DEVICE", cls.device, ("auto", "cpu", "gpu")),
            max_seq_len=_int(env, "MAX_SEQ_LEN", cls.max_seq_len, 16),
            batch_size=_int(env, "BATCH_SIZE", cls.batch_size, 1),
            max_text_chars=_int(env, "MAX_TEXT_CHARS", cls.max_text_chars, 1),
            task_score=_choice(env, "TASK_SCORE", cls.task_score, ("min", "mean", "margin", "entropy")),
            score_threshold=_float(env, "SCORE_THRESHOLD", cls.score_threshold),
            basic_auth_user=user,
            basic_auth_pass=password,
            log_level=_choice(env, "LOG_LEVEL", cls.log_level, LOG_LEVELS).upper(),
            workers=_int(env, "WORKERS", cls.workers, 1),
            threads=_int(env, "THREADS", cls.threads, 1),
            gunicorn_timeout=_int(env, "GUNICORN_TIMEOUT", cls.gunicorn_timeout, 1),
            max_request_mb=_int(env, "MAX_REQUEST_MB", cls.max_request_mb, 1),
            max_tasks_per_request=_int(env, "MAX_TASKS_PER_REQUEST", cls.max_tasks_per_request, 1),
            max_queries_per_request=_int(env, "MAX_QUERIES_PER_REQUEST",
                                         cls.max_queries_per_request, 1),
            train_epochs=_auto_int(env, "TRAIN_EPOCHS"),
            train_learning_rate=_auto_float(env, "TRAIN_LEARNING_RATE"),
            train_batch_size=_int(env, "TRAIN_BATCH_SIZE", cls.train_batch_size, 1),
            train_max_seq_len=_int(env, "TRAIN_MAX_SEQ_LEN", cls.train_max_seq_len, 16),
            train_every_n=_int(env, "TRAIN_EVERY_N", cls.train_every_n, 0),
            train_min_dev_tasks=_int(env, "TRAIN_MIN_DEV_TASKS", cls.train_min_dev_tasks, 2),
            keep_versions=_int(env, "KEEP_VERSIONS", cls.keep_versions, 1),
            keep_jobs=_int(env, "KEEP_JOBS", cls.keep_jobs, 1),
            max_loaded_models=_int(env, "MAX_LOADED_MODELS", cls.max_loaded_models, 1),
            inference_engine=_choice(env, "INFERENCE_ENGINE", cls.inference_engine,
                                     ("paddle-inference", "dygraph")),
            inference_precision=_choice(env, "INFERENCE_PRECISION", cls.inference_precision,
                                        ("auto", "fp32", "int8")),
            cpu_threads=cpu_threads(env),
            batch_wait_ms=_nonnegative(env, "BATCH_WAIT_MS", cls.batch_wait_ms),
            answer_cache=_int(env, "ANSWER_CACHE", cls.answer_cache, minimum=0),
            schema_lang=_choice(env, "SCHEMA_LANG", cls.schema_lang, ("ch", "en")),
            label_studio_url=(env.get("LABEL_STUDIO_URL") or "").rstrip("/"),
            label_studio_api_key=_text(env, "LABEL_STUDIO_API_KEY"),
            redis_url=_redis_url(env),
            job_lease_seconds=_int(env, "JOB_LEASE_SECONDS", cls.job_lease_seconds, 2),
            train_devices=_train_devices(env),
        )

    @property
    def math_threads(self) -> int:
        """``CPU_THREADS``, or this process's share of the cores (``WORKERS`` share them)."""
        return self.cpu_threads or max(1, available_cores() // max(1, self.workers))
