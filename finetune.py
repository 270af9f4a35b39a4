"""Fine-tune UIE on UIE examples; keep the best model by dev span F1.

    python finetune.py --train_path data/train.txt --dev_path data/dev.txt \\
        --save_dir checkpoint --model uie-base --num_epochs 20

The flags are those of PaddleNLP's UIE ``finetune.py``. ``--model`` takes a
PaddleNLP name, a checkpoint directory or ``scratch`` (a fresh character
model). ``save_dir/model_best/`` is what ``Taskflow(task_path=...)``, the
server and ``evaluate.py`` load; ``save_dir/metrics.json`` says how it scored.
Batches are padded to their longest example, not to ``--max_seq_len``. On a
terminal (stderr a TTY) a progress bar shows the steps and the best dev F1, the
log above it; to a pipe or a file the log is written as it is, without a bar.

Data-parallel on several devices with Paddle's own launcher, one process each::

    python -m paddle.distributed.launch --devices 0,1,2,3 finetune.py ...   # GPUs
    python -m paddle.distributed.launch --nproc_per_node 2 finetune.py ... --device cpu   # CPU, gloo

Every process draws the same batches and takes its share of them (one batch
per process per step: the effective batch is ``--batch_size`` x processes),
gradients are averaged across processes, and the first process evaluates,
saves and decides when to stop. ``finetune(..., devices="0,1")`` starts that
launcher itself (what a training job does with ``TRAIN_DEVICES``).
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
import random
import shutil
import sys
import time
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np

import files
from evaluate import DataError, evaluate_examples, read_examples, terminal_bar
from uie.data_parallel import Distributed, launch
from uie.train_inputs import (batches, correction_weights, encode_examples, encode_tagging,
                              sample_negatives, tagging_tensors, to_tensors)

log = logging.getLogger("finetune")
# A classification input's chosen option counts as much as an option not chosen: with a
# scratch model's span weight (5), an untrained model finds every option of a 2-5 option
# prompt likely (p > 0.5), guesses one answer for every text, and its dev F1, above 0
# and flat, stops training (patience) long before it reads the texts (bench/notes.md).
CLS_POS_WEIGHT = 1.0
SCRATCH_STEPS = 2000

# Defaults per model kind: a scratch model has no pretrained weights to keep,
# so it takes a far higher learning rate and more epochs than a pretrained one.
# Its dev F1 is also noisy for many epochs (it first finds spans regardless of the
# prompt, then learns which prompt asks for which), so it gets far more patience;
# its epochs (None) follow the data size: about SCRATCH_STEPS optimizer steps.
# A scratch model also learns a span tagger (``span_tagger``, ``encode_tagging``):
# one prompt-free pass per content marks the spans of every prompt at once. It
# is saved with the model and answers the prompts it was trained on, so the
# UIE trains only on the other examples (relations, labels past the tagger's
# classes). On CLUENER (2 CPU cores) it scored 0.726 test F1 after 6.7 minutes
# where the UIE's prompts had 0.514 after 28 (bench/results.md, section 9).
DEFAULTS = {
    "scratch": {"learning_rate": 5e-4, "num_epochs": None, "pos_weight": 5.0, "patience": 30,
                "tagging_weight": 1.0, "tagger_learning_rate": 2e-3, "tagger_pos_weight": 3.0},
    "pretrained": {"learning_rate": 1e-5, "num_epochs": 20, "pos_weight": 1.0, "patience": 5,
                   "tagging_weight": 0.0, "tagger_learning_rate": 2e-3, "tagger_pos_weight": 3.0},
}


def model_kind(model_dir) -> str:
    """``scratch`` for models built on the built-in char vocabulary, else ``pretrained``."""
    import uie.checkpoint

    return "scratch" if uie.checkpoint.is_scratch_model(model_dir) else "pretrained"


def input_pos_weights(items, pos_weight):
    """``pos_weight`` for each ``TrainingInput`` of a batch (a tensor ``(n, 1)``), but
    ``CLS_POS_WEIGHT`` for a classification input; just ``pos_weight`` when there is none."""
    if not any(x.classifies for x in items):
        return pos_weight
    import paddle

    return paddle.to_tensor([[CLS_POS_WEIGHT if x.classifies else pos_weight] for x in items], dtype="float32")


def _cycle(make_batches):
    """``make_batches()``'s batches, again and again (each round drawn anew)."""
    while True:
        yield from make_batches()


