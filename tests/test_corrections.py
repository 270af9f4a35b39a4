"""Learning from the annotator's corrections (issue 20): what /predict suggested is remembered,
a suggested region the annotation deletes or relabels is a known false positive, and the
next job trains it as an emphasised negative (uie.train_inputs.CORRECTION_WEIGHT)."""

from __future__ import annotations

import json
import random
import time
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import pytest

import finetune
import service.annotation_store
import service.redis_annotation_store
from service.corrections import find_corrections, suggested_items
from training_examples import add_corrections, build_examples
from uie import train_inputs

from helpers import LABEL_CONFIG, PERSON, PLACE, annotated_tasks, spans_in, spans_of, wait_job, webhook_body


def region(text, word, label, rid=None, start=0):
    s = text.index(word, start)
    return {"id": rid or f"{label}{s}", "from_name": "label", "to_name": "text", "type": "labels",
            "value": {"start": s, "end": s + len(word), "text": word, "labels": [label]}, "score": 0.9}


def now_iso(shift=0.0) -> str:
    return datetime.fromtimestamp(time.time() + shift, timezone.utc).isoformat().replace("+00:00", "Z")


# -- the texts of the headline test (c) ----------------------------------------------------------
def case(text, words):
    return text, spans_in(text, words)


BEIJING = [case("张三在北京工作。", [(PERSON, "张三"), (PLACE, "北京")]),
           case("李四去了北京。", [(PERSON, "李四"), (PLACE, "北京")]),
           case("北京欢迎你，赵六说。", [(PLACE, "北京"), (PERSON, "赵六")]),
           case("孙七住在北京很多年。", [(PERSON, "孙七"), (PLACE, "北京")]),
           case("周八从上海来到北京。", [(PERSON, "周八"), (PLACE, "上海"), (PLACE, "北京")]),
           case("吴九在广州。", [(PERSON, "吴九"), (PLACE, "广州")])]
# 北京 of 北京烤鸭 names a dish here, says the annotator
DUCK = case("郑十最爱吃北京烤鸭。", [(PERSON, "郑十")])
ELSEWHERE = "王五也在北京。"


@pytest.fixture(scope="module")
def beijing_model(tmp_path_factory, scratch_small):
    """A tiny scratch model (its span tagger serves both labels) that learned 北京 is a place."""
    examples = build_examples(annotated_tasks(BEIJING), LABEL_CONFIG, min_dev_tasks=50)
    save = tmp_path_factory.mktemp("beijing")
    finetune.finetune(examples.train, None, scratch_small, save, batch_size=16, max_seq_len=48,
                      valid_steps=0, num_epochs=60, device="cpu")
    return save / "model_best"


# -- (a) the stores remember what /predict suggested -------------------------------------------
def test_the_stores_keep_the_latest_suggestion_per_task_and_version(store):
    text = "张三在北京工作。"
    first = suggested_items([region(text, "张三", PERSON), region(text, "北京", PLACE),
                             {"type": "relation", "from_id": "a", "to_id": "b", "labels": ["x"]},
                             {"type": "choices", "value": {"choices": ["A"]}}])
    assert [r["type"] for r in first] == ["labels", "labels", "relation"]
    assert first[1] == {"id": f"{PLACE}3", "from_name": "label", "to_name": "text", "type": "labels",
                        "start": 3, "end": 5, "text": "北京", "labels": [PLACE]}
    assert store.remember_suggestions("1", "v0", [(7, first), (8, []), (None, first)]) == 2
    second = first[:1]
    assert store.remember_suggestions("1", "v0", [(7, second)]) == 1     # replaces v0's for task 7
    store.remember_suggestions("1", "v1", [(7, first)])
    store.remember_suggestions("2", "v0", [(7, first)])
    assert store.remember_suggestions("1", "v1", []) == 0
    kept = store.suggestions("1")
    assert sorted(kept) == ["7", "8"]
    assert [(s["model_version"], s["regions"]) for s in kept["7"]] == [("v1", first), ("v0", second)]
    assert kept["7"][0]["at"] >= kept["7"][1]["at"] > 0
    assert list(store.suggestions("1", task_ids=[8, 9])) == ["8"]
    assert store.suggestions("3") == {}


