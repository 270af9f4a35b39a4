"""model_store: versions on disk, what is served, and what happens when files are damaged."""

from __future__ import annotations

import json
import logging
import os
import shutil
import threading

from pathlib import Path

import pytest


@pytest.fixture
def two_versions(store_for, scratch_small, trained_model):
    """Project 1 with v1 (scratch weights) and v2 (trained weights, current)."""
    store = store_for()
    v1 = store.promote("1", scratch_small, {"note": "first"})
    v2 = store.promote("1", trained_model, {"note": "second"})
    assert store.live("1").version == v2
    return store, v1, v2


def fresh(store):
    """The same MODEL_DIR in a new process (nothing loaded, nothing remembered)."""
    from service.model_store import ModelStore

    return ModelStore(store.settings, source=store.base)


def errors_logged(caplog, store):
    """The model store's errors about ``store``: those of this test's thread, or naming its files.
    An earlier test's background export (a thread with a child process) may end, and log that
    it failed on files since deleted, while this test runs."""
    root = str(store.root)
    return [r for r in caplog.records if r.levelno >= logging.ERROR and r.name == "service.model_store"
            and (r.threadName == threading.current_thread().name or root in r.getMessage())]


@pytest.fixture
def file_reads(monkeypatch):
    """Which files named ``current`` or ``meta.json`` are read (as ``<dir>/<name>``), and
    for which projects ``ModelStore.versions`` lists every version."""
    from service.model_store import ModelStore

    reads, listed = [], []
    real_text, real_bytes, real_versions = Path.read_text, Path.read_bytes, ModelStore.versions

    def note(path):
        if path.name in ("current", "meta.json"):
            reads.append(f"{path.parent.name}/{path.name}")

    monkeypatch.setattr(Path, "read_text", lambda self, *a, **k: (note(self), real_text(self, *a, **k))[1])
    monkeypatch.setattr(Path, "read_bytes", lambda self: (note(self), real_bytes(self))[1])
    monkeypatch.setattr(ModelStore, "versions",
                        lambda self, project: (listed.append(project), real_versions(self, project))[1])
    return reads, listed


def test_a_trained_project_is_served_from_current_alone(two_versions, file_reads):
    """Each request reads ``current``; the version it names is checked once, when it is
    loaded; no other version's meta.json is read while it loads."""
    store, v1, v2 = two_versions
    store = fresh(store)
    reads, listed = file_reads
    reads.clear(), listed.clear()
    served = [store.live("1") for _ in range(5)]
    assert [live.version for live in served] == [v2] * 5
    assert len({id(live.predictor) for live in served}) == 1      # loaded once, then cached
    assert reads == ["1/current", f"{v2}/meta.json"] + ["1/current"] * 4
    assert listed == []


def test_the_fallback_list_is_read_only_when_current_does_not_load(two_versions, file_reads):
    store, v1, v2 = two_versions
    (store.project_dir("1") / v2 / "vocab.txt").unlink()
    store = fresh(store)
    reads, listed = file_reads
    reads.clear(), listed.clear()
    assert [store.live("1").version for _ in range(3)] == [v1] * 3
    assert listed == ["1"] * 3                                    # on each request
    assert f"{v1}/meta.json" in reads and "1" in store.problems()


@pytest.mark.parametrize("damage", ["garbage", "empty", "dangling", "not-utf8", "directory"])
def test_a_damaged_current_serves_the_newest_version_that_loads(two_versions, damage, caplog):
    store, v1, v2 = two_versions
    current = store.project_dir("1") / "current"
    current.unlink()
    if damage == "directory":
        current.mkdir()
    else:
        current.write_bytes({"garbage": b"hello world", "empty": b"", "dangling": b"v9-20260101-000000\n",
                             "not-utf8": b"\xff\xfe\x00v2"}[damage])
    store = fresh(store)
    with caplog.at_level(logging.INFO):
        served = [store.live("1").version for _ in range(3)]
    assert served == [v2, v2, v2]          # not the base model
    assert len(errors_logged(caplog, store)) == 1  # once, not per request
    problem = store.problems()["1"]
    assert problem["served_version"] == v2 and "current" in problem["errors"][0]


@pytest.mark.parametrize("damage", ["truncated-weights", "deleted-vocab", "bad-config", "bad-tokenizer-config",
                                    "empty-state-dict", "foreign-weights", "bad-meta"])
def test_a_version_that_does_not_load_falls_back_once_loudly(two_versions, scratch_small, damage, caplog):
    import paddle

    store, v1, v2 = two_versions
    vdir = store.project_dir("1") / v2
    weights = vdir / "model_state.pdparams"
    if damage == "truncated-weights":
        weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    elif damage == "deleted-vocab":
        (vdir / "vocab.txt").unlink()
    elif damage == "bad-config":
        (vdir / "config.json").write_text("{not json", encoding="utf-8")
    elif damage == "bad-tokenizer-config":
        (vdir / "tokenizer_config.json").write_text("[1, 2", encoding="utf-8")
    elif damage == "empty-state-dict":
        paddle.save({}, str(weights))
    elif damage == "foreign-weights":       # a valid model's weights, but not this version's
        shutil.copyfile(scratch_small / "model_state.pdparams", weights)
    elif damage == "bad-meta":
        (vdir / "meta.json").write_text("{", encoding="utf-8")
    store = fresh(store)
    loads = []
    with caplog.at_level(logging.INFO):
        for _ in range(3):
            live = store.live("1")
            loads.append(sum("loading model" in r.getMessage() and v2 in r.getMessage() for r in caplog.records))
    assert live.version == v1 and live.predictor is not store.predictor(store.base.path)
    assert loads[-1] <= 1, "the broken version is loaded again on every request"
    assert len(errors_logged(caplog, store)) == 1
    assert v2 in store.problems()["1"]["errors"][0]
    versions = [v["model_version"] for v in store.versions("1")]
    assert versions == ([v1] if damage == "bad-meta" else [v1, v2])
    # mended files are picked up without a restart
    if damage != "bad-meta":
        shutil.rmtree(vdir)
        shutil.copytree(store.project_dir("1") / v1, vdir)
        meta = json.loads((vdir / "meta.json").read_text())
        (vdir / "meta.json").write_text(json.dumps(dict(meta, model_version=v2)))
        assert store.live("1").version == v2 and "1" not in store.problems()


