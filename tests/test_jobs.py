"""jobs + train_job: what a training job reads, runs and decides."""

from __future__ import annotations

import json
from pathlib import Path
from xml.sax.saxutils import quoteattr

from helpers import EDGE_CASES, LABEL_CONFIG, SEQ_LEN, annotated_tasks, wait_job, wait_until


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
    """Three jobs that all train: the oldest one's directory is gone, KEEP_JOBS=2 are kept."""
    app = make_app(uie_model=str(scratch_small), train_epochs=1, train_max_seq_len=64, keep_jobs=2)
    client = app.test_client()
    finished = []
    for _ in range(3):
        job = client.post("/train", json={"annotations": annotated_tasks(EDGE_CASES[:2]), "project": "13.1",
                                          "label_config": LABEL_CONFIG}).json["job"]
        finished.append(wait_job(lambda p: client.get(p).json, "13", job["id"]))
        assert finished[-1]["state"] == "done", finished[-1]
    # a job prunes the old ones right after its state says done: wait for that, not longer
    def pruned():
        return [j["id"] for j in client.get("/jobs?project=13").json["jobs"]] == [j["id"] for j in finished[1:]]

    assert wait_until(pruned)
    job_dirs = [Path(j["log"]).parent for j in finished]
    assert not job_dirs[0].exists() and all(d.is_dir() for d in job_dirs[1:])


def test_a_job_is_given_the_servers_schema_lang(make_app, scratch_small):
    client = make_app(uie_model=str(scratch_small), train_epochs=1, train_max_seq_len=64,
                      schema_lang="en").test_client()
    job = client.post("/train", json={"annotations": annotated_tasks(EDGE_CASES[:2]), "project": "14.1",
                                      "label_config": LABEL_CONFIG}).json["job"]
    done = wait_job(lambda p: client.get(p).json, "14", job["id"])
    spec = json.loads((Path(done["log"]).parent / "spec.json").read_text(encoding="utf-8"))
    assert spec["schema_lang"] == "en"


# -- the runner's flow with stand-in parts (no model, no training: milliseconds) -----------------
class _Store:
    """What ``JobRunner`` asks of a ``ModelStore``: projects, their directories, promotion."""

    device = "cpu"

    def __init__(self, root, **settings):
        from helpers import make_settings

        self.root, self.settings, self.promoted = root, make_settings(root, **settings), []

    def projects(self):
        return sorted(d.name for d in self.root.iterdir() if d.is_dir())

    def project_dir(self, project):
        return self.root / project

    def live(self, project):
        from types import SimpleNamespace

        return SimpleNamespace(version="base", path=str(self.root / "base"))

    def promote(self, project, checkpoint, meta, make_current=True):
        self.promoted.append((project, meta["job"], make_current))
        return f"v{len(self.promoted)}"


class _Training:
    """Writes the ``result.json`` it is given instead of training; exits with ``code``."""

    def __init__(self, result, code=0):
        self.result, self.code, self.ran = result, code, []

    def where(self, lease):
        return {"lease": lease}

    def run(self, records, job_dir):
        self.ran.append(json.loads((job_dir / "spec.json").read_text(encoding="utf-8")))
        (job_dir / "result.json").write_text(json.dumps(self.result), encoding="utf-8")
        return self.code


METRICS = {"precision": 1.0, "recall": 0.5, "f1": 0.667, "examples": 4}
GOOD = {"candidate": "ckpt", "promote": True, "held_out": False, "annotated_tasks": 2,
        "metrics": METRICS, "previous_metrics": dict(METRICS, f1=0.5)}


def _runner(tmp_path, training, dispatched, finished, **settings):
    """A runner that notes the projects it dispatches and the (project, state) of finished jobs."""
    from service.jobs import JobRunner

    return JobRunner(_Store(tmp_path, **settings), None, training=training, warm_up=False, threads=3,
                     dispatch=lambda runner, project: dispatched.append(project),
                     on_finish=lambda project, state, seconds: finished.append((project, state)))


def test_triggers_join_the_queued_job_and_one_run_promotes_it(tmp_path):
    dispatched, finished, training = [], [], _Training(GOOD)
    runner = _runner(tmp_path, training, dispatched, finished)
    tasks = annotated_tasks(EDGE_CASES[:2])
    first = runner.trigger("5", "START_TRAINING", label_config=LABEL_CONFIG, tasks=tasks)
    second = runner.trigger("5", "POST /train")
    assert first["id"] == second["id"] and dispatched == ["5", "5"]
    assert runner.run_queued("5", first["id"]) is True
    [job] = runner.list("5")
    assert job["state"] == "done" and job["reasons"] == ["START_TRAINING", "POST /train"]
    assert job["model_version"] == "v1" and job["promoted"] is True and job["lease"] is True
    assert job["source"] == "train request" and finished == [("5", "done")]
    assert training.ran[0]["threads"] == 3 and training.ran[0]["label_config"] == LABEL_CONFIG
    assert runner.run_queued("5", first["id"]) is False     # done already
    assert runner.summary() == {"queued": 0, "running": 0, "failed": 0, "done": 1}


def test_a_failed_training_is_recorded_and_old_jobs_are_pruned(tmp_path):
    finished = []
    runner = _runner(tmp_path, _Training({"error": "no annotated tasks"}, code=1), [], finished,
                     keep_jobs=1)
    ids = []
    for _ in range(2):
        ids.append(runner.trigger("6", "START_TRAINING", label_config=LABEL_CONFIG, tasks=[])["id"])
        runner.drain("6")
    [job] = runner.list("6")
    assert job["id"] == ids[1] and job["state"] == "failed" and job["error"] == "no annotated tasks"
    assert "FAILED: no annotated tasks" in Path(job["log"]).read_text(encoding="utf-8")
    assert not (tmp_path / "6" / "jobs" / ids[0]).exists()
    assert finished == [("6", "failed"), ("6", "failed")]


def test_a_dead_processes_job_is_failed_at_start(tmp_path):
    """A job left running (its process died) is failed by the next runner; what it half-wrote goes."""
    dispatched, finished = [], []
    runner = _runner(tmp_path, _Training(GOOD), [], [])
    dead = runner.trigger("7", "START_TRAINING", label_config=LABEL_CONFIG)["id"]
    job_dir = runner.records.job_dir("7", dead)
    runner.records.update(job_dir, state="running", job_pid=None)
    (job_dir / "work" / "ckpt").mkdir(parents=True)
    (tmp_path / "7" / ".tmp-v1").mkdir()
    queued = runner.trigger("7", "START_TRAINING")["id"]
    again = _runner(tmp_path, _Training(GOOD), dispatched, finished)
    states = {j["id"]: j for j in again.list("7")}
    assert states[dead]["state"] == "failed" and states[dead]["error"].startswith("interrupted")
    assert states[queued]["state"] == "queued" and dispatched[-1] == "7"
    assert not (job_dir / "work" / "ckpt").exists() and not (tmp_path / "7" / ".tmp-v1").exists()
    assert finished == [("7", "failed")]
    assert json.loads((job_dir / "state.json").read_text(encoding="utf-8"))["state"] == "failed"
