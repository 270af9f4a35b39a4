"""One training job, in one process: annotations -> UIE examples -> finetune -> evaluate.

    python train_job.py JOB_DIR

``JOB_DIR/spec.json`` (written by ``jobs.JobRunner``) says what to train:
the label config, the annotated tasks, the served model and the training
settings. The job builds UIE examples from the tasks (``training_examples``:
``convert``, then ``doccano``, with the annotators' corrections), fine-tunes
(``finetune``), scores the new model and the served one on the same annotations
(``evaluate``) and writes ``JOB_DIR/result.json`` (with both models' scores per
Label Studio label and relation: ``training_examples.PromptLabels``); the caller
promotes the candidate. Meanwhile it
writes its phase, step, best dev F1 and ETA to ``JOB_DIR/progress.json``
(``Progress``), which ``GET /jobs`` and ``/metrics`` report. Everything runs
as function calls in this one process: nothing that comes from Label Studio
(labels, prompts, texts, project ids) is ever a command-line argument.
"""

from __future__ import annotations

import hashlib
import json
import logging
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import files
from convert import write_jsonl
from label_config import parse_choices
from training_examples import (Examples, ExamplesError, add_corrections, add_teacher_examples, build_examples,
                               label_of_prompt, parsed, trained_labels)

log = logging.getLogger("train_job")
SPEC, RESULT, PROGRESS = "spec.json", "result.json", "progress.json"


class JobError(RuntimeError):
    """A training step failed; the message is shown in the job state."""


@dataclass
class JobSpec:
    """What one job trains, from what, and how."""

    project: str
    label_config: str
    tasks: list
    source: str                    # where the tasks came from: webhooks, train request, ...
    model_path: str                # the model served now: training starts from it
    model_version: str
    device: str = "cpu"
    batch_size: int = 16
    max_seq_len: int = 128
    learning_rate: float | None = None
    num_epochs: int | None = None
    min_dev_tasks: int = 50
    inference_engine: str = "paddle-inference"   # what the server will run the new model on
    inference_precision: str = "auto"            # INFERENCE_PRECISION: auto | fp32 | int8 (CPU)
    devices: str = ""                            # TRAIN_DEVICES: "" one process; "0,1" / "cpu:2" data-parallel
    threads: int | None = None                   # math threads (None: as the process has them)
    schema_lang: str | None = None               # relation prompts (None: SCHEMA_LANG of the environment)
    # suggested regions the annotations deleted or relabelled (service.corrections.find_corrections)
    corrections: list = field(default_factory=list)
    # a teacher's unannotated texts (``teach``), beside the unannotated tasks of ``tasks``: with
    # LABEL_STUDIO_URL those of the project's tasks unannotated there, then the texts /predict
    # answered for the project (service.jobs.JobRunner._texts); none for a job without a teacher
    texts: list = field(default_factory=list)

    def write(self, job_dir: Path):
        files.atomic_write_json(Path(job_dir) / SPEC, asdict(self), ensure_ascii=True)

    @classmethod
    def read(cls, job_dir: Path) -> "JobSpec":
        return cls(**json.loads((Path(job_dir) / SPEC).read_text(encoding="utf-8")))


def schema_lang_of(spec: JobSpec) -> str:
    """The spec's ``schema_lang``; a spec without one was written by a server that did
    not say, whose environment (``SCHEMA_LANG``) this process inherited."""
    if spec.schema_lang:
        return spec.schema_lang
    from settings import Settings

    return Settings.from_env().schema_lang


def _score(model_path, examples, spec: JobSpec, progress=None, precision="fp32", engine=None) -> dict:
    """Span P/R/F1 of the model in ``model_path``, loaded afresh from its files on the
    engine the server runs it with (so the new model's export is checked too), overall
    and per Label Studio label and relation (``"by_label"``, ``label_of_prompt``);
    ``progress(done, total)`` as examples are scored. ``precision`` is the served
    precision to score (``uie.engine.load_engine``); ``engine`` one already loaded."""
    import uie.engine
    import uie.predictor
    from evaluate import evaluate_examples

    engine = engine or uie.engine.load_engine(model_path, spec.inference_engine, spec.device, spec.threads,
                                              precision=precision)
    predictor = uie.predictor.UIEPredictor.from_dir(model_path, device=spec.device, engine=engine,
                                                max_seq_len=spec.max_seq_len)
    return evaluate_examples(predictor, examples, progress=progress,
                             label_of=label_of_prompt(spec.label_config, schema_lang_of(spec)))


