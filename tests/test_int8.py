"""INFERENCE_PRECISION: the INT8 export (ONNX Runtime), against FP32, its fallbacks, jobs, /health."""

from __future__ import annotations

import json
import logging
import shutil
import threading

import pytest

from helpers import (EDGE_CASES, LABEL_CONFIG, PERSON, PLACE, RELATION_CONFIG, SEQ_LEN, annotated_tasks,
                     cluener_texts, make_settings, span_f1, tasks_for, wait_job)


@pytest.fixture(scope="module")
def int8_model(tmp_path_factory, trained_model):
    """A copy of the trained fixture model with its static and INT8 exports."""
    import uie.engine

    model_dir = tmp_path_factory.mktemp("int8") / "model"
    shutil.copytree(trained_model, model_dir)
    uie.engine.export_int8(model_dir)
    return model_dir


def _copy(src, tmp_path):
    dst = tmp_path / "model"
    shutil.copytree(src, dst)
    return dst


def _spans(predictor, texts):
    found = predictor.extract([(t, [PERSON, PLACE]) for t in texts])
    return {(i, p, s.start, s.end) for i, res in enumerate(found) for p, spans in res.items() for s in spans}


def test_int8_gives_the_fp32_spans_on_a_trained_model(int8_model):
    import uie.engine
    import uie.int8
    import uie.predictor

    assert uie.engine.check_int8(int8_model) is None
    stamp = uie.engine.int8_stamp(int8_model)
    assert stamp["weights_sha256"] and stamp["model.onnx"] and stamp["opset"] == uie.int8.OPSET

    def served(precision):
        engine = uie.engine.load_engine(int8_model, precision=precision)
        return uie.predictor.UIEPredictor.from_dir(int8_model, engine=engine, max_seq_len=SEQ_LEN)

    int8, fp32 = served("int8"), served("fp32")
    assert int8.engine.name == "onnx-int8" and int8.engine.precision == "int8"
    assert fp32.engine.name == "paddle-inference" and fp32.engine.precision == "fp32"
    # the texts it was trained on: both find every span (the long one spans several windows)
    texts = [text for text, _ in EDGE_CASES]
    gold = {(i, label, s, e) for i, (_, spans) in enumerate(EDGE_CASES) for label, s, e in spans}
    assert span_f1(_spans(fp32, texts), gold) == 1.0
    assert span_f1(_spans(int8, texts), gold) >= 1.0 - uie.int8.F1_BUDGET
    # texts it never saw (CLUENER), where this tiny model is unsure of many spans: INT8
    # finds nearly what FP32 finds (about 99 %: the differences are spans near the threshold)
    others = cluener_texts(200)
    ref = _spans(fp32, others)
    assert len(ref) > 20, "too few spans to compare anything"
    assert span_f1(_spans(int8, others), ref) >= 0.97


def test_the_precision_decision(int8_model, tmp_path):
    """fp32 never, int8 a valid export, auto only what its job checked; DEVICE=gpu and
    dygraph never touch the INT8 path."""
    import uie.int8
    from uie.engine import choose_precision

    model = _copy(int8_model, tmp_path)
    assert choose_precision(model, "fp32") == (False, "")
    assert choose_precision(model, "int8")[0] is True
    for kwargs in ({"device": "gpu"}, {"engine": "dygraph"}):
        for precision in ("int8", "auto"):
            use, why = choose_precision(model, precision, **kwargs)
            assert use is False and why, (kwargs, precision)
    assert "gpu" in choose_precision(model, "int8", device="gpu")[1].lower()
    # auto: not without a job's check, not when it failed, not for another export
    use, why = choose_precision(model, "auto")
    assert use is False and "no training job checked" in why
    sha = uie.engine.int8_stamp(model)["model.onnx"]
    for record, ok in (({"served": True, "onnx_sha256": sha, "reason": "within"}, True),
                       ({"served": False, "onnx_sha256": sha, "reason": "loses 0.02"}, False),
                       ({"served": True, "onnx_sha256": "0" * 64}, False)):
        (model / "meta.json").write_text(json.dumps({"int8": record}), encoding="utf-8")
        use, why = choose_precision(model, "auto")
        assert use is ok and why, (record, why)
    assert "is not the one its training job checked" in why
    # a damaged export: auto and int8 both refuse it, and say why
    (model / "meta.json").write_text(json.dumps({"int8": {"served": True, "onnx_sha256": sha}}))
    with open(uie.engine.int8_file(model), "r+b") as f:
        f.seek(100)
        f.write(b"\0\0\0\0")
    for precision in ("auto", "int8"):
        use, why = choose_precision(model, precision)
        assert use is False and "damaged" in why, why
    shutil.rmtree(model / "int8")
    assert "no INT8 model has been exported" in choose_precision(model, "int8")[1]
    with pytest.raises(ValueError):
        choose_precision(model, "fp16")


