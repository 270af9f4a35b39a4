"""Section 12 (issue 21): working with the annotator.

* ``active_learning``: a simulated annotator on CLUENER, through one gunicorn
  (``UIE_MODEL=scratch``, ``TASK_SCORE=margin``, default job settings). For each
  seed: ``POST /train`` with 100 random pool tasks; the served version then scores
  a sample of the unannotated pool (``/predict``); each arm adds 100 tasks and
  trains again, starting from that same version (the project's directory is
  copied, as if the team had branched it):
  - ``margin``: the 100 lowest ``TASK_SCORE=margin`` scores;
  - ``entropy``: the 100 lowest ``TASK_SCORE=entropy`` scores (a second gunicorn on the
    same ``MODEL_DIR``, started for the scoring only);
  - ``min``: the 100 lowest ``TASK_SCORE=min`` scores (computed from the same
    answers: the min over returned items, 0 when none);
  - ``random``: 100 random ones, then 100 more (300 tasks).
  The score mode is chosen on the selection split; every figure is also given on
  the test split, which was not looked at while choosing.
* ``interactive_latency``: one-task ``/predict`` of a 200-character text on a nano
  model, with an annotator's region in ``params.context`` and without, p50/p95.
"""

from __future__ import annotations

import random
import shutil
import statistics
import time

import requests

import common
import training
from common import CLUENER_CONFIG, CLUENER_PROMPTS, Gunicorn, log, post

ARMS = ("margin", "entropy", "min", "random")


def active_learning(seeds=(1, 2, 3), first=100, added=100, pool_sample=2000):
    pool, selection, test = training.learning_data()
    root = common.WORK / "serve" / "active"
    shutil.rmtree(root, ignore_errors=True)
    env = {"UIE_MODEL": "scratch", "MODEL_DIR": str(root), "TASK_SCORE": "margin", "LOG_LEVEL": "INFO"}
    with Gunicorn(env, common.WORK / "logs" / "gunicorn-active.log") as server:
        server.wait()
        runs = [_one_seed(server, env, root, pool, selection, test, seed, first, added, pool_sample)
                for seed in seeds]
    return {"runs": runs, "summary": _summary(runs), "first": first, "added": added,
            "pool_sample": pool_sample, "seeds": list(seeds)}


def _one_seed(server, env, root, pool, selection, test, seed, first, added, pool_sample) -> dict:
    order = random.Random(seed).sample(range(len(pool)), first + 2 * added + pool_sample)
    base = [pool[k] for k in order[:first]]
    randoms = [pool[k] for k in order[first: first + 2 * added]]
    candidates = [pool[k] for k in order[first + 2 * added:]]
    start = f"al{seed}"
    out = {"seed": seed, str(first): _train(server, start, base, selection, test)}
    margin, least = _scores(server, start, candidates)
    with Gunicorn(dict(env, TASK_SCORE="entropy"), common.WORK / "logs" / "gunicorn-active-entropy.log") as scorer:
        entropy, _ = _scores(scorer.wait(), start, candidates)
    picks = {"margin": _lowest(candidates, margin, added), "entropy": _lowest(candidates, entropy, added),
             "min": _lowest(candidates, least, added), "random": randoms[:added]}
    for arm, picked in picks.items():
        project = f"{start}-{arm}"
        _branch(root, start, project)
        out[f"{arm}-{first + added}"] = _train(server, project, base + picked, selection, test)
    out[f"random-{first + 2 * added}"] = _train(server, f"{start}-random", base + randoms, selection, test)
    out["picked_spans_per_task"] = {arm: round(sum(len(s["spans"]) for s in p) / len(p), 2)
                                    for arm, p in picks.items()}
    log(f"active learning, seed {seed}: {out}")
    return out


def _train(server, project, sentences, selection, test) -> dict:
    """``POST /train`` with ``sentences`` annotated; waits for the job; F1 of what is served."""
    tasks = []
    for i, s in enumerate(sentences, 1):
        task, annotation = common.ls_task(i, s)
        tasks.append(dict(task, annotations=[annotation]))
    started = time.perf_counter()
    job = post(server.url + "/train", {"project": project, "label_config": CLUENER_CONFIG,
                                       "annotations": tasks})["job"]
    state = _wait(server, project, job["id"])
    return {"tasks": len(sentences), "job_minutes": round((time.perf_counter() - started) / 60, 2),
            "promoted": state.get("promoted"),
            "selection": training._served_f1(server, selection, project=project),
            "test": training._served_f1(server, test, project=project)}


def _wait(server, project, job_id, timeout=3600) -> dict:
    deadline = time.time() + timeout
    while time.time() < deadline:
        jobs = requests.get(server.url + "/jobs", params={"project": project}, timeout=30).json()["jobs"]
        state = next(j for j in jobs if j["id"] == job_id)
        if state["state"] in ("done", "failed"):
            if state["state"] == "failed":
                raise RuntimeError(f"project {project}: job failed: {state.get('error')}")
            return state
        time.sleep(1.0)
    raise RuntimeError(f"project {project}: job {job_id} still running after {timeout} s")