@dataclass(frozen=True, slots=True)
class TrainingOptions:
    """``finetune``'s training options, each named as its keyword; ``None``: the model
    kind's default (``DEFAULTS``, ``with_defaults``), or none for ``max_seconds``,
    ``max_negatives`` and ``init_from_ckpt``."""

    learning_rate: float | None
    num_epochs: int | None
    batch_size: int
    max_seq_len: int
    seed: int
    logging_steps: int
    valid_steps: int
    device: str
    patience: int | None
    weight_decay: float
    warmup_proportion: float
    init_from_ckpt: str | None
    max_seconds: float | None
    pos_weight: float | None
    tagging_weight: float | None
    max_negatives: int | None
    tagger_learning_rate: float | None
    multiple_choice: tuple[str, ...] = ()   # prompts of choice="multiple" controls

    def with_defaults(self, kind) -> "TrainingOptions":
        """These options with ``DEFAULTS[kind]`` for the learning rates, loss weights and
        patience not given (``num_epochs``' default is ``plan_epochs``')."""
        defaults = DEFAULTS[kind]
        return replace(
            self, learning_rate=self.learning_rate or defaults["learning_rate"],
            tagger_learning_rate=self.tagger_learning_rate or defaults["tagger_learning_rate"],
            tagging_weight=defaults["tagging_weight"] if self.tagging_weight is None else self.tagging_weight,
            pos_weight=self.pos_weight or defaults["pos_weight"], patience=self.patience or defaults["patience"])


def save_best(model, model_dir, save_dir, metrics, tagger=None, choice_head=None):
    """Write ``save_dir/model_best`` whole (temporary directory, then rename),
    with its span tagger and its choice head if it has them."""
    import uie.choice_head
    import uie.tagger
    import uie.checkpoint

    save_dir = Path(save_dir)
    tmp = save_dir / ".model_best.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    uie.checkpoint.save_model(model, tmp, tokenizer_src=model_dir)
    if tagger is not None:
        uie.tagger.save(tagger, tmp)
    if choice_head is not None:
        uie.choice_head.save(choice_head, tmp)
    (tmp / "training_metrics.json").write_text(json.dumps(metrics, indent=2), encoding="utf-8")
    files.replace_dir(tmp, save_dir / "model_best")


def span_loss(start_p, end_p, start_t, end_t, mask, pos_weight, corrections=None):
    """Binary cross-entropy of start and end probabilities over the cells ``mask``
    weighs (1 on every real token), a target cell counting ``pos_weight`` times (a number,
    or one per input: ``input_pos_weights``), and the cells of corrected regions as many
    times as ``corrections`` (``correction_weights``: ``(start, end)`` weights, or None)."""
    import paddle

    bce = paddle.nn.functional.binary_cross_entropy
    w_start = mask * (1 + (pos_weight - 1) * start_t)
    w_end = mask * (1 + (pos_weight - 1) * end_t)
    if corrections is not None:
        w_start, w_end = w_start * corrections[0], w_end * corrections[1]
    return (bce(start_p, start_t, weight=w_start, reduction="sum")
            + bce(end_p, end_t, weight=w_end, reduction="sum")) / (2 * mask.sum())


def make_optimizer(model, tagger, learning_rate, tagger_learning_rate, total_steps,
                   warmup_proportion, weight_decay, choice_head=None):
    """AdamW over ``model`` (at ``learning_rate``) and ``tagger`` (None, or at
    ``tagger_learning_rate``) and its schedule: linear warm-up over
    ``warmup_proportion`` of ``total_steps``, then linear decay to 0. Biases and
    norms take no weight decay; gradients are clipped to a global norm of 1.
    A parameter without a gradient in a step (``clear_grad(set_to_zero=False)``)
    is not touched by it."""
    import paddle

    warmup = max(1, int(total_steps * warmup_proportion))
    schedule = paddle.optimizer.lr.LambdaDecay(
        learning_rate, lambda step: min((step + 1) / warmup, max(0.0, (total_steps - step) / max(1, total_steps - warmup))))
    layers = [model] + [layer for layer in (tagger, choice_head) if layer is not None]
    decay_params = {p.name for layer in layers for n, p in layer.named_parameters()
                    if not any(k in n for k in ("bias", "norm"))}
    groups = [{"params": model.parameters()}]
    if tagger is not None:      # a group's learning_rate scales the schedule's
        groups.append({"params": tagger.parameters(), "learning_rate": tagger_learning_rate / learning_rate})
    if choice_head is not None:  # the choice head learns at the tagger's rate
        groups.append({"params": choice_head.parameters(), "learning_rate": tagger_learning_rate / learning_rate})
    optimizer = paddle.optimizer.AdamW(
        learning_rate=schedule, parameters=groups, weight_decay=weight_decay,
        apply_decay_param_fun=lambda name: name in decay_params,
        grad_clip=paddle.nn.ClipGradByGlobalNorm(1.0))
    return optimizer, schedule


@dataclass
class TaggingTask:
    """The span tagger a model learns (``span_tagger``), its inputs
    (``encode_tagging``), the weight of its loss and of a span boundary in it."""

    inputs: list
    classes: list
    tagger: object
    weight: float
    pos_weight: float


@dataclass
class ChoiceTask:
    """The choice head a scratch model learns for its classification examples
    (``uie.choice_head``: ``<Choices>``), its inputs (one per text) and the weight of its loss."""

    inputs: list
    head: object
    weight: float = 1.0

    def loss(self, items, pad_id):
        import uie.choice_head

        return uie.choice_head.loss(self.head, items, pad_id)


