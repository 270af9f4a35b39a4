"""Sections 1, 2 and 4: prediction throughput, interactive latency, server memory.

Per model shape, one gunicorn server (WORKERS=1) serves the throughput
requests (b), the latency requests and is then asked for its peak memory;
the Taskflow (a) and forward-pass (c) timings run in this process,
interleaved with (b) round by round so their ratios come from the same
moments of a shared machine. A second server with WORKERS=2 gives the
two-worker memory.
"""

from __future__ import annotations

import os
import shutil
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import common
from common import LABEL_CONFIG, LABELS, Gunicorn, log, median, percentile, post

# Per shape: rounds of (a, b, c), texts Taskflow is timed on, latency requests.
PLAN = {
    "nano": {"rounds": 3, "taskflow_texts": 24, "lat_1": 30, "lat_4": 40},
    "base": {"rounds": 1, "taskflow_texts": 6, "lat_1": 10, "lat_4": 16, "inference_texts": 64},
}
QUICK = {
    "nano": {"rounds": 1, "taskflow_texts": 8, "lat_1": 10, "lat_4": 12, "texts": 64},
    "base": {"rounds": 1, "taskflow_texts": 2, "lat_1": 4, "lat_4": 8, "texts": 16},
}


def tasks_for(texts, start_id=1):
    return [{"id": start_id + i, "data": {"text": t}} for i, t in enumerate(texts)]


def spans_of_prediction(prediction):
    return {(r["value"]["labels"][0], r["value"]["start"], r["value"]["end"])
            for r in prediction["result"]}


# --------------------------------------------------------------------------
# (a) Taskflow, (c) the forward pass

def make_taskflow(model_dir, name, schema=LABELS, **kwargs):
    """The tutorial's Taskflow on a copy of ``model_dir`` (it writes static/ into task_path)."""
    import paddlenlp.taskflow.utils as taskflow_utils
    from paddlenlp import Taskflow

    copy = common.WORK / "taskflow" / name
    stamp = str((model_dir / "model_state.pdparams").stat().st_mtime_ns) + str(model_dir)
    stamp_file = copy / ".bench-stamp"
    if not (stamp_file.is_file() and stamp_file.read_text() == stamp):
        shutil.rmtree(copy, ignore_errors=True)
        shutil.copytree(model_dir, copy, ignore=shutil.ignore_patterns("static", ".cache_info", "*.json.bak"))
        stamp_file.write_text(stamp)
    taskflow_utils.DOWNLOAD_CHECK = True        # no usage ping
    return Taskflow("information_extraction", schema=list(schema), task_path=str(copy), **kwargs)


def taskflow_spans(result):
    """Taskflow's answer for one text as {(label, start, end)}."""
    out = set()
    for label, items in (result[0] if isinstance(result, list) else result).items():
        for item in items:
            out.add((label, item["start"], item["end"]))
    return out


def forward_batches(predictor, texts):
    """Exactly the model inputs ``predictor.extract`` runs for these texts, in its batches."""
    inputs, _ = predictor.build_inputs([(t, list(LABELS)) for t in texts])
    order = sorted(range(len(inputs)), key=lambda k: len(inputs[k][2].ids))
    bs = predictor.batch_size
    batches = [[inputs[k][2] for k in order[b: b + bs]] for b in range(0, len(order), bs)]
    n_tokens = sum(len(x.ids) for _, _, x in inputs)
    padded = sum(len(batch) * max(len(x.ids) for x in batch) for batch in batches)
    return batches, {"inputs": len(inputs), "tokens": n_tokens, "padded_tokens": padded,
                     "batches": len(batches)}


def time_forward(predictor, batches):
    t = time.perf_counter()
    for batch in batches:
        predictor.forward(batch)
    return time.perf_counter() - t


# --------------------------------------------------------------------------
# Paddle Inference, for the "what if" rows (same batches as (c))

