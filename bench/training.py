"""Sections 3, 5 and 8: finetune.py's training rate, START_TRAINING -> served (embedded, and
across replicas in the scale-out mode), learning curves."""

from __future__ import annotations

import contextlib
import json
import math
import os
import random
import shutil
import subprocess
import sys
import time
from pathlib import Path

import requests

import common
from common import CLUENER_CONFIG, Gunicorn, log, post

WORKER = Path(__file__).resolve().parent / "worker.py"


def write_jsonl(path, rows):
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", encoding="utf-8") as f:
        for row in rows:
            f.write(json.dumps(row, ensure_ascii=False) + "\n")
    return path


def run_worker(spec, name, timeout=None, threads=None):
    """Run bench/worker.py on ``spec`` in a fresh process; its result dict."""
    wdir = common.WORK / "runs" / name
    spec_path = wdir / "spec.json"
    result_path = wdir / "result.json"
    wdir.mkdir(parents=True, exist_ok=True)
    spec_path.write_text(json.dumps(spec, ensure_ascii=False, indent=2), encoding="utf-8")
    result_path.unlink(missing_ok=True)
    with open(wdir / "worker.log", "wb") as logf:
        env = dict(os.environ, OMP_NUM_THREADS=str(threads)) if threads else None
        proc = subprocess.run([sys.executable, str(WORKER), str(spec_path), str(result_path)],
                              cwd=common.REPO, stdout=logf, stderr=subprocess.STDOUT, timeout=timeout,
                              env=env)
    if proc.returncode != 0 or not result_path.exists():
        tail = (wdir / "worker.log").read_text(errors="replace")[-2000:]
        raise RuntimeError(f"worker {name} failed ({proc.returncode}): {tail}")
    return json.loads(result_path.read_text(encoding="utf-8"))


# --------------------------------------------------------------------------
# 3a. examples/s of finetune.py

RATE_EXAMPLES = {"nano": 1600, "base": 160, "scratch": 1600}


def rate_model(shape) -> Path:
    """The model the training rates start from: ``nano``/``base`` (standing in for the
    pretrained models) or ``scratch``, the backend's scratch model (``uie.checkpoint.SCRATCH_SHAPE``)."""
    if shape != "scratch":
        return common.model_dir(shape, **common.SHAPES[shape])
    import uie.checkpoint

    model = common.WORK / "models" / "scratch-default"
    if not uie.checkpoint.is_model_dir(model):
        uie.checkpoint.build_scratch(model)
    return model


def training_rate(shape, quick=False):
    """finetune's examples/s: ``nano``/``base`` as pretrained models train, ``scratch`` as
    the backend's scratch model does (its shape, with the auxiliary tagging pass)."""
    sentences = common.cluener()[:1000]
    n = RATE_EXAMPLES[shape] // (4 if quick else 1)
    train = common.uie_examples(sentences)[:n]
    data = common.WORK / "data" / "rate"
    spec = {"model": str(rate_model(shape)), "math_threads": len(os.sched_getaffinity(0)),   # as finetune.py runs
            "save_dir": str(common.WORK / "runs" / f"rate-{shape}" / "ckpt"),
            "train": str(write_jsonl(data / f"train-{n}.jsonl", train)),
            "dev": str(write_jsonl(data / "dev.jsonl", train[:10])),
            "kwargs": {"num_epochs": 1, "batch_size": 16, "max_seq_len": 128, "valid_steps": 0,
                       "logging_steps": 5, "patience": 1}}
    result = run_worker(spec, f"rate-{shape}")
    shutil.rmtree(spec["save_dir"], ignore_errors=True)
    out = {"examples": n, "examples_per_second": round(result["train_rate"], 2),
           "with_eval_and_save_per_second": result["examples_per_second"],
           "batch_size": 16, "max_seq_len": 128, "seconds": result["train_seconds"]}
    log(f"training rate {shape}: {out}")
    return out


# --------------------------------------------------------------------------
# 3b. START_TRAINING -> the new version served; scale-out: the same across replicas

EMBEDDED, SCALE_OUT = "embedded", "scale-out"


@contextlib.contextmanager
def deployment(mode, env, name):
    """The backend in ``mode``, on ``env``; yields (A, B): the replica that gets /setup and
    START_TRAINING, and the one that gets the webhooks and is asked for predictions.

    embedded: one gunicorn that trains (A is B). scale-out: a Redis (harness/redis_server.py),
    replicas A and B over one MODEL_DIR and one RQ worker (``job_queue.py worker``), idle
    on the queue before anything is sent, as a deployed worker would be.
    """
    logs = common.WORK / "logs"
    if mode == EMBEDDED:
        with Gunicorn(env, logs / f"gunicorn-{name}.log") as server:
            yield server, server
        return
    from harness.redis_server import RedisServer

    redis = RedisServer()
    env = dict(env, REDIS_URL=redis.url)
    running = []
    try:
        for replica in ("a", "b"):      # one after the other: the first exports the base model
            running.append(Gunicorn(env, logs / f"gunicorn-{name}-{replica}.log"))
            running[-1].wait()
        running.append(common.RQWorker(env, logs / f"worker-{name}.log"))
        running[-1].wait(redis)
        yield running[0], running[1]
    finally:
        for process in reversed(running):
            process.stop()
        redis.stop()


