"""INT8 on the CPU (issue 22): FP32 (Paddle Inference) against INT8 (ONNX Runtime), side by side.

``python bench/run.py --only precision [--shapes nano,base] [--quick]``:

- **speed**: per shape, texts/s of ``UIEPredictor.extract`` over the same CLUENER sentences with
  the 7 tutorial prompts, FP32 and INT8 in alternating rounds (so that a busy machine slows both
  alike), all cores' math threads each; the INT8 export's time and size.
- **latency** (nano): one-task ``extract`` latency p50/p95 over mixed-length CLUENER sentences,
  alone, and each right after a 64-task batch.
- **served** (nano): the same through gunicorn (``make run``'s defaults), an FP32 and an INT8
  server side by side (``INFERENCE_PRECISION``, each checked by its ``/health``), alternating
  round by round: one-task ``POST /predict`` p50/p95 with 1 client, with 4 clients at once, and
  each right after a 64-task ``/predict``; issue 22's goals beside them.
- **memory** (base; ``--quick`` nano): a gunicorn worker's resident memory, idle (model loaded)
  and its peak after four concurrent 64-task requests, for dygraph (the reference), FP32 and
  INT8, one server after the other.
- **tagger** (scratch): a scratch model whose span tagger learnt CLUENER's 10 labels
  (``finetune.py --model scratch``, a few minutes), served by two gunicorns side by side: its
  tagger in dygraph (``INFERENCE_ENGINE=dygraph``; the UIE answers nothing here, every label is
  a tagger class) and on Paddle Inference (the default): ``/predict`` texts/s on 64-task
  requests and one-task p50/p95, alternating rounds, and whether both answer the same.
- **f1**: a training job (``train_job.py``, as the server runs it) fine-tunes the nano shape on
  CLUENER tasks; its own INT8 check (its held-out dev split) and both precisions scored again
  on CLUENER sentences no job saw.

speed, latency and f1 are in-process, predictors without the server's batcher (the forward
passes ``/predict`` runs); served and memory go through the server, batcher and all.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import time
from pathlib import Path

import common
import serving
from common import LABELS, Gunicorn, log, median, percentile
from serving import predict

SPEED_TEXTS = {"nano": 128, "base": 32}
SPEED_ROUNDS = {"nano": 3, "base": 2}
LATENCY_ALONE, LATENCY_AFTER = 40, 20
JOB_TASKS, JOB_EPOCHS, JOB_LR, TEST_SENTENCES = 2000, 6, 5e-4, 600
QUICK = {"job_tasks": 120, "job_epochs": 1, "test": 60, "rounds": 1, "texts": 32, "latency": 10}
PARTS = ("speed", "latency", "served", "memory", "tagger", "f1")

# served: one-task requests per round and server, alone, from 4 clients, each after a batch
SERVED_PLAN = {"rounds": 4, "alone": 10, "clients_4": 12, "after_batch": 5}
SERVED_QUICK = {"rounds": 2, "alone": 3, "clients_4": 4, "after_batch": 2}
BATCH, CLIENTS = 64, 4
KINDS = ("alone", "clients_4", "after_batch")
GOALS = {"p95_ms": 30, "clients_4_over_alone_p95": 2}     # issue 22, nano on 2 cores
# the gunicorns compared, as what each adds to ``make run``'s environment; what /health must say
SERVED = {"fp32": {"INFERENCE_PRECISION": "fp32"}, "int8": {"INFERENCE_PRECISION": "int8"}}
MEMORY = {"dygraph": {"INFERENCE_ENGINE": "dygraph"}, **SERVED}
WANTED = {"dygraph": ("dygraph", "fp32"), "fp32": ("paddle-inference", "fp32"), "int8": ("onnx-int8", "int8")}
# tagger: the servers compared (what each adds to ``make run``'s environment), the engine of
# their tagger by /health; sentences it trains on, rounds of (64-task requests, one-task requests)
TAGGER_SERVED = {"dygraph": {"INFERENCE_ENGINE": "dygraph"}, "paddle-inference": {}}
TAGGER_PLAN = {"train": 1000, "epochs": 3, "rounds": 4, "batches": 2, "one_task": 25}
TAGGER_QUICK = {"train": 100, "epochs": 1, "rounds": 1, "batches": 1, "one_task": 5}


def _predictor(model, precision, threads, max_seq_len=128):
    import uie.engine
    import uie.predictor

    engine = uie.engine.load_engine(model, "paddle-inference", "cpu", threads, precision=precision)
    wanted = "onnx-int8" if precision == "int8" else "paddle-inference"
    if engine.name != wanted:
        raise RuntimeError(f"{model}: {wanted} did not load ({engine.reason or engine.precision_reason})")
    return uie.predictor.UIEPredictor.from_dir(model, engine=engine, max_seq_len=max_seq_len, batch_size=16)


FORWARD_ROWS, FORWARD_WIDTH = (1, 7, 14, 28), 60    # one task's 7 prompts; 4 clients' 28


def forward_ms(model, threads, repeats=15) -> dict:
    """Median ms of one forward pass per precision (the engine alone, in this process) over
    ``FORWARD_ROWS`` inputs of ``FORWARD_WIDTH`` tokens (a CLUENER sentence and a prompt):
    what 1 and 4 clients' one-task requests cost the engine, batched together or not."""
    import numpy as np

    import uie.engine

    out = {}
    for p in ("fp32", "int8"):
        engine = _predictor(model, p, threads).engine
        out[p] = {}
        for rows in FORWARD_ROWS:
            arrays = {k: np.ones((rows, FORWARD_WIDTH), dtype="int64") for k in uie.engine.INPUT_NAMES}
            arrays["token_type_ids"][:] = 0
            arrays["position_ids"] = np.broadcast_to(np.arange(FORWARD_WIDTH), (rows, FORWARD_WIDTH)).copy()
            seconds = []
            for k in range(repeats + 3):
                started = time.perf_counter()
                engine(arrays)
                if k >= 3:                      # the first passes build kernels
                    seconds.append(time.perf_counter() - started)
            out[p][str(rows)] = round(median(seconds) * 1000, 2)
    return out