def inference_runner(static_prefix, mkldnn=True, threads=2):
    import paddle

    import uie_model

    config = paddle.inference.Config(f"{static_prefix}.pdmodel", f"{static_prefix}.pdiparams")
    config.disable_gpu()
    if mkldnn:
        config.enable_mkldnn()
    config.set_cpu_math_library_num_threads(threads)
    config.switch_use_feed_fetch_ops(False)
    config.disable_glog_info()
    config.enable_memory_optim()
    predictor = paddle.inference.create_predictor(config)
    handles = [predictor.get_input_handle(n) for n in predictor.get_input_names()]
    outputs = [predictor.get_output_handle(n) for n in predictor.get_output_names()]

    def run(batches):
        t = time.perf_counter()
        for batch in batches:
            arrays = uie_model.pad_batch(batch, pad_id=0)
            for h, name in zip(handles, ("input_ids", "token_type_ids", "position_ids", "attention_mask")):
                h.copy_from_cpu(arrays[name])
            predictor.run()
            for o in outputs:
                o.copy_to_cpu()
        return time.perf_counter() - t

    return run


# --------------------------------------------------------------------------
# latency

def latency(url, texts, clients, n_requests):
    """Seconds of each one-task /predict, ``clients`` sending at once."""
    times, lock = [], threading.Lock()
    queue = list(enumerate(texts[:n_requests]))

    def client():
        while True:
            with lock:
                if not queue:
                    return
                i, text = queue.pop(0)
            t = time.perf_counter()
            post(url + "/predict", {"tasks": tasks_for([text], start_id=10_000 + i),
                                    "label_config": LABEL_CONFIG, "project": "1"})
            with lock:
                times.append(time.perf_counter() - t)

    threads = [threading.Thread(target=client) for _ in range(clients)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    return {"clients": clients, "requests": len(times),
            "p50_ms": round(percentile(times, 50) * 1000, 1),
            "p95_ms": round(percentile(times, 95) * 1000, 1),
            "mean_ms": round(sum(times) / len(times) * 1000, 1)}


# --------------------------------------------------------------------------
# one shape

def run_shape(shape, sections, quick=False, batch_size=None, extra_env=None):
    """Throughput / latency / memory of one model shape; returns their results."""
    plan = dict(PLAN[shape], **(QUICK[shape] if quick else {}))
    model = common.model_dir(shape, **common.SHAPES[shape])
    texts = common.bench_texts(plan.get("texts", 256))
    out = {}
    env = {"UIE_MODEL": str(model)}
    if batch_size:
        env["BATCH_SIZE"] = str(batch_size)
    env.update(extra_env or {})
    from settings import Settings
    settings = Settings.from_env(env)
    server = Gunicorn(env, common.WORK / "logs" / f"gunicorn-{shape}.log")
    try:
        server.wait()
        log(f"{shape}: gunicorn ready in {server.ready_seconds:.1f}s")
        idle_memory = server.memory()
        # warm up the server (first request pays one-time costs)
        post(server.url + "/predict", {"tasks": tasks_for(texts[:4]), "label_config": LABEL_CONFIG})

        if "throughput" in sections:
            out["throughput"] = throughput(shape, model, texts, server, settings, plan)
        if "latency" in sections:
            lat_texts = common.texts_of_length(plan["lat_1"] + plan["lat_4"] + 4, 100)
            for t in lat_texts[:2]:       # warm-up at this length
                post(server.url + "/predict", {"tasks": tasks_for([t]), "label_config": LABEL_CONFIG})
            lat_texts = lat_texts[2:]
            res = [latency(server.url, lat_texts[: plan["lat_1"]], 1, plan["lat_1"]),
                   latency(server.url, lat_texts[plan["lat_1"]:], 4, plan["lat_4"])]
            out["latency"] = {"text_chars": 100, "labels": len(LABELS), "results": res}
            log(f"{shape}: latency {res}")
        if "memory" in sections:
            if "throughput" not in sections:   # the same load as the throughput request
                post(server.url + "/predict", {"tasks": tasks_for(texts), "label_config": LABEL_CONFIG})
            after_short = server.memory()
            long_text = "".join(common.texts_of_length(1, 1500, offset=3000))
            t = time.perf_counter()
            post(server.url + "/predict", {"tasks": tasks_for([long_text]), "label_config": LABEL_CONFIG})
            long_seconds = time.perf_counter() - t
            after_long = server.memory()
            out["memory"] = {"workers_1": {"idle": idle_memory, "after_256_texts": after_short,
                                           "after_long_text": after_long,
                                           "long_text_chars": len(long_text),
                                           "long_text_seconds": round(long_seconds, 2)}}
            log(f"{shape}: memory {out['memory']}")
    finally:
        server.stop()

    if "memory" in sections:
        out["memory"]["workers_2"] = two_workers(shape, model, texts, env)
    return out


def throughput(shape, model, texts, server, settings, plan):
    import uie_model

    predictor = uie_model.UIEPredictor.from_dir(model, max_seq_len=settings.max_seq_len,
                                                batch_size=settings.batch_size,
                                                threshold=settings.score_threshold)
    batches, stats = forward_batches(predictor, texts)
    time_forward(predictor, batches[:2])          # warm-up
    log(f"{shape}: {stats}")
    t = time.perf_counter()
    flow = make_taskflow(model, shape)
    taskflow_init = time.perf_counter() - t
    tf_texts = texts[: plan["taskflow_texts"]]
    flow(tf_texts[0])                              # warm-up
    body = {"tasks": tasks_for(texts), "label_config": LABEL_CONFIG, "project": "1"}
    import psutil

    worker = psutil.Process(server.workers()[0])
    times = {"a": [], "b": [], "c": []}      # wall seconds
    cpu = {"a": [], "b": [], "c": []}        # CPU seconds of the process doing the work
    answer = None

    def own_cpu():
        t = os.times()
        return t.user + t.system

    def worker_cpu():
        t = worker.cpu_times()
        return t.user + t.system

    for r in range(plan["rounds"]):
        c0, t = own_cpu(), time.perf_counter()
        time_forward(predictor, batches)
        times["c"].append(time.perf_counter() - t)
        cpu["c"].append(own_cpu() - c0)
        c0, t = worker_cpu(), time.perf_counter()
        answer = post(server.url + "/predict", body)
        times["b"].append(time.perf_counter() - t)
        cpu["b"].append(worker_cpu() - c0)
        c0, t = own_cpu(), time.perf_counter()
        for text in tf_texts:
            flow(text)
        times["a"].append(time.perf_counter() - t)
        cpu["a"].append(own_cpu() - c0)
        log(f"{shape}: round {r + 1}: a {times['a'][-1]:.2f}s/{len(tf_texts)} texts, "
            f"b {times['b'][-1]:.2f}s, c {times['c'][-1]:.2f}s /{len(texts)} texts "
            f"(load {os.getloadavg()[0]:.1f})")
    assert len(answer["results"]) == len(texts)
    n_a, n = len(tf_texts), len(texts)
    rate = {"a": n_a / median(times["a"]), "b": n / median(times["b"]), "c": n / median(times["c"])}
    # paired per round: the ratio of two timings taken one after the other
    b_over_a = median([(n / tb) / (n_a / ta) for ta, tb in zip(times["a"], times["b"])])
    c_over_b = median([tb / tc for tb, tc in zip(times["b"], times["c"])])
    cpu_b_over_a = median([(n / tb) / (n_a / ta) for ta, tb in zip(cpu["a"], cpu["b"])])
    cpu_c_over_b = median([tb / tc for tb, tc in zip(cpu["b"], cpu["c"])])
    # where the time of (b) goes, from one in-process extract() (no HTTP)
    t = time.perf_counter()
    inputs, _ = predictor.build_inputs([(x, list(LABELS)) for x in texts])
    tokenise = time.perf_counter() - t
    t = time.perf_counter()
    predictor.extract([(x, list(LABELS)) for x in texts])
    extract = time.perf_counter() - t
    # the same batches through Paddle Inference (the static model Taskflow exported)
    static = common.WORK / "taskflow" / shape / "static" / "inference"
    variants = {}
    try:
        run_inf = inference_runner(static, mkldnn=True)
        run_inf(batches[:2])
        sub_texts = texts[: plan.get("inference_texts", len(texts))]
        sub = forward_batches(predictor, sub_texts)[0]
        c2 = time_forward(predictor, sub)
        inf = run_inf(sub)
        variants = {"texts": len(sub_texts), "dygraph_forward_s": round(c2, 2),
                    "paddle_inference_mkldnn_s": round(inf, 2), "speedup": round(c2 / inf, 2)}
        log(f"{shape}: paddle inference {variants}")
    except Exception as exc:   # reported, never fatal
        variants = {"error": f"{type(exc).__name__}: {exc}"}
    del flow
    return {
        "texts": len(texts), "labels": len(LABELS), "taskflow_texts": len(tf_texts),
        "rounds": plan["rounds"], "seconds": {k: [round(x, 3) for x in v] for k, v in times.items()},
        "cpu_seconds": {k: [round(x, 3) for x in v] for k, v in cpu.items()},
        "texts_per_s": {k: round(v, 3) for k, v in rate.items()},
        "b_over_a": round(b_over_a, 2), "c_over_b": round(c_over_b, 3),
        "cpu_b_over_a": round(cpu_b_over_a, 2), "cpu_c_over_b": round(cpu_c_over_b, 3),
        "batch_size": settings.batch_size, "max_seq_len": settings.max_seq_len,
        "forward_inputs": stats, "taskflow_init_s": round(taskflow_init, 1),
        "in_process_extract_s": round(extract, 3), "tokenise_s": round(tokenise, 4),
        "paddle_inference": variants,
    }


def two_workers(shape, model, texts, env):
    """Peak memory with WORKERS=2 after each worker served requests."""
    server = Gunicorn(dict(env, WORKERS="2"), common.WORK / "logs" / f"gunicorn-{shape}-w2.log")
    try:
        server.wait()
        import psutil

        idle = server.memory()
        workers = [psutil.Process(pid) for pid in server.workers()]
        start_cpu = [w.cpu_times().user for w in workers]
        body = {"tasks": tasks_for(texts[:8]), "label_config": LABEL_CONFIG}
        waves = 0
        # the kernel hands connections to whichever worker accepts first: send waves of
        # concurrent requests until every worker has served some
        while waves < 8:
            waves += 1
            with ThreadPoolExecutor(4) as pool:
                list(pool.map(lambda _: post(server.url + "/predict", body), range(4)))
            busy = [w.cpu_times().user - c > 0.2 for w, c in zip(workers, start_cpu)]
            if all(busy):
                break
        after = server.memory()
        after["waves_of_4_requests"] = waves
        after["every_worker_served"] = all(busy)
        log(f"{shape}: WORKERS=2 memory {after}")
        return {"idle": idle, "after_requests": after}
    finally:
        server.stop()


# --------------------------------------------------------------------------
# the same spans as Taskflow, for a trained model

def agreement(model_dir, labels, label_config, n_texts=256, thresholds=(0.5, 0.2)):
    """Span sets of Taskflow and of ``/predict`` for the same trained model and texts.

    At Taskflow's default threshold (0.5) and a lower one (more spans, a stricter test).
    """
    texts = common.bench_texts(n_texts)
    out = {"model": str(model_dir), "labels": list(labels), "texts": len(texts), "by_threshold": []}
    for threshold in thresholds:
        flow = make_taskflow(Path(model_dir), "trained", schema=labels, position_prob=threshold)
        t = time.perf_counter()
        theirs = [taskflow_spans(flow(text)) for text in texts]
        tf_seconds = time.perf_counter() - t
        env = {"UIE_MODEL": str(model_dir), "SCORE_THRESHOLD": str(threshold)}
        with Gunicorn(env, common.WORK / "logs" / "gunicorn-trained.log") as server:
            t = time.perf_counter()
            answer = post(server.url + "/predict", {"tasks": tasks_for(texts), "label_config": label_config})
            b_seconds = time.perf_counter() - t
        ours = [spans_of_prediction(p) for p in answer["results"]]
        row = {"threshold": threshold,
               "texts_identical": sum(1 for a, b in zip(theirs, ours) if a == b),
               "spans_both": sum(len(a & b) for a, b in zip(theirs, ours)),
               "spans_taskflow_only": sum(len(a - b) for a, b in zip(theirs, ours)),
               "spans_backend_only": sum(len(b - a) for a, b in zip(theirs, ours)),
               "taskflow_texts_per_s": round(len(texts) / tf_seconds, 2),
               "backend_texts_per_s": round(len(texts) / b_seconds, 2),
               "examples_of_differences": [
                   {"text": x, "taskflow_only": sorted(a - b), "backend_only": sorted(b - a)}
                   for x, a, b in zip(texts, theirs, ours) if a != b][:5]}
        out["by_threshold"].append(row)
        log(f"agreement at {threshold}: {row}")
        del flow
    return out


# --------------------------------------------------------------------------
# profile: batch size and window length, the forward pass alone (c)

def profile(shape, quick=False):
    """Forward-pass seconds of (c) for several BATCH_SIZE values, short texts and a long one."""
    import uie_model

    model_path = common.model_dir(shape, **common.SHAPES[shape])
    base = uie_model.UIEPredictor.from_dir(model_path, max_seq_len=512)
    n_short = {"nano": 256, "base": 32}[shape] // (4 if quick else 1)
    short = common.bench_texts(n_short)
    long_text = "".join(common.texts_of_length(1, 1500, offset=3000))
    sizes = (4, 8, 16, 32, 64)
    out = {"short_texts": n_short, "long_text_chars": len(long_text), "rows": []}
    rounds = 1 if quick or shape == "base" else 2
    timings = {}
    for bs in sizes:
        p = uie_model.UIEPredictor(base.model, base.tokenizer, max_seq_len=512, batch_size=bs)
        timings[bs] = {"short": forward_batches(p, short)[0], "long": forward_batches(p, [long_text])[0]}
    res = {bs: {"short": [], "long": []} for bs in sizes}
    time_forward(base, timings[16]["short"][:2])
    for _ in range(rounds):
        for bs in sizes:
            for kind in ("short", "long"):
                res[bs][kind].append(time_forward(base, timings[bs][kind]))
    ref = {kind: median(res[16][kind]) for kind in ("short", "long")}
    for bs in sizes:
        row = {"batch_size": bs}
        for kind in ("short", "long"):
            t = median(res[bs][kind])
            row[f"{kind}_s"] = round(t, 2)
            row[f"{kind}_vs_16"] = round(ref[kind] / t, 2)
        out["rows"].append(row)
    out["threads"] = thread_variants(base, timings[16]["short"], shape, rounds)
    log(f"{shape}: profile {out}")
    return out


def thread_variants(predictor, batches, shape, rounds):
    """The same forward batches: dygraph (as served) with 1 and all math threads,
    Paddle Inference (oneDNN) with 1 and all threads. Seconds, median of ``rounds``."""
    import os

    import paddle

    cores = len(os.sched_getaffinity(0))
    static = common.WORK / "taskflow" / shape / "static" / "inference"
    if not Path(f"{static}.pdmodel").exists():
        make_taskflow(common.model_dir(shape, **common.SHAPES[shape]), shape)
    inf = {n: inference_runner(static, mkldnn=True, threads=n) for n in (1, cores)}

    def dygraph(n):
        paddle.base.core.set_num_threads(n)
        try:
            return time_forward(predictor, batches)
        finally:
            paddle.base.core.set_num_threads(1)

    variants = {"dygraph_1_thread": lambda: dygraph(1),
                f"dygraph_{cores}_threads": lambda: dygraph(cores),
                "inference_1_thread": lambda: inf[1](batches),
                f"inference_{cores}_threads": lambda: inf[cores](batches)}
    for run in inf.values():
        run(batches[:2])
    times = {k: [] for k in variants}
    for _ in range(max(2, rounds)):
        for k, f in variants.items():
            times[k].append(f())
    ref = median(times["dygraph_1_thread"])
    return {k: {"seconds": round(median(v), 2), "speedup": round(ref / median(v), 2)} for k, v in times.items()}