def _scores(server, project, sentences, chunk=64) -> tuple[list[float], list[float]]:
    """Each sentence's ``TASK_SCORE=margin`` score (as served) and its ``min`` score (the
    min over the returned items, 0 when none: the server's formula)."""
    margin, least = [], []
    for c in range(0, len(sentences), chunk):
        body = {"tasks": [{"id": c + i + 1, "data": {"text": s["text"]}}
                          for i, s in enumerate(sentences[c: c + chunk])],
                "project": project, "label_config": CLUENER_CONFIG}
        for prediction in post(server.url + "/predict", body)["results"]:
            margin.append(prediction["score"])
            least.append(min((r["score"] for r in prediction["result"]), default=0.0))
    return margin, least


def _lowest(sentences, scores, n) -> list:
    """The ``n`` sentences of lowest score (ties in pool order): an ascending sort in
    Label Studio's Data Manager, the first ``n`` tasks."""
    order = sorted(range(len(sentences)), key=lambda k: (scores[k], k))
    return [sentences[k] for k in order[:n]]


def _branch(root, source: str, project: str):
    """A copy of project ``source``'s versions as project ``project`` (no jobs)."""
    shutil.rmtree(root / project, ignore_errors=True)
    shutil.copytree(root / source, root / project, ignore=shutil.ignore_patterns("jobs", "_jobs", ".tmp-*"))


def _summary(runs) -> dict:
    """Mean and min F1 of each row over the seeds, on both splits."""
    keys = [k for k in runs[0] if isinstance(runs[0][k], dict) and "test" in runs[0][k]]
    out = {}
    for key in keys:
        row = {}
        for split in ("selection", "test"):
            values = [r[key][split]["f1"] for r in runs]
            row[split] = {"mean": round(statistics.mean(values), 4), "min": round(min(values), 4),
                          "values": values}
        row["job_minutes"] = round(statistics.mean(r[key]["job_minutes"] for r in runs), 2)
        out[key] = row
    return out


def interactive_latency(n_texts=100, length=200, marks=3, precisions=("fp32", "int8")) -> dict:
    """One-task ``/predict`` latency (ms) on a nano model, as an annotator works: the task
    is opened (no context: the model's first sight of the text), then ``marks`` interactive
    requests, each with one more region marked. Also one interactive request on a text the
    model has never seen (no task opened before). Per ``INFERENCE_PRECISION`` (a server
    each, one after the other, the same texts): ``fp32`` is what ``auto`` serves a model no
    job has checked, ``int8`` what it serves a version whose job passed the INT8 check."""
    model = common.model_dir("nano", **common.SHAPES["nano"])
    texts = common.texts_of_length(2 * n_texts + 20, length)
    out = {"model": "nano", "text_chars": length, "texts": n_texts, "marks": marks}
    for precision in precisions:
        out[precision] = _interactive_run(model, texts, n_texts, marks, precision)
    log(f"interactive latency: {out}")
    return out


def _interactive_run(model, texts, n_texts, marks, precision) -> dict:
    """``interactive_latency`` on one server (``INFERENCE_PRECISION=precision``)."""
    out = {}
    env = {"UIE_MODEL": str(model), "INFERENCE_PRECISION": precision}
    with Gunicorn(env, common.WORK / "logs" / f"gunicorn-interactive-{precision}.log") as server:
        server.wait()
        out["served"] = requests.get(server.url + "/health", timeout=30).json()["model"]["precision"]
        if out["served"] != precision:
            raise RuntimeError(f"INFERENCE_PRECISION={precision}: the server serves {out['served']}")
        for text in texts[-20:]:                                  # warm-up
            _timed(server, text, 0)
        opened, marked, unseen = [], [], []
        for text in texts[:n_texts]:
            opened.append(_timed(server, text, 0))
            marked += [_timed(server, text, k) for k in range(1, marks + 1)]
        for text in texts[n_texts: 2 * n_texts]:
            unseen.append(_timed(server, text, 1))
    for name, times in (("opened", opened), ("interactive", marked), ("interactive_unseen", unseen)):
        out[name] = {"p50_ms": round(common.percentile(times, 50), 1),
                     "p95_ms": round(common.percentile(times, 95), 1), "requests": len(times)}
    return out



def _timed(server, text: str, n_marked: int) -> float:
    started = time.perf_counter()
    post(server.url + "/predict", _interactive_body(text, n_marked))
    return (time.perf_counter() - started) * 1000


def _interactive_body(text: str, n_marked: int) -> dict:
    """A one-task request; with ``n_marked`` > 0, the annotator has marked that many
    two-character regions (every 20 characters) as names, in ``params.context``."""
    label = CLUENER_PROMPTS["name"]
    regions = [{"id": f"m{k}", "from_name": "label", "to_name": "text", "type": "labels",
                "origin": "manual",
                "value": {"start": 20 * k, "end": 20 * k + 2, "text": text[20 * k: 20 * k + 2],
                          "labels": [label]}} for k in range(n_marked)]
    params = {"context": {"result": regions}} if regions else {}
    return {"tasks": [{"id": 1, "data": {"text": text}}], "project": "interactive",
            "label_config": CLUENER_CONFIG, "params": params}
