"""Hardening II: /versions loads nothing; tagger files are checked; /metrics says what is
served, answers without Redis and bounds the project label; a damaged export is rebuilt;
a tie at F1 0 promotes nothing."""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from helpers import EDGE_CASES, LABEL_CONFIG, PERSON, PLACE, tasks_for


def parse(text: str) -> dict:
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


def fresh(store):
    """The same MODEL_DIR in a new process (nothing loaded, nothing remembered)."""
    from service.model_store import ModelStore

    return ModelStore(store.settings, source=store.base)


@pytest.fixture
def loads(monkeypatch):
    """The paths ``ModelStore`` loads a model from, from now on."""
    from service.model_store import ModelStore

    seen, real = [], ModelStore._load
    monkeypatch.setattr(ModelStore, "_load", lambda self, path, export: (seen.append(path),
                                                                         real(self, path, export))[1])
    return seen


def add_tagger(model_dir: Path, seed=0):
    """Give ``model_dir`` a (small, untrained) span tagger for PERSON and PLACE."""
    import uie.tagger

    vocab = (model_dir / "vocab.txt").read_text(encoding="utf-8").splitlines()
    tagger = uie.tagger.build(vocab, [PERSON, PLACE], seed=seed, embedding_size=16, hidden_size=16,
                              num_layers=1)
    uie.tagger.save(tagger, model_dir)


@pytest.fixture(scope="module")
def tagged_model(tmp_path_factory, trained_model):
    path = tmp_path_factory.mktemp("tagged") / "model"
    shutil.copytree(trained_model, path)
    add_tagger(path)
    return path


# -- 5. GET /versions loads no model ------------------------------------------------------

def test_versions_answers_from_current_and_meta_without_loading_a_model(make_app, store_for, loads,
                                                                        scratch_small, trained_model):
    store = store_for(max_loaded_models=2)
    served = {}
    for project in ("1", "2", "3"):
        store.promote(project, scratch_small, {"note": "first"})
        served[project] = store.promote(project, trained_model, {"note": "second"})
    # project 3's current version is known to be broken without loading it: it lacks a file
    (store.project_dir("3") / served["3"] / "vocab.txt").unlink()
    fallback = [v["model_version"] for v in store.versions("3")][0]
    client = make_app(uie_model=str(scratch_small), model_dir=str(store.root), max_loaded_models=2
                      ).test_client()
    loaded_before = list(client.application.extensions["uie"]["store"].loaded())
    loads.clear()
    every = client.get("/versions")
    one = client.get("/versions?project=2")
    assert every.status_code == one.status_code == 200
    assert loads == [], "GET /versions loaded models"
    assert client.application.extensions["uie"]["store"].loaded() == loaded_before
    body = every.json
    assert set(body) == {"versions", "base", "projects"}
    assert body["projects"]["1"]["current"] == served["1"] and body["projects"]["2"]["current"] == served["2"]
    assert body["projects"]["3"]["current"] == fallback
    assert [v["model_version"] for v in body["projects"]["1"]["versions"]] == [
        v["model_version"] for v in store.versions("1")]
    names = {v["model_version"] for d in body["projects"].values() for v in d["versions"]}
    assert body["versions"][0] == body["base"] and set(body["versions"][1:]) == names
    assert one.json["projects"] == {"2": body["projects"]["2"]}


# -- 6. tagger files are checked against meta.json -----------------------------------------

def test_promotion_records_the_tagger_and_the_checksums_of_its_files(store_for, trained_model, tagged_model):
    import uie.tagger

    store = store_for()
    plain = store.promote("1", trained_model, {})
    tagged = store.promote("1", tagged_model, {})
    meta = json.loads((store.project_dir("1") / tagged / "meta.json").read_text())
    assert meta["tagger"] == {"classes": [PERSON, PLACE],
                              "sha256": {name: uie.tagger.file_checksum(tagged_model / name)
                                         for name in ("tagger.json", "tagger.pdparams")}}
    assert json.loads((store.project_dir("1") / plain / "meta.json").read_text())["tagger"] is None
    live = fresh(store).live("1")
    assert live.version == tagged and live.predictor.tagger is not None


@pytest.mark.parametrize("damage", ["deleted-config", "deleted-weights", "foreign-weights", "edited-config",
                                    "tagger-added", "no-weights-checksum"])
