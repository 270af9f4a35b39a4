"""Shared fixtures: an isolated Paddle home, a small UIE trained for real, apps, servers."""

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

import json  # noqa: E402

import pytest  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from harness.gunicorn_process import Gunicorn, free_port  # noqa: E402,F401  (re-exported to the tests)
SHARED = REPO.parent / "shared"
REQUESTS = SHARED / "label-studio-1.23.2" / "requests"

PERSON, PLACE = "人名", "地名"
LABEL_CONFIG = (
    '<View><Labels name="label" toName="text">'
    f'<Label value="{PERSON}"/><Label value="{PLACE}"/>'
    '</Labels><Text name="text" value="$text"/></View>')
# The max_seq_len the small model is trained and served with: short, so that
# the long texts below are split into several windows.
SEQ_LEN = 48

FILLER = "今天的天气很好，我们一起去公园散步吧。"


def _example(text, spans):
    """(text, [(label, start, end)]) with offsets found in the text itself."""
    out, cursor = [], {}
    for label, word in spans:
        start = text.index(word, cursor.get(word, 0))
        cursor[word] = start + 1
        out.append((label, start, start + len(word)))
    return text, out


# Texts with every offset trap the backend must get right.
EDGE_CASES = [
    _example("😀张三在北京工作。", [(PERSON, "张三"), (PLACE, "北京")]),
    _example("  李四住在上海\r\n王五去了深圳。", [(PERSON, "李四"), (PLACE, "上海"),
                                             (PERSON, "王五"), (PLACE, "深圳")]),
    _example("ＡＢＣ公司的赵六来自广州。", [(PERSON, "赵六"), (PLACE, "广州")]),
    _example("Alice和孙七去了杭州。🎉", [(PERSON, "孙七"), (PLACE, "杭州")]),
    _example("周八说：“南京欢迎你”。 ", [(PERSON, "周八"), (PLACE, "南京")]),
    _example(FILLER * 2 + "吴九在成都。" + FILLER * 2 + "郑十在武汉。" + FILLER,
             [(PERSON, "吴九"), (PLACE, "成都"), (PERSON, "郑十"), (PLACE, "武汉")]),
    _example(FILLER, []),
]


def uie_examples(cases=EDGE_CASES):
    out = []
    for text, spans in cases:
        for label in (PERSON, PLACE):
            out.append({"content": text, "prompt": label,
                        "result_list": [{"text": text[s:e], "start": s, "end": e}
                                        for lab, s, e in spans if lab == label]})
    return out


def tasks_for(cases=EDGE_CASES, start_id=1):
    return [{"id": start_id + i, "data": {"text": text}} for i, (text, _) in enumerate(cases)]


def spans_of(prediction):
    return sorted((r["value"]["labels"][0], r["value"]["start"], r["value"]["end"])
                  for r in prediction["result"])


@pytest.fixture(scope="session")
def scratch_small(tmp_path_factory):
    """A fresh, tiny scratch UIE (random weights)."""
    import uie_model

    path = tmp_path_factory.mktemp("scratch-small") / "model"
    return uie_model.build_scratch(path, hidden_size=64, num_hidden_layers=2,
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


def make_settings(model_dir, **overrides):
    from settings import Settings

    values = dict(uie_model="scratch", model_dir=str(model_dir), device="cpu",
                  max_seq_len=SEQ_LEN, batch_size=4, log_level="WARNING")
    values.update(overrides)
    return Settings(**values)


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


def load_request(name):
    return json.loads((REQUESTS / name).read_text(encoding="utf-8"))


@pytest.fixture
def gunicorn(tmp_path):
    started = []

    def start(**env):
        env.setdefault("MODEL_DIR", str(tmp_path / "models"))
        env.setdefault("LOG_LEVEL", "INFO")
        server = Gunicorn(env, tmp_path / f"gunicorn-{len(started)}.log")
        started.append(server)
        return server.wait()

    yield start
    for server in started:
        server.stop()