def _export(model) -> dict:
    import uie.engine

    uie.engine.export_static(model)
    fresh = uie.engine.check_int8(model) is not None
    started = time.time()
    uie.engine.export_int8(model)
    seconds = round(time.time() - started, 1) if fresh else None    # None: made by an earlier run
    static = sum(p.stat().st_size for p in uie.engine.static_files(model))
    return {"int8_export_seconds": seconds,
            "static_mb": round(static / 2 ** 20, 1),
            "int8_mb": round(uie.engine.int8_file(model).stat().st_size / 2 ** 20, 1)}


def speed(shape, quick=False) -> dict:
    """texts/s of FP32 and INT8 on the same texts, alternating rounds; their ratio."""
    model = common.model_dir(shape, **common.SHAPES[shape])
    out = _export(model)
    threads = len(os.sched_getaffinity(0))
    n = QUICK["texts"] if quick else SPEED_TEXTS[shape]
    texts = common.bench_texts(n)
    queries = [(t, list(LABELS)) for t in texts]
    predictors = {p: _predictor(model, p, threads) for p in ("fp32", "int8")}
    seconds = {p: [] for p in predictors}
    for predictor in predictors.values():
        predictor.extract(queries[:8])          # first-call costs
    for _ in range(QUICK["rounds"] if quick else SPEED_ROUNDS[shape]):
        for p, predictor in predictors.items():
            t = time.perf_counter()
            predictor.extract(queries)
            seconds[p].append(time.perf_counter() - t)
    rate = {p: round(n / median(s), 1) for p, s in seconds.items()}
    out.update({"texts": n, "prompts": len(LABELS), "threads": threads, "texts_per_second": rate,
                "int8_speedup": round(rate["int8"] / rate["fp32"], 2),
                "load_average": [round(x, 2) for x in os.getloadavg()]})
    log(f"precision {shape}: {out}")
    return out