def test_the_stores_keep_each_suggested_tasks_text_newest_first(store):
    """A suggestion may carry its task's text (``/predict``: a small scratch project's teacher
    reads them, ``train_job.teach``); each text once, the most recently suggested first."""
    store.remember_suggestions("1", "v0", [(1, [], "甲"), (2, [], "乙"), (3, []), (None, [], "丙")])
    time.sleep(0.002)
    store.remember_suggestions("1", "v1", [(1, [], "甲"), (4, [], "丁")])
    store.remember_suggestions("2", "v0", [(1, [], "戊")])
    assert store.texts("1", 10)[:2] in (["甲", "丁"], ["丁", "甲"]) and store.texts("1", 10)[2:] == ["乙"]
    assert len(store.texts("1", 2)) == 2 and store.texts("2", 10) == ["戊"] and store.texts("3", 10) == []
    assert [s["regions"] for s in store.suggestions("1")["3"]] == [[]]     # a suggestion without a text


def test_the_stores_keep_the_texts_of_created_tasks_beside_the_suggested_ones(store, monkeypatch):
    """Label Studio's TASKS_CREATED brings new tasks' texts (``remember_texts``); ``texts`` reads
    them with the suggested ones, the most recent first; a task's new text replaces its old one,
    and the oldest go past ``MAX_IMPORTED_TEXTS``."""
    monkeypatch.setattr(service.annotation_store, "MAX_IMPORTED_TEXTS", 3)
    monkeypatch.setattr(service.redis_annotation_store, "MAX_IMPORTED_TEXTS", 3)
    store.remember_suggestions("1", "v0", [(1, [], "甲")])
    time.sleep(0.002)
    assert store.remember_texts("1", [(2, "乙"), (3, "丙"), (None, "无")]) == 2
    assert store.texts("1", 10)[2:] == ["甲"] and sorted(store.texts("1", 10)[:2]) == ["丙", "乙"]
    time.sleep(0.002)
    assert store.remember_texts("1", [(2, "乙二"), (4, "丁"), (5, "戊")]) == 3
    store.remember_texts("2", [(1, "己")])
    assert store.remember_texts("2", []) == 0
    assert sorted(store.texts("1", 10)[:3]) == ["丁", "乙二", "戊"] and store.texts("1", 10)[3:] == ["甲"]
    assert store.texts("2", 10) == ["己"] and len(store.texts("1", 2)) == 2


def test_the_stores_forget_a_deleted_task_its_annotations_text_and_suggestions(store):
    """Label Studio's TASKS_DELETED (no ANNOTATIONS_DELETED comes with it): the task's annotations
    are deleted for good, and so is the task (an annotation of it arriving late is not stored);
    its text and suggestions are dropped; other tasks and projects keep theirs."""
    def annotation(aid, task):
        return {"id": aid, "task": task, "result": [], "was_cancelled": False, "updated_at": "2026-12-04T10:00:00Z"}

    for project in ("1", "2"):
        for aid, task in ((11, 1), (12, 1), (21, 2)):
            assert store.upsert(project, {"id": task, "data": {"text": f"文{task}"}}, annotation(aid, task))
        store.remember_texts(project, [(1, "文1"), (2, "文2")])
        store.remember_suggestions(project, "v0", [(1, [], "文1"), (2, [], "文2")])
    assert store.delete_tasks("1", [1, None, 99]) == 2
    assert [t["id"] for t in store.tasks("1")] == [2] and store.texts("1", 10) == ["文2"]
    assert list(store.suggestions("1")) == ["2"]
    assert not store.upsert("1", {"id": 1, "data": {"text": "文1"}}, dict(annotation(12, 1), updated_at="2026-12-05T10:00:00Z"))
    # out of order: an annotation of the deleted task that Label Studio sent before TASKS_DELETED
    assert not store.upsert("1", {"id": 1, "data": {"text": "文1"}}, annotation(13, 1))
    assert [t["id"] for t in store.tasks("1")] == [2] and store.upsert("2", {"id": 1, "data": {"text": "文1"}}, annotation(13, 1))
    assert sorted(t["id"] for t in store.tasks("2")) == [1, 2] and sorted(store.texts("2", 10)) == ["文1", "文2"]
    assert store.delete_tasks("1", []) == 0


