"""Fixtures: an isolated Paddle home, a small UIE trained for real, apps, servers (plain helpers: helpers.py)."""

from __future__ import annotations

import os
import sys
import tempfile
from pathlib import Path

# Before Paddle/PaddleNLP are imported anywhere: keep their caches out of ~.
_HOME = Path(tempfile.mkdtemp(prefix="uie-test-home-"))
os.environ["HOME"] = str(_HOME)
os.environ["PPNLP_HOME"] = str(_HOME / "ppnlp")
os.environ.pop("LABEL_STUDIO_URL", None)
os.environ.pop("LABEL_STUDIO_API_KEY", None)

import pytest  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from harness.gunicorn_process import Gunicorn  # noqa: E402
from helpers import (EDGE_RELATION_CASES, RELATION_CONFIG, SEQ_LEN, make_settings, relation_tasks,  # noqa: E402
                     show_logs_on_failure, uie_examples)


@pytest.fixture(scope="session")
def scratch_small(tmp_path_factory):
    """A fresh, tiny scratch UIE (random weights)."""
    import uie.checkpoint

    path = tmp_path_factory.mktemp("scratch-small") / "model"
    return uie.checkpoint.build_scratch(path, hidden_size=64, num_hidden_layers=2,
                                   num_attention_heads=2, intermediate_size=256,
                                   hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)


@pytest.fixture(scope="session")
def trained_model(tmp_path_factory, scratch_small):
    """A tiny UIE trained for real on EDGE_CASES until it reproduces them from its
    prompts (no span tagger: what a pretrained UIE is, Taskflow's model)."""
    import finetune

    save = tmp_path_factory.mktemp("trained")
    metrics = finetune.finetune(uie_examples(), None, scratch_small, save, learning_rate=1e-3,
                                num_epochs=400, batch_size=8, max_seq_len=SEQ_LEN, valid_steps=0,
                                patience=1000, device="cpu", tagging_weight=0.0)
    assert metrics["f1"] == 1.0, f"the fixture model did not learn its examples: {metrics}"
    return save / "model_best"


@pytest.fixture
def store_for(tmp_path, scratch_small):
    """``store_for(**settings)`` -> a ModelStore on the tiny scratch model as base."""
    from service.model_store import ModelStore

    def make(**overrides):
        overrides.setdefault("model_dir", str(tmp_path / "models"))
        return ModelStore(make_settings(uie_model=str(scratch_small), **overrides))

    return make


@pytest.fixture
def make_app(tmp_path):
    """``make_app(**settings)`` -> a Flask app over a fresh MODEL_DIR."""
    import _wsgi

    def make(**overrides):
        overrides.setdefault("model_dir", str(tmp_path / "models"))
        app = _wsgi.create_app(make_settings(**overrides))
        app.testing = True
        return app

    return make


@pytest.fixture
def trained_client(make_app, trained_model):
    return make_app(uie_model=str(trained_model)).test_client()


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    """A failed test's report ends with the last lines of the logs of the servers it started
    (``show_logs_on_failure``): CI's clean clone is gone once the run ends."""
    outcome = yield
    report = outcome.get_result()
    if report.when == "call" and report.failed:
        for server in (s for servers in getattr(item, "_servers_to_show", ()) for s in servers):
            report.sections.append((f"log of {server.log_path.name}", _log_tail(server)))


def _log_tail(server, lines=80) -> str:
    """The log's last ``lines`` lines that are not access-log lines."""
    try:
        text = server.log_path.read_text(encoding="utf-8", errors="replace").splitlines()
    except OSError as exc:
        return f"(unreadable: {exc})"
    kept = [line for line in text if '"GET /' not in line and '"POST /' not in line]
    return "\n".join(kept[-lines:])


@pytest.fixture
def gunicorn(tmp_path, request):
    started = []
    show_logs_on_failure(request, started)

    def start(**env):
        env.setdefault("MODEL_DIR", str(tmp_path / "models"))
        env.setdefault("LOG_LEVEL", "INFO")
        server = Gunicorn(env, tmp_path / f"gunicorn-{len(started)}.log")
        started.append(server)
        return server.wait()

    yield start
    for server in started:
        server.stop()


@pytest.fixture(scope="session")
def relation_model(tmp_path_factory, scratch_small):
    """A tiny UIE trained for real, on what a training job builds from EDGE_RELATION_CASES."""
    import finetune
    from training_examples import build_examples

    examples = build_examples(relation_tasks(EDGE_RELATION_CASES), RELATION_CONFIG, min_dev_tasks=50)
    save = tmp_path_factory.mktemp("relation-trained")
    metrics = finetune.finetune(examples.train, None, scratch_small, save, learning_rate=1e-3,
                                num_epochs=400, batch_size=8, max_seq_len=SEQ_LEN, valid_steps=0,
                                patience=1000, device="cpu")
    assert metrics["f1"] == 1.0, f"the fixture model did not learn its examples: {metrics}"
    return save / "model_best"


@pytest.fixture(scope="module")
def redis_server():
    """A real redis-server for the module's tests (``harness.redis_server``)."""
    from harness.redis_server import RedisServer

    server = RedisServer()
    yield server
    server.stop()


@pytest.fixture(params=["sqlite", "redis"])
def store(request, tmp_path, redis_server):
    """An annotation store, each test run on both: the SQLite one of one machine and the Redis one."""
    from service.annotation_store import AnnotationStore
    from service.redis_annotation_store import RedisAnnotationStore

    if request.param == "sqlite":
        return AnnotationStore(tmp_path / "a.sqlite3")
    conn = redis_server.client()
    conn.flushall()
    return RedisAnnotationStore(conn)
