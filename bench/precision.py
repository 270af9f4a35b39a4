"""INT8 on the CPU (issue 22): FP32 (Paddle Inference) against INT8 (ONNX Runtime), side by side.

``python bench/run.py --only precision [--shapes nano,base] [--quick]``:

- **speed**: per shape, texts/s of ``UIEPredictor.extract`` over the same CLUENER sentences with
  the 7 tutorial prompts, FP32 and INT8 in alternating rounds (so that a busy machine slows both
  alike), all cores' math threads each; the INT8 export's time and size.
- **latency** (nano): one-task ``extract`` latency p50/p95 over mixed-length CLUENER sentences,
  alone, and each right after a 64-task batch.
- **f1**: a training job (``train_job.py``, as the server runs it) fine-tunes the nano shape on
  CLUENER tasks; its own INT8 check (its held-out dev split) and both precisions scored again
  on CLUENER sentences no job saw.

All in-process, predictors without the server's batcher (the forward passes ``/predict`` runs).
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import common
from common import LABELS, log, median, percentile

SPEED_TEXTS = {"nano": 128, "base": 32}
SPEED_ROUNDS = {"nano": 3, "base": 2}
LATENCY_ALONE, LATENCY_AFTER = 40, 20
JOB_TASKS, JOB_EPOCHS, JOB_LR, TEST_SENTENCES = 600, 3, 2e-4, 300
QUICK = {"job_tasks": 120, "job_epochs": 1, "test": 60, "rounds": 1, "texts": 32, "latency": 10}


def _predictor(model, precision, threads, max_seq_len=128):
    import uie.engine
    import uie.predictor

    engine = uie.engine.load_engine(model, "paddle-inference", "cpu", threads, precision=precision)
    wanted = "onnx-int8" if precision == "int8" else "paddle-inference"
    if engine.name != wanted:
        raise RuntimeError(f"{model}: {wanted} did not load ({engine.reason or engine.precision_reason})")
    return uie.predictor.UIEPredictor.from_dir(model, engine=engine, max_seq_len=max_seq_len, batch_size=16)


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


def run(shapes=("nano", "base"), quick=False) -> dict:
    out = {"speed": {}}
    for shape in shapes:
        out["speed"][shape] = speed(shape, quick)
    out["latency"] = latency("nano", quick)
    out["f1"] = f1_of_a_job(quick)
    return out


def report_lines(r) -> list[str]:
    """The precision section of results.md."""
    if not r:
        return []
    lines = ["## INT8 on the CPU (issue 22)", "",
             "FP32 = Paddle Inference (oneDNN), INT8 = ONNX Runtime over the dynamically quantized "
             "export (`INFERENCE_PRECISION`), in one process, alternating rounds.", "",
             "| shape | texts × prompts | threads | FP32 texts/s | INT8 texts/s | INT8 speed-up | "
             "INT8 export (s) | static / INT8 MB | load average |",
             "|---|---|---|---|---|---|---|---|---|"]
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


def _f(x):
    return "–" if x is None else f"{x:.4f}"