def test_the_stores_drop_the_oldest_suggestions_past_the_cap(store, monkeypatch):
    monkeypatch.setattr(service.annotation_store, "MAX_SUGGESTIONS", 3)
    monkeypatch.setattr(service.annotation_store, "PRUNE_EVERY", 1)
    monkeypatch.setattr(service.redis_annotation_store, "MAX_SUGGESTIONS", 3)
    for task in range(5):
        store.remember_suggestions("1", "v0", [(task, [])])
        time.sleep(0.002)
    store.remember_suggestions("1", "v1", [(5, []), (6, [])])
    store.remember_suggestions("2", "v0", [(0, [])])
    assert sorted(store.suggestions("1"), key=int) == ["4", "5", "6"]
    assert list(store.suggestions("2")) == ["0"]


# -- /predict remembers, never failing for it --------------------------------------------------
def test_predict_remembers_its_answer_but_not_an_interactive_one(make_app, beijing_model):
    trained_client = make_app(uie_model=str(beijing_model)).test_client()
    tasks = [{"id": 41, "data": {"text": BEIJING[0][0]}}, {"data": {"text": "李四"}}]
    body = {"tasks": tasks, "project": "12.1", "label_config": LABEL_CONFIG}
    answer = trained_client.post("/predict", json=body).json
    store = trained_client.application.extensions["uie"]["annotations"]
    [kept] = store.suggestions("12")["41"]
    assert kept["model_version"] == answer["model_version"]
    assert [(r["labels"][0], r["start"], r["end"]) for r in kept["regions"]] == spans_of(answer["results"][0])
    assert [r["id"] for r in kept["regions"]] == [r["id"] for r in answer["results"][0]["result"]]
    context = {"result": [region(tasks[0]["data"]["text"], "北京", PERSON)]}
    interactive = dict(body, tasks=[{"id": 42, "data": tasks[0]["data"]}], params={"context": context})
    assert trained_client.post("/predict", json=interactive).status_code == 200
    assert sorted(store.suggestions("12")) == ["41"]


def test_a_store_that_fails_never_fails_a_prediction(make_app, beijing_model, monkeypatch, caplog):
    trained_client = make_app(uie_model=str(beijing_model)).test_client()
    store = trained_client.application.extensions["uie"]["annotations"]

    def broken(*args):
        raise OSError("disk full")

    monkeypatch.setattr(store, "remember_suggestions", broken)
    answer = trained_client.post("/predict", json={"tasks": [{"id": 1, "data": {"text": BEIJING[0][0]}}],
                                                   "project": "12.1", "label_config": LABEL_CONFIG})
    assert answer.status_code == 200 and answer.json["results"][0]["result"]
    assert "were not remembered" in caplog.text


# -- (b) corrections ---------------------------------------------------------------------------
TEXT = "张三在北京工作，李四去了上海。"
SUGGESTED = [region(TEXT, "张三", PERSON), region(TEXT, "北京", PLACE), region(TEXT, "李四", PLACE),
             region(TEXT, "上海", PLACE)]


def task_annotated(result, **annotation):
    annotation = {"id": 9, "result": result, "was_cancelled": False, "parent_prediction": 31,
                  "updated_at": now_iso(), **annotation}
    return {"id": 5, "data": {"text": TEXT}, "annotations": [annotation]}


def remembered(*versions, at=None):
    at = time.time() if at is None else at
    return {"5": [{"model_version": v, "at": at - k, "regions": suggested_items(regions)}
                  for k, (v, regions) in enumerate(versions)]}


def corrected(tasks, suggestions):
    return sorted((c["label"], c["start"], c["end"], c["text"], c["model_version"])
                  for c in find_corrections(tasks, suggestions))


