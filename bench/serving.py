"""Sections 1, 2, 4 and 7: prediction throughput, interactive latency, server memory, relations.

Per model shape, two gunicorn servers (WORKERS=1) run side by side: (b) with
the new defaults (Paddle Inference, every core, dynamic batching) and (b0)
with today's path (``INFERENCE_ENGINE=dygraph CPU_THREADS=1``). Both serve
the throughput requests and the latency requests and are then asked for
their peak memory. The Taskflow loop (a) and the forward pass alone (c) run
in this process, interleaved with (b) and (b0) round by round so that their
ratios come from the same moments of a shared machine. A second pair of
servers with WORKERS=2 gives the two-worker memory. Section 7 sends the same
texts with and without a ``<Relations>`` block to one server with the new
defaults, the two interleaved round by round.
"""

from __future__ import annotations

import contextlib
import functools
import os
import shutil
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import common
from common import LABEL_CONFIG, LABELS, Gunicorn, log, median, percentile, post

# Per shape: rounds of (a, b, b0, c), texts Taskflow is timed on, latency requests.
PLAN = {
    "nano": {"rounds": 3, "taskflow_texts": 24, "lat_1": 30, "lat_4": 40},
    "base": {"rounds": 1, "taskflow_texts": 6, "lat_1": 10, "lat_4": 16},
}
QUICK = {
    "nano": {"rounds": 1, "taskflow_texts": 8, "lat_1": 10, "lat_4": 12, "texts": 64},
    "base": {"rounds": 1, "taskflow_texts": 2, "lat_1": 4, "lat_4": 8, "texts": 16},
}

# The servers compared, as what their environment adds to UIE_MODEL (and BATCH_SIZE).
SERVERS = {
    "b": {},                                                     # the new defaults
    "b0": {"INFERENCE_ENGINE": "dygraph", "CPU_THREADS": "1"},   # today's path
}
NEW, TODAY = "b", "b0"
LONG_TEXT_CHARS = 1500
LATENCY_TEXT_CHARS = 100


def tasks_for(texts, start_id=1):
    return [{"id": start_id + i, "data": {"text": t}} for i, t in enumerate(texts)]


def spans_of_prediction(prediction):
    return {(r["value"]["labels"][0], r["value"]["start"], r["value"]["end"])
            for r in prediction["result"]}


def predict(server, texts, start_id=1, label_config=LABEL_CONFIG):
    """One ``POST /predict`` with a task per text (the tutorial's labels); its answer."""
    answer = post(server.url + "/predict", {"tasks": tasks_for(texts, start_id),
                                            "label_config": label_config, "project": "1"})
    assert len(answer["results"]) == len(texts), f"{len(answer['results'])} results for {len(texts)} tasks"
    return answer


# --------------------------------------------------------------------------
# timing

def cpu_clock(pid=None):
    """A function giving the CPU seconds (user + system) used so far by ``pid`` (default: this process)."""
    import psutil

    process = psutil.Process(pid)

    def clock():
        t = process.cpu_times()
        return t.user + t.system

    return clock


def measure(run, clock):
    """Wall and CPU seconds (by ``clock``) of ``run()``."""
    c0, t0 = clock(), time.perf_counter()
    run()
    return time.perf_counter() - t0, clock() - c0


def rate_ratio(seconds, texts, x, y):
    """Median over the rounds of texts/s of ``x`` over texts/s of ``y``, the two timed in one round."""
    return median([(texts[x] / tx) / (texts[y] / ty) for tx, ty in zip(seconds[x], seconds[y])])


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


def engine_predictor(model, engine="paddle-inference", threads=1, **kwargs):
    """A ``UIEPredictor`` (no batcher) of ``model`` whose forward pass is ``inference_engine``'s
    ``engine`` on ``threads`` math threads; an error if that engine does not load."""
    import uie.engine
    import uie.predictor

    forward = uie.engine.load_engine(model, engine, "cpu", threads)
    if forward.name != engine:
        raise RuntimeError(f"{model}: {engine} did not load ({forward.reason})")
    return uie.predictor.UIEPredictor.from_dir(model, engine=forward, **kwargs)