@dataclass
class Trainer:
    """``finetune``'s loop: optimizer steps over length-bucketed batches, dev
    evaluations, the best model saved (``save``), early stopping."""

    model: object
    tokenizer: object
    encoded: list
    optimizer: object
    schedule: object
    rng: random.Random
    predictor: object
    dev_examples: list
    save: object                  # save(metrics): write the model as the best so far
    batch_size: int
    pos_weight: float
    patience: int
    max_seconds: float | None = None
    tagging: TaggingTask | None = None
    choosing: ChoiceTask | None = None   # the choice head's task (scratch models with Choices)
    dist: Distributed | None = None      # data-parallel: this process's place
    step: int = 0
    seen: int = 0
    best: dict | None = None
    bad_evals: int = 0
    history: list = field(default_factory=list)
    started: float = 0.0
    epoch_inputs: int = 0                # with a tagger: inputs per epoch (see epoch_steps)
    progress: object = None              # progress(step, total_steps, best dev F1 or None)
    total_steps: int = 0
    _cycles: tuple | None = field(default=None, repr=False)

    def epoch_steps(self, epoch_order) -> list[tuple]:
        """This epoch's steps, ``(UIE input indices or None, tagger input indices or None)``,
        and a third, the choice head's input indices or None, when there is a choice head.

        Without a tagger or a choice head, one pass over the UIE's inputs. With one, one pass
        over ``epoch_inputs`` (the largest of the sets): each step takes the next batch
        of each, a smaller set starting again (reshuffled) when it runs out.
        """
        if not self.tagging and not self.choosing:
            return [(b, None) for b in batches(self.encoded, self.batch_size, self.rng, epoch_order())]
        if self._cycles is None:
            uie = _cycle(lambda: batches(self.encoded, self.batch_size, self.rng, epoch_order()))
            tag = self.tagging and _cycle(lambda: batches(self.tagging.inputs, self.batch_size, self.rng))
            self._cycles = (uie if self.encoded else None, tag or None)
            if self.choosing:
                self._cycles += (_cycle(lambda: batches(self.choosing.inputs, self.batch_size, self.rng)),)
        return [tuple(next(c) if c else None for c in self._cycles)
                for _ in range(math.ceil(self.epoch_inputs / self.batch_size))]

    def loss(self, uie_batch, tag_batch, choice_batch=None):
        """The span loss of a batch of the UIE's inputs plus the weighted loss of a
        batch of the tagger's and of the choice head's (any may be None)."""
        loss = 0.0
        if uie_batch:
            items = [self.encoded[k] for k in uie_batch]
            ids, types, pos, mask, start_t, end_t = to_tensors(items, self.tokenizer.pad_id)
            start_p, end_p = self.model(input_ids=ids, token_type_ids=types, position_ids=pos,
                                        attention_mask=mask)
            corrections = correction_weights(items, start_t.shape, start_t.numpy(), end_t.numpy())
            loss = span_loss(start_p, end_p, start_t, end_t, mask, input_pos_weights(items, self.pos_weight),
                             corrections)
        if tag_batch:
            loss = loss + self.tagging.weight * self.tagging_loss([self.tagging.inputs[k] for k in tag_batch])
        if choice_batch:
            loss = loss + self.choosing.weight * self.choosing.loss([self.choosing.inputs[k] for k in choice_batch],
                                                                    self.tokenizer.pad_id)
        return loss

    def tagging_loss(self, items):
        ids, lengths, mask, asked, start_t, end_t = tagging_tensors(
            items, self.tokenizer.pad_id, len(self.tagging.classes))
        start_p, end_p = self.tagging.tagger(ids, lengths)
        corrections = correction_weights(items, start_t.shape, start_t.numpy(), end_t.numpy(), where=tuple)
        return span_loss(start_p, end_p, start_t, end_t, mask.unsqueeze(-1) * asked, self.tagging.pos_weight,
                         corrections)

    def train_step(self, uie_batch, tag_batch, choice_batch=None) -> float:
        """One optimizer step; returns its loss."""
        loss = self.loss(uie_batch, tag_batch, choice_batch)
        loss.backward()
        if self.dist:
            self.dist.average_gradients([p for p in self.parameters() if p.grad is not None])
        self.optimizer.step()
        self.schedule.step()
        self.optimizer.clear_grad(set_to_zero=False)
        self.step += 1
        self.seen += len(uie_batch or ()) + len(tag_batch or ()) + len(choice_batch or ())
        return float(loss)

    def train_mode(self, on: bool):
        for layer in (self.model, self.tagging.tagger if self.tagging else None,
                      self.choosing.head if self.choosing else None):
            if layer is not None:
                layer.train() if on else layer.eval()

    def parameters(self) -> list:
        """What is trained: the UIE's parameters, the tagger's and the choice head's."""
        return (self.model.parameters() + (self.tagging.tagger.parameters() if self.tagging else [])
                + (self.choosing.head.parameters() if self.choosing else []))

    def evaluate(self, epoch) -> bool:
        """Score the model on dev and save it if it is the best so far; True to stop
        (dev F1 1.0, ``patience`` evaluations without a better one, or out of time).
        Data-parallel, the first process does it and tells the others whether to stop."""
        if self.dist:
            return self.dist.first_says(self.dist.rank == 0 and self._evaluate(epoch))
        return self._evaluate(epoch)

    def _evaluate(self, epoch) -> bool:
        self.train_mode(False)
        metrics = evaluate_examples(self.predictor, self.dev_examples)
        self.train_mode(True)
        metrics.update(epoch=epoch, step=self.step, seconds=round(time.time() - self.started, 1))
        self.history.append(metrics)
        log.info("eval epoch %d step %d: precision %.4f recall %.4f f1 %.4f", epoch, self.step,
                 metrics["precision"], metrics["recall"], metrics["f1"])
        if self.best is None or metrics["f1"] > self.best["f1"]:
            self.best, self.bad_evals = metrics, 0
            self.save(metrics)
        elif self.best["f1"] > 0:    # a model that has found nothing yet is not "stuck"
            self.bad_evals += 1
        self.report()
        return metrics["f1"] >= 1.0 or self.bad_evals >= self.patience or (
            self.max_seconds is not None and time.time() - self.started > self.max_seconds)

    def run(self, num_epochs, total_steps, epoch_order, logging_steps, valid_steps) -> int:
        """Train up to ``num_epochs`` epochs over ``epoch_order()`` (the input indices of
        each epoch); evaluate every ``valid_steps`` steps and after every epoch.
        Returns the number of epochs run; ``progress`` is told of every step and evaluation."""
        self.started, self.total_steps = time.time(), total_steps
        self.train_mode(True)
        loss_sum, loss_n = 0.0, 0
        for epoch in range(1, num_epochs + 1):
            stop = False
            steps = self.epoch_steps(epoch_order)
            for batch in self.dist.shard(steps) if self.dist else steps:
                loss_sum += self.train_step(*batch)
                loss_n += 1
                self.report()
                if self.step % logging_steps == 0:
                    log.info("epoch %d/%d step %d/%d loss %.5f lr %.2e %.1f examples/s", epoch,
                             num_epochs, self.step, total_steps, loss_sum / loss_n, self.schedule.get_lr(),
                             self.seen / max(time.time() - self.started, 1e-9))
                    loss_sum, loss_n = 0.0, 0
                if valid_steps and self.step % valid_steps == 0 and self.evaluate(epoch):
                    stop = True
                    break
            if stop or self.evaluate(epoch):
                return epoch
        return num_epochs

    def report(self):
        """Tell ``progress`` the step, the total and the best dev F1 so far."""
        if self.progress is not None:
            self.progress(self.step, self.total_steps, self.best["f1"] if self.best else None)