def test_a_deleted_or_relabelled_suggested_region_is_a_correction_a_kept_one_is_not():
    kept = [SUGGESTED[0], SUGGESTED[3]]                          # 北京 deleted
    relabelled = dict(SUGGESTED[2], value=dict(SUGGESTED[2]["value"], labels=[PERSON]))
    task = task_annotated(kept + [relabelled, region(TEXT, "工作", PLACE)])
    assert corrected([task], remembered(("v1", SUGGESTED))) == [
        (PLACE, 3, 5, "北京", "v1"), (PLACE, 8, 10, "李四", "v1")]
    [one] = [c for c in find_corrections([task], remembered(("v1", SUGGESTED))) if c["text"] == "北京"]
    assert one == {"task": 5, "from_name": "label", "to_name": "text", "label": PLACE, "start": 3, "end": 5,
                   "text": "北京", "model_version": "v1"}
    assert corrected([task_annotated(SUGGESTED)], remembered(("v1", SUGGESTED))) == []


def test_no_correction_without_a_suggestion_the_annotation_was_made_from():
    deleted = task_annotated(SUGGESTED[:1])
    assert corrected([deleted], {}) == []                                        # nothing remembered
    for not_from_one in ({"parent_prediction": None}, {"parent_prediction": None, "prediction": {}}):
        assert corrected([task_annotated(SUGGESTED[:1], **not_from_one)], remembered(("v1", SUGGESTED))) == []
    cancelled = task_annotated(SUGGESTED[:1], was_cancelled=True)
    assert corrected([cancelled], remembered(("v1", SUGGESTED))) == []
    # a suggestion remembered after the annotation was saved was never seen by its annotator
    later = remembered(("v1", SUGGESTED), at=time.time() + 3600)
    assert corrected([deleted], later) == []
    # Label Studio's own record of the prediction it started from also counts
    assert corrected([task_annotated(SUGGESTED[:1], parent_prediction=None,
                                     prediction={"model_version": "v1", "result": []})],
                     remembered(("v1", SUGGESTED)))


def test_the_suggestion_seen_is_the_newest_before_the_annotation_or_the_one_it_names():
    two = remembered(("v2", SUGGESTED[:2]), ("v1", SUGGESTED))   # v2 the newer
    deleted = task_annotated(SUGGESTED[:1])
    assert corrected([deleted], two) == [(PLACE, 3, 5, "北京", "v2")]
    named = task_annotated(SUGGESTED[:1], prediction={"model_version": "v1"})
    assert [c[-1] for c in corrected([named], two)] == ["v1"] * 3


def test_corrections_mark_the_training_example_of_their_label_and_text():
    text, spans = TEXT, spans_in(TEXT, [(PERSON, "张三"), (PERSON, "李四"), (PLACE, "上海")])
    tasks = annotated_tasks([(text, spans), ("王五在广州。", spans_in("王五在广州。", [(PERSON, "王五"), (PLACE, "广州")]))])
    config = LABEL_CONFIG.replace(f'<Label value="{PLACE}"/>', f'<Label value="{PLACE}" predicted_values="地名,城市"/>')
    examples = build_examples(tasks, config, min_dev_tasks=50)
    corrections = [{"task": 1, "from_name": "label", "to_name": "text", "label": PLACE, "start": 3, "end": 5,
                    "text": "北京", "model_version": "v1"},
                   {"task": 1, "from_name": "label", "to_name": "text", "label": PLACE, "start": 12, "end": 14,
                    "text": "上海", "model_version": "v1"},      # annotated after all: no negative
                   {"task": 1, "from_name": "label", "to_name": "text", "label": PLACE, "start": 0, "end": 2,
                    "text": "变了", "model_version": "v1"},      # the text changed since
                   {"task": 2, "from_name": "other", "to_name": "text", "label": PLACE, "start": 0, "end": 2,
                    "text": "王五", "model_version": "v1"}]      # a control the config lacks
    assert add_corrections(examples, corrections, tasks, config) == 2
    marked = {(ex["content"], ex["prompt"]): ex["negatives"] for ex in examples.train if "negatives" in ex}
    assert marked == {(text, "地名"): [[3, 5]], (text, "城市"): [[3, 5]]}