def forward_batches(predictor, texts):
    """Exactly the model inputs ``predictor.extract`` runs for these texts, in its batches
    (one request alone in the server's batcher runs the same batches)."""
    inputs, _ = predictor.build_inputs([(t, list(LABELS)) for t in texts])
    order = sorted(range(len(inputs)), key=lambda k: len(inputs[k][2].ids))
    bs = predictor.batch_size
    batches = [[inputs[k][2] for k in order[b: b + bs]] for b in range(0, len(order), bs)]
    n_tokens = sum(len(x.ids) for _, _, x in inputs)
    padded = sum(len(batch) * max(len(x.ids) for x in batch) for batch in batches)
    return batches, {"inputs": len(inputs), "tokens": n_tokens, "padded_tokens": padded,
                     "batches": len(batches)}


def time_forward(predictor, batches):
    """Seconds of ``predictor.forward`` (padding + its engine) over ``batches``."""
    t = time.perf_counter()
    for batch in batches:
        predictor.forward(batch)
    return time.perf_counter() - t


# --------------------------------------------------------------------------
# the servers

@contextlib.contextmanager
def started_servers(shape, env, workers=1):
    """The servers of ``SERVERS`` on ``env``, started together; stopped on exit."""
    servers = {name: Gunicorn(dict(env, WORKERS=str(workers), **extra),
                              common.WORK / "logs" / f"gunicorn-{shape}-{name}-w{workers}.log")
               for name, extra in SERVERS.items()}
    try:
        for name, server in servers.items():
            server.wait()
            log(f"{shape}: server {name} (WORKERS={workers}) ready in {server.ready_seconds:.1f}s")
        yield servers
    finally:
        for server in servers.values():
            server.stop()


def served_engine(server) -> dict:
    """How the server runs its model (``/health``): engine, math threads, fallback reason."""
    model = server.get("/health")["model"]
    return {k: model[k] for k in ("engine", "threads", "engine_fallback_reason") if k in model}


def describe_servers(servers) -> dict:
    """Each server's engine and threads, and the environment it was started with."""
    out = {}
    for name, server in servers.items():
        out[name] = dict(served_engine(server), env=SERVERS[name])
        if name == NEW and out[name].get("engine") != "paddle-inference":
            log(f"WARNING: server {name} runs {out[name]} instead of Paddle Inference")
    return out


# --------------------------------------------------------------------------
# one shape

def run_shape(shape, sections, quick=False, batch_size=None):
    """Throughput / latency / memory of one model shape, (b) beside (b0); their results."""
    import uie.engine

    plan = dict(PLAN[shape], **(QUICK[shape] if quick else {}))
    model = common.model_dir(shape, **common.SHAPES[shape])
    # as the server's start-up would: done here, so that no worker's peak memory includes it
    uie.engine.export_static(model)
    texts = common.bench_texts(plan.get("texts", 256))
    # every round predicts the same texts: without ANSWER_CACHE=0 the servers would answer all
    # rounds but the first from their answer cache (uie.answer_cache) and measure no model
    env = {"UIE_MODEL": str(model), "ANSWER_CACHE": "0"}
    if batch_size:
        env["BATCH_SIZE"] = str(batch_size)
    out = {}
    with started_servers(shape, env) as servers:
        idle = {name: server.memory() for name, server in servers.items()}
        engines = describe_servers(servers)
        log(f"{shape}: {engines}")
        for server in servers.values():
            predict(server, texts[:4])           # the first request pays one-time costs
        if "throughput" in sections:
            out["throughput"] = throughput(shape, model, texts, servers, env, plan)
        if "latency" in sections:
            out["latency"] = latency_section(servers, plan)
            log(f"{shape}: latency {out['latency']['results']}")
        if "memory" in sections:
            out["memory"] = memory_section(servers, texts, idle, short_done="throughput" in sections)
    if "memory" in sections:
        for name, reading in two_worker_memory(shape, env, texts).items():
            out["memory"]["by_server"][name]["workers_2"] = reading
        log(f"{shape}: memory {out['memory']['by_server']}")
    for result in out.values():
        result["engines"] = engines
    return out


