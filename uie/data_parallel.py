"""Data-parallel training: finetune.py's processes under ``python -m paddle.distributed.launch``.

``launch`` starts the launcher on GPU ids (``"0,1"``, NCCL) or N CPU processes
(``"cpu:N"``, gloo) with finetune.py's own flags, and waits for the metrics the
first process saves. In each launched process ``Distributed`` is its place: it
takes its share of every step's batches, starts from the first process's weights,
averages gradients, and hears the first process's decisions (to stop, to save).
What one process does with these is ``finetune.Trainer``'s flow.
"""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from convert import write_jsonl

log = logging.getLogger(__name__)


@dataclass
class Distributed:
    """This process's place in a ``paddle.distributed.launch`` run of ``world`` processes."""

    rank: int
    world: int

    @classmethod
    def from_env(cls) -> "Distributed | None":
        """The launcher's ``PADDLE_TRAINER_ID``/``PADDLE_TRAINERS_NUM``; None for one process."""
        world = int(os.environ.get("PADDLE_TRAINERS_NUM", "1") or 1)
        return cls(int(os.environ.get("PADDLE_TRAINER_ID", "0") or 0), world) if world > 1 else None

    def start(self):
        import paddle.distributed as dist

        dist.init_parallel_env()

    def shard(self, batch_list):
        """This process's batches: every ``world``-th, as many in each process."""
        if len(batch_list) < self.world:
            return batch_list           # too few to share: each process takes them all
        return batch_list[self.rank::self.world][: len(batch_list) // self.world]

    def same_start(self, parameters):
        """Every process starts from the first one's weights."""
        import paddle.distributed as dist

        for p in parameters:
            dist.broadcast(p, src=0)

    def average_gradients(self, parameters):
        from paddle.distributed.fleet.utils.hybrid_parallel_util import fused_allreduce_gradients

        fused_allreduce_gradients(list(parameters), None)

    def first_says(self, flag: bool) -> bool:
        """The first process's ``flag``, in every process."""
        import paddle
        import paddle.distributed as dist

        value = paddle.to_tensor([1 if flag else 0], dtype="int64")
        dist.broadcast(value, src=0)
        return bool(int(value.numpy()[0]))



# The options a launched finetune.py takes as flags (device: by ``devices``; pos_weight: none).
LAUNCH_FLAGS = {"learning_rate": "--learning_rate", "num_epochs": "--num_epochs",
                "batch_size": "--batch_size", "max_seq_len": "--max_seq_len", "seed": "--seed",
                "logging_steps": "--logging_steps", "valid_steps": "--valid_steps",
                "patience": "--early_stopping_patience", "weight_decay": "--weight_decay",
                "warmup_proportion": "--warmup_proportion", "init_from_ckpt": "--init_from_ckpt",
                "max_seconds": "--max_seconds", "tagging_weight": "--tagging_weight",
                "max_negatives": "--max_negatives", "tagger_learning_rate": "--tagger_learning_rate",
                "multiple_choice": "--multiple_choice"}


def launch(script, devices, train_examples, dev_examples, model_dir, save_dir, options) -> dict:
    """``script`` (finetune.py) under ``python -m paddle.distributed.launch``: ``devices`` is GPU
    ids (``"0,1"``) or ``"cpu:N"`` (N CPU processes, gloo); ``options`` are finetune's
    ``TrainingOptions``. Waits; the metrics it saved."""
    save_dir = Path(save_dir)
    args = launch_data(train_examples, dev_examples, model_dir, save_dir) + launch_flags(options)
    where, device = launch_devices(devices)
    logs = save_dir / "launch-logs"
    command = [sys.executable, "-m", "paddle.distributed.launch", *where, "--log_dir", str(logs),
               str(Path(script).resolve()), *args, "--device", device]
    log.info("launching data-parallel training on %s: %s", devices, " ".join(command[:6]))
    (save_dir / "metrics.json").unlink(missing_ok=True)
    code = subprocess.run(command, stdin=subprocess.DEVNULL, cwd=save_dir).returncode
    if code != 0 or not (save_dir / "metrics.json").is_file():
        raise RuntimeError(f"paddle.distributed.launch on {devices} exited with code {code}: {_log_tail(logs)}")
    return json.loads((save_dir / "metrics.json").read_text(encoding="utf-8"))


def launch_data(train_examples, dev_examples, model_dir, save_dir: Path) -> list[str]:
    """The data and model flags of a launched finetune.py; the examples are written
    to ``save_dir/launch-data`` for it."""
    data = save_dir / "launch-data"
    data.mkdir(parents=True, exist_ok=True)
    write_jsonl(train_examples, data / "train.txt")
    args = ["--train_path", str(data / "train.txt"), "--save_dir", str(save_dir),
            "--model", str(model_dir)]
    if dev_examples:
        write_jsonl(dev_examples, data / "dev.txt")
        args += ["--dev_path", str(data / "dev.txt")]
    return args


def launch_flags(options) -> list[str]:
    """``LAUNCH_FLAGS`` of the options given (not None), in that order; a tuple's
    flag once per value."""
    args = []
    for name, flag in LAUNCH_FLAGS.items():
        value = getattr(options, name)
        for one in value if isinstance(value, tuple) else () if value is None else (value,):
            args += [flag, str(one)]
    return args


def launch_devices(devices) -> tuple[list[str], str]:
    """The launcher's flags for ``devices`` (``"0,1"`` or ``"cpu:N"``) and finetune.py's ``--device``."""
    if devices.startswith("cpu:"):
        return ["--nproc_per_node", devices[4:]], "cpu"
    return ["--devices", devices], "gpu"


def _log_tail(logs: Path) -> str:
    """The last lines of the first launched process's log, or ``""``."""
    try:
        return " | ".join((logs / "workerlog.0").read_text(errors="replace").strip().splitlines()[-5:])
    except OSError:
        return ""