# -- finetune weighs them -------------------------------------------------------------------------
def test_finetune_weighs_the_corrected_tokens_for_the_uie_and_the_tagger(scratch_small):
    import uie.checkpoint

    tokenizer = uie.checkpoint.load_tokenizer(scratch_small)
    ex = {"content": "郑十爱吃北京烤鸭。", "prompt": PLACE, "result_list": [], "negatives": [[4, 6]]}
    plain = dict(ex, negatives=[], prompt=PERSON, result_list=[{"text": "郑十", "start": 0, "end": 2}])
    encoded = train_inputs.encode_examples([ex, plain], tokenizer, 48)
    _, _, _, _, start_t, end_t = train_inputs.to_tensors(encoded, tokenizer.pad_id)
    start_w, end_w = (w.numpy() for w in train_inputs.correction_weights(
        encoded, start_t.shape, start_t.numpy(), end_t.numpy()))
    first = encoded[0].input.content_start
    assert np.argwhere(start_w != 1).tolist() == [[0, first + 4]]
    assert np.argwhere(end_w != 1).tolist() == [[0, first + 5]]
    assert start_w[0, first + 4] == train_inputs.CORRECTION_WEIGHT
    assert train_inputs.correction_weights(encoded[1:], start_t.shape, start_t.numpy(), end_t.numpy()) is None

    classes, tagging = train_inputs.encode_tagging([ex, plain], tokenizer, 48)
    [item] = tagging
    k = classes.index(PLACE)
    assert item.not_starts == ((item.input.content_start + 4, k),)
    assert item.not_ends == ((item.input.content_start + 5, k),)
    # an example with a correction is never left out by max_negatives
    assert train_inputs.sample_negatives([ex, dict(ex, negatives=[])], [0, 1], 0, random.Random(0)) == [0]


# -- (c) the headline: a version trained on a deleted suggestion no longer suggests it ----------------
def test_a_version_trained_on_a_deleted_suggestion_no_longer_suggests_it(make_app, beijing_model):
    """/predict suggests 北京 as a place in 郑十最爱吃北京烤鸭; the annotator deletes it (and adds 郑十);
    the next job trains on that and the other annotations for a few epochs: the new version
    no longer suggests 北京 there, and still finds 北京 elsewhere. The job's budget (6 epochs) is
    what the emphasis is for: weighted, the correction is learned in 3 and the job stops there
    (dev F1 1.0); as a plain absent span (CORRECTION_WEIGHT=1 in the environment: this test then
    fails) it takes about 11, and after 6 the same job still suggests 北京 there."""
    app = make_app(uie_model=str(beijing_model), train_epochs=6, train_max_seq_len=48)
    client = app.test_client()
    project, key = 31, "31.1795892522"
    assert client.post("/setup", json={"project": key, "schema": LABEL_CONFIG}).status_code == 200
    tasks = annotated_tasks(BEIJING + [DUCK])
    duck = tasks[-1]
    wrong = (PLACE, 5, 7)

    def predict(task):
        return client.post("/predict", json={"tasks": [task], "project": key}).json["results"][0]

    before = predict({k: v for k, v in duck.items() if k != "annotations"})
    assert wrong in spans_of(before), f"the served model does not suggest 北京 in {DUCK[0]}: {before}"
    for task in tasks:
        annotation = dict(task["annotations"][0], created_at=now_iso(), updated_at=now_iso())
        if task is duck:
            annotation["parent_prediction"] = 77     # made from the suggestion, 北京 deleted
        client.post("/webhook", json=webhook_body("ANNOTATION_CREATED", task, annotation, project, LABEL_CONFIG))
    job = client.post("/train", json={"project": key}).json["job"]
    done = wait_job(lambda p: client.get(p).json, str(project), job["id"], timeout=120)
    assert done["state"] == "done" and done["promoted"], done
    spec = json.loads((Path(done["log"]).parent / "spec.json").read_text(encoding="utf-8"))
    assert [(c["task"], c["label"], c["start"], c["end"]) for c in spec["corrections"]] == [(duck["id"], *wrong)]
    train = (Path(done["log"]).parent / "work" / "data" / "train.txt").read_text(encoding="utf-8")
    marked = [ex for ex in map(json.loads, train.splitlines()) if ex.get("negatives")]
    assert [(ex["content"], ex["prompt"], ex["negatives"]) for ex in marked] == [(DUCK[0], PLACE, [[5, 7]])]

    after = predict({"id": 99, "data": {"text": DUCK[0]}})
    assert after["model_version"] == done["model_version"]
    assert wrong not in spans_of(after), f"weight {train_inputs.CORRECTION_WEIGHT}: still suggested: {after}"
    elsewhere = predict({"id": 98, "data": {"text": ELSEWHERE}})
    assert (PLACE, 4, 6) in spans_of(elsewhere), elsewhere


