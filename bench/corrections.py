"""Section 13 (issue 20): learning from the annotator's corrections.

A simulated team on CLUENER, through the server's own jobs (``UIE_MODEL=scratch``, default
job settings). For each seed: ``POST /train`` with ``first`` random pool tasks (version v1);
v1 pre-annotates ``corrected`` more pool tasks (``/predict``, which remembers what it
suggested); the annotator fixes those pre-annotations into the gold annotation (made from
the prediction: ``parent_prediction`` set), deleting or relabelling v1's false positives;
then a job trains on all ``first + corrected`` tasks. Two arms from the same v1 (the
project's directory copied), each on its own gunicorn over the same ``MODEL_DIR`` (one
annotation store): ``corrections`` (the default ``CORRECTION_WEIGHT``) and ``plain``
(``CORRECTION_WEIGHT=1``: the corrected regions are negatives like any other absent span,
today's training). Each arm is scored on the version its job made, served or not (the bench
writes the project's ``current`` when the promotion rule kept the version unserved). Scored on
the test split: micro P/R/F1 and false positives per 100 tasks.
"""

from __future__ import annotations

import json
import random
import shutil
import statistics
import time

import common
import files
import training
from annotator import _branch, _wait
from common import CLUENER_CONFIG, Gunicorn, log, post

ARMS = {"corrections": {}, "plain": {"CORRECTION_WEIGHT": "1"}}


def corrections(seeds=(1, 2, 3), first=100, corrected=200) -> dict:
    pool, _, test = training.learning_data()
    root = common.WORK / "serve" / "corrections"
    shutil.rmtree(root, ignore_errors=True)
    env = {"UIE_MODEL": "scratch", "MODEL_DIR": str(root), "LOG_LEVEL": "INFO"}
    servers = {arm: Gunicorn(dict(env, **extra), common.WORK / "logs" / f"gunicorn-corrections-{arm}.log")
               for arm, extra in ARMS.items()}
    try:
        for server in servers.values():
            server.wait()
        runs = [_one_seed(servers, root, pool, test, seed, first, corrected) for seed in seeds]
    finally:
        for server in servers.values():
            server.stop()
    return {"runs": runs, "summary": _summary(runs), "first": first, "corrected": corrected,
            "seeds": list(seeds)}


def _one_seed(servers, root, pool, test, seed, first, corrected) -> dict:
    sample = random.Random(seed).sample(pool, first + corrected)
    base = f"cor{seed}"
    v1 = _train(servers["corrections"], base, _tasks(sample[:first], 1))
    out = {"seed": seed, "v1": dict(v1, test=training._served_f1(servers["corrections"], test, project=base))}
    later = _tasks(sample[first:], first + 1)
    for arm, server in servers.items():
        project = f"{base}-{arm}"
        _branch(root, base, project)
        version = _suggest(server, project, later)          # what v1 pre-annotated, remembered
        fixed = [_made_from(task, version) for task in later]
        job = _train(server, project, _tasks(sample[:first], 1) + fixed)
        out[arm] = dict(job, test=training._served_f1(server, test, project=project))
    log(f"corrections, seed {seed}: {out}")
    return out


def _tasks(sentences, first_id) -> list[dict]:
    """Label Studio tasks holding the gold annotation (``common.ls_task``), ids from ``first_id``."""
    tasks = []
    for i, s in enumerate(sentences, first_id):
        task, annotation = common.ls_task(i, s)
        tasks.append(dict(task, annotations=[annotation]))
    return tasks


def _suggest(server, project, tasks, chunk=64) -> str:
    """``/predict`` the tasks (their data only), as Label Studio does when they are opened;
    the model version that answered."""
    version = None
    for c in range(0, len(tasks), chunk):
        body = {"tasks": [{"id": t["id"], "data": t["data"]} for t in tasks[c: c + chunk]],
                "project": project, "label_config": CLUENER_CONFIG}
        version = post(server.url + "/predict", body)["results"][0]["model_version"]
    return version


def _made_from(task, version) -> dict:
    """The task's gold annotation, as the annotator saves it after fixing the prediction:
    Label Studio links it to the prediction it started from."""
    [annotation] = task["annotations"]
    return dict(task, annotations=[dict(annotation, parent_prediction=task["id"],
                                        prediction={"model_version": version})])


def _train(server, project, tasks) -> dict:
    started = time.perf_counter()
    job = post(server.url + "/train", {"project": project, "label_config": CLUENER_CONFIG,
                                       "annotations": tasks})["job"]
    state = _wait(server, project, job["id"])
    project_dir = common.WORK / "serve" / "corrections" / project
    if not state.get("promoted"):       # each arm is scored on the version its job made
        files.atomic_write_text(project_dir / "current", state["model_version"] + "\n")
    spec = project_dir / "jobs" / job["id"] / "spec.json"
    try:
        n_corrections = len(json.loads(spec.read_text(encoding="utf-8")).get("corrections") or ())
    except (OSError, ValueError):
        n_corrections = None
    return {"tasks": len(tasks), "promoted": state.get("promoted"), "corrections": n_corrections,
            "job_minutes": round((time.perf_counter() - started) / 60, 2)}


def _summary(runs) -> dict:
    """Mean and min of each arm's test figures over the seeds."""
    out = {}
    for arm in ("v1",) + tuple(ARMS):
        row = {}
        for key in ("f1", "precision", "recall", "false_positives_per_100"):
            values = [r[arm]["test"][key] for r in runs]
            row[key] = {"mean": round(statistics.mean(values), 4), "min": round(min(values), 4),
                        "max": round(max(values), 4), "values": values}
        row["corrections"] = [r[arm].get("corrections") for r in runs]
        row["promoted"] = [r[arm].get("promoted") for r in runs]
        out[arm] = row
    return out
