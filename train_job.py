"""One training job, in one process: annotations -> UIE examples -> finetune -> evaluate.

    python train_job.py JOB_DIR

``JOB_DIR/spec.json`` (written by ``jobs.JobRunner``) says what to train:
the label config, the annotated tasks, the served model and the training
settings. The job converts the tasks (``convert``), builds UIE examples
(``doccano``), fine-tunes (``finetune``), scores the new model and the
served one on the same annotations (``evaluate``) and writes
``JOB_DIR/result.json``; the caller promotes the candidate. Everything runs
as function calls in this one process: nothing that comes from Label Studio
(labels, prompts, texts, project ids) is ever a command-line argument.
"""

from __future__ import annotations

import json
import logging
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import files
from convert import expand_prompts, expand_relation_types, label_studio_to_doccano, write_jsonl
from label_config import LabelConfigError, parse_label_config, parse_relations

log = logging.getLogger("train_job")
SPEC, RESULT = "spec.json", "result.json"
# Relation negatives beyond those the server asks, per relation prompt of a task, sampled
# as PaddleNLP samples them (its default negative_ratio). All of them (-1) would be every
# entity text of every annotated task asked on every other task: quadratic in the tasks.
RELATION_NEGATIVE_RATIO = 5


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
    devices: str = ""                            # TRAIN_DEVICES: "" one process; "0,1" / "cpu:2" data-parallel
    threads: int | None = None                   # math threads (None: as the process has them)
    schema_lang: str | None = None               # relation prompts (None: SCHEMA_LANG of the environment)

    def write(self, job_dir: Path):
        files.atomic_write_json(Path(job_dir) / SPEC, asdict(self), ensure_ascii=True)

    @classmethod
    def read(cls, job_dir: Path) -> "JobSpec":
        return cls(**json.loads((Path(job_dir) / SPEC).read_text(encoding="utf-8")))


@dataclass
class Examples:
    """The UIE examples a job trains and scores on."""

    train: list
    dev: list
    records: int        # annotated tasks that became doccano records
    held_out: bool      # dev is held out (else it is the training set)


def build_examples(tasks, label_config: str, min_dev_tasks: int, schema_lang: str = "ch") -> Examples:
    """Label Studio tasks -> UIE examples for every (task, label) pair of the config.

    Labels nobody annotated yet are negatives too (``/predict`` asks every label
    of every task), and a label with ``predicted_values`` is trained on the words
    the server prompts with. Relations become PaddleNLP's relation examples
    (``<subject>的<relation>`` with ``schema_lang="ch"``, ``<relation> of <subject>``
    with ``"en"``) and their negatives (PaddleNLP's, ``RELATION_NEGATIVE_RATIO``
    per relation prompt, inverse ones first), plus, as for labels, every relation
    prompt the server would ask of an annotated task that it does not annotate;
    all built from the words of a relation's ``predicted_values`` when it has
    them. With ``min_dev_tasks`` annotated tasks or more, 20 % are held out.
    """
    same_text, relations = _read_label_config(label_config)
    records = _doccano_records(tasks, same_text, relations)
    held_out = len(records) >= min_dev_tasks
    train, dev = _convert_records(records, same_text, relations, held_out, schema_lang)
    train, dev = _expand_label_prompts(train, dev, same_text)
    return Examples(train, dev if held_out else train, len(records), held_out)


def _read_label_config(label_config: str):
    """``(controls, relations)`` of the label config: the controls that label the first
    one's text (it first) and its relations; ``JobError`` when it has none."""
    try:
        controls = parse_label_config(label_config)
        relations = parse_relations(label_config)
    except LabelConfigError as exc:
        raise JobError(f"no usable label config: {exc}") from None
    first = controls[0]
    return [c for c in controls if c.data_key == first.data_key], relations


def _doccano_records(tasks, same_text, relations) -> list:
    """The annotated tasks as doccano records, relation types written as the words the
    server prompts with (``predicted_values``); ``JobError`` when none is annotated."""
    records = label_studio_to_doccano(tasks, text_key=same_text[0].data_key,
                                      from_names={c.from_name for c in same_text})
    if not records:
        raise JobError(f"no annotated tasks to train on ({len(tasks)} tasks)")
    words = {r.value: r.prompts for r in relations if list(r.prompts) != [r.value]}
    if words:
        records = expand_relation_types(records, words)
    return records


def _convert_records(records, same_text, relations, held_out: bool, schema_lang: str):
    """``(train, dev)`` UIE examples of the records (``doccano.convert_doccano``): every
    label's negatives, the relation prompts the server asks; dev empty unless held out."""
    import doccano

    labels = [label for c in same_text for label, _ in c.labels]
    asked = {word: r.subject_labels for r in relations for word in r.prompts}
    try:
        train, dev, _ = doccano.convert_doccano(records, splits=(0.8, 0.2, 0) if held_out else (1, 0, 0),
                                                negative_ratio=-1, labels=labels, schema_lang=schema_lang,
                                                relation_negative_ratio=RELATION_NEGATIVE_RATIO,
                                                asked_relations=asked)
    except ValueError as exc:
        raise JobError(f"the annotations cannot be trained on: {exc}") from None
    return train, dev