def latency(shape="nano", quick=False) -> dict:
    """One-task latency (ms) alone and right after a 64-task batch, per precision."""
    model = common.model_dir(shape, **common.SHAPES[shape])
    _export(model)
    threads = len(os.sched_getaffinity(0))
    sentences = [s["text"] for s in common.cluener()]
    n = QUICK["latency"] if quick else LATENCY_ALONE
    n_after = QUICK["latency"] // 2 if quick else LATENCY_AFTER
    probe = sentences[5000:5000 + n]       # mixed lengths, as they come
    batch = [(t, list(LABELS)) for t in sentences[6000:6064]]
    out = {"shape": shape, "probe_texts": n, "after_batch_probes": n_after,
           "probe_chars_median": median([len(t) for t in probe]), "threads": threads}
    for p in ("fp32", "int8"):
        predictor = _predictor(model, p, threads)
        predictor.extract(batch[:8])
        alone, after = [], []
        for text in probe:
            t = time.perf_counter()
            predictor.extract([(text, list(LABELS))])
            alone.append((time.perf_counter() - t) * 1000)
        for text in probe[:n_after]:
            predictor.extract(batch)
            t = time.perf_counter()
            predictor.extract([(text, list(LABELS))])
            after.append((time.perf_counter() - t) * 1000)
        out[p] = {"alone_ms": {"p50": round(percentile(alone, 50), 1), "p95": round(percentile(alone, 95), 1)},
                  "after_batch_ms": {"p50": round(percentile(after, 50), 1),
                                     "p95": round(percentile(after, 95), 1)}}
    out["load_average"] = [round(x, 2) for x in os.getloadavg()]
    log(f"precision latency: {out}")
    return out


@contextlib.contextmanager
def _gunicorns(model, configs, tag, describe=None):
    """A gunicorn (WORKERS=1, ``make run``'s defaults but ``configs[name]``) per configuration
    on ``model``, started together; ``(servers, what each /health says it serves)`` (``describe``,
    default ``_served``, reads and checks it). Stopped on exit."""
    with contextlib.ExitStack() as stack:
        servers = {}
        for name, extra in configs.items():
            servers[name] = Gunicorn(dict(extra, UIE_MODEL=str(model), WORKERS="1"),
                                     common.WORK / "logs" / f"gunicorn-precision-{tag}-{name}.log")
            stack.callback(servers[name].stop)
        for server in servers.values():
            server.wait()
        yield servers, {name: (describe or _served)(server, name) for name, server in servers.items()}


def _served(server, name) -> dict:
    """Engine, threads and precision (and why) by ``server``'s ``/health``; an error unless
    they are configuration ``name``'s (``WANTED``): an INT8 server that serves FP32 measures nothing."""
    model = server.get("/health")["model"]
    out = {k: model[k] for k in ("engine", "threads", "precision", "precision_reason", "engine_fallback_reason")
           if k in model}
    if (out.get("engine"), out.get("precision")) != WANTED[name]:
        raise RuntimeError(f"{name}: {WANTED[name]} asked, /health says {out} ({server.log_path})")
    return out


def _ms(seconds) -> dict:
    ms = [x * 1000 for x in seconds]
    return {"requests": len(ms), "p50": round(percentile(ms, 50), 1), "p95": round(percentile(ms, 95), 1)}


def _served_round(server, probes, batches) -> dict:
    """One round on one server: one-task seconds alone, from ``CLIENTS`` clients at once, and
    each right after a ``BATCH``-task ``/predict`` (not timed)."""
    after = []
    for text, batch in zip(probes["after_batch"], batches):
        predict(server, batch)
        after += serving.latency_times(server.url, [text], 1)
    return {"alone": serving.latency_times(server.url, probes["alone"], 1),
            "clients_4": serving.latency_times(server.url, probes["clients_4"], CLIENTS),
            "after_batch": after}


