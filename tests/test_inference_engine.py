"""inference_engine: the static export, Paddle Inference against dygraph and Taskflow."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

from conftest import EDGE_CASES, PERSON, PLACE, SEQ_LEN
from test_training import CLUENER

SERVE_LEN = 128     # CLUENER sentences fit one window, as in Taskflow


def cluener_texts(n):
    with open(CLUENER, encoding="utf-8") as f:
        return [json.loads(line)["text"] for line, _ in zip(f, range(n))]


@pytest.fixture(scope="module")
def exported(tmp_path_factory, trained_model):
    """A copy of the trained fixture model with its static export."""
    import inference_engine

    model_dir = tmp_path_factory.mktemp("exported") / "model"
    shutil.copytree(trained_model, model_dir)
    inference_engine.export_static(model_dir)
    return model_dir


def predictor(model_dir, engine, threshold, max_seq_len=SERVE_LEN):
    import inference_engine
    import uie_model

    return uie_model.UIEPredictor.from_dir(model_dir, max_seq_len=max_seq_len, threshold=threshold,
                                           engine=inference_engine.load_engine(model_dir, engine))


def as_table(found):
    return [{p: [(s.start, s.end, s.score) for s in spans] for p, spans in res.items()} for res in found]


def assert_same(a, b, tol=1e-4):
    for x, y in zip(a, b):
        assert x.keys() == y.keys()
        for prompt in x:
            assert [s[:2] for s in x[prompt]] == [s[:2] for s in y[prompt]]
            assert np.allclose([s[2] for s in x[prompt]], [s[2] for s in y[prompt]], atol=tol)


@pytest.mark.parametrize("threshold", [0.5, 0.2])
def test_paddle_inference_answers_as_dygraph_and_taskflow(exported, threshold):
    from paddlenlp import Taskflow
    from paddlenlp.taskflow import utils as taskflow_utils

    texts = cluener_texts(300)
    queries = [(t, [PERSON, PLACE]) for t in texts]
    pi = predictor(exported, "paddle-inference", threshold)
    assert pi.engine.name == "paddle-inference"
    ours = as_table(pi.extract(queries))
    assert_same(ours, as_table(predictor(exported, "dygraph", threshold).extract(queries)))
    assert sum(len(s) for r in ours for s in r.values()) > 20, "too few spans to compare anything"

    taskflow_utils.DOWNLOAD_CHECK = True    # no usage ping
    flow = Taskflow("information_extraction", schema=[PERSON, PLACE], task_path=str(exported),
                    max_seq_len=SERVE_LEN, position_prob=threshold, batch_size=32)
    theirs = [{p: sorted((x["start"], x["end"], x["probability"]) for x in r.get(p, []))
               for p in (PERSON, PLACE)} for r in flow(texts)]
    assert_same(ours, theirs)


def test_long_texts_split_into_windows_answer_as_dygraph(exported):
    queries = [(text, [PERSON, PLACE]) for text, _ in EDGE_CASES] * 3
    a = as_table(predictor(exported, "paddle-inference", 0.5, SEQ_LEN).extract(queries))
    b = as_table(predictor(exported, "dygraph", 0.5, SEQ_LEN).extract(queries))
    assert_same(a, b)
    gold = [{p: sorted((s, e) for lab, s, e in spans if lab == p) for p in (PERSON, PLACE)}
            for text, spans in EDGE_CASES]
    assert [{p: [s[:2] for s in r[p]] for p in r} for r in a[: len(EDGE_CASES)]] == gold


@pytest.mark.parametrize("damage", ["missing", "truncated-params", "deleted-model", "garbage-stamp",
                                    "other-weights"])
def test_a_damaged_export_is_never_loaded(exported, tmp_path, damage, trained_model, scratch_small):
    import inference_engine

    model_dir = tmp_path / "model"
    shutil.copytree(exported, model_dir)
    model_file, params_file = inference_engine.static_files(model_dir)
    if damage == "missing":
        shutil.rmtree(model_dir / "static")
    elif damage == "truncated-params":
        params_file.write_bytes(params_file.read_bytes()[:100])
    elif damage == "deleted-model":
        model_file.unlink()
    elif damage == "garbage-stamp":
        (model_dir / "static" / "export.json").write_text("{{", encoding="utf-8")
    elif damage == "other-weights":
        shutil.copyfile(scratch_small / "model_state.pdparams", model_dir / "model_state.pdparams")
    assert inference_engine.check_static(model_dir)
    engine = inference_engine.load_engine(model_dir, "paddle-inference")
    assert engine.name == "dygraph" and engine.reason
    # at start-up or in a training job the export is made again
    engine = inference_engine.load_engine(model_dir, "paddle-inference", export=True)
    assert engine.name == "paddle-inference" and inference_engine.check_static(model_dir) is None
    assert not [p for p in model_dir.iterdir() if p.name.startswith(".static")]


def test_an_export_is_whole_or_absent(exported, tmp_path, monkeypatch):
    """A crash mid-export leaves no static/ that looks usable."""
    import paddle

    import inference_engine

    model_dir = tmp_path / "model"
    shutil.copytree(exported, model_dir, ignore=shutil.ignore_patterns("static"))

    def crash(layer, path, **kwargs):
        open(path + ".pdmodel", "wb").write(b"half")
        raise OSError("disk full")

    monkeypatch.setattr(paddle.jit, "save", crash)
    with pytest.raises(inference_engine.ExportError, match="disk full"):
        inference_engine.export_static(model_dir)
    assert not (model_dir / "static").exists()
    assert not [p for p in model_dir.iterdir() if p.name.startswith(".static")]