def test_a_version_whose_tagger_or_meta_does_not_match_falls_back(store_for, trained_model, tagged_model,
                                                                  tmp_path, damage):
    store = store_for()
    v1 = store.promote("1", trained_model, {})
    v2 = store.promote("1", tagged_model, {})
    broken = v2
    vdir = store.project_dir("1") / v2
    if damage == "deleted-config":
        (vdir / "tagger.json").unlink()
    elif damage == "deleted-weights":
        (vdir / "tagger.pdparams").unlink()
    elif damage == "foreign-weights":       # another tagger's weights, of the same shapes
        other = tmp_path / "other"
        shutil.copytree(tagged_model, other)
        add_tagger(other, seed=7)
        shutil.copyfile(other / "tagger.pdparams", vdir / "tagger.pdparams")
    elif damage == "edited-config":         # still a valid configuration, not the recorded one
        config = json.loads((vdir / "tagger.json").read_text(encoding="utf-8"))
        (vdir / "tagger.json").write_text(json.dumps(dict(config, dropout=0.1)), encoding="utf-8")
    elif damage == "tagger-added":          # a version trained without one gets a foreign tagger
        v1, broken = v2, store.promote("1", trained_model, {})
        for name in ("tagger.json", "tagger.pdparams"):
            shutil.copyfile(tagged_model / name, store.project_dir("1") / broken / name)
    elif damage == "no-weights-checksum":
        meta = json.loads((vdir / "meta.json").read_text())
        del meta["weights_sha256"]
        (vdir / "meta.json").write_text(json.dumps(meta))
    store = fresh(store)
    assert [store.live("1").version for _ in range(2)] == [v1, v1]
    problem = store.problems()["1"]
    assert problem["served_version"] == v1 and broken in problem["errors"][0]
    assert ("weights_sha256" if damage == "no-weights-checksum" else "tagger") in problem["errors"][0]


def add_choice_head(model_dir: Path, seed=0):
    """Give ``model_dir`` a (small, untrained) choice head for one single-choice control."""
    import uie.choice_head

    vocab = (model_dir / "vocab.txt").read_text(encoding="utf-8").splitlines()
    head = uie.choice_head.build(vocab, [{"prefix": "主题", "options": ["体育", "财经"], "multiple": False}],
                                 seed=seed, embedding_size=16, hidden_size=16, num_layers=1)
    uie.choice_head.save(head, model_dir)


@pytest.mark.parametrize("damage", ["deleted-weights", "foreign-weights", "head-added"])
def test_a_version_whose_choice_head_does_not_match_falls_back(store_for, trained_model, tmp_path, damage):
    import uie.choice_head

    headed = tmp_path / "headed"
    shutil.copytree(trained_model, headed)
    add_choice_head(headed)
    store = store_for()
    v1 = store.promote("1", trained_model, {})
    v2 = broken = store.promote("1", headed, {})
    vdir = store.project_dir("1") / v2
    meta = json.loads((vdir / "meta.json").read_text())
    assert set(meta["choice_head"]["sha256"]) == set(uie.choice_head.FILES)
    assert fresh(store).live("1").predictor.choice_head is not None
    if damage == "deleted-weights":
        (vdir / "choice_head.pdparams").unlink()
    elif damage == "foreign-weights":       # another head's weights, of the same shapes
        other = tmp_path / "other"
        shutil.copytree(headed, other)
        add_choice_head(other, seed=7)
        shutil.copyfile(other / "choice_head.pdparams", vdir / "choice_head.pdparams")
    else:                                   # a version trained without one gets a foreign head
        v1, broken = v2, store.promote("1", trained_model, {})
        for name in uie.choice_head.FILES:
            shutil.copyfile(headed / name, store.project_dir("1") / broken / name)
    store = fresh(store)
    assert store.live("1").version == v1
    assert "choice head" in store.problems()["1"]["errors"][0] and broken in store.problems()["1"]["errors"][0]


def test_health_shows_a_deleted_tagger(make_app, store_for, scratch_small, trained_model, tagged_model):
    store = store_for()
    v1 = store.promote("1", trained_model, {})
    v2 = store.promote("1", tagged_model, {})
    (store.project_dir("1") / v2 / "tagger.json").unlink()
    client = make_app(uie_model=str(scratch_small), model_dir=str(store.root)).test_client()
    body = {"tasks": tasks_for(EDGE_CASES[:1]), "label_config": LABEL_CONFIG, "project": "1.1"}
    reply = client.post("/predict", json=body)
    assert reply.status_code == 200 and reply.json["results"][0]["model_version"] == v1
    problems = client.get("/health").json["problems"]
    assert problems["1"]["served_version"] == v1 and "tagger.json" in problems["1"]["errors"][0]


# -- 10. /metrics ------------------------------------------------------------------------

def test_metrics_report_the_version_actually_served(make_app, store_for, scratch_small, trained_model):
    store = store_for()
    v1 = store.promote("1", trained_model, {})
    v2 = store.promote("1", trained_model, {})
    weights = store.project_dir("1") / v2 / "model_state.pdparams"
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])     # fails its checksum
    client = make_app(uie_model=str(scratch_small), model_dir=str(store.root)).test_client()
    body = {"tasks": tasks_for(EDGE_CASES[:1]), "label_config": LABEL_CONFIG, "project": "1.1"}
    assert client.post("/predict", json=body).json["results"][0]["model_version"] == v1
    samples = parse(client.get("/metrics").get_data(as_text=True))
    served = {dict(labels)["version"] for (name, labels) in samples
              if name == "uie_served_model_info" and dict(labels)["project"] == "1"}
    assert served == {v1}
    assert client.get("/versions?project=1").json["projects"]["1"]["current"] == v1


