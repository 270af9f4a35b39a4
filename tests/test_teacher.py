"""LAC as a teacher (uie.teacher, uie.lac.Tagger, training_examples.add_teacher_examples,
train_job.teach): LAC's names on a small scratch project's unannotated tasks become partial
training examples of the prompts they matched on its annotated tasks."""

from __future__ import annotations

import json

import pytest

from helpers import CLUENER_CONFIG, cluener_tasks, load_request

TEXT = "北京大学的张三在上海市浦东新区工作了三年"


def unannotated(tasks):
    return [{"id": t["id"], "data": t["data"]} for t in tasks]


@pytest.fixture(scope="module")
def lac():
    import uie.lac

    tagger = uie.lac.tagger()
    assert tagger is not None, "LAC is installed by make install (requirements-lac.txt)"
    return tagger


def test_lacs_tagger_finds_persons_places_and_organisations(lac):
    assert lac.spans([TEXT, "", "《三体》是刘慈欣写的"]) == [
        [("ORG", 0, 4), ("PER", 5, 7), ("LOC", 8, 15)], [], [("nw", 1, 3), ("PER", 5, 8)]]
    assert lac.spans([TEXT] * 70, batch=64) == [lac.spans([TEXT])[0]] * 70      # across batches


def test_a_lac_type_is_mapped_to_the_prompt_it_matches_often_and_precisely_enough():
    from uie import teacher

    gold = {f"t{k}": {("人名", 0, 2), ("公司", 5, 8)} for k in range(4)}
    lac = {f"t{k}": [("PER", 0, 2), ("ORG", 5, 8), ("LOC", 9, 10)] for k in range(4)}
    assert teacher.mapping(gold, lac) == {"PER": "人名", "ORG": "公司"}
    lac["t0"] += [("ORG", 10, 12)] * 13                 # ORG: 4 matches of 17 spans, 0.24
    assert teacher.mapping(gold, lac) == {"PER": "人名"}
    assert teacher.mapping({k: v for k, v in list(gold.items())[:2]}, lac) == {}    # 2 matches: too few


def test_teacher_examples_ask_only_a_mapped_prompt_of_a_text_with_its_spans():
    from uie import teacher

    texts = ["张三和李四在北京", "没有名字", "王五"]
    spans = [[("PER", 0, 2), ("PER", 3, 5), ("LOC", 6, 8)], [], [("PER", 0, 2), ("nz", 0, 1)]]
    assert teacher.examples(texts, spans, {"PER": "人名"}) == [
        {"content": "张三和李四在北京", "prompt": "人名", "result_list": [
            {"text": "张三", "start": 0, "end": 2}, {"text": "李四", "start": 3, "end": 5}]},
        {"content": "王五", "prompt": "人名", "result_list": [{"text": "王五", "start": 0, "end": 2}]}]


def test_the_unannotated_tasks_texts_become_examples_of_the_mapped_prompts(lac):
    import training_examples

    annotated, others = cluener_tasks(60), cluener_tasks(120, start=60)
    tasks = annotated + unannotated(others) + unannotated(annotated[:5])     # an annotated text again
    examples = training_examples.build_examples(tasks, CLUENER_CONFIG, 20)
    train, dev = list(examples.train), list(examples.dev)
    record = training_examples.add_teacher_examples(examples, tasks, CLUENER_CONFIG, lac)
    assert record["texts"] == 120 and record["mapped"].get("PER") == "name", record
    added = examples.train[len(train):]
    assert examples.train[:len(train)] == train and examples.dev == dev and len(added) == record["examples"] > 20
    texts = {t["data"]["text"] for t in others}
    assert all(ex["content"] in texts and ex["result_list"] for ex in added)
    assert {ex["prompt"] for ex in added} == set(record["mapped"].values())
    persons = [ex for ex in added if ex["prompt"] == "name"]
    found = lac.spans([ex["content"] for ex in persons])
    assert [[(r["start"], r["end"]) for r in ex["result_list"]] for ex in persons] == [
        sorted({(s, e) for kind, s, e in spans if record["mapped"].get(kind) == "name"}) for spans in found]


def test_a_small_scratch_job_trains_lacs_names_on_its_unannotated_tasks(tmp_path, scratch_small):
    import train_job

    others = unannotated(cluener_tasks(100, start=40))
    spec = train_job.JobSpec(project="1", label_config=CLUENER_CONFIG, tasks=cluener_tasks(40) + others,
                             source="test", model_path=str(scratch_small), model_version="base", num_epochs=1,
                             max_seq_len=64, min_dev_tasks=20, inference_precision="fp32")
    result = train_job.train(spec, tmp_path / "work")
    teacher = result["teacher"]
    assert result["annotated_tasks"] == 40 and teacher["texts"] == 100 and teacher["mapped"]["PER"] == "name"
    with open(tmp_path / "work" / "data" / "train.txt", encoding="utf-8") as f:
        trained = [json.loads(line) for line in f]
    texts = {t["data"]["text"] for t in others}
    taught = [ex for ex in trained if ex["content"] in texts]
    assert len(taught) == teacher["examples"] > 0 and {ex["prompt"] for ex in taught} == set(teacher["mapped"].values())