# --------------------------------------------------------------------------
# 1. throughput

def throughput(shape, model, texts, servers, env, plan):
    """(a) Taskflow per text, (b) and (b0) one /predict, (c) the forward pass alone, round by round."""
    from settings import Settings

    settings = Settings.from_env(env)     # the new server's: (c) runs its engine and threads
    forward = engine_predictor(model, settings.inference_engine, settings.math_threads,
                               max_seq_len=settings.max_seq_len, batch_size=settings.batch_size,
                               threshold=settings.score_threshold)
    batches, stats = forward_batches(forward, texts)
    time_forward(forward, batches[:2])          # warm-up
    log(f"{shape}: {stats}")
    t = time.perf_counter()
    flow = make_taskflow(model, shape)
    taskflow_init = time.perf_counter() - t
    tf_texts = texts[: plan["taskflow_texts"]]
    flow(tf_texts[0])                              # warm-up

    own = cpu_clock()
    contenders = {                                 # name: (run, CPU clock of the process doing the work)
        "c": (lambda: time_forward(forward, batches), own),
        **{name: (lambda s=server: predict(s, texts), cpu_clock(server.workers()[0]))
           for name, server in servers.items()},
        "a": (lambda: [flow(text) for text in tf_texts], own),
    }
    n = {name: len(texts) for name in contenders}
    n["a"] = len(tf_texts)
    seconds = {name: [] for name in contenders}
    cpu = {name: [] for name in contenders}
    for r in range(plan["rounds"]):
        for name, (run, clock) in contenders.items():
            wall, cpu_s = measure(run, clock)
            seconds[name].append(wall)
            cpu[name].append(cpu_s)
        log(f"{shape}: round {r + 1}: " + ", ".join(f"{k} {v[-1]:.2f}s/{n[k]}" for k, v in seconds.items())
            + f" texts (load {os.getloadavg()[0]:.1f})")

    def ratios(timings, prefix=""):
        return {f"{prefix}b_over_b0": round(rate_ratio(timings, n, NEW, TODAY), 2),
                f"{prefix}b_over_a": round(rate_ratio(timings, n, NEW, "a"), 2),
                f"{prefix}b_s_over_c_s": round(rate_ratio(timings, n, "c", NEW), 3)}

    # where the time of (b) goes, from one in-process extract() on (c)'s engine (no HTTP, no batcher)
    queries = [(x, list(LABELS)) for x in texts]
    tokenise = measure(lambda: forward.build_inputs(queries), own)[0]
    extract = measure(lambda: forward.extract(queries), own)[0]
    del flow, forward
    return {
        "texts": len(texts), "labels": len(LABELS), "taskflow_texts": len(tf_texts),
        "rounds": plan["rounds"],
        "forward": {"engine": settings.inference_engine, "threads": settings.math_threads},
        "seconds": {k: [round(x, 3) for x in v] for k, v in seconds.items()},
        "cpu_seconds": {k: [round(x, 3) for x in v] for k, v in cpu.items()},
        "texts_per_s": {k: round(n[k] / median(v), 3) for k, v in seconds.items()},
        **ratios(seconds), **ratios(cpu, "cpu_"),
        "batch_size": settings.batch_size, "max_seq_len": settings.max_seq_len,
        "forward_inputs": stats, "taskflow_init_s": round(taskflow_init, 1),
        "in_process_extract_s": round(extract, 3), "tokenise_s": round(tokenise, 4),
    }


