"""inference_engine: the static export, Paddle Inference against dygraph and Taskflow."""

from __future__ import annotations

import shutil

import numpy as np
import pytest

from helpers import EDGE_CASES, PERSON, PLACE, SEQ_LEN, cluener_texts

SERVE_LEN = 128     # CLUENER sentences fit one window, as in Taskflow


@pytest.fixture(scope="module")
def exported(tmp_path_factory, trained_model):
    """A copy of the trained fixture model with its static export."""
    import uie.engine

    model_dir = tmp_path_factory.mktemp("exported") / "model"
    shutil.copytree(trained_model, model_dir)
    uie.engine.export_static(model_dir)
    return model_dir


def predictor(model_dir, engine, threshold, max_seq_len=SERVE_LEN):
    import uie.engine
    import uie.predictor

    return uie.predictor.UIEPredictor.from_dir(model_dir, max_seq_len=max_seq_len, threshold=threshold,
                                           engine=uie.engine.load_engine(model_dir, engine))


def as_table(found):
    return [{p: [(s.start, s.end, s.score) for s in spans] for p, spans in res.items()} for res in found]


def assert_same(a, b, tol=1e-4):
    assert len(a) == len(b) > 0, (len(a), len(b))
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
    import uie.engine

    model_dir = tmp_path / "model"
    shutil.copytree(exported, model_dir)
    model_file, params_file = uie.engine.static_files(model_dir)
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
    assert uie.engine.check_static(model_dir)
    engine = uie.engine.load_engine(model_dir, "paddle-inference")
    assert engine.name == "dygraph" and engine.reason
    # at start-up or in a training job the export is made again
    engine = uie.engine.load_engine(model_dir, "paddle-inference", export=True)
    assert engine.name == "paddle-inference" and uie.engine.check_static(model_dir) is None
    assert not [p for p in model_dir.iterdir() if p.name.startswith(".static")]


def test_an_export_is_whole_or_absent(exported, tmp_path, monkeypatch):
    """A crash mid-export leaves no static/ that looks usable."""
    import paddle

    import uie.engine

    model_dir = tmp_path / "model"
    shutil.copytree(exported, model_dir, ignore=shutil.ignore_patterns("static"))

    def crash(layer, path, **kwargs):
        open(path + ".pdmodel", "wb").write(b"half")
        raise OSError("disk full")

    monkeypatch.setattr(paddle.jit, "save", crash)
    with pytest.raises(uie.engine.ExportError, match="disk full"):
        uie.engine.export_static(model_dir)
    assert not (model_dir / "static").exists()
    assert not [p for p in model_dir.iterdir() if p.name.startswith(".static")]


# --------------------------------------------------------------------------
# The server's models run on INFERENCE_ENGINE

def predict(client, project="1.1"):
    from helpers import LABEL_CONFIG, tasks_for

    answer = client.post("/predict", json={"tasks": tasks_for(), "project": project,
                                           "label_config": LABEL_CONFIG})
    assert answer.status_code == 200, answer.json
    return answer.json["results"]


def test_the_server_predicts_the_same_on_both_engines_and_says_which_it_uses(make_app, trained_model, tmp_path):
    model = tmp_path / "checkpoint"
    shutil.copytree(trained_model, model)
    answers = {}
    for engine in ("paddle-inference", "dygraph"):
        client = make_app(uie_model=str(model), model_dir=str(tmp_path / engine), inference_engine=engine,
                          cpu_threads=2).test_client()
        health = client.get("/health").json
        assert health["model"]["engine"] == engine and health["model"]["threads"] == 2
        answers[engine] = predict(client)
    assert (model / "static" / "inference.pdmodel").is_file()        # exported at start-up
    a, b = answers.values()
    assert [[(r["value"]["labels"], r["value"]["start"], r["value"]["end"]) for r in p["result"]] for p in a] == \
           [[(r["value"]["labels"], r["value"]["start"], r["value"]["end"]) for r in p["result"]] for p in b]
    assert all(abs(x["score"] - y["score"]) <= 1e-4 for p, q in zip(a, b) for x, y in zip(p["result"], q["result"]))
    assert sum(len(p["result"]) for p in a) >= 10