def _export(candidate: Path, spec: JobSpec):
    """The static model the server will load, made here and not in a request."""
    import uie.engine

    if spec.inference_engine != "paddle-inference":
        return
    try:
        uie.engine.export_static(candidate)
    except uie.engine.ExportError as exc:
        log.warning("%s; the new model will be served with dygraph", exc)


def _int8_wanted(spec: JobSpec) -> str | None:
    """Why the server could never serve this job's model in INT8 (None: it may)."""
    if spec.inference_precision == "fp32":
        return "INFERENCE_PRECISION=fp32"
    if spec.device == "gpu":
        return "INT8 runs on the CPU only; DEVICE=gpu serves FP32"
    if spec.inference_engine != "paddle-inference":
        return "INT8 needs INFERENCE_ENGINE=paddle-inference"
    return None


def _export_int8(candidate: Path, spec: JobSpec) -> str | None:
    """The candidate's INT8 model (``uie.engine.export_int8``), made with its static export;
    why there is none (None: made)."""
    why_not = _int8_wanted(spec)
    if why_not:
        return why_not
    import uie.engine

    try:
        uie.engine.export_int8(candidate)
    except uie.engine.ExportError as exc:
        log.warning("%s; the new model will be served in FP32", exc)
        return f"no INT8 model: {exc}"
    return None


def _check_int8(candidate: Path, dev: list, spec: JobSpec, fp32: dict, why_not: str | None = None) -> dict:
    """Score the candidate's INT8 model on the same dev examples as FP32 (``fp32``, its
    ``_score``): ``{"f1", "fp32_f1", "served", "reason", "onnx_sha256"}``. ``served``: INT8
    loses at most ``uie.int8.F1_BUDGET`` F1, which lets ``INFERENCE_PRECISION=auto`` serve it;
    ``why_not``: why there is no INT8 model to score (``_export_int8``). For a scratch model
    the span tagger (FP32) answers its labels in both precisions: INT8 concerns the UIE
    encoder only. Scored inside the ``evaluating`` phase, after its steps."""
    record = {"f1": None, "fp32_f1": fp32["f1"], "served": False, "reason": None, "onnx_sha256": None}
    why_not = why_not or _int8_wanted(spec)
    if why_not:
        return dict(record, reason=why_not)
    import uie.engine
    import uie.int8

    try:
        engine = uie.engine.OnnxInt8Engine(candidate, spec.threads)
    except Exception as exc:   # noqa: BLE001  (no INT8 is no reason to fail the job)
        why = str(exc) if isinstance(exc, uie.engine.ExportError) else f"{type(exc).__name__}: {exc}"
        log.warning("INT8: %s; the new model will be served in FP32", why)
        return dict(record, reason=f"the INT8 model does not load: {why}")
    scored = _score(candidate, dev, spec, engine=engine)
    served, reason = uie.int8.judge(scored["f1"], fp32["f1"])
    log.info("INT8: %s; %s", reason, "INT8 may be served" if served else "served in FP32")
    return dict(record, f1=scored["f1"], served=served, reason=reason,
                onnx_sha256=(uie.engine.int8_stamp(candidate) or {}).get(uie.int8.ONNX_FILE))


def should_promote(new_f1: float, old_f1: float) -> bool:
    """The new model is served if it scores at least as well as the served one, but a tie
    at 0 (neither finds anything) is no reason to switch: it must then score above 0."""
    return new_f1 > old_f1 or (new_f1 == old_f1 and new_f1 > 0)