# --------------------------------------------------------------------------
# 2. latency

def latency(url, texts, clients, n_requests):
    """p50/p95/mean (ms) of one-task /predicts of the first ``n_requests`` texts, ``clients`` sending at once."""
    times = latency_times(url, texts[:n_requests], clients)
    return {"clients": clients, "requests": len(times),
            "p50_ms": round(percentile(times, 50) * 1000, 1),
            "p95_ms": round(percentile(times, 95) * 1000, 1),
            "mean_ms": round(sum(times) / len(times) * 1000, 1)}


def latency_times(url, texts, clients):
    """Seconds of each one-task /predict, one per text, ``clients`` sending at once."""
    times, lock = [], threading.Lock()
    queue = list(enumerate(texts))

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
    return times


def latency_section(servers, plan):
    """1 and then 4 clients, each on every server in turn (the same texts)."""
    texts = common.texts_of_length(plan["lat_1"] + plan["lat_4"] + 2, LATENCY_TEXT_CHARS)
    warm_up, texts = texts[:2], texts[2:]
    for server in servers.values():
        for text in warm_up:                  # at this length
            predict(server, [text])
    runs = ((1, texts[: plan["lat_1"]]), (4, texts[plan["lat_1"]:]))
    rows = [dict(server=name, **latency(server.url, chunk, clients, len(chunk)))
            for clients, chunk in runs for name, server in servers.items()]
    return {"text_chars": LATENCY_TEXT_CHARS, "labels": len(LABELS), "results": rows}


# --------------------------------------------------------------------------
# 4. memory

def memory_section(servers, texts, idle, short_done):
    """Each server's memory idle, after the short texts and after one long text (WORKERS=1)."""
    long_text = "".join(common.texts_of_length(1, LONG_TEXT_CHARS, offset=3000))
    by_server = {}
    for name, server in servers.items():
        if not short_done:                    # the same load as the throughput request
            predict(server, texts)
        after_short = server.memory()
        t = time.perf_counter()
        predict(server, [long_text])
        by_server[name] = {"workers_1": {"idle": idle[name], "after_short_texts": after_short,
                                         "after_long_text": server.memory(),
                                         "long_text_seconds": round(time.perf_counter() - t, 2)}}
    return {"short_texts": len(texts), "long_text_chars": len(long_text), "by_server": by_server}


def two_worker_memory(shape, env, texts):
    """Peak memory of each server with WORKERS=2, after each worker served requests."""
    with started_servers(shape, env, workers=2) as servers:
        return {name: fill_workers(server, texts[:8]) for name, server in servers.items()}


def fill_workers(server, texts):
    """Idle memory, then memory after waves of concurrent requests reached every worker."""
    import psutil

    idle = server.memory()
    workers = [psutil.Process(pid) for pid in server.workers()]
    start_cpu = [w.cpu_times().user for w in workers]
    waves, busy = 0, []
    # the kernel hands connections to whichever worker accepts first: send waves of
    # concurrent requests until every worker has served some
    while waves < 8:
        waves += 1
        with ThreadPoolExecutor(4) as pool:
            list(pool.map(lambda _: predict(server, texts), range(4)))
        busy = [w.cpu_times().user - c > 0.2 for w, c in zip(workers, start_cpu)]
        if all(busy):
            break
    after = server.memory()
    after["waves_of_4_requests"] = waves
    after["every_worker_served"] = all(busy)
    return {"idle": idle, "after_requests": after}


# --------------------------------------------------------------------------
# 7. relations: the cost of a <Relations> block

# texts and rounds of (entities alone, with relations)
RELATIONS_PLAN = {"texts": 256, "rounds": 3}
RELATIONS_QUICK = {"texts": 64, "rounds": 1}
RELATION_CONFIGS = {"entities": LABEL_CONFIG, "relations": common.RELATION_CONFIG}