def test_a_trained_version_carries_its_export_and_a_missing_one_is_not_made_in_a_request(
        make_app, scratch_small, tmp_path, caplog):
    from helpers import LABEL_CONFIG, annotated_tasks, wait_job

    # the FP32 static export is what this is about (auto would serve a checked INT8 export)
    app = make_app(uie_model=str(scratch_small), train_epochs=20, train_max_seq_len=SEQ_LEN,
                   inference_precision="fp32")
    client = app.test_client()
    job = client.post("/train", json={"annotations": annotated_tasks(EDGE_CASES), "project": "3.1",
                                      "label_config": LABEL_CONFIG}).json["job"]
    done = wait_job(lambda p: client.get(p).json, "3", job["id"])
    assert done["state"] == "done" and done["promoted"], done
    store = app.extensions["uie"]["store"]
    version_dir = store.project_dir("3") / done["model_version"]
    import uie.engine

    assert uie.engine.check_static(version_dir) is None          # exported by the job
    predict(client, "3.1")
    assert store.engines()[str(version_dir)]["engine"] == "paddle-inference"

    # the same version in a new process, its export deleted: the request is answered by dygraph
    # at once; the export is rebuilt beside it (a child process), then served
    shutil.rmtree(version_dir / "static")
    fresh = make_app(uie_model=str(scratch_small), model_dir=str(store.root),
                     inference_precision="fp32").test_client()
    predict(fresh, "3.1")
    loaded = fresh.get("/health").json["loaded_models"][str(version_dir)]
    assert loaded["engine"] == "dygraph" and "no static model" in loaded["engine_fallback_reason"]
    import time

    deadline = time.time() + 120
    while fresh.get("/health").json["loaded_models"][str(version_dir)]["engine"] != "paddle-inference":
        assert time.time() < deadline, fresh.get("/health").json
        time.sleep(0.5)
    assert uie.engine.check_static(version_dir) is None


def test_unloading_a_model_stops_its_batching_thread(make_app, scratch_small, trained_model, tmp_path):
    import threading

    def batchers():
        return [t for t in threading.enumerate() if t.name.startswith("batcher") and t.is_alive()]

    app = make_app(uie_model=str(scratch_small), max_loaded_models=2)
    store = app.extensions["uie"]["store"]
    before = len(batchers())
    for project in ("1", "2", "3"):
        store.promote(project, trained_model if project != "2" else scratch_small, {})
        store.live(project)
    import time

    deadline = time.time() + 5
    while len(batchers()) > before + 1 and time.time() < deadline:
        time.sleep(0.05)
    assert len(batchers()) - before <= 1 and len(store.loaded()) == 2


@pytest.mark.parametrize("hidden, layers, tokens", [(None, None, 1024), (768, 12, 384), (1024, 24, 128)])
def test_a_larger_model_runs_fewer_tokens_per_batch_on_the_cpu(exported, tmp_path, hidden, layers, tokens):
    """A pass holds every layer's activations at once: a model the size of uie-base (by its
    config.json) batches at most 384 padded tokens on the CPU (its worker's peak stays below
    dygraph's), uie-large 128, small models 1,024; the answers do not change."""
    import json

    import uie.engine

    model = tmp_path / "model"
    shutil.copytree(exported, model)
    if hidden:
        config = json.loads((model / "config.json").read_text(encoding="utf-8"))
        config.update(hidden_size=hidden, num_hidden_layers=layers)
        (model / "config.json").write_text(json.dumps(config), encoding="utf-8")
    pi = predictor(model, "paddle-inference", 0.5)
    assert pi.engine.max_batch_tokens == tokens
    shapes, forward = [], pi.engine.__call__
    pi.engine = lambda arrays: shapes.append(arrays["input_ids"].shape) or forward(arrays)
    queries = [(t, [PERSON, PLACE]) for t in cluener_texts(24)]
    assert_same(as_table(pi.extract(queries)), as_table(predictor(exported, "dygraph", 0.5).extract(queries)))
    assert all(rows == 1 or rows * uie.engine.padded_width(width) <= tokens for rows, width in shapes)
    assert max(rows for rows, _ in shapes) > 1