def _expand_label_prompts(train, dev, same_text):
    """``(train, dev)`` with each label that has ``predicted_values`` asked by those words."""
    prompts = {label: ps for c in same_text for label, ps in c.labels if list(ps) != [label]}
    if prompts:
        train, dev = expand_prompts(train, prompts), expand_prompts(dev, prompts)
    return train, dev


def schema_lang_of(spec: JobSpec) -> str:
    """The spec's ``schema_lang``; a spec without one was written by a server that did
    not say, whose environment (``SCHEMA_LANG``) this process inherited."""
    if spec.schema_lang:
        return spec.schema_lang
    from settings import Settings

    return Settings.from_env().schema_lang


def _score(model_path, examples, spec: JobSpec) -> dict:
    """Span P/R/F1 of the model in ``model_path``, loaded afresh from its files on the
    engine the server runs it with (so the new model's export is checked too)."""
    import uie.engine
    import uie.predictor
    from evaluate import evaluate_examples

    engine = uie.engine.load_engine(model_path, spec.inference_engine, spec.device, spec.threads)
    predictor = uie.predictor.UIEPredictor.from_dir(model_path, device=spec.device, engine=engine,
                                                max_seq_len=spec.max_seq_len)
    return evaluate_examples(predictor, examples)


def _export(candidate: Path, spec: JobSpec):
    """The static model the server will load, made here and not in a request."""
    import uie.engine

    if spec.inference_engine != "paddle-inference":
        return
    try:
        uie.engine.export_static(candidate)
    except uie.engine.ExportError as exc:
        log.warning("%s; the new model will be served with dygraph", exc)


def should_promote(new_f1: float, old_f1: float) -> bool:
    """The new model is served if it scores at least as well as the served one, but a tie
    at 0 (neither finds anything) is no reason to switch: it must then score above 0."""
    return new_f1 > old_f1 or (new_f1 == old_f1 and new_f1 > 0)


def train(spec: JobSpec, work: Path) -> dict:
    """Run the job in ``work``; returns what ``result.json`` holds.

    ``candidate`` is the trained checkpoint; ``promote`` says whether it scored
    at least as well as the served model on the same annotations (held-out ones
    when there are enough, else the training ones), and above 0 (``should_promote``).
    """
    work = Path(work)
    work.mkdir(parents=True, exist_ok=True)
    log.info("%d tasks from %s", len(spec.tasks), spec.source)
    examples = build_examples(spec.tasks, spec.label_config, spec.min_dev_tasks, schema_lang_of(spec))
    _write_examples(examples, work / "data")
    trained = _finetune(spec, examples, work / "ckpt")
    candidate = work / "ckpt" / "model_best"
    _export(candidate, spec)
    new = _score(candidate, examples.dev, spec)
    old = _score(spec.model_path, examples.dev, spec)
    log.info("f1 %.4f (served model %s: %.4f)", new["f1"], spec.model_version, old["f1"])
    return {"candidate": str(candidate), "promote": should_promote(new["f1"], old["f1"]),
            "metrics": new, "previous_metrics": old, "held_out": examples.held_out,
            "annotated_tasks": examples.records, "source": spec.source,
            "train_seconds": trained.get("train_seconds"), "epochs_run": trained.get("epochs_run"),
            "kind": trained.get("kind")}


def _write_examples(examples: Examples, data: Path):
    """``data/train.txt`` and ``data/dev.txt``: what the job trains and scores on."""
    data.mkdir(exist_ok=True)
    write_jsonl(examples.train, data / "train.txt")
    write_jsonl(examples.dev, data / "dev.txt")
    log.info("%d annotated tasks -> %d training examples, %d %s examples", examples.records,
             len(examples.train), len(examples.dev), "held-out" if examples.held_out else "scoring")


def _finetune(spec: JobSpec, examples: Examples, save_dir: Path) -> dict:
    """``finetune.finetune`` with the spec's settings; evaluated only after each epoch."""
    import finetune

    return finetune.finetune(
        examples.train, examples.dev, spec.model_path, save_dir,
        learning_rate=spec.learning_rate, num_epochs=spec.num_epochs,
        batch_size=spec.batch_size, max_seq_len=spec.max_seq_len, device=spec.device,
        logging_steps=20, valid_steps=0, devices=spec.devices or None)


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
        result = train(spec, job_dir / "work")
        status = 0
    except JobError as exc:
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
