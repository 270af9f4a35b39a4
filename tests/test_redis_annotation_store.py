"""redis_annotation_store: the scale-out webhook store keeps AnnotationStore's rules, on a real Redis."""

from __future__ import annotations

import threading

import pytest

from helpers import load_request

CREATED = load_request("post_webhook_annotation_created.json")["body"]
UPDATED = load_request("post_webhook_annotation_updated.json")["body"]


def texts(store, project="1"):
    return [[r["value"]["text"] for r in a["result"]] for t in store.tasks(project) for a in t["annotations"]]


def test_updates_and_deletions(store):
    assert store.upsert("1", CREATED["task"], CREATED["annotation"])
    assert store.upsert("1", UPDATED["task"], UPDATED["annotation"])
    assert store.upsert("2", CREATED["task"], CREATED["annotation"])
    assert store.count("1") == 1 and texts(store) == [["Alice", "Acme Corp"]]
    assert store.delete("1", [UPDATED["annotation"]["id"], None]) == 1
    assert store.tasks("1") == [] and store.count("2") == 1
    assert store.delete("1", []) == 0


def test_newest_copy_wins_and_retries_are_fine(store):
    assert store.upsert("1", UPDATED["task"], UPDATED["annotation"])
    assert not store.upsert("1", CREATED["task"], CREATED["annotation"])   # older updated_at
    assert store.upsert("1", UPDATED["task"], UPDATED["annotation"])       # the same copy again
    untimed = {k: v for k, v in CREATED["annotation"].items() if k not in ("created_at", "updated_at")}
    assert store.upsert("1", CREATED["task"], untimed)                     # no time counts as new
    assert texts(store) == [[r["value"]["text"] for r in untimed["result"]]]


def test_a_deleted_annotation_stays_deleted(store):
    store.upsert("1", CREATED["task"], CREATED["annotation"])
    store.delete("1", [CREATED["annotation"]["id"]])
    late = dict(UPDATED["annotation"], updated_at="2030-01-01T00:00:00Z")
    assert not store.upsert("1", UPDATED["task"], late)
    assert store.tasks("1") == [] and store.count("1") == 0
    assert store.upsert("2", UPDATED["task"], late) and store.count("2") == 1   # per project


def test_tasks_group_annotations_and_the_newest_task_copy_wins(store):
    first = dict(CREATED["annotation"], id=1, task=7)
    second = dict(CREATED["annotation"], id=2, task=7)
    other = dict(CREATED["annotation"], id=3, task=8)
    store.upsert("1", {"id": 7, "data": {"text": "old"}}, first)
    store.upsert("1", {"id": 8, "data": {"text": "other"}}, other)
    store.upsert("1", {"id": 7, "data": {"text": "new"}, "annotations": ["dropped"]}, second)
    tasks = {t["id"]: t for t in store.tasks("1")}
    assert tasks[7]["data"]["text"] == "new" and [a["id"] for a in tasks[7]["annotations"]] == [1, 2]
    assert [a["id"] for a in tasks[8]["annotations"]] == [3]


def test_any_text_label_configs_and_change_counts(store):
    task = dict(CREATED["task"], data={"text": "bad \ud800 text"})
    annotation = dict(CREATED["annotation"], id="a\udfff", result=[{"value": {"text": "\ud800"}}])
    assert store.upsert("1", task, annotation)
    [stored] = store.tasks("1")
    assert stored["data"]["text"] == "bad \ud800 text"
    store.delete("1", ["a\udfff"])
    assert store.tasks("1") == []
    with pytest.raises(ValueError, match="surrogate"):
        store.set_label_config("1", "<View>\ud800</View>")
    assert store.label_config("1") is None
    store.set_label_config("1", "<View>人名</View>")
    assert store.label_config("1") == "<View>人名</View>"
    assert store.add_changes("1", 2) == 2 and store.add_changes("1", 3) == 5
    store.reset_changes("1")
    assert store.add_changes("1", 1) == 1


def test_concurrent_webhooks_keep_the_newest(store):
    """Eight writers (replicas) race copies of one annotation: the newest time is kept."""
    copies = [dict(UPDATED["annotation"], updated_at=f"2026-11-28T19:02:{s:02d}Z",
                   result=[{"value": {"text": str(s)}}]) for s in range(40)]

    def write(part):
        for annotation in part:
            store.upsert("1", UPDATED["task"], annotation)

    threads = [threading.Thread(target=write, args=(copies[k::8][::-1],)) for k in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert texts(store) == [["39"]]