def train_to_served(n_tasks=200, epochs=5, shape="nano", mode=EMBEDDED, name="train-to-served"):
    """Wall time from the START_TRAINING webhook (to A) to ``/predict`` answering with the new
    version (on B), ``n_tasks`` annotated tasks sent before as webhooks (to B); see ``deployment``."""
    sentences = common.cluener()[2000: 2000 + n_tasks]
    model = common.model_dir(shape, **common.SHAPES[shape])
    root = common.WORK / "serve" / name
    shutil.rmtree(root, ignore_errors=True)
    env = {"UIE_MODEL": str(model), "MODEL_DIR": str(root)}
    if epochs:
        env["TRAIN_EPOCHS"] = str(epochs)
    project = {"id": 1, "label_config": CLUENER_CONFIG}
    with deployment(mode, env, name) as (a, b):
        post(a.url + "/setup", {"project": "1.1", "schema": CLUENER_CONFIG})
        t = time.perf_counter()
        for i, s in enumerate(sentences, 1):
            task, annotation = common.ls_task(i, s)
            post(b.url + "/webhook", {"action": "ANNOTATION_CREATED", "annotation": annotation,
                                      "task": task, "project": project})
        webhooks_s = time.perf_counter() - t
        probe = {"tasks": [{"id": 1, "data": {"text": sentences[0]["text"]}}], "project": "1.1",
                 "label_config": CLUENER_CONFIG}
        before = post(b.url + "/predict", probe)["model_version"]
        started = time.perf_counter()
        job = post(a.url + "/webhook", {"action": "START_TRAINING", "project": project})["job"]
        state, done_at = None, None
        while True:
            jobs = requests.get(b.url + "/jobs", params={"project": "1"}, timeout=30).json()["jobs"]
            state = next(j for j in jobs if j["id"] == job["id"])
            if state["state"] in ("done", "failed"):
                done_at = time.perf_counter()
                break
            time.sleep(0.5)
        if state["state"] != "done":
            raise RuntimeError(f"training job failed: {state.get('error')}")
        while True:
            version = post(b.url + "/predict", probe)["model_version"]
            if version != before:
                break
            time.sleep(0.2)
        served_at = time.perf_counter()
        versions = requests.get(b.url + "/versions", params={"project": "1"}, timeout=30).json()
    meta = versions["projects"]["1"]["versions"][-1]
    total = served_at - started
    out = {"mode": mode, "tasks": n_tasks, "train_epochs": epochs, "webhooks_s": round(webhooks_s, 1),
           "total_s": round(total, 1), "job_done_s": round(done_at - started, 1),
           "finetune_train_s": meta.get("train_seconds"), "epochs_run": meta.get("epochs_run"),
           "dev_f1": meta.get("dev", {}).get("f1"), "new_version": version,
           "job_started_s": round(state["started"] - state["created"], 2)}
    if meta.get("train_seconds"):
        out["other_s"] = round(total - meta["train_seconds"], 1)
        per_epoch = meta["train_seconds"] / max(1, meta.get("epochs_run") or epochs)
        out["per_epoch_s"] = round(per_epoch, 1)
    log(f"{name}: {out}")
    return out


# (scale-out section) annotated tasks, TRAIN_EPOCHS, rounds of (embedded, scale-out)
SCALE_OUT_PLAN = {"tasks": 150, "epochs": 2, "rounds": 2, "shape": "nano"}
SCALE_OUT_QUICK = {"tasks": 40, "epochs": 1, "rounds": 1}