def prompts_asked(texts, answer, label_config, schema_lang) -> dict:
    """Per text, what the server asked for ``answer``: its entity prompts (every ``<Labels>``
    control's) and its relation prompts (``relations.build_query`` on the regions it
    predicted, as ``relation_round`` asks them); and the regions and relations it returned."""
    from label_config import parse_label_config, parse_relations
    from relations import build_query

    entity_prompts = sum(len(c.prompts) for c in parse_label_config(label_config))
    relation_labels = parse_relations(label_config)
    relation_prompts, regions, relations = [], [], []
    for text, prediction in zip(texts, answer["results"]):
        found = [r for r in prediction["result"] if r["type"] == "labels"]
        regions.append(len(found))
        relations.append(len(prediction["result"]) - len(found))
        relation_prompts.append(len(build_query(text, found, relation_labels, schema_lang).prompts)
                                if relation_labels else 0)
    n = len(texts)
    return {"entity_prompts_per_text": entity_prompts,
            "relation_prompts_per_text": round(sum(relation_prompts) / n, 2),
            "texts_with_relation_prompts": sum(1 for k in relation_prompts if k),
            "regions_per_text": round(sum(regions) / n, 2),
            "relations_per_text": round(sum(relations) / n, 2)}


def relations(model, quick=False):
    """``/predict`` of the same texts with the tutorial's labels alone and with three relations
    (``common.RELATION_CONFIG``), interleaved round by round on one server with the new defaults
    (server (b)); texts/s of each, the ratio, and the prompts each asked per text."""
    import uie.engine
    from settings import Settings

    plan = RELATIONS_QUICK if quick else RELATIONS_PLAN
    uie.engine.export_static(model)        # as in section 1: not in the worker's time
    texts = common.bench_texts(plan["texts"])
    env = dict(SERVERS[NEW], UIE_MODEL=str(model), ANSWER_CACHE="0")   # the same texts every round
    schema_lang = Settings.from_env(env).schema_lang
    seconds = {name: [] for name in RELATION_CONFIGS}
    cpu = {name: [] for name in RELATION_CONFIGS}
    answers = {}
    with Gunicorn(env, common.WORK / "logs" / "gunicorn-relations.log") as server:
        engine = served_engine(server)
        clock = cpu_clock(server.workers()[0])
        for config in RELATION_CONFIGS.values():   # one untimed pass: the relation round's first
            predict(server, texts, label_config=config)   # inputs pay one-time costs too

        def run(name):
            answers[name] = predict(server, texts, label_config=RELATION_CONFIGS[name])

        for r in range(plan["rounds"]):
            for name in RELATION_CONFIGS:
                wall, cpu_s = measure(functools.partial(run, name), clock)
                seconds[name].append(wall)
                cpu[name].append(cpu_s)
            log(f"relations: round {r + 1}: " + ", ".join(f"{k} {v[-1]:.2f}s" for k, v in seconds.items())
                + f" for {len(texts)} texts (load {os.getloadavg()[0]:.1f})")
    n = {name: len(texts) for name in RELATION_CONFIGS}
    asked = {name: prompts_asked(texts, answers[name], config, schema_lang)
             for name, config in RELATION_CONFIGS.items()}
    if not asked["relations"]["relation_prompts_per_text"]:
        log("WARNING: relations: the model found no subject region, no relation prompt was asked")
    out = {"model": str(model), "engine": engine, "texts": len(texts), "rounds": plan["rounds"],
           "schema_lang": schema_lang, "relations": [list(r) for r in common.RELATIONS],
           "seconds": {k: [round(x, 3) for x in v] for k, v in seconds.items()},
           "cpu_seconds": {k: [round(x, 3) for x in v] for k, v in cpu.items()},
           "texts_per_s": {k: round(n[k] / median(v), 2) for k, v in seconds.items()},
           "relations_over_entities": round(rate_ratio(seconds, n, "relations", "entities"), 3),
           "cpu_relations_over_entities": round(rate_ratio(cpu, n, "relations", "entities"), 3),
           "prompts": asked}
    log(f"relations: {out['texts_per_s']}, ratio {out['relations_over_entities']}, prompts {asked}")
    return out