def served_latency(quick=False) -> dict:
    """One-task ``POST /predict`` latency (ms) through gunicorn, nano shape: an FP32 and an INT8
    server side by side, alternating round by round (which goes first, too), on ``latency``'s
    mixed-length CLUENER sentences, every text new to the server (its answer cache)."""
    model = common.model_dir("nano", **common.SHAPES["nano"])
    _export(model)              # made here, not at a server's start-up
    plan = SERVED_QUICK if quick else SERVED_PLAN
    sentences = [s["text"] for s in common.cluener()]
    per_round = plan["alone"] + plan["clients_4"] + plan["after_batch"]
    times = {p: {kind: [] for kind in KINDS} for p in SERVED}
    forward = forward_ms(model, len(os.sched_getaffinity(0)), repeats=5 if quick else 15)
    with _gunicorns(model, SERVED, "latency") as (servers, served):
        for server in servers.values():         # one-time costs, on texts not measured
            predict(server, sentences[4000:4000 + BATCH])
            for text in sentences[4100:4104]:
                predict(server, [text])
        for r in range(plan["rounds"]):
            texts = iter(sentences[5000 + r * per_round: 5000 + (r + 1) * per_round])
            probes = {kind: [next(texts) for _ in range(plan[kind])] for kind in KINDS}
            first = 6000 + r * plan["after_batch"] * BATCH
            batches = [sentences[first + k * BATCH: first + (k + 1) * BATCH] for k in range(plan["after_batch"])]
            for p in (list(SERVED) if r % 2 == 0 else list(SERVED)[::-1]):
                for kind, seconds in _served_round(servers[p], probes, batches).items():
                    times[p][kind] += seconds
            log(f"precision served: round {r + 1} of {plan['rounds']} (load {os.getloadavg()[0]:.1f})")
    out = {"shape": "nano", "rounds": plan["rounds"], "batch_tasks": BATCH, "clients": CLIENTS,
           "prompts": len(LABELS), "goals": GOALS, "forward_ms": forward}
    for p, kinds in times.items():
        out[p] = dict({f"{kind}_ms": _ms(seconds) for kind, seconds in kinds.items()}, served=served[p])
        out[p]["clients_4_over_alone_p95"] = round(out[p]["clients_4_ms"]["p95"] / out[p]["alone_ms"]["p95"], 2)
    out["load_average"] = [round(x, 2) for x in os.getloadavg()]
    log(f"precision served: {out}")
    return out


def served_memory(quick=False) -> dict:
    """A gunicorn worker's memory (MiB) per configuration of ``MEMORY`` (dygraph, FP32, INT8), one
    server after the other, base shape (``quick``: nano): resident idle, after start-up and the
    model's load, and the peak (VmHWM) after ``serving.fill_workers``'s concurrent ``BATCH``-task
    requests. Exports are made first, so that no worker's peak holds one."""
    shape = "nano" if quick else "base"
    model = common.model_dir(shape, **common.SHAPES[shape])
    _export(model)
    texts = [s["text"] for s in common.cluener()][8000:8000 + BATCH]
    out = {"shape": shape, "tasks_per_request": BATCH, "prompts": len(LABELS)}
    for name, extra in MEMORY.items():
        with _gunicorns(model, {name: extra}, f"memory-{shape}") as (servers, served):
            reading = serving.fill_workers(servers[name], texts)
        idle, after = reading["idle"], reading["after_requests"]
        out[name] = {"served": served[name], "idle_rss_mib": idle["worker_rss_mib"][0],
                     "idle_peak_mib": idle["worker_peak_mib"][0], "peak_mib": after["worker_peak_mib"][0],
                     "rss_after_mib": after["worker_rss_mib"][0], "requests": 4 * after["waves_of_4_requests"]}
        log(f"precision memory {shape} {name}: {out[name]}")
    out["load_average"] = [round(x, 2) for x in os.getloadavg()]
    return out


def _tagged_model(plan) -> Path:
    """A scratch UIE (``UIE_MODEL=scratch``'s shape) whose span tagger learnt CLUENER's 10 labels
    from ``plan["train"]`` sentences (``finetune.py``, the tutorial's script), built once."""
    import training

    path = common.WORK / "models" / f"tagged-scratch-{plan['train']}x{plan['epochs']}"
    if (path / "tagger.json").exists():
        return path
    sentences = common.cluener()[:plan["train"]]
    train = common.WORK / "data" / f"tagger-{plan['train']}.jsonl"
    training.write_jsonl(train, common.uie_examples(sentences))
    save = common.WORK / "runs" / path.name
    subprocess.run([sys.executable, str(common.REPO / "finetune.py"), "--model", "scratch",
                    "--train_path", str(train), "--save_dir", str(save), "--num_epochs", str(plan["epochs"]),
                    "--valid_steps", "1000000", "--max_seq_len", "128"],
                   cwd=str(common.REPO), check=True, capture_output=True)
    import shutil

    shutil.rmtree(path, ignore_errors=True)
    shutil.copytree(save / "model_best", path)
    return path