def finetune(train_examples, dev_examples, model_dir, save_dir, *, learning_rate=None,
             num_epochs=None, batch_size=16, max_seq_len=128, seed=1000, logging_steps=10,
             valid_steps=100, device="cpu", patience=None, weight_decay=0.01,
             warmup_proportion=0.06, init_from_ckpt=None, max_seconds=None,
             pos_weight=None, tagging_weight=None, max_negatives=None, tagger_learning_rate=None,
             devices=None, progress=None, multiple_choice=()) -> dict:
    """Train the UIE in ``model_dir`` and save the best one to ``save_dir/model_best``.

    With a tagging weight (scratch models' default) a span tagger learns the
    prompts of the examples and is saved with the model, which then answers
    them with it; the UIE learns the other examples. Its choice head learns the
    classification prompts; ``multiple_choice`` names the prompts of controls where
    several options may be chosen (Label Studio's ``choice="multiple"``).

    Returns the metrics of the saved model (also written to ``save_dir/metrics.json``).
    With ``devices`` (GPU ids ``"0,1"`` or ``"cpu:N"``), trains data-parallel in
    processes that ``paddle.distributed.launch`` starts (``uie.data_parallel.launch``). ``progress(step,
    total_steps, best dev F1 or None)`` is called after every step and evaluation (not
    with ``devices``: the steps are taken in the launched processes).
    """
    # Imported first, to launch too: importing paddle sets OMP_NUM_THREADS (and more) in
    # os.environ, which the launched processes inherit.
    import paddle  # noqa: F401

    options = TrainingOptions(
        learning_rate=learning_rate, num_epochs=num_epochs, batch_size=batch_size, max_seq_len=max_seq_len,
        seed=seed, logging_steps=logging_steps, valid_steps=valid_steps, device=device, patience=patience,
        weight_decay=weight_decay, warmup_proportion=warmup_proportion, init_from_ckpt=init_from_ckpt,
        max_seconds=max_seconds, pos_weight=pos_weight, tagging_weight=tagging_weight,
        max_negatives=max_negatives, tagger_learning_rate=tagger_learning_rate,
        multiple_choice=tuple(multiple_choice or ()))
    dist = Distributed.from_env()
    if devices and dist is None and "PADDLE_TRAINERS_NUM" not in os.environ:
        if pos_weight is not None:
            raise DataError("pos_weight cannot be given to a launched finetune.py")
        return launch(__file__, devices, train_examples, dev_examples, model_dir, save_dir, options)
    return train_here(train_examples, dev_examples, model_dir, save_dir, options, dist, progress)


