"""jobs + train_job: what a training job reads, runs and decides."""

from __future__ import annotations

import json
from pathlib import Path
from xml.sax.saxutils import quoteattr

from helpers import EDGE_CASES, LABEL_CONFIG, SEQ_LEN, annotated_tasks, wait_job


def test_label_values_are_never_parsed_as_options(make_app, scratch_small, tmp_path):
    """Labels that look like flags, paths, or hold quotes and newlines are just labels."""
    evil_dir = tmp_path / "evil"
    weird = ["--save_dir", str(evil_dir), "-PER-", "--doccano_file", 'a b="c" \'d\'\nnext=1']
    names = {"人名": weird[0], "地名": weird[1]}
    config = ('<View><Labels name="label" toName="text">'
              + "".join(f"<Label value={quoteattr(v, {chr(10): '&#10;'})}/>" for v in weird)
              + '</Labels><Text name="text" value="$text"/></View>')
    tasks = annotated_tasks(EDGE_CASES[:4], lambda label: names[label])
    tasks += annotated_tasks([("张三说：" + w, [("x", 4, 4 + len(w))]) for w in weird[2:]],
                             lambda label: "-PER-")
    client = make_app(uie_model=str(scratch_small), train_epochs=1, train_max_seq_len=64).test_client()
    job = client.post("/train", json={"annotations": tasks, "project": "7.1", "label_config": config}).json["job"]
    done = wait_job(lambda p: client.get(p).json, "7", job["id"])
    assert done["state"] == "done", done
    assert not evil_dir.exists()
    train = Path(done["log"]).parent / "work" / "data" / "train.txt"
    examples = [json.loads(line) for line in train.read_text(encoding="utf-8").splitlines()]
    assert {ex["prompt"] for ex in examples} == set(weird)
    assert {r["text"] for ex in examples if ex["prompt"] == "-PER-" for r in ex["result_list"]} == set(weird[2:])


def test_below_min_dev_tasks_a_worse_model_is_not_served(make_app, trained_model):
    """Scored on the training annotations, a job that made the model worse is kept, not served."""
    app = make_app(uie_model=str(trained_model), train_epochs=1, train_learning_rate=0.5,
                   train_max_seq_len=SEQ_LEN, max_seq_len=SEQ_LEN)
    client = app.test_client()
    served = client.post("/setup", json={"project": "12.1", "schema": LABEL_CONFIG}).json["model_version"]
    job = client.post("/train", json={"annotations": annotated_tasks(EDGE_CASES), "project": "12.1",
                                      "label_config": LABEL_CONFIG}).json["job"]
    done = wait_job(lambda p: client.get(p).json, "12", job["id"])
    assert done["state"] == "done", done
    assert done["held_out"] is False and done["previous_metrics"]["f1"] == 1.0
    assert done["metrics"]["f1"] < 1.0 and done["promoted"] is False
    assert client.post("/setup", json={"project": "12.1"}).json["model_version"] == served
    [kept] = client.get("/versions?project=12").json["projects"]["12"]["versions"]
    assert kept["model_version"] == done["model_version"] and kept["promoted"] is False


def test_old_job_directories_are_pruned(make_app, scratch_small):
    app = make_app(uie_model=str(scratch_small), train_epochs=1, train_max_seq_len=64, keep_jobs=2)
    client = app.test_client()
    ids = []
    for _ in range(3):
        job = client.post("/train", json={"annotations": annotated_tasks(EDGE_CASES[:2]), "project": "13.1",
                                          "label_config": LABEL_CONFIG}).json["job"]
        ids.append(job["id"])
        assert wait_job(lambda p: client.get(p).json, "13", job["id"])["state"] in ("done", "failed")
    assert [j["id"] for j in client.get("/jobs?project=13").json["jobs"]] == ids[1:]


def test_a_job_is_given_the_servers_schema_lang(make_app, scratch_small):
    client = make_app(uie_model=str(scratch_small), train_epochs=1, train_max_seq_len=64,
                      schema_lang="en").test_client()
    job = client.post("/train", json={"annotations": annotated_tasks(EDGE_CASES[:2]), "project": "14.1",
                                      "label_config": LABEL_CONFIG}).json["job"]
    done = wait_job(lambda p: client.get(p).json, "14", job["id"])
    spec = json.loads((Path(done["log"]).parent / "spec.json").read_text(encoding="utf-8"))
    assert spec["schema_lang"] == "en"