def tagger_engines(quick=False) -> dict:
    """A scratch version's span tagger served in dygraph and on Paddle Inference, side by side."""
    plan = TAGGER_QUICK if quick else TAGGER_PLAN
    model = _tagged_model(plan)
    sentences = [s["text"] for s in common.cluener()]
    times = {name: {"batch_s": [], "batch_texts": 0, "one_task": []} for name in TAGGER_SERVED}
    answers = {name: [] for name in TAGGER_SERVED}
    with _gunicorns(model, TAGGER_SERVED, "tagger", describe=_tagger_served) as (servers, served):
        for server in servers.values():
            _cluener_predict(server, sentences[4000:4000 + BATCH])       # warm-up
        for r in range(plan["rounds"]):
            first = 9000 + r * (plan["batches"] * BATCH + plan["one_task"])
            texts = sentences[first: first + plan["batches"] * BATCH + plan["one_task"]]
            for name in (list(servers) if r % 2 == 0 else list(servers)[::-1]):
                answers[name] += _tagger_round(servers[name], texts, plan["batches"], times[name])
            log(f"precision tagger: round {r + 1} of {plan['rounds']} (load {os.getloadavg()[0]:.1f})")
    out = {"model": f"{model.name}: finetune.py --model scratch on {plan['train']} CLUENER sentences, "
                    f"{plan['epochs']} epochs", "labels": len(common.CLUENER_PROMPTS), "batch_tasks": BATCH,
           "texts_compared": len(answers["dygraph"]),
           "texts_answered_otherwise": sum(a != b for a, b in zip(answers["dygraph"], answers["paddle-inference"]))}
    for name, t in times.items():
        out[name] = {"served": served[name], "texts_per_second": round(t["batch_texts"] / sum(t["batch_s"]), 1),
                     "one_task_ms": _ms(t["one_task"])}
    out["speedup"] = round(out["paddle-inference"]["texts_per_second"] / out["dygraph"]["texts_per_second"], 2)
    out["load_average"] = [round(x, 2) for x in os.getloadavg()]
    log(f"precision tagger: {out}")
    return out


def _tagger_round(server, texts, n_batches, times) -> list:
    """``n_batches`` timed ``BATCH``-task requests of ``texts``, then one-task requests of the rest
    (seconds added to ``times``); the regions answered for the batched texts."""
    answers = []
    for k in range(n_batches):
        batch = texts[k * BATCH: (k + 1) * BATCH]
        started = time.perf_counter()
        answers += _cluener_predict(server, batch)
        times["batch_s"].append(time.perf_counter() - started)
        times["batch_texts"] += len(batch)
    for text in texts[n_batches * BATCH:]:
        started = time.perf_counter()
        _cluener_predict(server, [text])
        times["one_task"].append(time.perf_counter() - started)
    return answers


def _tagger_served(server, name) -> dict:
    """What ``server``'s ``/health`` says of its model's engine and tagger; an error unless its
    tagger runs on ``name`` (a fallback measures nothing)."""
    model = server.get("/health")["model"]
    out = {k: model[k] for k in ("engine", "tagger_engine", "tagger_fallback_reason") if k in model}
    if out.get("tagger_engine") != name:
        raise RuntimeError(f"tagger on {name} asked, /health says {out} ({server.log_path})")
    return out


def _cluener_predict(server, texts) -> list:
    """The regions ``/predict`` answers for ``texts`` under CLUENER's label config."""
    body = {"tasks": [{"id": 20_000 + i, "data": {"text": t}} for i, t in enumerate(texts)],
            "project": "1", "label_config": common.CLUENER_CONFIG}
    answer = common.post(server.url + "/predict", body)
    return [sorted((r["value"]["start"], r["value"]["end"], r["value"]["labels"][0])
                   for r in p["result"] if r.get("type") == "labels") for p in answer["results"]]