# -- deleted relations ----------------------------------------------------------------------------
def test_a_suggested_relation_the_annotation_does_not_keep_is_a_correction():
    """阿里巴巴 -> 马云 (创始人) was suggested; an annotation without that relation corrects it,
    whether it deleted the arrow or a region; one that keeps it (drawn either way) does not."""
    from helpers import FOUNDER, ORG, annotation_result

    text = "马云在杭州创办了阿里巴巴。"
    spans = spans_in(text, [(PERSON, "马云"), (ORG, "阿里巴巴")])
    org, person = (next((s, e) for lab, s, e in spans if lab == label) for label in (ORG, PERSON))
    suggested = annotation_result(text, spans, [(org, person, FOUNDER, "right")])
    memory = {"5": [{"model_version": "v1", "at": time.time(), "regions": suggested_items(suggested)}]}

    def relations_corrected(result):
        task = {"id": 5, "data": {"text": text}, "annotations": [
            {"id": 9, "result": result, "was_cancelled": False, "parent_prediction": 31, "updated_at": now_iso()}]}
        return [c for c in find_corrections([task], memory) if "relation" in c]

    assert relations_corrected(annotation_result(text, spans, [(org, person, FOUNDER, "right")])) == []
    assert relations_corrected(annotation_result(text, spans, [(org, person, FOUNDER, "left")])) == []
    [deleted] = relations_corrected(annotation_result(text, spans, []))
    assert deleted == {"task": 5, "from_name": "label", "to_name": "text", "relation": FOUNDER,
                       "subject": [org[0], org[1], "阿里巴巴"], "object": [person[0], person[1], "马云"],
                       "model_version": "v1"}
    assert len(relations_corrected(annotation_result(text, spans[:1], []))) == 1      # a region deleted
    assert relations_corrected(annotation_result(text, spans, [(person, org, FOUNDER, "right")]))  # reversed


def test_a_relation_correction_marks_the_relation_prompt_of_its_subject():
    from helpers import FOUNDER, ORG, RELATION_CONFIG, relation_tasks

    text = "马云在杭州创办了阿里巴巴，张三是那里的员工。"
    spans = spans_in(text, [(PERSON, "马云"), (ORG, "阿里巴巴"), (PERSON, "张三")])
    where = {text[s:e]: (s, e) for _, s, e in spans}
    tasks = relation_tasks([(text, spans, [(where["阿里巴巴"], where["马云"], FOUNDER, "right")])])
    examples = build_examples(tasks, RELATION_CONFIG, min_dev_tasks=50)
    wrong = {"task": 1, "from_name": "label", "to_name": "text", "relation": FOUNDER,
             "subject": [*where["阿里巴巴"], "阿里巴巴"], "object": [*where["张三"], "张三"], "model_version": "v1"}
    annotated = dict(wrong, object=[*where["马云"], "马云"])                  # annotated after all
    moved = dict(wrong, subject=[0, 4, "阿里巴巴"])                           # the text changed since
    unknown = dict(wrong, relation="总部")                                     # the config lacks it
    assert add_corrections(examples, [wrong, annotated, moved, unknown], tasks, RELATION_CONFIG) == 1
    marked = {(ex["prompt"]): ex["negatives"] for ex in examples.train if "negatives" in ex}
    assert marked == {"阿里巴巴的创始人": [list(where["张三"])]}
    english = build_examples(tasks, RELATION_CONFIG, min_dev_tasks=50, schema_lang="en")
    assert add_corrections(english, [wrong], tasks, RELATION_CONFIG, schema_lang="en") == 1
    assert [ex["prompt"] for ex in english.train if "negatives" in ex] == [f"{FOUNDER} of 阿里巴巴"]