def train_here(train_examples, dev_examples, model_dir, save_dir, options: TrainingOptions, dist,
               progress=None) -> dict:
    """``finetune`` in this process (one of the launched ones with ``dist``): options,
    seeds and model; data; trainer; the run; its metrics."""
    check_options(train_examples, options.max_negatives, options.tagging_weight, options.max_seq_len)
    kind = model_kind(model_dir)
    options = options.with_defaults(kind)
    dev_examples = dev_examples or train_examples
    start_process(options.seed, options.device, dist)
    model, tokenizer, options = load_model_and_tokenizer(model_dir, options)
    job = Finetuning(train_examples, dev_examples, model_dir, Path(save_dir), options, kind, dist)
    data = job.build_data(tokenizer)
    trainer = job.build_trainer(model, tokenizer, data)
    trainer.progress = progress
    epochs_run = trainer.run(data.num_epochs, data.total_steps, data.epoch_order, options.logging_steps,
                             options.valid_steps)
    return job.result(trainer, data, epochs_run, time.time() - trainer.started)


def start_process(seed, device, dist):
    """Seed Python's, NumPy's and Paddle's random numbers, take ``device``, and join
    the other launched processes (with ``dist``)."""
    import paddle

    random.seed(seed)
    np.random.seed(seed)
    paddle.seed(seed)
    paddle.set_device(device)
    if dist:
        dist.start()


def load_model_and_tokenizer(model_dir, options: TrainingOptions):
    """``(model, tokenizer, options)``: ``load_model``'s, ``model_dir``'s tokenizer, and the
    options with ``max_seq_len`` cut to the positions the model has."""
    import uie.checkpoint

    model = load_model(model_dir, options.init_from_ckpt)
    tokenizer = uie.checkpoint.load_tokenizer(model_dir)
    max_seq_len = min(options.max_seq_len, model.config.max_position_embeddings)
    return model, tokenizer, replace(options, max_seq_len=max_seq_len)


@dataclass
class TrainingData:
    """What ``finetune`` trains on: the span tagger's task, the UIE's examples and
    inputs (``origins``: each input's example) and the epochs they make."""

    tagging: TaggingTask | None
    uie_examples: list
    origins: list
    encoded: list
    rng: random.Random            # draws the batches and the negatives
    max_negatives: int | None
    choosing: ChoiceTask | None = None    # the choice head's task (``choice_task``)
    per_epoch: int = 0            # inputs an epoch passes over
    steps_per_epoch: int = 0
    num_epochs: int = 0

    @property
    def tagger(self):
        return self.tagging.tagger if self.tagging else None

    @property
    def total_steps(self) -> int:
        return self.steps_per_epoch * self.num_epochs

    def epoch_order(self):
        """The UIE input indices of an epoch: all, or at most ``max_negatives`` empty
        ones per content, drawn anew (``sample_negatives``)."""
        if self.max_negatives is None:
            return range(len(self.encoded))
        return sample_negatives(self.uie_examples, self.origins, self.max_negatives, self.rng)

    def plan(self, batch_size, num_epochs, kind, dist):
        """Count an epoch's inputs (the larger of the tagger's and the UIE's: a first
        draw of the negatives) and plan the epochs (``plan_epochs``)."""
        self.per_epoch = len(self.epoch_order()) if self.encoded else 0
        if self.tagging:
            self.per_epoch = max(self.per_epoch, len(self.tagging.inputs))
        if self.choosing:
            self.per_epoch = max(self.per_epoch, len(self.choosing.inputs))
        self.steps_per_epoch, self.num_epochs = plan_epochs(self.per_epoch, batch_size, num_epochs, kind, dist)