def scale_out(quick=False):
    """``train_to_served`` embedded and scale-out side by side: the same tasks, model and
    settings, fresh deployments each time; the order alternates from round to round."""
    plan = dict(SCALE_OUT_PLAN, **(SCALE_OUT_QUICK if quick else {}))
    modes = (EMBEDDED, SCALE_OUT)
    runs = {mode: [] for mode in modes}
    for r in range(plan["rounds"]):
        for mode in (modes if r % 2 == 0 else modes[::-1]):
            runs[mode].append(train_to_served(plan["tasks"], plan["epochs"], plan["shape"], mode,
                                              name=f"scale-out-{mode}-{r + 1}"))

    def middle(mode, key):
        values = [run[key] for run in runs[mode] if run.get(key) is not None]
        return round(common.median(values), 1) if values else None

    def paired(key, combine):
        """The median over the rounds of ``combine(scale-out, embedded)`` of ``key``."""
        pairs = [(s.get(key), e.get(key)) for e, s in zip(runs[EMBEDDED], runs[SCALE_OUT])]
        values = [combine(s, e) for s, e in pairs if s is not None and e is not None]
        return round(common.median(values), 2) if values else None

    out = {"shape": plan["shape"], "tasks": plan["tasks"], "train_epochs": plan["epochs"],
           "rounds": plan["rounds"], "runs": runs,
           "median": {mode: {key: middle(mode, key) for key in
                             ("total_s", "finetune_train_s", "other_s", "job_started_s")}
                      for mode in modes},
           "scale_out_over_embedded": paired("total_s", lambda s, e: s / e),
           "scale_out_minus_embedded_s": paired("total_s", lambda s, e: s - e),
           # finetune's training is the same work in both: the deployments differ in the rest
           "other_scale_out_minus_embedded_s": paired("other_s", lambda s, e: s - e)}
    log(f"scale-out: {out['median']}, ratio {out['scale_out_over_embedded']}")
    return out


# --------------------------------------------------------------------------
# 5. learning curves of a scratch UIE on CLUENER

# The base every recipe below changes (the first session's scratch shape, lr 1e-3).
DEFAULT_RECIPE = {"name": "backend-default", "shape": {"hidden_size": 128, "num_hidden_layers": 4,
                                                       "num_attention_heads": 2, "intermediate_size": 512},
                  "learning_rate": 1e-3, "batch_size": 16, "pos_weight": 5.0}
L2 = {"hidden_size": 128, "num_hidden_layers": 2, "num_attention_heads": 2, "intermediate_size": 256}

NODROP = {"hidden_dropout_prob": 0.0, "attention_probs_dropout_prob": 0.0}
RECIPES = [
    DEFAULT_RECIPE,
    {"name": "lr3e-3", "learning_rate": 3e-3},
    {"name": "4heads-nodrop-lr3e-3", "learning_rate": 3e-3,
     "shape": dict(DEFAULT_RECIPE["shape"], num_attention_heads=4, **NODROP)},
    {"name": "pw10", "pos_weight": 10.0},
    {"name": "neg3", "negatives": 3},
    {"name": "h256-4heads", "shape": {"hidden_size": 256, "num_hidden_layers": 4, "num_attention_heads": 4,
                                      "intermediate_size": 1024}},
    {"name": "lr5e-4", "learning_rate": 5e-4},
    {"name": "neg3-pw10", "negatives": 3, "pos_weight": 10.0},
    {"name": "neg1", "negatives": 1},
    {"name": "neg3-h256-4heads", "negatives": 3, "shape": {"hidden_size": 256, "num_hidden_layers": 4,
                                                           "num_attention_heads": 4, "intermediate_size": 1024}},
    {"name": "neg3-lr2e-3", "negatives": 3, "learning_rate": 2e-3},
    # The auxiliary tagging loss (train_inputs.encode_tagging) with negatives drawn anew each epoch.
    # Measured with the throwaway tagging head of the time; since issue 12 a tagging weight
    # trains the span tagger (span_tagger.py) instead, which then answers the labels.
    {"name": "tag-neg3", "max_negatives": 3, "tagging_weight": 1.0},
    {"name": "tag-neg1", "max_negatives": 1, "tagging_weight": 1.0},
    {"name": "tag-neg3-lr2e-3", "max_negatives": 3, "tagging_weight": 1.0, "learning_rate": 2e-3},
    {"name": "tag-neg3-l2", "max_negatives": 3, "tagging_weight": 1.0, "shape": L2},
    {"name": "tag-neg3-h64", "max_negatives": 3, "tagging_weight": 1.0,
     "shape": {"hidden_size": 64, "num_hidden_layers": 4, "num_attention_heads": 2, "intermediate_size": 256}},
]
SELECT_SENTENCES = 150   # held out of the 90 % to pick the best checkpoint during training


def learning_data():
    sentences = common.cluener()
    train_all, test = common.split(sentences, 0.1, seed=0)
    return train_all[SELECT_SENTENCES:], train_all[:SELECT_SENTENCES], test


def epoch_examples(path, max_negatives):
    """Examples finetune trains on per epoch with ``max_negatives``: all with a span,
    at most ``max_negatives`` empty ones per content."""
    spans, empty = 0, {}
    with open(path, encoding="utf-8") as f:
        for line in f:
            ex = json.loads(line)
            if ex["result_list"]:
                spans += 1
            else:
                empty[ex["content"]] = empty.get(ex["content"], 0) + 1
    return spans + sum(min(n, max_negatives) for n in empty.values())