def f1_of_a_job(quick=False) -> dict:
    """A job fine-tunes a nano UIE that finds CLUENER's regions (``trained_tutorial_model``: a
    few minutes on CLUENER mapped to the tutorial's labels, from random weights; no pretrained
    weights are reachable here) on CLUENER tasks with the tutorial's label config, as the server
    runs it (its INT8 check on its held-out split); then both precisions of its candidate on
    CLUENER sentences it never saw."""
    import files
    import train_job
    import training
    from evaluate import evaluate_examples

    n_tasks = QUICK["job_tasks"] if quick else JOB_TASKS
    epochs = QUICK["job_epochs"] if quick else JOB_EPOCHS
    start = training.trained_tutorial_model(minutes=1.0 if quick else 3.0, shape="nano")
    sentences = common.cluener()
    tasks = []
    for i, s in enumerate(sentences[:n_tasks], 1):
        task, annotation = common.ls_task(i, s, prompts=common.TUTORIAL_MAP)
        tasks.append(dict(task, annotations=[annotation]))
    job_dir = common.WORK / "precision-job"
    if job_dir.exists():
        import shutil

        shutil.rmtree(job_dir)
    job_dir.mkdir(parents=True)
    threads = len(os.sched_getaffinity(0))
    spec = train_job.JobSpec(project="bench", label_config=common.LABEL_CONFIG, tasks=tasks,
                             source="bench", model_path=str(start), model_version=start.parent.name,
                             device="cpu", batch_size=16, max_seq_len=128, learning_rate=JOB_LR,
                             num_epochs=epochs, min_dev_tasks=50, threads=threads)
    spec.write(job_dir)
    started = time.time()
    run = subprocess.run([sys.executable, str(common.REPO / "train_job.py"), str(job_dir)],
                         cwd=str(common.REPO), capture_output=True, text=True)
    result = files.read_json_object(job_dir / train_job.RESULT)
    if run.returncode != 0 or "error" in result:
        raise RuntimeError(f"the job failed: {result.get('error')} {run.stderr[-2000:]}")
    candidate = Path(result["candidate"])
    test_sentences = sentences[-(QUICK["test"] if quick else TEST_SENTENCES):]
    test = common.uie_examples(test_sentences, prompts=common.TUTORIAL_MAP)
    scored = {}
    for p in ("fp32", "int8"):
        predictor = _predictor(candidate, p, threads)
        m = evaluate_examples(predictor, test)
        scored[p] = {k: m[k] for k in ("precision", "recall", "f1")}
    out = {"job_seconds": round(time.time() - started, 1), "train_tasks": n_tasks, "epochs": epochs,
           "dev": {"split": f"the job's held-out dev split ({result['metrics']['examples']} examples of "
                            f"{n_tasks} tasks)" if result["held_out"] else "the training tasks",
                   **result["int8"]},
           "start": start.parent.name, "served_model_f1": result["previous_metrics"]["f1"],
           "test": {"split": f"the last {len(test_sentences)} CLUENER train.json sentences "
                             f"({len(test)} examples), never trained on", **scored,
                    "f1_lost": round(scored["fp32"]["f1"] - scored["int8"]["f1"], 4)},
           "load_average": [round(x, 2) for x in os.getloadavg()]}
    log(f"precision f1: {out}")
    return out


def run(shapes=("nano", "base"), quick=False, parts=PARTS) -> dict:
    """The ``parts`` of ``PARTS`` asked for (speed per shape of ``shapes``; the others have theirs)."""
    unknown = set(parts) - set(PARTS)
    if unknown:
        raise ValueError(f"unknown precision parts: {', '.join(sorted(unknown))} (of {', '.join(PARTS)})")
    out = {}
    if "speed" in parts:
        out["speed"] = {shape: speed(shape, quick) for shape in shapes}
    if "latency" in parts:
        out["latency"] = latency("nano", quick)
    if "served" in parts:
        out["served"] = served_latency(quick)
    if "memory" in parts:
        out["memory"] = served_memory(quick)
    if "tagger" in parts:
        out["tagger"] = tagger_engines(quick)
    if "f1" in parts:
        out["f1"] = f1_of_a_job(quick)
    return out