@dataclass(frozen=True)
class Finetuning:
    """One ``finetune`` in this process: its examples, model and save directories,
    options (defaults taken, ``max_seq_len`` fit to the model), model kind and
    data-parallel place."""

    train_examples: list
    dev_examples: list
    model_dir: object
    save_dir: Path
    options: TrainingOptions
    kind: str
    dist: Distributed | None

    def build_data(self, tokenizer) -> TrainingData:
        """The tagging task (``tagging_task``), the UIE's inputs of the other examples
        and the epoch plan; ``DataError`` when there is nothing to train on."""
        o = self.options
        tagging = tagging_task(self.train_examples, tokenizer, o.max_seq_len, self.model_dir, o.tagging_weight,
                               o.seed, DEFAULTS[self.kind]["tagger_pos_weight"])
        uie_examples = [ex for ex in self.train_examples if not tagging or ex["prompt"] not in tagging.classes]
        choosing = choice_task(self.train_examples, tokenizer, o.max_seq_len, self.model_dir, o.tagging_weight,
                               o.seed, o.multiple_choice)
        if choosing:            # the choice head answers these classification prompts, not the UIE
            uie_examples = [ex for ex in uie_examples if choosing.head.find(ex["prompt"]) is None]
        origins = []
        encoded = encode_examples(uie_examples, tokenizer, o.max_seq_len, origins)
        if not encoded and not tagging and not choosing:
            raise DataError("no training example has any token")
        data = TrainingData(tagging, uie_examples, origins, encoded, random.Random(o.seed), o.max_negatives)
        data.choosing = choosing
        data.plan(o.batch_size, o.num_epochs, self.kind, self.dist)
        return data

    def build_trainer(self, model, tokenizer, data: TrainingData) -> "Trainer":
        """The optimizer, the dev predictor and the ``Trainer``, every process starting
        from the same weights."""
        import uie.predictor

        o = self.options
        head = data.choosing.head if data.choosing else None
        optimizer, schedule = make_optimizer(model, data.tagger, o.learning_rate, o.tagger_learning_rate,
                                             data.total_steps, o.warmup_proportion, o.weight_decay, head)
        self.save_dir.mkdir(parents=True, exist_ok=True)
        self.log_plan(data)
        predictor = uie.predictor.UIEPredictor(model, tokenizer, device=o.device, max_seq_len=o.max_seq_len,
                                               batch_size=max(o.batch_size, 32), tagger=data.tagger,
                                               choice_head=head)
        trainer = Trainer(model=model, tokenizer=tokenizer, encoded=data.encoded, optimizer=optimizer,
                          schedule=schedule, rng=data.rng, predictor=predictor, dev_examples=self.dev_examples,
                          save=lambda metrics: self.save(model, data.tagger, metrics, head), batch_size=o.batch_size,
                          pos_weight=o.pos_weight, patience=o.patience, max_seconds=o.max_seconds,
                          tagging=data.tagging, choosing=data.choosing, dist=self.dist, epoch_inputs=data.per_epoch)
        if self.dist:
            self.dist.same_start(trainer.parameters())
        return trainer

    def log_plan(self, data: TrainingData):
        """Log the model, the data, the epochs and the settings about to be trained."""
        o, tagging = self.options, data.tagging
        log.info("model %s (%s), %d train examples -> %d UIE inputs, %d dev examples, lr %g, "
                 "%d epochs x %d steps, batch %d, device %s, tagger %s, negatives per content %s",
                 self.model_dir, self.kind, len(self.train_examples), len(data.encoded), len(self.dev_examples),
                 o.learning_rate, data.num_epochs, data.steps_per_epoch, o.batch_size, o.device,
                 f"{len(tagging.classes)} classes x {len(tagging.inputs)} inputs, lr {o.tagger_learning_rate:g}"
                 if tagging else "off", "all" if o.max_negatives is None else o.max_negatives)
        if data.choosing:
            log.info("choice head: %d controls x %d texts, lr %g", len(data.choosing.head.controls),
                     len(data.choosing.inputs), o.tagger_learning_rate)

    def save(self, model, tagger, metrics, choice_head=None):
        """Save ``model`` (and ``tagger``, ``choice_head``) as the best so far (``save_best``)."""
        save_best(model, self.model_dir, self.save_dir,
                  dict(metrics, max_seq_len=self.options.max_seq_len, kind=self.kind), tagger, choice_head)
        log.info("saved new best model (f1 %.4f) to %s", metrics["f1"], self.save_dir / "model_best")

    def result(self, trainer: "Trainer", data: TrainingData, epochs_run: int, elapsed: float) -> dict:
        """What ``finetune`` returns: the best dev metrics and how training went, which
        the first process writes to ``save_dir/metrics.json``; the others' place and steps."""
        if self.dist and self.dist.rank != 0:
            return {"rank": self.dist.rank, "world_size": self.dist.world, "epochs_run": epochs_run,
                    "steps": trainer.step}
        o, tagging = self.options, data.tagging
        result = dict(trainer.best, train_examples=len(self.train_examples), train_inputs=len(data.encoded),
                      dev_examples=len(self.dev_examples), epochs_run=epochs_run, steps=trainer.step,
                      train_seconds=round(elapsed, 1),
                      examples_per_second=round(trainer.seen / max(elapsed, 1e-9), 2),
                      learning_rate=o.learning_rate, batch_size=o.batch_size, max_seq_len=o.max_seq_len,
                      tagging_weight=tagging.weight if tagging else 0.0, max_negatives=o.max_negatives,
                      tagger_classes=tagging.classes if tagging else [],
                      choice_controls=data.choosing.head.controls if data.choosing else [],
                      tagger_learning_rate=o.tagger_learning_rate if tagging else None,
                      model=str(self.model_dir), kind=self.kind, history=trainer.history,
                      world_size=self.dist.world if self.dist else 1)
        files.atomic_write_json(self.save_dir / "metrics.json", result)
        return result


def check_options(train_examples, max_negatives, tagging_weight, max_seq_len):
    """``DataError`` for a training set or option ``finetune`` cannot use."""
    import uie.checkpoint

    if not train_examples:
        raise DataError("the training set is empty")
    if max_negatives is not None and max_negatives < 0:
        raise DataError(f"max_negatives must be 0 or more, not {max_negatives}")
    if tagging_weight is not None and tagging_weight < 0:
        raise DataError(f"tagging_weight must be 0 or more, not {tagging_weight}")
    if max_seq_len < uie.checkpoint.MIN_SEQ_LEN:
        raise DataError(f"max_seq_len must be at least {uie.checkpoint.MIN_SEQ_LEN}, not {max_seq_len}")