def learning_run(recipe, n_sentences, minutes, name=None, test=True, threads=None):
    """Train a fresh scratch UIE with ``recipe`` on ``n_sentences`` for ``minutes``."""
    pool, select, test_sentences = learning_data()
    n = len(pool) if n_sentences in (None, "all") else int(n_sentences)
    data = common.WORK / "data" / "learning"
    train_path = data / f"train-{n}.jsonl"
    if not train_path.exists():
        write_jsonl(train_path, common.uie_examples(pool[:n]))
    dev_path = data / "select.jsonl"
    if not dev_path.exists():
        write_jsonl(dev_path, common.uie_examples(select))
    test_path = data / "test.jsonl"
    if not test_path.exists():
        write_jsonl(test_path, common.uie_examples(test_sentences))
    recipe = dict(DEFAULT_RECIPE, **recipe)
    negatives = recipe.get("negatives")
    if negatives is not None:
        train_path = data / f"train-{n}-neg{negatives}.jsonl"
        if not train_path.exists():
            write_jsonl(train_path, common.uie_examples(pool[:n], negatives=negatives))
    n_examples = sum(1 for _ in open(train_path, encoding="utf-8"))
    max_negatives = recipe.get("max_negatives")
    per_epoch = n_examples if max_negatives is None else epoch_examples(train_path, max_negatives)
    name = name or f"learn-{recipe['name']}-{n}"
    save_dir = common.WORK / "runs" / name / "ckpt"
    shutil.rmtree(save_dir, ignore_errors=True)
    batch_size = recipe.get("batch_size", 16)
    base = {"build": recipe["shape"], "save_dir": str(save_dir), "train": str(train_path)}
    if recipe.get("output_bias") is not None:
        base["build"] = dict(recipe["shape"], output_bias=recipe["output_bias"])
    # Paddle's dygraph math library runs on one thread unless told: use every core we were given
    math_threads = threads or len(os.sched_getaffinity(0))
    base["math_threads"] = math_threads
    budget = minutes * 60
    kwargs = {"learning_rate": recipe["learning_rate"], "batch_size": batch_size, "max_seq_len": 128,
              "patience": 1000, "pos_weight": recipe.get("pos_weight", 5.0),
              "tagging_weight": recipe.get("tagging_weight", 0.0), "max_negatives": max_negatives}
    # finetune's own rate over its first 150 steps: the epochs that fill the budget
    rate = run_worker(dict(base, rate_steps=150, kwargs=kwargs),
                      name + "-probe", threads=threads)["examples_per_second"]
    # The LR schedule should end when the time does: epochs from the measured rate,
    # leaving ~15 % of the time to the evaluations on the selection set.
    epochs = max(1, round(budget * 0.85 * rate / per_epoch))
    steps = math.ceil(per_epoch / batch_size) * epochs
    valid_steps = max(10, steps // 10)
    kwargs.update(num_epochs=epochs, valid_steps=valid_steps, logging_steps=20, max_seconds=budget)
    spec = dict(base, dev=str(dev_path), kwargs=kwargs)
    if test:
        spec["test"] = str(test_path)
    log(f"learning {name}: {n} sentences ({n_examples} examples), {epochs} epochs, "
        f"probe {rate:.0f} examples/s, budget {minutes} min")
    result = run_worker(spec, name, threads=threads)
    curve = [{"minutes": round(h["seconds"] / 60, 2), "dev_f1": h["f1"], "epoch": h["epoch"],
              "step": h["step"]} for h in result["history"]]
    out = {"recipe": recipe, "sentences": n, "threads": math_threads, "examples": n_examples,
           "examples_per_epoch": per_epoch, "minutes_budget": minutes,
           "epochs_planned": epochs, "epochs_run": result["epochs_run"], "steps": result["steps"],
           "probe_examples_per_second": round(rate, 1), "train_rate": round(result["train_rate"], 1),
           "train_minutes": round(result["train_seconds"] / 60, 2), "best_dev_f1": result["f1"],
           "curve": curve}
    if test:
        t = result["test"]
        out["test"] = {k: t[k] for k in ("precision", "recall", "f1", "gold", "predicted", "tp")}
        out["test"]["per_label_f1"] = {k: v["f1"] for k, v in t["per_label"].items()}
        out["test"]["eval_seconds"] = t["seconds"]
    if test and out["test"]["predicted"]:      # keep it for the agreement section
        keep = common.WORK / "models" / f"learned-{name}"
        shutil.rmtree(keep, ignore_errors=True)
        shutil.copytree(save_dir / "model_best", keep)
        (keep / "bench_test_f1.txt").write_text(str(out["test"]["f1"]))
    shutil.rmtree(save_dir, ignore_errors=True)
    log(f"learning {name}: best dev f1 {out['best_dev_f1']}, test {out.get('test', {}).get('f1')}, "
        f"{out['train_minutes']} min, curve {[(c['minutes'], c['dev_f1']) for c in curve]}")
    return out


def trained_tutorial_model(minutes=3.0, shape=None):
    """A UIE trained on CLUENER mapped to the tutorial's prompts: the best recipe's scratch shape
    (for agreement, when no learning run has left a model), or, with ``shape``, that shape
    (``common.SHAPES``, random weights) as the start (for relations: a model that finds regions,
    whose subjects the relation prompts ask about). Trained once, kept under work/models/."""
    import uie.checkpoint

    name = "trained-tutorial" if shape is None else f"trained-tutorial-{shape}-{minutes:g}min"
    path = common.WORK / "models" / name
    if uie.checkpoint.is_model_dir(path / "model_best"):
        return path / "model_best"
    sentences = common.cluener()[3000:3500]
    prompts = dict(common.TUTORIAL_MAP, _time="时间", _price="价格", _weather="天气")
    train = common.uie_examples(sentences, prompts=prompts, negatives=3)
    data = common.WORK / "data" / "tutorial"
    best = recipe()
    start = ({"build": best["shape"]} if shape is None
             else {"model": str(common.model_dir(shape, **common.SHAPES[shape]))})
    spec = {**start, "save_dir": str(path),
            "train": str(write_jsonl(data / "train.jsonl", train)),
            "dev": str(write_jsonl(data / "dev.jsonl", common.uie_examples(sentences[:100], prompts=prompts))),
            "kwargs": {"learning_rate": best["learning_rate"], "num_epochs": 30, "batch_size": 16,
                       "max_seq_len": 128, "valid_steps": 100, "patience": 1000,
                       "pos_weight": best.get("pos_weight", 5.0), "max_seconds": minutes * 60,
                       "tagging_weight": 0.0}}     # a UIE answering from prompts, as Taskflow does
    result = run_worker(spec, name)
    log(f"{name}: dev f1 {result['f1']} after {result['train_seconds']}s")
    return path / "model_best"


# The recipe the learning section uses unless told otherwise (the best of the
# short `--only recipes` runs, see results.md).
BEST_RECIPE = "tag-neg3-l2"


def recipe(name=None) -> dict:
    name = name or BEST_RECIPE
    for r in RECIPES:
        if r["name"] == name:
            return dict(DEFAULT_RECIPE, **r)
    raise SystemExit(f"unknown recipe {name!r}: {', '.join(r['name'] for r in RECIPES)}")


def best_learned_model():
    """The learning run model with the best test F1 (kept under work/models/learned-*), or None.
    A model with a span tagger is no candidate: Taskflow, which agreement compares with, only
    asks prompts."""
    best = None
    for f in (common.WORK / "models").glob("learned-*/bench_test_f1.txt"):
        if (f.parent / "tagger.json").exists():
            continue
        score = float(f.read_text())
        if best is None or score > best[0]:
            best = (score, f.parent)
    return best and best[1]


# finetune steps whose examples/s training_threads takes (base: fewer, it is 10x slower)
THREAD_STEPS = {"nano": 30, "base": 10, "scratch": 30}


def training_threads(shapes=("nano", "base", "scratch"), quick=False):
    """finetune's examples/s over its first steps with one math thread (a training job with
    ``CPU_THREADS=1``) and with all cores (the default), interleaved; the best of each."""
    cores = len(os.sched_getaffinity(0))
    data = common.WORK / "data" / "rate"
    train = write_jsonl(data / "threads.jsonl", common.uie_examples(common.cluener()[:200]))
    rounds = 1 if quick else 2
    out = {}
    for shape in shapes:
        steps = 5 if quick else THREAD_STEPS[shape]
        row = {}
        for n in (1, cores) * rounds:
            spec = {"model": str(rate_model(shape)), "save_dir": str(common.WORK / "runs" / f"threads-{shape}"),
                    "train": str(train), "rate_steps": steps, "math_threads": n,
                    "kwargs": {"batch_size": 16, "max_seq_len": 128}}
            rate = run_worker(spec, f"threads-{shape}-{n}")["examples_per_second"]
            shutil.rmtree(spec["save_dir"], ignore_errors=True)
            row.setdefault(n, []).append(rate)
        out[shape] = {f"{n}_threads": round(max(v), 1) for n, v in row.items()}
        out[shape].update(speedup=round(max(row[cores]) / max(row[1]), 2), steps=steps, batch_size=16)
        log(f"training threads {shape}: {out[shape]}")
    return out


# --------------------------------------------------------------------------
# 9. the scratch recipe: finetune.py's defaults for --model scratch (a span tagger)

TEST_EVERY_SECONDS = 150


def scratch_learning(minutes=30.0, n_sentences=None, threads=None, num_epochs=None):
    """``finetune.py --model scratch`` with its defaults (the README's command) on all of
    the learning split (90 %, minus the selection sentences), ``minutes`` at most; test
    F1 along the way, then ``evaluate.py`` on the saved model. ``num_epochs`` overrides
    the default epochs and turns early stopping off (to see what more time would give)."""
    pool, select, test_sentences = learning_data()
    pool = pool if n_sentences is None else pool[:n_sentences]
    data = common.WORK / "data" / "scratch"
    train_path = write_jsonl(data / f"train-{len(pool)}.jsonl", common.uie_examples(pool))
    dev_path = write_jsonl(data / "select.jsonl", common.uie_examples(select))
    test_path = write_jsonl(data / "test.jsonl", common.uie_examples(test_sentences))
    name = f"scratch-{len(pool)}-{minutes:g}min" + (f"-{num_epochs}epochs" if num_epochs else "")
    save_dir = common.WORK / "runs" / name / "ckpt"
    shutil.rmtree(save_dir, ignore_errors=True)
    math_threads = threads or len(os.sched_getaffinity(0))
    kwargs = {"max_seconds": minutes * 60, "logging_steps": 50, "valid_steps": 200}
    if num_epochs:      # and no early stop: the whole time, to see where it goes
        kwargs.update(num_epochs=num_epochs, patience=10 ** 6)
    spec = {"build": {}, "save_dir": str(save_dir), "train": str(train_path), "dev": str(dev_path),
            "test": str(test_path), "test_every_seconds": TEST_EVERY_SECONDS,
            "math_threads": math_threads, "kwargs": kwargs}
    log(f"{name}: finetune --model scratch on {len(pool)} sentences, {minutes} min at most")
    result = run_worker(spec, name, threads=threads)
    out_json = common.WORK / "runs" / name / "evaluate.json"
    t = time.time()
    subprocess.run([sys.executable, "evaluate.py", "--model_path", str(save_dir / "model_best"),
                    "--test_path", str(test_path), "--output_json", str(out_json)],
                   cwd=common.REPO, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                   env=dict(os.environ, CPU_THREADS=str(math_threads)))
    evaluated = json.loads(out_json.read_text(encoding="utf-8"))
    out = {"sentences": len(pool), "minutes_budget": minutes, "threads": math_threads,
           "epochs_run": result["epochs_run"], "steps": result["steps"], "num_epochs": num_epochs,
           "examples_per_second": result["examples_per_second"],
           "train_minutes": round(result["train_seconds"] / 60, 2), "batch_size": result["batch_size"],
           "learning_rate": result["learning_rate"], "tagger_learning_rate": result.get("tagger_learning_rate"),
           "tagger_classes": len(result.get("tagger_classes", [])), "best_dev_f1": result["f1"],
           "dev_curve": [{"minutes": round(h["seconds"] / 60, 2), "dev_f1": h["f1"], "epoch": h["epoch"]}
                         for h in result["history"]],
           "test_curve": result.get("test_curve", []),
           "test": {k: evaluated[k] for k in ("precision", "recall", "f1")},
           "evaluate_seconds": round(time.time() - t, 1)}
    keep = common.WORK / "models" / "scratch-learned"
    shutil.rmtree(keep, ignore_errors=True)
    shutil.copytree(save_dir / "model_best", keep)
    shutil.rmtree(save_dir, ignore_errors=True)
    log(f"{name}: test f1 {out['test']['f1']} after {out['train_minutes']} min, "
        f"curve {[(c['minutes'], c['f1']) for c in out['test_curve']]}")
    return out


def _train_and_wait(a, b, project, probe):
    """START_TRAINING to ``a``; wait until the job ends and ``b`` serves its version.
    Returns ``(job state, new version, seconds to done, seconds to served)``."""
    before = post(b.url + "/predict", probe)["model_version"]
    started = time.perf_counter()
    job = post(a.url + "/webhook", {"action": "START_TRAINING", "project": project})["job"]
    while True:
        jobs = requests.get(b.url + "/jobs", params={"project": str(project["id"])}, timeout=30).json()["jobs"]
        state = next(j for j in jobs if j["id"] == job["id"])
        if state["state"] in ("done", "failed"):
            done_s = time.perf_counter() - started
            break
        time.sleep(0.5)
    if state["state"] != "done":
        raise RuntimeError(f"training job failed: {state.get('error')}")
    if not state.get("promoted", True):
        raise RuntimeError(f"the job's version is not served: {state.get('summary')}")
    while True:
        version = post(b.url + "/predict", probe)["model_version"]
        if version != before:
            return state, version, done_s, time.perf_counter() - started
        time.sleep(0.2)


def _served_f1(server, sentences, chunk=64, project="1"):
    """Micro P/R/F1 (exact span and label) of ``/predict`` on ``sentences`` (the model
    ``project`` is served), and its texts/s."""
    labels = {v: k for k, v in common.CLUENER_PROMPTS.items()}
    tp = n_pred = n_gold = 0
    seconds = 0.0
    for c in range(0, len(sentences), chunk):
        part = sentences[c: c + chunk]
        body = {"tasks": [{"id": c + i + 1, "data": {"text": s["text"]}} for i, s in enumerate(part)],
                "project": project, "label_config": CLUENER_CONFIG}
        t = time.perf_counter()
        answer = post(server.url + "/predict", body)
        seconds += time.perf_counter() - t
        for s, prediction in zip(part, answer["results"]):
            got = {(labels[r["value"]["labels"][0]], r["value"]["start"], r["value"]["end"])
                   for r in prediction["result"]}
            gold = set(s["spans"])
            tp, n_pred, n_gold = tp + len(got & gold), n_pred + len(got), n_gold + len(gold)
    p, r = tp / max(n_pred, 1), tp / max(n_gold, 1)
    return {"precision": round(p, 4), "recall": round(r, 4), "f1": round(2 * p * r / max(p + r, 1e-9), 4),
            "texts_per_second": round(len(sentences) / seconds, 1),
            "false_positives_per_100": round(100 * (n_pred - tp) / max(len(sentences), 1), 1)}


SCRATCH_JOB_SEEDS = (1, 2, 3)
# Pool sentences a project's /predict answers before its first job (Label Studio's "Retrieve
# predictions" over the tasks not yet annotated): the texts a small project's teacher reads.
UNANNOTATED = 1000


def scratch_jobs(sizes=(50, 200, 1000), seeds=SCRATCH_JOB_SEEDS, compare_serving=True):
    """The server's own training jobs on a scratch model (UIE_MODEL=scratch, default job
    settings): for each size ``n`` and seed, ``n`` random pool sentences (``random.Random(seed)``)
    sent as ANNOTATION_CREATED webhooks after ``/predict`` answered ``UNANNOTATED`` other pool
    sentences (``random.Random(seed + 1000)``), START_TRAINING, then ``/predict`` on the held-out
    test sentences; ``summary`` per size: mean and min over the seeds. With ``compare_serving``,
    the last version is also served without its tagger (a scratch version's path before its
    tagger: every label a prompt) and both are timed on the same texts."""
    pool, _, test_sentences = learning_data()
    rows, root = [], None
    for n in sizes:
        for seed in seeds:
            chosen = random.Random(seed).sample(pool, n)
            taken = {s["text"] for s in chosen}
            others = random.Random(seed + 1000).sample([s for s in pool if s["text"] not in taken], UNANNOTATED)
            root, row = _scratch_job(chosen, f"scratch-job-{n}-{seed}", test_sentences, others)
            rows.append(dict(row, seed=seed))
            log(f"scratch job {n} tasks, seed {seed}: {rows[-1]}")
    out = {"jobs": rows, "summary": [_job_summary([r for r in rows if r["tasks"] == n]) for n in sizes],
           "seeds": list(seeds)}
    if compare_serving and rows:
        out["serving"] = _compare_serving(root / "1" / rows[-1]["version"], test_sentences)
    return out


def last_job_serving(jobs) -> dict:
    """``_compare_serving`` on the version of the last of ``jobs`` (an earlier ``scratch_jobs``
    run's rows), still in the bench's work folder; ``apart``: not in the jobs' run."""
    last = jobs[-1]
    version = common.WORK / "serve" / f"scratch-job-{last['tasks']}-{last['seed']}" / "1" / last["version"]
    if not version.is_dir():
        raise FileNotFoundError(f"{version}: run --scratch-parts jobs first")
    return dict(_compare_serving(version, learning_data()[2]), apart=True)


def _scratch_job(sentences, name, test_sentences, unannotated=()) -> tuple[Path, dict]:
    """One project of ``sentences`` annotated (after ``/predict`` answered the ``unannotated``
    ones), trained by START_TRAINING on a fresh scratch server, its version scored on
    ``test_sentences``: ``(model root, row)``."""
    root = common.WORK / "serve" / name
    shutil.rmtree(root, ignore_errors=True)
    project = {"id": 1, "label_config": CLUENER_CONFIG}
    with deployment(EMBEDDED, {"UIE_MODEL": "scratch", "MODEL_DIR": str(root)}, name) as (a, b):
        post(a.url + "/setup", {"project": "1", "schema": CLUENER_CONFIG})
        for first in range(0, len(unannotated), 100):
            post(a.url + "/predict", {"project": "1", "label_config": CLUENER_CONFIG, "tasks": [
                {"id": 100_000 + first + k, "data": {"text": s["text"]}}
                for k, s in enumerate(unannotated[first:first + 100])]})
        for i, s in enumerate(sentences, 1):
            task, annotation = common.ls_task(i, s)
            post(b.url + "/webhook", {"action": "ANNOTATION_CREATED", "annotation": annotation,
                                      "task": task, "project": project})
        probe = {"tasks": [{"id": 1, "data": {"text": sentences[0]["text"]}}], "project": "1",
                 "label_config": CLUENER_CONFIG}
        state, version, done_s, served_s = _train_and_wait(a, b, project, probe)
        versions = requests.get(b.url + "/versions", params={"project": "1"}, timeout=30).json()
        meta = versions["projects"]["1"]["versions"][-1]
        scored = _served_f1(b, test_sentences)
    return root, {"tasks": len(sentences), "version": version, "job_minutes": round(done_s / 60, 2),
                  "served_minutes": round(served_s / 60, 2),
                  "train_minutes": round((meta.get("train_seconds") or 0) / 60, 2),
                  "epochs_run": meta.get("epochs_run"), "teacher": meta.get("teacher"),
                  "unannotated": len(unannotated), "test": scored}


def _job_summary(rows) -> dict:
    """Mean and min test F1 (and mean P, R; mean and max job minutes) of one size's jobs."""
    f1 = [r["test"]["f1"] for r in rows]
    minutes = [r["job_minutes"] for r in rows]
    return {"tasks": rows[0]["tasks"], "samples": len(rows), "f1_mean": round(sum(f1) / len(f1), 4),
            "f1_min": min(f1), "precision_mean": round(sum(r["test"]["precision"] for r in rows) / len(rows), 4),
            "recall_mean": round(sum(r["test"]["recall"] for r in rows) / len(rows), 4),
            "job_minutes_mean": round(sum(minutes) / len(minutes), 2), "job_minutes_max": max(minutes)}


# Issue 20, must hold 3: a one-task /predict of a 50-character text keeps p95 <= 50 ms.
ONE_TASK_CHARS = 50
ONE_TASK_REQUESTS = 200


def _texts_of_length(sentences, length, n=ONE_TASK_REQUESTS) -> list[str]:
    """``n`` texts of exactly ``length`` characters: the sentences run together, cut in pieces."""
    joined = "".join(s["text"] for s in sentences)
    return [joined[i * length:(i + 1) * length] for i in range(min(n, len(joined) // length))]


def _one_task_ms(server, texts) -> dict:
    """p50/p95 ms of one-task ``/predict`` requests (CLUENER's labels), one text each, one client."""
    ms = []
    for i, text in enumerate(texts):
        body = {"tasks": [{"id": 50_000 + i, "data": {"text": text}}], "project": "1",
                "label_config": CLUENER_CONFIG}
        t = time.perf_counter()
        post(server.url + "/predict", body)
        ms.append((time.perf_counter() - t) * 1000)
    return {"chars": len(texts[0]), "requests": len(ms), "p50": round(common.percentile(ms, 50), 1),
            "p95": round(common.percentile(ms, 95), 1)}


def _compare_serving(version_dir, sentences):
    """``/predict`` texts/s of a served scratch version with its tagger and without it, and
    its one-task p50/p95 on 50-character texts."""
    models = common.WORK / "models"
    out = {}
    for kind in ("tagger", "prompts"):
        copy = models / f"scratch-serving-{kind}"
        shutil.rmtree(copy, ignore_errors=True)
        shutil.copytree(version_dir, copy)
        if kind == "prompts":
            for name in ("tagger.json", "tagger.pdparams"):
                (copy / name).unlink()
        root = common.WORK / "serve" / f"scratch-serving-{kind}"
        shutil.rmtree(root, ignore_errors=True)
        with Gunicorn({"UIE_MODEL": str(copy), "MODEL_DIR": str(root)},
                      common.WORK / "logs" / f"gunicorn-scratch-serving-{kind}.log") as server:
            server.wait()
            _served_f1(server, sentences[:64])                       # warm-up
            out[kind] = _served_f1(server, sentences)
            out[kind]["one_task_ms"] = _one_task_ms(server, _texts_of_length(sentences, ONE_TASK_CHARS))
    out["ratio"] = round(out["tagger"]["texts_per_second"] / out["prompts"]["texts_per_second"], 2)
    log(f"scratch serving: {out}")
    return out
