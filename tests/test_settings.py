"""Settings.from_env: every variable, its default, and a clear error for a bad value."""

from __future__ import annotations

import dataclasses
import os

import pytest

from settings import ConfigError, Settings


def test_an_empty_environment_gives_the_defaults():
    assert Settings.from_env({}) == Settings()
    blank = {f.name.upper(): "" for f in dataclasses.fields(Settings)}
    assert Settings.from_env(blank) == Settings()


# (variable, value in the environment, field, value read)
VARIABLES = [
    ("HOST", "0.0.0.0", "host", "0.0.0.0"),
    ("PORT", "8081", "port", 8081),
    ("UIE_MODEL", " uie-nano ", "uie_model", "uie-nano"),
    ("INFERENCE_PRECISION", "INT8", "inference_precision", "int8"),
    ("MODEL_DIR", "/data/models", "model_dir", "/data/models"),
    ("DEVICE", "GPU", "device", "gpu"),
    ("MAX_SEQ_LEN", "128", "max_seq_len", 128),
    ("BATCH_SIZE", "4", "batch_size", 4),
    ("MAX_TEXT_CHARS", "10", "max_text_chars", 10),
    ("TASK_SCORE", "mean", "task_score", "mean"),
    ("SCORE_THRESHOLD", "0.25", "score_threshold", 0.25),
    ("LOG_LEVEL", "debug", "log_level", "DEBUG"),
    ("WORKERS", "3", "workers", 3),
    ("THREADS", "8", "threads", 8),
    ("GUNICORN_TIMEOUT", "600", "gunicorn_timeout", 600),
    ("MAX_REQUEST_MB", "5", "max_request_mb", 5),
    ("MAX_TASKS_PER_REQUEST", "50", "max_tasks_per_request", 50),
    ("MAX_QUERIES_PER_REQUEST", "500", "max_queries_per_request", 500),
    ("TRAIN_EPOCHS", "30", "train_epochs", 30),
    ("TRAIN_EPOCHS", "auto", "train_epochs", None),
    ("TRAIN_LEARNING_RATE", "3e-5", "train_learning_rate", 3e-5),
    ("TRAIN_LEARNING_RATE", "AUTO", "train_learning_rate", None),
    ("TRAIN_BATCH_SIZE", "2", "train_batch_size", 2),
    ("TRAIN_MAX_SEQ_LEN", "64", "train_max_seq_len", 64),
    ("TRAIN_EVERY_N", "20", "train_every_n", 20),
    ("TRAIN_MIN_DEV_TASKS", "10", "train_min_dev_tasks", 10),
    ("KEEP_VERSIONS", "2", "keep_versions", 2),
    ("KEEP_JOBS", "3", "keep_jobs", 3),
    ("MAX_LOADED_MODELS", "1", "max_loaded_models", 1),
    ("INFERENCE_ENGINE", "Dygraph", "inference_engine", "dygraph"),
    ("CPU_THREADS", "2", "cpu_threads", 2),
    ("CPU_THREADS", "auto", "cpu_threads", None),
    ("BATCH_WAIT_MS", "0", "batch_wait_ms", 0.0),
    ("ANSWER_CACHE", "0", "answer_cache", 0),
    ("SCHEMA_LANG", "EN", "schema_lang", "en"),
    ("SCHEMA_LANG", "ch", "schema_lang", "ch"),
    ("LABEL_STUDIO_URL", "http://ls:8080/", "label_studio_url", "http://ls:8080"),
    ("LABEL_STUDIO_API_KEY", "token", "label_studio_api_key", "token"),
    ("REDIS_URL", " redis://redis-host:6379/0 ", "redis_url", "redis://redis-host:6379/0"),
    ("REDIS_URL", "unix:///run/redis.sock", "redis_url", "unix:///run/redis.sock"),
    ("JOB_LEASE_SECONDS", "5", "job_lease_seconds", 5),
    ("TRAIN_DEVICES", "0, 1,3", "train_devices", "0,1,3"),
    ("TRAIN_DEVICES", "CPU:2", "train_devices", "cpu:2"),
]


@pytest.mark.parametrize("variable, raw, field, value", VARIABLES)
def test_each_variable_sets_its_field(variable, raw, field, value):
    assert Settings.env_name(field) == variable
    assert getattr(Settings.from_env({variable: raw}), field) == value


def test_every_field_is_read_from_the_environment():
    tested = {variable for variable, *_ in VARIABLES} | {"BASIC_AUTH_USER", "BASIC_AUTH_PASS"}
    fields = {Settings.env_name(f.name) for f in dataclasses.fields(Settings)}
    assert fields - tested == set(), "a setting without a row in VARIABLES"
    assert tested - fields == set(), "a row in VARIABLES for a setting that does not exist"


def test_basic_auth_needs_both_and_accepts_any_unicode():
    settings = Settings.from_env({"BASIC_AUTH_USER": "标注员", "BASIC_AUTH_PASS": "pässwörd"})
    assert (settings.basic_auth_user, settings.basic_auth_pass) == ("标注员", "pässwörd")
    for half in ({"BASIC_AUTH_USER": "ls"}, {"BASIC_AUTH_PASS": "s3cret"}):
        with pytest.raises(ConfigError, match="set both BASIC_AUTH_USER and BASIC_AUTH_PASS"):
            Settings.from_env(half)