def tagging_task(examples, tokenizer, max_seq_len, model_dir, weight, seed=0, pos_weight=3.0):
    """The span tagger to train (``None`` with weight 0 or nothing to tag): the one
    ``model_dir`` serves, given the classes of ``examples``, or a new one."""
    import uie.tagger

    if weight <= 0:
        return None
    classes, encoded = encode_tagging(examples, tokenizer, max_seq_len)
    if not encoded:
        return None
    served = uie.tagger.load(model_dir)
    if served is not None:
        tagger = uie.tagger.with_classes(served, classes)
    else:
        vocab = sorted(tokenizer.vocab, key=tokenizer.vocab.get)
        tagger = uie.tagger.build(vocab, classes, seed=seed)
    return TaggingTask(encoded, classes, tagger, weight, pos_weight)


def choice_task(examples, tokenizer, max_seq_len, model_dir, weight, seed=0,
                multiple_choice=()) -> ChoiceTask | None:
    """The choice head to train (``uie.choice_head``), beside the span tagger (``None`` with
    weight 0, a pretrained model's default, or without classification examples): the one
    ``model_dir`` serves, given the controls of ``examples`` (those prompted by
    ``multiple_choice`` take several options), or a new one."""
    import uie.choice_head

    if weight <= 0:
        return None
    controls, chosen = uie.choice_head.controls_of(examples, multiple_choice)
    if not controls:
        return None
    inputs = uie.choice_head.encode(examples, tokenizer, max_seq_len, controls, chosen)
    if not inputs:
        return None
    served = uie.choice_head.load(model_dir)
    if served is not None and served.config["vocab_size"] == len(tokenizer.vocab):
        head = uie.choice_head.with_controls(served, controls)
    else:
        vocab = sorted(tokenizer.vocab, key=tokenizer.vocab.get)
        head = uie.choice_head.build(vocab, controls, seed=seed)
    return ChoiceTask(inputs, head)


def plan_epochs(n_inputs, batch_size, num_epochs, kind, dist=None) -> tuple[int, int]:
    """``(steps per epoch, epochs)``: a scratch model's default epochs come to about
    ``SCRATCH_STEPS`` steps (20 to 200 epochs); each launched process takes its share."""
    steps_per_epoch = math.ceil(n_inputs / batch_size)
    if dist and steps_per_epoch >= dist.world:
        steps_per_epoch //= dist.world
    num_epochs = num_epochs or DEFAULTS[kind]["num_epochs"] or max(
        20, min(200, math.ceil(SCRATCH_STEPS / steps_per_epoch)))
    return steps_per_epoch, num_epochs


def load_model(model_dir, init_from_ckpt=None):
    """The UIE of ``model_dir``, with the weights of ``init_from_ckpt`` (a
    ``.pdparams`` file or its directory) when given; they must fit it."""
    import uie.checkpoint

    model = uie.checkpoint.load_uie(model_dir)
    if init_from_ckpt:
        state_path = Path(init_from_ckpt)
        state_path = state_path / "model_state.pdparams" if state_path.is_dir() else state_path
        state = uie.checkpoint.read_state_dict(state_path)
        uie.checkpoint.check_weights(model, uie.checkpoint.weight_shapes(state), state_path)
        model.set_state_dict(state)
    return model


def build_parser() -> argparse.ArgumentParser:
    """finetune.py's flags: PaddleNLP UIE ``finetune.py``'s and this script's own."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--train_path", required=True, help="UIE examples to train on (doccano.py's train.txt)")
    parser.add_argument("--dev_path", help="UIE examples to pick the best model by (default: the training set)")
    parser.add_argument("--save_dir", default="./checkpoint", help="where model_best/ and metrics.json are written")
    parser.add_argument("--model", default="uie-base", help="PaddleNLP name, checkpoint directory or 'scratch'")
    parser.add_argument("--model_cache_dir", default=None, help="where named/scratch base models are kept (default: save_dir/_base)")
    parser.add_argument("--init_from_ckpt", default=None, help="model_state.pdparams (or its directory) to start from")
    _add_schedule_flags(parser)
    _add_task_flags(parser)
    parser.add_argument("--device", default="auto", choices=("auto", "cpu", "gpu"), help="auto: gpu when Paddle has one")
    return parser


def _add_schedule_flags(parser):
    """How long and how fast to train, and how often to log and evaluate."""
    parser.add_argument("--learning_rate", type=float, default=None, help="default: 5e-4 for scratch, 1e-5 for pretrained")
    parser.add_argument("--num_epochs", type=int, default=None, help="default: 20 for pretrained; for scratch about 2,000 steps' worth (20-200)")
    parser.add_argument("--batch_size", type=int, default=16, help="inputs per optimizer step (per process)")
    parser.add_argument("--max_seq_len", type=int, default=512, help="tokens per input; longer texts are windowed")
    parser.add_argument("--seed", type=int, default=1000, help="random seed (batches, negatives, a new tagger)")
    parser.add_argument("--logging_steps", type=int, default=10, help="log loss and examples/s every N steps")
    parser.add_argument("--valid_steps", type=int, default=100, help="evaluate every N steps (and after every epoch)")
    parser.add_argument("--early_stopping_patience", type=int, default=None,
                        help="stop after N evaluations without a better dev F1 (default: 30 for scratch, 5 for pretrained)")
    parser.add_argument("--max_seconds", type=float, default=None, help="stop after this much training time")
    parser.add_argument("--weight_decay", type=float, default=0.01, help="AdamW weight decay (not on biases and norms)")
    parser.add_argument("--warmup_proportion", type=float, default=0.06, help="share of the steps with a linear warm-up")


def _add_task_flags(parser):
    """What to train on beside the UIE's prompts: negatives per content, the span tagger."""
    parser.add_argument("--max_negatives", type=int, default=None,
                        help="train each epoch on at most N prompts without spans per content, drawn anew (default: all)")
    parser.add_argument("--tagging_weight", type=float, default=None,
                        help="train a span tagger with this loss weight; it is saved and answers the labels it "
                             "learned (default: 1 for scratch, 0 for pretrained: 0 keeps a model Taskflow's)")
    parser.add_argument("--tagger_learning_rate", type=float, default=None,
                        help="learning rate of the span tagger (default: 2e-3)")
    parser.add_argument("--multiple_choice", action="append", default=[], metavar="PROMPT",
                        help="a classification prompt (prefix[opt1,opt2,...]) whose options may be chosen "
                             "together, as Label Studio's <Choices choice=\"multiple\">; repeat per control "
                             "(default: a control is multiple when some example chooses several options)")