def test_a_pretrained_model_or_a_larger_project_has_no_teacher(tmp_path, scratch_small, monkeypatch):
    import train_job
    import training_examples

    tasks = cluener_tasks(30) + unannotated(cluener_tasks(10, start=30))
    examples = training_examples.build_examples(tasks, CLUENER_CONFIG, 20)
    (tmp_path / "tokenizer_config.json").write_text('{"vocab_kind": "ernie"}', encoding="utf-8")
    spec = train_job.JobSpec(project="1", label_config=CLUENER_CONFIG, tasks=tasks, source="test",
                             model_path=str(tmp_path), model_version="base")
    assert train_job.teach(spec, examples) is None                   # a pretrained UIE keeps its recipe
    monkeypatch.setattr(train_job, "TEACHER_BELOW", 30)
    spec.model_path = str(scratch_small)
    assert train_job.teach(spec, examples) is None                   # 30 annotated tasks: past the bound
    monkeypatch.setattr(train_job, "TEACHER_BELOW", 31)
    assert train_job.teach(spec, examples)["texts"] == 10


def test_a_small_projects_job_learns_lacs_names_on_the_texts_predict_answered(make_app, scratch_small):
    """Through the server, as Label Studio works: /predict answers the project's tasks (and
    remembers their texts), annotations arrive as webhooks, START_TRAINING; the job trains LAC's
    names on the texts nobody annotated, and its record and version say so."""
    from helpers import wait_job

    app = make_app(uie_model=str(scratch_small), train_epochs=1, train_max_seq_len=64, train_min_dev_tasks=20,
                   inference_precision="fp32")
    client = app.test_client()
    annotated, others = cluener_tasks(40), cluener_tasks(60, start=40)
    body = {"tasks": unannotated(annotated[:10] + others), "project": "5", "label_config": CLUENER_CONFIG}
    assert client.post("/predict", json=body).status_code == 200
    store = app.extensions["uie"]["annotations"]
    texts = [t["data"]["text"] for t in annotated[:10] + others]
    assert sorted(store.texts("5", 1000)) == sorted(set(texts)) and len(store.texts("5", 7)) == 7
    project = {"id": 5, "label_config": CLUENER_CONFIG}
    for task in annotated:
        hook = {"action": "ANNOTATION_CREATED", "task": unannotated([task])[0], "annotation": task["annotations"][0],
                "project": project}
        assert client.post("/webhook", json=hook).status_code in (200, 201)
    job = client.post("/webhook", json={"action": "START_TRAINING", "project": project}).json["job"]
    done = wait_job(lambda p: client.get(p).json, "5", job["id"])
    assert done["state"] == "done" and done["annotated_tasks"] == 40, done
    teacher = done["teacher"]
    assert teacher["texts"] == len(set(t["data"]["text"] for t in others)) and teacher["mapped"]["PER"] == "name"
    assert teacher["examples"] > 0
    [version] = client.get("/versions?project=5").json["projects"]["5"]["versions"]
    assert version["teacher"] == teacher


def test_a_teacher_that_fails_leaves_the_job_its_own_examples(scratch_small, monkeypatch):
    import uie.lac
    import train_job
    import training_examples

    class Broken:
        def spans(self, texts, batch=64):
            raise RuntimeError("LAC's program did not run")

    monkeypatch.setattr(uie.lac, "tagger", lambda threads=1: Broken())
    tasks = cluener_tasks(30) + unannotated(cluener_tasks(10, start=30))
    examples = training_examples.build_examples(tasks, CLUENER_CONFIG, 20)
    before = list(examples.train)
    spec = train_job.JobSpec(project="1", label_config=CLUENER_CONFIG, tasks=tasks, source="test",
                             model_path=str(scratch_small), model_version="base")
    record = train_job.teach(spec, examples)
    assert record["examples"] == 0 and "LAC's program did not run" in record["reason"]
    assert examples.train == before


def test_label_studios_unannotated_texts_fail_with_a_job_error_that_names_the_project():
    """What the job reads from Label Studio (``service.label_studio_api``; read from a real Label
    Studio in tests/e2e, round 2): an unreachable Label Studio or a project that is no Label
    Studio id is a ``JobError``, which the job logs before training without those texts."""
    from harness.gunicorn_process import free_port
    from service.label_studio_api import unannotated_texts
    from train_job import JobError

    url = f"http://127.0.0.1:{free_port()}"         # nothing listens there
    with pytest.raises(JobError, match="could not list the tasks of project 7"):
        unannotated_texts(url, "token", "7", "text", 10)
    with pytest.raises(JobError, match="not a Label Studio project id"):
        unannotated_texts(url, "token", "my-project", "text", 10)


def test_label_studios_tasks_created_webhook_keeps_the_new_tasks_texts(make_app, scratch_small):
    """Label Studio posts TASKS_CREATED to the backend's webhook when tasks are imported (a real
    request of Label Studio 1.23.2): their texts join the project's texts, which a small scratch
    project's job learns LAC's names on; a TASKS_CREATED without a task list is a 400."""
    app = make_app(uie_model=str(scratch_small))
    client = app.test_client()
    body = load_request("post_webhook_tasks_created.json")["body"]
    project = str(body["project"]["id"])
    answer = client.post("/webhook", json=body)
    assert answer.status_code == 200 and answer.json["status"] == "ok", answer.json
    texts = app.extensions["uie"]["annotations"].texts(project, 100)
    assert texts == [t["data"]["text"] for t in body["tasks"]] == ["Zoe flew to Rome in June."]
    bad = client.post("/webhook", json=dict(body, tasks={"id": 7}))
    assert bad.status_code == 400 and "'tasks' list" in bad.json["error"], bad.json