def test_int8_asked_without_a_usable_export_serves_fp32_loudly(int8_model, tmp_path, caplog):
    import uie.engine
    import uie.int8

    model = _copy(int8_model, tmp_path)
    shutil.rmtree(model / "int8")
    with caplog.at_level(logging.WARNING, logger="uie.engine"):
        engine = uie.engine.load_engine(model, precision="int8")
    assert engine.name == "paddle-inference" and engine.precision == "fp32"
    assert "no INT8 model has been exported" in engine.precision_reason
    assert "INT8 not served" in caplog.text
    # a damaged stamp
    shutil.copytree(int8_model / "int8", model / "int8")
    (model / "int8" / "export.json").write_text("{not json", encoding="utf-8")
    engine = uie.engine.load_engine(model, precision="int8")
    assert engine.precision == "fp32" and "unreadable" in engine.precision_reason
    # a stamp that matches a file ONNX Runtime cannot load
    (model / "int8" / "model.onnx").write_bytes(b"not an onnx model")
    stamp = dict(uie.engine.int8_stamp(int8_model), **{"model.onnx": uie.engine._sha256(model / "int8" / "model.onnx")})
    (model / "int8" / "export.json").write_text(json.dumps(stamp), encoding="utf-8")
    engine = uie.engine.load_engine(model, precision="int8")
    assert engine.precision == "fp32" and "does not load" in engine.precision_reason
    # start-up (export=True) with int8 makes the missing export and serves it
    shutil.rmtree(model / "int8")
    engine = uie.engine.load_engine(model, precision="int8", export=True)
    assert engine.name == "onnx-int8" and uie.engine.check_int8(model) is None


def test_the_gpu_never_touches_the_int8_path(int8_model, monkeypatch):
    """DEVICE=gpu with INFERENCE_PRECISION=int8: no INT8 export, no ONNX Runtime, FP32."""
    import uie.engine
    import uie.int8

    def refuse(*args, **kwargs):
        raise AssertionError("the INT8 path was taken on the GPU")

    for name in ("export_int8", "OnnxInt8Engine", "check_int8"):
        monkeypatch.setattr(uie.engine, name, refuse)
    for name in ("to_onnx_int8", "job_check", "checked_reason"):
        monkeypatch.setattr(uie.int8, name, refuse)
    monkeypatch.setattr(uie.engine, "_load_fp32", lambda *a: uie.engine.DygraphEngine(None, "gpu"))
    for precision in ("int8", "auto"):
        engine = uie.engine.load_engine(int8_model, device="gpu", precision=precision, export=True)
        assert engine.precision == "fp32" and "DEVICE=gpu" in engine.precision_reason


def _store(tmp_path, base, **overrides):
    from service.model_store import ModelStore

    return ModelStore(make_settings(tmp_path / "models", uie_model=str(base), **overrides))


def test_health_shows_each_loaded_models_precision_and_why(make_app, int8_model):
    client = make_app(uie_model=str(int8_model), inference_precision="int8").test_client()
    health = client.get("/health").json
    assert health["model"]["precision"] == "int8" and health["model"]["engine"] == "onnx-int8"
    [(path, info)] = health["loaded_models"].items()
    assert info["precision"] == "int8" and info["precision_reason"] == "INFERENCE_PRECISION=int8"
    answer = client.post("/predict", json={"tasks": tasks_for(EDGE_CASES[:1]), "label_config": LABEL_CONFIG,
                                           "project": "3.1"}).json
    assert len(answer["results"][0]["result"]) == 2
    # auto: the base model has no job's check -> FP32, and /health says why
    health = make_app(uie_model=str(int8_model)).test_client().get("/health").json
    assert health["model"]["precision"] == "fp32" and health["model"]["engine"] == "paddle-inference"
    assert "no training job checked INT8" in health["model"]["precision_reason"]
    # behind basic auth: the precision, not the reason
    app = make_app(uie_model=str(int8_model), inference_precision="int8", basic_auth_user="u",
                   basic_auth_pass="p", model_dir=str(int8_model.parent / "models-auth"))
    model = app.test_client().get("/health").json["model"]
    assert model["precision"] == "int8" and "precision_reason" not in model


