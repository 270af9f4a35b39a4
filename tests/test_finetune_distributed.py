"""finetune.py under ``python -m paddle.distributed.launch``: data-parallel, here on 2 CPU processes (gloo).

No GPU is tried here; the GPU launch (``--devices 0,1``) is the same code with NCCL.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys

import pytest

from helpers import REPO, SEQ_LEN, uie_examples
from uie import train_inputs


def write(examples, path):
    path.write_text("".join(json.dumps(e, ensure_ascii=False) + "\n" for e in examples), encoding="utf-8")
    return path


def test_shards_are_equal_and_disjoint():
    from uie.data_parallel import Distributed

    batches = [[i] for i in range(7)]
    shards = [Distributed(rank, 3).shard(batches) for rank in range(3)]
    assert shards == [[[0], [3]], [[1], [4]], [[2], [5]]]
    assert Distributed(1, 3).shard(batches[:2]) == batches[:2]     # too few: all take all


def test_the_cli_runs_under_the_launcher_on_two_cpu_processes(tmp_path, scratch_small):
    train = write(uie_examples(), tmp_path / "train.txt")
    save = tmp_path / "out"
    run = subprocess.run(
        [sys.executable, "-m", "paddle.distributed.launch", "--nproc_per_node", "2",
         "--log_dir", str(tmp_path / "logs"), str(REPO / "finetune.py"), "--train_path", str(train),
         "--save_dir", str(save), "--model", str(scratch_small), "--device", "cpu",
         "--num_epochs", "3", "--batch_size", "4", "--max_seq_len", str(SEQ_LEN),
         "--learning_rate", "1e-3", "--logging_steps", "1", "--valid_steps", "0"],
        cwd=tmp_path, capture_output=True, text=True, timeout=600)
    logs = {p.name: p.read_text(errors="replace") for p in (tmp_path / "logs").glob("workerlog.*")}
    assert run.returncode == 0, (run.stdout[-3000:], logs)
    assert set(logs) == {"workerlog.0", "workerlog.1"}
    metrics = json.loads((save / "metrics.json").read_text())
    assert metrics["world_size"] == 2 and metrics["epochs_run"] == 3
    # both processes took the same number of steps, each on its share of the batches
    import uie.checkpoint

    tokenizer = uie.checkpoint.load_tokenizer(scratch_small)
    # a scratch model's epoch is one pass of its span tagger over the texts (the UIE has no
    # example of its own: the tagger answers both labels)
    inputs = len(train_inputs.encode_tagging(uie_examples(), tokenizer, SEQ_LEN)[1])
    per_process = -(-inputs // 4) // 2       # ceil(inputs / batch) batches, shared by 2
    assert metrics["steps"] == 3 * per_process and metrics["train_inputs"] == 0
    assert (save / "model_best" / "tagger.pdparams").is_file()
    for name, text in logs.items():
        last = re.findall(r"step (\d+)/(\d+) loss", text)[-1]
        assert last == (str(3 * per_process),) * 2, (name, text[-2000:])
    assert "Best dev" in logs["workerlog.0"] and "Best dev" not in logs["workerlog.1"]
    uie.checkpoint.load_uie(save / "model_best")        # the first process saved a whole model


def test_finetune_launches_itself_for_a_job(tmp_path, scratch_small):
    """``finetune.finetune(..., devices="cpu:2")``: what a job does with TRAIN_DEVICES=cpu:2."""
    import finetune

    metrics = finetune.finetune(uie_examples(), None, scratch_small, tmp_path / "ckpt",
                                learning_rate=1e-3, num_epochs=2, batch_size=4, max_seq_len=SEQ_LEN,
                                valid_steps=0, device="cpu", devices="cpu:2")
    assert metrics["world_size"] == 2 and (tmp_path / "ckpt" / "model_best" / "model_state.pdparams").is_file()
    with pytest.raises(finetune.DataError, match="pos_weight"):
        finetune.finetune(uie_examples(), None, scratch_small, tmp_path / "x", pos_weight=2.0,
                          devices="cpu:2")