def report_lines(r) -> list[str]:
    """The precision section of results.md."""
    if not r:
        return []
    lines = ["## INT8 on the CPU (issue 22)", "",
             "FP32 = Paddle Inference (oneDNN), INT8 = ONNX Runtime over the dynamically quantized "
             "export (`INFERENCE_PRECISION`); speed and the first latency table in one process (no "
             "batcher, no HTTP), alternating rounds; the gunicorn tables through the server."]
    if r.get("speed"):
        lines += ["", "| shape | texts × prompts | threads | FP32 texts/s | INT8 texts/s | INT8 speed-up | "
                      "INT8 export (s) | static / INT8 MB | load average |", "|---|---|---|---|---|---|---|---|---|"]
    for shape, s in r.get("speed", {}).items():
        lines.append(f"| {shape} | {s['texts']} × {s['prompts']} | {s['threads']} | {s['texts_per_second']['fp32']} | "
                     f"{s['texts_per_second']['int8']} | **{s['int8_speedup']}×** | {s['int8_export_seconds'] or 'earlier run'} | "
                     f"{s['static_mb']} / {s['int8_mb']} | {s['load_average']} |")
    lat = r.get("latency")
    if lat:
        lines += ["", f"One-task latency, {lat['shape']}, {lat['probe_texts']} CLUENER sentences "
                      f"(median {lat['probe_chars_median']} characters), 7 prompts:", "",
                  "| precision | alone p50 / p95 ms | right after a 64-task batch p50 / p95 ms |", "|---|---|---|"]
        for p in ("fp32", "int8"):
            a, b = lat[p]["alone_ms"], lat[p]["after_batch_ms"]
            lines.append(f"| {p} | {a['p50']} / {a['p95']} | {b['p50']} / {b['p95']} |")
    lines += _served_lines(r.get("served")) + _memory_lines(r.get("memory")) + _tagger_lines(r.get("tagger"))
    f1 = r.get("f1")
    if f1:
        d, t = f1["dev"], f1["test"]
        lines += ["", f"F1 of a job's model (nano shape, from `{f1.get('start')}`, {f1['train_tasks']} CLUENER tasks "
                      f"with the tutorial's labels, {f1['epochs']} epochs):", "",
                  "| split | FP32 F1 | INT8 F1 | served in INT8 under `auto` |", "|---|---|---|---|",
                  f"| {d['split']} | {_f(d['fp32_f1'])} | {_f(d['f1'])} | {d['served']} ({d['reason']}) |",
                  f"| {t['split']} | {_f(t['fp32']['f1'])} | {_f(t['int8']['f1'])} | (lost {t['f1_lost']}) |"]
    lines.append("")
    return lines


def _tagger_lines(tg) -> list[str]:
    """``tagger_engines``' table."""
    if not tg:
        return []
    lines = ["", f"A scratch version's span tagger, dygraph against Paddle Inference, through gunicorn "
                 f"(one worker each, side by side, alternating): {tg['model']}; CLUENER's "
                 f"{tg['labels']} labels, all answered by the tagger.", "",
             f"| tagger | {tg['batch_tasks']}-task `/predict` texts/s | one-task p50 / p95 ms | requests |",
             "|---|---|---|---|"]
    for name in ("dygraph", "paddle-inference"):
        x = tg[name]
        lines.append(f"| {name} | {x['texts_per_second']} | {x['one_task_ms']['p50']} / {x['one_task_ms']['p95']} | "
                     f"{x['one_task_ms']['requests']} |")
    lines += ["", f"Paddle Inference: **{tg['speedup']}×** the texts/s. Regions that differ: on "
                  f"{tg['texts_answered_otherwise']} of the {tg['texts_compared']} batched texts (both engines' "
                  f"probabilities agree within about 1e-6: a probability on the threshold). "
                  f"Load average {tg['load_average']}."]
    return lines