def main(argv=None):
    """finetune.py's command line; returns the exit status (2: bad data, options or model)."""
    args = build_parser().parse_args(argv)

    import uie.checkpoint
    import uie.engine

    uie.engine.use_all_cores()

    logging.basicConfig(level=logging.INFO, format="[%(asctime)s] %(levelname)s %(message)s", force=True)

    try:
        metrics = run_cli(args)
    except (DataError, uie.checkpoint.ModelLoadError, FileNotFoundError) as exc:
        print(f"finetune.py: error: {exc}", file=sys.stderr)
        return 2
    if "f1" not in metrics:     # a data-parallel process other than the first
        return 0
    print(f"Best dev: Precision: {metrics['precision']:.5f} | Recall: {metrics['recall']:.5f} | "
          f"F1: {metrics['f1']:.5f} -> {Path(args.save_dir) / 'model_best'}")
    return 0


def run_cli(args) -> dict:
    """Read the examples, resolve the model and the device the parsed ``args`` name,
    and ``finetune``."""
    import uie.checkpoint

    train, dev = read_cli_examples(args.train_path, args.dev_path)
    cache = args.model_cache_dir or Path(args.save_dir) / "_base"
    source = uie.checkpoint.resolve_model(args.model, cache)
    device = uie.checkpoint.select_device(args.device)
    with step_bar() as progress:
        return run_finetune(args, train, dev, source, device, progress)


def run_finetune(args, train, dev, source, device, progress) -> dict:
    """``finetune`` with the command line's options."""
    return finetune(
        train, dev, source.path, args.save_dir, learning_rate=args.learning_rate,
        num_epochs=args.num_epochs, batch_size=args.batch_size, max_seq_len=args.max_seq_len,
        seed=args.seed, logging_steps=args.logging_steps, valid_steps=args.valid_steps,
        device=device, patience=args.early_stopping_patience, weight_decay=args.weight_decay,
        warmup_proportion=args.warmup_proportion, init_from_ckpt=args.init_from_ckpt,
        max_seconds=args.max_seconds, max_negatives=args.max_negatives,
        tagging_weight=args.tagging_weight, tagger_learning_rate=args.tagger_learning_rate,
        progress=progress, multiple_choice=args.multiple_choice)


@contextmanager
def step_bar():
    """A ``progress(step, total, best_f1)`` drawing a bar on a terminal (``terminal_bar``), the
    log printed above it; None, and the log as it is, when stderr is not a terminal."""
    bar = terminal_bar(None, "training", unit="step")
    if bar is None:
        yield None
        return
    from tqdm.contrib.logging import logging_redirect_tqdm

    def progress(step, total, best_f1):
        bar.total = total
        if best_f1 is not None:
            bar.set_postfix_str(f"best dev F1 {best_f1:.4f}", refresh=False)
        bar.update(step - bar.n)      # redrawn at most every 0.1 s
    try:
        with logging_redirect_tqdm():
            yield progress
    finally:
        bar.close()


def read_cli_examples(train_path, dev_path):
    """``(train, dev)`` examples of the command line (dev None without ``dev_path``);
    ``DataError`` for an empty training set, a warning for an empty dev set."""
    train = read_examples(train_path)
    dev = read_examples(dev_path) if dev_path else None
    if not train:
        raise DataError(f"{train_path}: the training set is empty")
    if dev is not None and not dev:
        log.warning("%s is empty: selecting the best model on the training set", dev_path)
    return train, dev


if __name__ == "__main__":
    sys.exit(main())