def test_a_password_that_is_not_utf8_is_a_config_error_that_does_not_show_it():
    # what os.environ holds for the bytes b"p\xe4ss" (Latin-1) on a UTF-8 system
    raw = os.fsdecode(b"p\xe4ss")
    with pytest.raises(ConfigError, match="BASIC_AUTH_PASS is not valid Unicode") as error:
        Settings.from_env({"BASIC_AUTH_USER": "ls", "BASIC_AUTH_PASS": raw})
    assert raw not in str(error.value)


def test_secrets_are_not_in_the_repr():
    settings = Settings(basic_auth_user="ls", basic_auth_pass="s3cret-pass",
                        label_studio_api_key="s3cret-key")
    assert "s3cret" not in repr(settings) and "s3cret" not in str(settings)
    assert "basic_auth_user='ls'" in repr(settings)


@pytest.mark.parametrize("env, message", [
    ({"PORT": "http"}, "PORT='http' is not an integer"),
    ({"PORT": "0"}, "PORT=0 must be at least 1"),
    ({"WORKERS": "0"}, "WORKERS=0 must be at least 1"),
    ({"THREADS": "two"}, "THREADS='two' is not an integer"),
    ({"GUNICORN_TIMEOUT": "0"}, "GUNICORN_TIMEOUT=0 must be at least 1"),
    ({"MAX_REQUEST_MB": "0.5"}, "MAX_REQUEST_MB='0.5' is not an integer"),
    ({"MAX_TASKS_PER_REQUEST": "0"}, "MAX_TASKS_PER_REQUEST=0 must be at least 1"),
    ({"MAX_QUERIES_PER_REQUEST": "-1"}, "MAX_QUERIES_PER_REQUEST=-1 must be at least 1"),
    ({"MAX_SEQ_LEN": "8"}, "MAX_SEQ_LEN=8 must be at least 16"),
    ({"SCORE_THRESHOLD": "high"}, "SCORE_THRESHOLD='high' is not a number"),
    ({"DEVICE": "tpu"}, "DEVICE='tpu' must be one of auto, cpu, gpu"),
    ({"TASK_SCORE": "max"}, "TASK_SCORE='max' must be one of min, mean, margin, entropy"),
    ({"LOG_LEVEL": "verbose"}, "LOG_LEVEL='verbose' must be one of debug, info, warning"),
    ({"TRAIN_EPOCHS": "0"}, "TRAIN_EPOCHS=0 must be at least 1"),
    ({"TRAIN_LEARNING_RATE": "fast"}, "TRAIN_LEARNING_RATE='fast' is not a number"),
    ({"TRAIN_EVERY_N": "-1"}, "TRAIN_EVERY_N=-1 must be at least 0"),
    ({"INFERENCE_ENGINE": "onnx"}, "INFERENCE_ENGINE='onnx' must be one of paddle-inference, dygraph"),
    ({"CPU_THREADS": "0"}, "CPU_THREADS=0 must be at least 1"),
    ({"BATCH_WAIT_MS": "-1"}, "BATCH_WAIT_MS=-1.0 must be 0 or more"),
    ({"SCHEMA_LANG": "de"}, "SCHEMA_LANG='de' must be one of ch, en"),
    ({"REDIS_URL": "redis-host:6379"}, "REDIS_URL must start with redis://, rediss:// or unix://"),
    ({"JOB_LEASE_SECONDS": "1"}, "JOB_LEASE_SECONDS=1 must be at least 2"),
    ({"TRAIN_DEVICES": "gpu0"}, "TRAIN_DEVICES='gpu0' must be GPU ids (0,1,2,3) or cpu:N"),
    ({"TRAIN_DEVICES": "0,0"}, "TRAIN_DEVICES='0,0' must be GPU ids"),
    ({"TRAIN_DEVICES": "cpu:0"}, "TRAIN_DEVICES='cpu:0': cpu:N needs a number of processes N >= 1"),
])
def test_a_bad_value_names_the_variable(env, message):
    with pytest.raises(ConfigError) as error:
        Settings.from_env(env)
    assert message in str(error.value)


def test_env_name_is_case_insensitive_and_refuses_unknown_keys():
    assert Settings.env_name("UIE_Model") == "UIE_MODEL"
    assert Settings.env_name(" max_seq_len ") == "MAX_SEQ_LEN"
    with pytest.raises(ConfigError, match="'hostname' is not a setting; settings are: host, port"):
        Settings.env_name("hostname")


def test_schema_lang_defaults_to_chinese_prompts():
    """SCHEMA_LANG picks PaddleNLP's relation prompt template, for prediction and training."""
    assert Settings().schema_lang == Settings.from_env({}).schema_lang == "ch"
    assert Settings.from_env({"SCHEMA_LANG": " en "}).schema_lang == "en"


def test_the_embedded_mode_is_the_default_and_a_redis_password_is_not_in_the_repr():
    assert Settings().redis_url == "" and Settings().train_devices == ""
    settings = Settings.from_env({"REDIS_URL": "redis://:s3cret@redis-host:6379/0"})
    assert "s3cret" not in repr(settings)