def test_a_version_kept_unserved_is_never_the_fallback(store_for, scratch_small, trained_model):
    store = store_for()
    v1 = store.promote("1", scratch_small, {})
    rejected = store.promote("1", trained_model, {}, make_current=False)
    assert store.live("1").version == v1
    (store.project_dir("1") / v1 / "vocab.txt").unlink()
    assert fresh(store).live("1").version == store.base.version
    assert [v["promoted"] for v in store.versions("1")] == [True, False] and rejected


def test_promotion_records_the_weights_checksum(store_for, trained_model):
    from service.version_files import weights_checksum

    store = store_for()
    version = store.promote("1", trained_model, {})
    meta = json.loads((store.project_dir("1") / version / "meta.json").read_text())
    assert meta["weights_sha256"] == weights_checksum(trained_model) and len(meta["weights_sha256"]) == 64


def test_promotion_is_synced_to_disk_before_it_is_switched(store_for, trained_model, monkeypatch):
    """Every file of a version and its directory reach the disk before the renames
    (``files.fsync_tree``, ``files.atomic_write_text``)."""
    events = []
    real_fsync, real_rename, real_replace = os.fsync, os.rename, os.replace
    monkeypatch.setattr(os, "fsync",
                        lambda fd: (events.append(("fsync", os.readlink(f"/proc/self/fd/{fd}"))), real_fsync(fd)))
    monkeypatch.setattr(os, "rename",
                        lambda a, b: (events.append(("rename", str(a), str(b))), real_rename(a, b)))
    monkeypatch.setattr(os, "replace",
                        lambda a, b: (events.append(("replace", str(a), str(b))), real_replace(a, b)))
    store = store_for()
    version = store.promote("1", trained_model, {})
    pdir = store.project_dir("1")
    rename = next(i for i, e in enumerate(events) if e[0] == "rename" and e[2] == str(pdir / version))
    synced_before = {e[1] for e in events[:rename] if e[0] == "fsync"}
    tmp = pdir / f".tmp-{version}"
    expected = {str(tmp)} | {str(tmp / p.name) for p in (pdir / version).iterdir()}
    assert expected <= synced_before
    after = [e for e in events[rename + 1:] if e[0] == "fsync"]
    assert ("fsync", str(pdir)) in after                            # the rename itself
    switch = next(i for i, e in enumerate(events) if e[0] == "replace" and e[2] == str(pdir / "current"))
    assert events[switch - 1][0] == "fsync" and events[switch - 1][1].startswith(str(pdir / ".current"))
    assert ("fsync", str(pdir)) in events[switch + 1:]


def test_old_versions_are_pruned_but_never_the_current_one(store_for, scratch_small, trained_model):
    store = store_for(keep_versions=2)
    first = store.promote("1", trained_model, {})
    names = [first] + [store.promote("1", scratch_small, {}, make_current=False) for _ in range(3)]
    kept = [v["model_version"] for v in store.versions("1")]
    assert kept == [first, names[-1]]      # the current one, and the newest
    assert store.live("1").version == first
    assert not [p for p in store.project_dir("1").iterdir() if p.name.startswith(".tmp")]


def test_each_process_keeps_at_most_max_loaded_models(store_for, scratch_small, trained_model):
    store = store_for(max_loaded_models=2)
    for project in ("1", "2", "3"):
        store.promote(project, trained_model if project != "2" else scratch_small, {})
    for project in ("1", "2", "3", "1"):
        store.live(project)
        assert len(store.loaded()) <= 2 and store.base.path in store.loaded()
    assert store.loaded()[-1] == store.live("1").path


def test_health_shows_damaged_files_but_their_details_only_to_the_authenticated(make_app, scratch_small,
                                                                                trained_model, tmp_path):
    import base64

    from service.model_store import ModelStore
    from helpers import make_settings

    models = tmp_path / "models"
    store = ModelStore(make_settings(uie_model=str(scratch_small), model_dir=str(models)))
    store.promote("4", trained_model, {})
    (store.project_dir("4") / "current").write_text("garbage")
    open_app = make_app(uie_model=str(scratch_small), model_dir=str(models)).test_client()
    open_app.post("/setup", json={"project": "4.1"})
    health = open_app.get("/health").json
    assert "garbage" in health["problems"]["4"]["errors"][0] and health["loaded_models"]

    locked = make_app(uie_model=str(scratch_small), model_dir=str(models), basic_auth_user="u",
                      basic_auth_pass="p").test_client()
    auth = {"Authorization": "Basic " + base64.b64encode(b"u:p").decode()}
    locked.post("/setup", json={"project": "4.1"}, headers=auth)
    anonymous = locked.get("/health").json
    assert anonymous["status"] == "UP" and anonymous["problems"] == ["4"]
    assert "loaded_models" not in anonymous and "path" not in anonymous["model"]
    assert str(models) not in json.dumps(anonymous)
    assert locked.get("/health", headers=auth).json["problems"]["4"]["errors"]