# --------------------------------------------------------------------------
# the same spans as Taskflow, for a trained model

def agreement(model_dir, labels, label_config, n_texts=256, thresholds=(0.5, 0.2)):
    """Span sets of Taskflow and of ``/predict`` (server (b): the new defaults) for the same
    trained model and texts.

    At Taskflow's default threshold (0.5) and a lower one (more spans, a stricter test).
    """
    texts = common.bench_texts(n_texts)
    out = {"model": str(model_dir), "labels": list(labels), "texts": len(texts), "by_threshold": []}
    for threshold in thresholds:
        flow = make_taskflow(Path(model_dir), "trained", schema=labels, position_prob=threshold)
        t = time.perf_counter()
        theirs = [taskflow_spans(flow(text)) for text in texts]
        tf_seconds = time.perf_counter() - t
        env = dict(SERVERS[NEW], UIE_MODEL=str(model_dir), SCORE_THRESHOLD=str(threshold))
        with Gunicorn(env, common.WORK / "logs" / "gunicorn-trained.log") as server:
            out["engine"] = served_engine(server)
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
# profile: batch size, engines and threads, the forward pass alone (c)

def profile(shape, quick=False):
    """Forward-pass seconds of (c) (the served engine and threads) for several BATCH_SIZE
    values, short texts and a long one; then the engines and threads compared."""
    import uie.engine
    import uie.predictor
    from settings import Settings

    model_path = common.model_dir(shape, **common.SHAPES[shape])
    uie.engine.export_static(model_path)
    settings = Settings.from_env({})
    base = engine_predictor(model_path, settings.inference_engine, settings.math_threads, max_seq_len=512)
    n_short = {"nano": 256, "base": 32}[shape] // (4 if quick else 1)
    short = common.bench_texts(n_short)
    long_text = "".join(common.texts_of_length(1, LONG_TEXT_CHARS, offset=3000))
    sizes = (4, 8, 16, 32, 64)
    out = {"short_texts": n_short, "long_text_chars": len(long_text), "rows": [],
           "engine": settings.inference_engine, "math_threads": settings.math_threads}
    rounds = 1 if quick or shape == "base" else 2
    timings = {}
    for bs in sizes:
        p = uie.predictor.UIEPredictor(base.engine, base.tokenizer, max_seq_len=512, batch_size=bs)
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
    out["threads"] = engine_variants(model_path, timings[16]["short"], rounds)
    log(f"{shape}: profile {out}")
    return out


def engine_variants(model, batches, rounds):
    """The same forward batches on ``inference_engine``'s engines: dygraph (today's server)
    and Paddle Inference (oneDNN), each with 1 and with all math threads. Seconds, median of
    ``rounds`` (at least 2), and the speed-up over dygraph on one thread."""
    cores = len(os.sched_getaffinity(0))
    kinds = {"dygraph": "dygraph", "inference": "paddle-inference"}
    predictors = {f"{label}_{n}_thread{'s' if n > 1 else ''}": engine_predictor(model, kind, n, max_seq_len=512)
                  for label, kind in kinds.items() for n in dict.fromkeys((1, cores))}
    for predictor in predictors.values():
        time_forward(predictor, batches[:2])     # warm-up
    times = {k: [] for k in predictors}
    for _ in range(max(2, rounds)):
        for k, predictor in predictors.items():
            times[k].append(time_forward(predictor, batches))
    ref = median(times["dygraph_1_thread"])
    return {k: {"seconds": round(median(v), 2), "speedup": round(ref / median(v), 2)} for k, v in times.items()}