def train(spec: JobSpec, work: Path, progress: "Progress | None" = None) -> dict:
    """Run the job in ``work``; returns what ``result.json`` holds, the phases reported to
    ``progress`` (``Progress``).

    ``candidate`` is the trained checkpoint; ``promote`` says whether it scored
    at least as well as the served model on the same annotations (held-out ones
    when there are enough, else the training ones; never those the served version was
    refitted on: ``fair_dev``), and above 0 (``should_promote``);
    ``per_label`` and ``previous_per_label`` are the two models' scores per Label Studio
    label and relation on them (``{"labels": {label: P/R/F1}, "relations": {...}}``);
    ``refit``: a small scratch project's promoted candidate is trained again on all its
    texts, held-out ones included (``refits``, ``_refit``), and that model is the candidate;
    ``int8`` the INT8 check (``_export_int8`` with the static export, ``_check_int8`` after
    the FP32 scores): whether ``INFERENCE_PRECISION=auto`` may serve the candidate in INT8.
    """
    work = Path(work)
    work.mkdir(parents=True, exist_ok=True)
    progress = progress or Progress(None)
    log.info("%d tasks from %s", len(spec.tasks), spec.source)
    progress.phase("converting")
    examples = build_examples(spec.tasks, spec.label_config, spec.min_dev_tasks, schema_lang_of(spec),
                              augment=_is_scratch(spec.model_path))
    add_corrections(examples, spec.corrections, spec.tasks, spec.label_config, schema_lang_of(spec))
    teacher = teach(spec, examples)
    _write_examples(examples, work / "data")
    progress.phase("training")
    trained = _finetune(spec, examples, work / "ckpt", progress.step)
    candidate = work / "ckpt" / "model_best"
    progress.phase("exporting")
    _export(candidate, spec)
    dev = fair_dev(examples.dev, spec.model_path)
    new, old = _score_both(candidate, dev, spec, progress)
    log.info("f1 %.4f (served model %s: %.4f)", new["f1"], spec.model_version, old["f1"])
    promote = should_promote(new["f1"], old["f1"])
    refit = None
    if promote and refits(spec, examples):
        candidate, trained, refit = _refit(spec, examples, work, progress, trained)
    no_int8 = _export_int8(candidate, spec)
    fp32 = new if refit is None else _score(candidate, dev, spec)
    int8 = _check_int8(candidate, dev, spec, fp32, no_int8)
    _log_labels(new["by_label"], old["by_label"])
    return {"candidate": str(candidate), "promote": promote, "refit": refit,
            "metrics": new, "previous_metrics": old, "held_out": examples.held_out,
            "per_label": new.pop("by_label"), "previous_per_label": old.pop("by_label"),
            "annotated_tasks": examples.records, "source": spec.source,
            "train_seconds": trained.get("train_seconds"), "epochs_run": trained.get("epochs_run"),
            "kind": trained.get("kind"), "int8": int8, "teacher": teacher,
            "trained_labels": trained_labels(examples.train, spec.label_config, schema_lang_of(spec))}


# A scratch project with fewer annotated tasks than this trains its promoted candidate again
# on all of them: holding out 20 % of 50 tasks costs more than the 10 texts tell. On CLUENER's
# selection split it took the server's jobs from 0.138 to 0.204 F1 after 50 tasks and from
# 0.361 to 0.401 after 200 (bench/notes.md). From here on a job holds out as before: the
# refit doubles its training time and adds less the more texts there are.
REFIT_BELOW = 500


def refits(spec: JobSpec, examples: Examples) -> bool:
    """Whether a promoted candidate is trained again on every text (``REFIT_BELOW``): a
    scratch model's job with held-out texts."""
    return examples.held_out and examples.records < REFIT_BELOW and _is_scratch(spec.model_path)


# A scratch project with fewer annotated tasks than this also learns from LAC's names on its
# unannotated tasks (``training_examples.add_teacher_examples``, ``uie.teacher``): on CLUENER's
# selection split +8 F1 points after 50 tasks, +4.5 after 100, +2.2 after 150, +0.5 after 200
# (bench/notes.md), while it adds 1.5-2.5 minutes to a job.
TEACHER_BELOW = 200


def teaches(annotated_tasks: int, model_path) -> bool:
    """Whether a job with ``annotated_tasks`` on the model at ``model_path`` learns LAC's
    names (``teach``): a scratch model's, below ``TEACHER_BELOW``."""
    return annotated_tasks < TEACHER_BELOW and _is_scratch(model_path)


def teach(spec: JobSpec, examples: Examples) -> dict | None:
    """Add LAC's names on the job's unannotated texts (its tasks without an annotation and the
    texts ``/predict`` answered for the project, ``spec.texts``) to ``examples``: a scratch
    model's job with fewer than ``TEACHER_BELOW`` annotated tasks. Returns the record
    (``result.json``'s ``teacher``), None when the job has no teacher."""
    if not teaches(examples.records, spec.model_path):
        return None
    import uie.lac

    lac = uie.lac.tagger(spec.threads or 1)
    if lac is None:
        return {"texts": 0, "examples": 0, "mapped": {}, "reason": "LAC is not installed"}
    try:
        record = add_teacher_examples(examples, spec.tasks, spec.label_config, lac, spec.texts)
    except Exception as exc:   # noqa: BLE001  (a teacher is worth less than the job; examples untouched)
        log.warning("LAC's names are not trained: %s: %s", type(exc).__name__, exc)
        return {"texts": 0, "examples": 0, "mapped": {}, "reason": f"LAC failed: {type(exc).__name__}: {exc}"}
    log.info("LAC's names on %d unannotated texts: %d training examples (%s)", record["texts"],
             record["examples"], ", ".join(f"{k} -> {v}" for k, v in record["mapped"].items()) or "no type kept")
    return record


