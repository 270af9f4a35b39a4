"""The model: a UIE's tokenizer, checkpoints, forward-pass engines, predictor and span tagger.

- ``uie.tokenizer``: text -> tokens with exact character offsets, and the model inputs
  (``[CLS] prompt [SEP] window [SEP]``) that training and serving share.
- ``uie.checkpoint``: where a model comes from (``resolve_model``), how it is built,
  saved, loaded and checked (``ModelLoadError``).
- ``uie.engine``: the forward pass, Paddle Inference over a static export or dygraph.
- ``uie.batcher``: forward passes of concurrent requests batched together.
- ``uie.predictor``: spans for many (text, prompts) queries at once.
- ``uie.tagger`` and ``uie.lac``: the span tagger of scratch models, started from Baidu LAC's.
- ``uie.augment``: a small project's training texts with their mentions swapped.
- ``uie.teacher``: LAC's names on a small project's unannotated texts, as training examples.
- ``uie.train_inputs``: UIE examples -> the UIE's and the tagger's training inputs and batches.

Importing the package tunes the CPU environment before Paddle loads MKL; it does
not import Paddle itself (an RQ worker's main process imports ``service`` without it).
"""

from __future__ import annotations

import zlib  # noqa: F401  (must be imported before paddle, see README)
import os


def _tune_cpu_env():
    """Before Paddle loads MKL: take its fast code path on AMD CPUs, use every core."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            amd = "AuthenticAMD" in f.read(4096)
    except OSError:
        amd = False
    if amd:
        os.environ.setdefault("MKL_DEBUG_CPU_TYPE", "5")
    os.environ.setdefault("OMP_NUM_THREADS", str(len(os.sched_getaffinity(0))))


_tune_cpu_env()