def test_a_job_checks_int8_and_auto_serves_it_only_when_the_check_passed(make_app, scratch_small, tmp_path):
    """The job exports INT8, scores it against FP32 on its dev examples and records it; auto
    serves INT8 for that version only while its record allows it. (A scratch model: its span
    tagger answers the labels it learnt in both precisions; INT8 is the UIE encoder's.)"""
    app = make_app(uie_model=str(scratch_small), train_epochs=20, train_max_seq_len=SEQ_LEN,
                   max_seq_len=SEQ_LEN)
    client = app.test_client()
    job = client.post("/train", json={"annotations": annotated_tasks(EDGE_CASES), "project": "21.1",
                                      "label_config": LABEL_CONFIG}).json["job"]
    done = wait_job(lambda p: client.get(p).json, "21", job["id"])
    assert done["state"] == "done" and done["promoted"], done
    record = done["int8"]
    assert record["fp32_f1"] == done["metrics"]["f1"] > 0
    assert record["f1"] >= record["fp32_f1"] - 0.005 and record["served"] is True, record
    version_dir = tmp_path / "models" / "21" / done["model_version"]
    meta = json.loads((version_dir / "meta.json").read_text(encoding="utf-8"))
    assert meta["int8"] == record
    result = json.loads((tmp_path / "models" / "21" / "jobs" / job["id"] / "result.json").read_text("utf-8"))
    assert result["int8"] == record
    client.post("/predict", json={"tasks": tasks_for(EDGE_CASES[:1]), "label_config": LABEL_CONFIG,
                                  "project": "21.1"})
    loaded = client.get("/health").json["loaded_models"]
    assert loaded[str(version_dir)]["precision"] == "int8", loaded
    assert "within the 0.005 budget" in loaded[str(version_dir)]["precision_reason"]
    # the same version, its check failed: FP32 under auto
    meta["int8"] = dict(record, served=False, reason="INT8 F1 0.9 vs FP32 1.0: loses 0.1")
    (version_dir / "meta.json").write_text(json.dumps(meta), encoding="utf-8")
    store = _store(tmp_path, scratch_small)     # another worker, loading it afresh
    live = store.live("21")
    assert live.version == done["model_version"] and live.predictor.engine.precision == "fp32"
    assert "loses 0.1" in live.predictor.engine.precision_reason
    # INFERENCE_PRECISION=fp32: the job does not export INT8, and says why
    from train_job import JobSpec, _check_int8, _export_int8

    spec = JobSpec(project="1", label_config=LABEL_CONFIG, tasks=[], source="t", model_path="",
                   model_version="", inference_precision="fp32")
    assert _export_int8(version_dir, spec) == "INFERENCE_PRECISION=fp32"
    assert _check_int8(version_dir, [], spec, {"f1": 1.0})["reason"] == "INFERENCE_PRECISION=fp32"


def test_one_response_is_answered_by_one_precision(tmp_path, int8_model, monkeypatch):
    """A request takes one loaded model from the store, and every round of it (labels,
    then relations) runs on that model's engine, even when the store switches the project
    to a model of the other precision between two rounds."""
    import uie.engine
    from my_ml_backend import UIEBackend

    import uie.predictor

    store = _store(tmp_path, int8_model, inference_precision="int8")
    int8 = store.live("5")
    fp32_path = _copy(int8_model, tmp_path / "fp32")
    fp32 = uie.predictor.UIEPredictor.from_dir(fp32_path, engine=uie.engine.load_engine(fp32_path),
                                               max_seq_len=SEQ_LEN, batch_wait_ms=5)
    assert int8.predictor.engine.precision == "int8" and fp32.engine.precision == "fp32"
    calls, lock = [], threading.Lock()

    class Spy:
        def __init__(self, engine):
            self.engine, self.precision = engine, engine.precision

        def __call__(self, arrays):
            with lock:
                calls.append(self.precision)
            return self.engine(arrays)

    for predictor in (int8.predictor, fp32):
        monkeypatch.setattr(predictor, "engine", Spy(predictor.engine))
    switched = type(int8)(int8.version + "-fp32", str(fp32_path), fp32)
    asked = []

    def live(project):
        asked.append(project)
        return int8 if len(asked) == 1 else switched     # the switch lands right after the first ask

    monkeypatch.setattr(store, "live", live)
    backend = UIEBackend(store, "5", RELATION_CONFIG)
    predictions = backend.predict(tasks_for(EDGE_CASES[:3]))
    assert len(predictions) == 3 and asked == ["5"]
    assert calls and set(calls) == {"int8"}, calls
    assert {p["model_version"] for p in predictions} == {int8.version}
    # the next request is answered by the switched model alone
    calls.clear()
    UIEBackend(store, "5", RELATION_CONFIG).predict(tasks_for(EDGE_CASES[:3]))
    assert calls and set(calls) == {"fp32"}, calls
