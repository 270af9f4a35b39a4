"""annotation_store: what the webhooks delivered, in the order Label Studio meant it."""

from __future__ import annotations

import sqlite3

import pytest

from service.annotation_store import AnnotationStore
from helpers import load_request

CREATED = load_request("post_webhook_annotation_created.json")["body"]
UPDATED = load_request("post_webhook_annotation_updated.json")["body"]
DELETED = load_request("post_webhook_annotations_deleted.json")["body"]


def texts(store, project="1"):
    return [[r["value"]["text"] for r in a["result"]] for t in store.tasks(project) for a in t["annotations"]]


def test_annotation_store_honours_updates_and_deletions_and_survives_restart(tmp_path):
    store = AnnotationStore(tmp_path / "a.sqlite3")
    store.upsert("1", CREATED["task"], CREATED["annotation"])
    store.upsert("1", UPDATED["task"], UPDATED["annotation"])
    store.upsert("2", CREATED["task"], CREATED["annotation"])
    tasks = AnnotationStore(tmp_path / "a.sqlite3").tasks("1")   # a new process reads the same
    assert len(tasks) == 1 and len(tasks[0]["annotations"]) == 1
    assert [r["value"]["text"] for r in tasks[0]["annotations"][0]["result"]] == ["Alice", "Acme Corp"]
    store.delete("1", [a["id"] for a in DELETED["annotations"]])
    assert store.tasks("1") == [] and len(store.tasks("2")) == 1


def test_a_stale_created_after_the_update_keeps_the_update(tmp_path):
    store = AnnotationStore(tmp_path / "a.sqlite3")
    assert store.upsert("1", UPDATED["task"], UPDATED["annotation"])
    assert not store.upsert("1", CREATED["task"], CREATED["annotation"])   # older updated_at
    assert texts(store) == [["Alice", "Acme Corp"]]
    # the same copy again (a retried webhook) is fine either way
    assert store.upsert("1", UPDATED["task"], UPDATED["annotation"])
    assert texts(store) == [["Alice", "Acme Corp"]]


def test_a_deleted_annotation_stays_deleted(tmp_path):
    store = AnnotationStore(tmp_path / "a.sqlite3")
    store.upsert("1", CREATED["task"], CREATED["annotation"])
    store.delete("1", [CREATED["annotation"]["id"]])
    late = dict(UPDATED["annotation"], updated_at="2030-01-01T00:00:00Z")
    assert not store.upsert("1", UPDATED["task"], late)
    assert store.tasks("1") == [] and store.count("1") == 0
    assert AnnotationStore(tmp_path / "a.sqlite3").tasks("1") == []
    # the tombstone is per project
    assert store.upsert("2", UPDATED["task"], late) and store.count("2") == 1


def test_any_python_text_is_stored_as_sent(tmp_path):
    store = AnnotationStore(tmp_path / "a.sqlite3")
    task = dict(CREATED["task"], data={"text": "bad \ud800 text"})
    annotation = dict(CREATED["annotation"], id="a\udfff", result=[{"value": {"text": "\ud800"}}])
    assert store.upsert("1", task, annotation)
    [stored] = store.tasks("1")
    assert stored["data"]["text"] == "bad \ud800 text"
    assert stored["annotations"][0]["result"][0]["value"]["text"] == "\ud800"
    store.delete("1", ["a\udfff"])
    assert store.tasks("1") == []
    with pytest.raises(ValueError, match="surrogate"):
        store.set_label_config("1", "<View>\ud800</View>")


def _older_store(tmp_path, schema: str, row: str) -> AnnotationStore:
    """A store over a database an older release wrote: ``schema``, one ``row`` inserted."""
    path = tmp_path / "a.sqlite3"
    with sqlite3.connect(path) as db:
        db.executescript(schema)
        db.execute(row)
    return AnnotationStore(path)


def test_a_database_of_the_first_release_is_migrated(tmp_path):
    store = _older_store(tmp_path, """
        CREATE TABLE annotations (project TEXT NOT NULL, annotation_id TEXT NOT NULL,
            task_id TEXT NOT NULL, task_json TEXT NOT NULL, annotation_json TEXT NOT NULL,
            received REAL NOT NULL, PRIMARY KEY (project, annotation_id));
        CREATE TABLE projects (project TEXT PRIMARY KEY, label_config TEXT,
            changes INTEGER NOT NULL DEFAULT 0);""",
        "INSERT INTO annotations VALUES ('1', '1', '1', '{\"data\": {}}', '{\"id\": 1, \"result\": []}', 0)")
    assert store.count("1") == 1
    assert store.upsert("1", UPDATED["task"], UPDATED["annotation"])   # an untimed row is replaced
    assert texts(store) == [["Alice", "Acme Corp"]]


def test_a_database_whose_suggestions_have_no_text_is_migrated(tmp_path):
    """The suggestions of a store written before they kept their task's text get the column."""
    store = _older_store(tmp_path, """
        CREATE TABLE suggestions (project TEXT NOT NULL, task_id TEXT NOT NULL,
            model_version TEXT NOT NULL, regions_json TEXT NOT NULL, at REAL NOT NULL,
            PRIMARY KEY (project, task_id, model_version));""",
        "INSERT INTO suggestions VALUES ('1', '7', 'v0', '[]', 1)")
    assert store.texts("1", 10) == [] and list(store.suggestions("1")) == ["7"]
    store.remember_suggestions("1", "v1", [(8, [], "张三在北京")])
    assert store.texts("1", 10) == ["张三在北京"]


def _open_together(path, barrier, errors):
    barrier.wait()
    try:
        AnnotationStore(path).upsert("1", CREATED["task"], CREATED["annotation"])
    except Exception as exc:   # noqa: BLE001  (reported to the test)
        import traceback
        errors.put(traceback.format_exc())


def test_the_workers_of_a_server_open_a_new_store_at_once(tmp_path):
    """gunicorn's workers start together and each opens the store: all of them open it (the
    schema is brought up to date by one at a time), and the annotation is stored once."""
    import multiprocessing

    context = multiprocessing.get_context("spawn")
    for attempt in range(8):     # the race is likely, not certain, in one attempt
        path = tmp_path / f"a{attempt}.sqlite3"
        barrier, errors = context.Barrier(4), context.Queue()
        workers = [context.Process(target=_open_together, args=(path, barrier, errors)) for _ in range(4)]
        for w in workers:
            w.start()
        for w in workers:
            w.join(timeout=120)
        failures = [errors.get() for _ in range(errors.qsize())] if not errors.empty() else []
        assert not failures and all(w.exitcode == 0 for w in workers), failures
        assert AnnotationStore(path).count("1") == 1