def _refit(spec: JobSpec, examples: Examples, work: Path, progress: "Progress",
           first: dict) -> tuple[Path, dict, dict]:
    """``(candidate, finetune's result, refit record)``: the job's recipe again on all its
    texts, held-out ones too (augmented and corrected like the others), its checkpoint chosen
    on them, exported; ``train_seconds`` those of both trainings (``first``: the first's
    result). The job's scores stay those of the model trained without the held-out
    texts; the record lists those texts (``text_key``) so that the next job does not score
    this version on texts it trained on (``fair_dev``)."""
    everything = build_examples(spec.tasks, spec.label_config, min_dev_tasks=sys.maxsize,
                                schema_lang=schema_lang_of(spec), augment=True)
    add_corrections(everything, spec.corrections, spec.tasks, spec.label_config, schema_lang_of(spec))
    teach(spec, everything)
    log.info("refit on all %d annotated tasks (%d training examples)", everything.records, len(everything.train))
    progress.phase("training")
    trained = _finetune(spec, everything, work / "refit", progress.step)
    candidate = work / "refit" / "model_best"
    progress.phase("exporting")
    _export(candidate, spec)
    held_out = sorted({text_key(ex["content"]) for ex in examples.dev})
    seconds = (first.get("train_seconds") or 0) + (trained.get("train_seconds") or 0)
    return candidate, dict(trained, train_seconds=seconds), {
        "tasks": everything.records, "epochs_run": trained.get("epochs_run"), "held_out_texts": held_out}


def text_key(text: str) -> str:
    """A text's short name in a version's record (the first 16 hex digits of its sha256)."""
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:16]


def fair_dev(dev: list, model_path) -> list:
    """The dev examples whose texts the served version (``model_path``) did not train on: all
    of them, but for a refitted version (its ``meta.json``'s ``refit.held_out_texts``); all of
    them too when none is left (the comparison then favours the served version)."""
    try:
        meta = json.loads((Path(model_path) / "meta.json").read_text(encoding="utf-8"))
        seen = set((meta.get("refit") or {}).get("held_out_texts") or ())
    except (OSError, ValueError, AttributeError):
        return dev
    fair = [ex for ex in dev if text_key(ex["content"]) not in seen]
    if seen:
        log.info("%d of %d dev examples are on texts the served version was not refitted on", len(fair), len(dev))
    return fair or dev


def _is_scratch(model_path) -> bool:
    import uie.checkpoint

    return uie.checkpoint.is_scratch_model(model_path)


def _score_both(candidate: Path, dev: list, spec: JobSpec, progress: "Progress") -> tuple[dict, dict]:
    """``(new, old)``: ``_score`` of the candidate and of the served model on the same dev
    examples, reported as one ``evaluating`` phase of ``2 x len(dev)`` steps."""
    progress.phase("evaluating", total=2 * len(dev))
    new = _score(candidate, dev, spec, lambda done, total: progress.step(done, 2 * total))
    old = _score(spec.model_path, dev, spec, lambda done, total: progress.step(total + done, 2 * total))
    return new, old


def _log_labels(new: dict, old: dict):
    """One log line per label and relation: its F1, and the served model's."""
    for kind, names in new.items():
        for name, m in names.items():
            was = old.get(kind, {}).get(name, {}).get("f1", 0.0)
            log.info("%s %s: f1 %.4f (served model: %.4f; gold %d)", kind[:-1], name, m["f1"], was, m["gold"])