def _served_lines(sv) -> list[str]:
    """``served_latency``'s table, issue 22's goals marked."""
    if not sv:
        return []
    goal, ratio = sv["goals"]["p95_ms"], sv["goals"]["clients_4_over_alone_p95"]
    lines = ["", f"One-task `POST /predict` through gunicorn ({sv['shape']}, `make run`'s defaults but "
                 f"`INFERENCE_PRECISION`, {sv['prompts']} prompts), an FP32 and an INT8 server side by side, "
                 f"{sv['rounds']} alternating rounds, CLUENER sentences new to each server. Goals (issue 22): "
                 f"p95 ≤ {goal} ms alone and right after a {sv['batch_tasks']}-task `/predict`; with "
                 f"{sv['clients']} clients p95 ≤ {ratio}× the 1-client p95.", "",
             f"| server (`/health`) | 1 client p50 / p95 ms | {sv['clients']} clients p50 / p95 ms | "
             f"{sv['clients']}-client p95 / 1-client p95 | right after a batch p50 / p95 ms | requests |",
             "|---|---|---|---|---|---|"]
    for p in SERVED:
        x = sv[p]
        a, c, b = x["alone_ms"], x["clients_4_ms"], x["after_batch_ms"]
        lines.append(f"| {p} ({x['served']['engine']}, {x['served']['threads']} threads) | "
                     f"{a['p50']} / {a['p95']} {_met(a['p95'] <= goal)} | {c['p50']} / {c['p95']} | "
                     f"{x['clients_4_over_alone_p95']} {_met(x['clients_4_over_alone_p95'] <= ratio)} | "
                     f"{b['p50']} / {b['p95']} {_met(b['p95'] <= goal)} | "
                     f"{a['requests']} / {c['requests']} / {b['requests']} |")
    return lines + ["", f"Load average at the end: {sv['load_average']}."] + _forward_lines(sv.get("forward_ms"))


def _forward_lines(fw) -> list[str]:
    """``forward_ms``' table: what the engine's pass costs per row, alone and batched."""
    if not fw:
        return []
    rows = list(fw["fp32"])
    lines = ["", f"The engine's forward pass alone (same process, before the servers start; median ms) over "
                 f"rows of {FORWARD_WIDTH} tokens: one task's {LABELS and len(LABELS)} prompts are 7 rows, "
                 f"{CLIENTS} clients' one-task requests batched together 28.", "",
             "| precision | " + " | ".join(f"{r} rows" for r in rows) + " | ms per row, 7 rows → 28 rows |",
             "|---|" + "---|" * len(rows) + "---|"]
    for p, ms in fw.items():
        lines.append(f"| {p} | " + " | ".join(str(ms[r]) for r in rows) +
                     f" | {ms['7'] / 7:.2f} → {ms['28'] / 28:.2f} |")
    lines += ["", f"{CLIENTS} clients' requests cost the engine {CLIENTS}× the rows; batching them together "
                  "saves only what a pass costs less per row when it has more rows (the last column). With "
                  f"compute this flat per row, {CLIENTS} clients on 2 cores wait for about "
                  f"{fw['int8']['28'] / fw['int8']['7']:.1f}× (INT8) / {fw['fp32']['28'] / fw['fp32']['7']:.1f}× "
                  "(FP32) the forward time of one request, before any HTTP."]
    return lines


def _memory_lines(mem) -> list[str]:
    """``served_memory``'s table: each worker's peak against dygraph's (issue 22's goal)."""
    if not mem:
        return []
    ref = mem["dygraph"]["peak_mib"]
    lines = ["", f"A gunicorn worker's memory ({mem['shape']} shape, WORKERS=1, `make run`'s defaults but the "
                 f"configuration), one server after the other: resident idle (model loaded) and the peak "
                 f"(`VmHWM`) after {mem['dygraph']['requests']} concurrent {mem['tasks_per_request']}-task "
                 f"`/predict`s. Goal (issue 22, uie-base): a worker's peak no higher than dygraph's.", "",
             "| configuration (`/health`) | idle RSS MiB | idle peak MiB | peak after the requests MiB | "
             "peak vs dygraph's |", "|---|---|---|---|---|"]
    for name in MEMORY:
        m = mem[name]
        versus = "(the reference)" if name == "dygraph" else \
            f"{m['peak_mib'] - ref:+.0f} MiB {_met(m['peak_mib'] <= ref)}"
        lines.append(f"| {name} ({m['served']['engine']}, {m['served']['precision']}) | {m['idle_rss_mib']} | "
                     f"{m['idle_peak_mib']} | {m['peak_mib']} | {versus} |")
    return lines


def _met(flag):
    return "**met**" if flag else "**missed**"


def _f(x):
    return "–" if x is None else f"{x:.4f}"