def test_metrics_answer_while_redis_is_down(make_app, scratch_small):
    from harness.redis_server import RedisServer

    redis = RedisServer()
    try:
        client = make_app(uie_model=str(scratch_small), redis_url=redis.url).test_client()
        reply = client.get("/metrics")
        assert reply.status_code == 200
        up = parse(reply.get_data(as_text=True))
    finally:
        redis.stop()
    reply = client.get("/metrics")
    assert reply.status_code == 200, reply.get_data(as_text=True)
    assert up[("uie_metrics_source_up", (("source", "redis"),))] == 1
    samples = parse(reply.get_data(as_text=True))
    assert samples[("uie_metrics_source_up", (("source", "redis"),))] == 0
    assert ("uie_jobs", (("state", "done"),)) in samples                 # from MODEL_DIR
    assert not any(name.startswith("uie_training_duration_seconds") for name, _ in samples)
    as_json = client.get("/metrics?format=json")
    assert as_json.status_code == 200 and as_json.json["samples"]["uie_metrics_source_up"][0]["value"] == 0


def test_the_project_label_is_bounded(make_app, scratch_small, monkeypatch, tmp_path):
    import service.metrics

    monkeypatch.setattr(service.metrics, "MAX_PROJECT_LABELS", 3, raising=False)
    client = make_app(uie_model=str(scratch_small)).test_client()
    before = client.get("/metrics?format=json").json
    for n in range(40):
        service.metrics.observe_prediction(f"b{n}", 2, 1)
        time.sleep(0.002)       # one after the other
    models = Path(client.application.extensions["uie"]["settings"].model_dir)
    for n in range(10):
        (models / f"c{n}").mkdir()
    reply = client.get("/metrics")
    samples = parse(reply.get_data(as_text=True))
    tasks = {dict(labels)["project"]: v for (name, labels), v in samples.items()
             if name == "uie_predicted_tasks_total"}
    assert set(tasks) == {"b37", "b38", "b39", "_other"}
    assert sum(tasks.values()) == before["predicted_tasks"] + 80
    served = [dict(labels)["project"] for name, labels in samples if name == "uie_served_model_info"]
    assert len(served) == 4 and "_base" in served
    assert samples[("uie_metrics_projects_folded", (("metric", "uie_predicted"),))] >= 37
    assert samples[("uie_metrics_projects_folded", (("metric", "uie_served_model_info"),))] == 7
    assert not any(name.startswith(service.metrics.LAST_ACTIVE) for name, _ in samples)
    after = client.get("/metrics?format=json").json
    assert after["predicted_tasks"] - before["predicted_tasks"] == 80


# -- 12. a damaged static export is rebuilt ------------------------------------------------

def test_a_damaged_export_is_rebuilt_when_the_version_loads(store_for, trained_model, tmp_path):
    import uie.engine

    model = tmp_path / "exported"
    shutil.copytree(trained_model, model)
    uie.engine.export_static(model)
    store = store_for()
    version = store.promote("1", model, {})
    path = store.project_dir("1") / version
    assert uie.engine.check_static(path) is None
    params = path / "static" / "inference.pdiparams"
    params.write_bytes(params.read_bytes()[:100])
    store = fresh(store)
    live = store.live("1")
    assert live.version == version and live.predictor.engine.name == "dygraph"   # served at once
    assert "static" in store.problems()["1"]["errors"][0]
    deadline = time.time() + 300
    while store.exports_in_progress():
        assert time.time() < deadline, "the export was not rebuilt"
        time.sleep(0.5)
    assert uie.engine.check_static(path) is None
    assert store.live("1").predictor.engine.name == "paddle-inference"
    assert "1" not in store.problems()


# -- 13a. a tie at F1 0 promotes nothing ----------------------------------------------------

@pytest.mark.parametrize("new, old, promote", [(0.0, 0.0, False), (0.5, 0.5, True), (0.6, 0.5, True),
                                               (0.4, 0.5, False), (0.1, 0.0, True)])
def test_promotion_needs_at_least_the_served_score_and_more_than_zero(monkeypatch, tmp_path, new, old, promote):
    import train_job

    spec = train_job.JobSpec(project="1", label_config=LABEL_CONFIG, tasks=[], source="test",
                             model_path="served", model_version="v1-20260101-000000")
    monkeypatch.setattr(train_job, "build_examples",
                        lambda *a, **k: train_job.Examples([], [], 3, False))
    monkeypatch.setattr(train_job, "_write_examples", lambda *a: None)
    monkeypatch.setattr(train_job, "_finetune", lambda *a: {})
    monkeypatch.setattr(train_job, "_export", lambda *a: None)
    monkeypatch.setattr(train_job, "_export_int8", lambda *a: "no INT8 in this test")
    monkeypatch.setattr(train_job, "_score", lambda path, examples, spec, progress=None: {
        "f1": old if path == "served" else new, "by_label": {}})
    assert train_job.train(spec, tmp_path / "work")["promote"] is promote