class Progress:
    """``JOB_DIR/progress.json``: the job's phase, its step of the total, the best dev F1 so
    far and the estimated seconds left in the phase (from the elapsed time per step).

    A new phase is written at once, steps at most once per ``interval`` seconds (and the
    last one); each write is atomic (``files.atomic_write_json``). ``Progress(None)``
    writes nothing. ``service.job_records`` merges it into the running job's record.
    """

    def __init__(self, job_dir, interval: float = 1.0):
        self.path = Path(job_dir) / PROGRESS if job_dir else None
        self.interval, self.written, self.state = interval, 0.0, {}

    def phase(self, name: str, total: int | None = None):
        self.state = {"phase": name, "step": 0, "total": total,
                      "best_dev_f1": self.state.get("best_dev_f1"), "phase_started": time.time()}
        self._write()

    def step(self, step: int, total: int | None = None, best_f1: float | None = None):
        self.state.update(step=step, total=total or self.state.get("total"))
        if best_f1 is not None:
            self.state["best_dev_f1"] = round(best_f1, 5)
        if time.time() - self.written >= self.interval or step == self.state["total"]:
            self._write()

    def _write(self):
        if self.path is None:
            return
        now = time.time()
        state = dict(self.state, updated=now, eta_seconds=eta_seconds(
            self.state.get("step"), self.state.get("total"), now - self.state.get("phase_started", now)))
        try:
            files.atomic_write_json(self.path, state)
        except OSError as exc:     # progress is never worth failing a job for
            log.warning("cannot write %s: %s", self.path, exc)
        self.written = now


def eta_seconds(step, total, elapsed: float) -> float | None:
    """Seconds left for ``total - step`` more steps at the pace so far (None before a step)."""
    if not step or not total:
        return None
    return round(elapsed / step * max(0, total - step), 1)


def write_progress(job_dir, phase: str):
    """Write a phase the server runs (``gathering``, ``promoting``) to the job's ``progress.json``
    (the best dev F1 of training kept)."""
    progress = Progress(job_dir)
    progress.state = read_progress(job_dir) or {}
    progress.phase(phase)


def read_progress(job_dir) -> dict | None:
    """The job's ``progress.json`` as written, or None (none yet, or unreadable)."""
    try:
        return files.read_json_object(Path(job_dir) / PROGRESS)
    except ValueError:
        return None


def _write_examples(examples: Examples, data: Path):
    """``data/train.txt`` and ``data/dev.txt``: what the job trains and scores on."""
    data.mkdir(exist_ok=True)
    write_jsonl(examples.train, data / "train.txt")
    write_jsonl(examples.dev, data / "dev.txt")
    log.info("%d annotated tasks -> %d training examples, %d %s examples", examples.records,
             len(examples.train), len(examples.dev), "held-out" if examples.held_out else "scoring")


def _finetune(spec: JobSpec, examples: Examples, save_dir: Path, progress=None) -> dict:
    """``finetune.finetune`` with the spec's settings; evaluated only after each epoch;
    ``progress(step, total_steps, best dev F1)`` (not with ``devices``: other processes train)."""
    import finetune

    return finetune.finetune(
        examples.train, examples.dev, spec.model_path, save_dir,
        learning_rate=spec.learning_rate, num_epochs=spec.num_epochs,
        batch_size=spec.batch_size, max_seq_len=spec.max_seq_len, device=spec.device,
        logging_steps=20, valid_steps=0, devices=spec.devices or None, progress=progress,
        multiple_choice=[c.prompt for c in parsed(parse_choices, spec.label_config) if c.multiple])


def run(job_dir) -> int:
    """Read ``spec.json``, train, write ``result.json`` (or ``{"error"}``); exit status."""
    import uie.engine

    job_dir = Path(job_dir)
    started = time.time()
    try:
        spec = JobSpec.read(job_dir)
        if spec.threads:
            uie.engine.set_math_threads(spec.threads)
        else:
            uie.engine.use_all_cores()
        result = train(spec, job_dir / "work", Progress(job_dir))
        status = 0
    except (JobError, ExamplesError) as exc:
        result, status = {"error": str(exc)}, 1
    except Exception as exc:   # noqa: BLE001  (reported in the job state, with the log)
        log.exception("training failed")
        result, status = {"error": f"{type(exc).__name__}: {exc}"}, 1
    result["seconds"] = round(time.time() - started, 1)
    files.atomic_write_json(job_dir / RESULT, result, ensure_ascii=False)
    return status


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) != 1 or not (Path(argv[0]) / SPEC).is_file():
        print("usage: python train_job.py JOB_DIR  (a directory holding spec.json)", file=sys.stderr)
        return 2
    logging.basicConfig(level=logging.INFO, format="[%(asctime)s] %(levelname)s %(name)s: %(message)s",
                        force=True)
    return run(argv[0])


if __name__ == "__main__":
    sys.exit(main())
