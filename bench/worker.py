"""One training run in its own process: ``python bench/worker.py spec.json result.json``.

The spec says which model to start from (a directory, or a scratch shape to
build), which UIE example files to train / select on / test on, and the
keyword arguments of ``finetune.finetune``. The result holds finetune's
metrics, the training rate finetune logged before its first evaluation (so
evaluation and saving time are not in it), and, with a test file, the test
metrics of the saved best model.

``{"probe": N}`` instead times N training steps and returns examples/s only.
"""

from __future__ import annotations

import json
import logging
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402,F401  (sets HOME before Paddle is imported)


class RateLog(logging.Handler):
    """Keeps finetune's logged examples/s and the first evaluation time."""

    def __init__(self):
        super().__init__()
        self.rates = []          # (seconds since start, examples/s) from training log lines
        self.evals = 0

    def emit(self, record):
        msg = record.msg if isinstance(record.msg, str) else ""
        if "examples/s" in msg and record.args:
            self.rates.append((time.time(), float(record.args[-1])))
        elif msg.startswith("eval "):
            self.evals += 1
            if self.evals == 1:
                self.first_eval_rates = list(self.rates)


def build(spec):
    import uie_model

    shape = dict(spec["build"])
    bias = shape.pop("output_bias", None)
    path = Path(spec["save_dir"]) / "init"
    if not uie_model.is_model_dir(path):
        uie_model.build_scratch(path, **shape)
        if bias is not None:   # a different start for the span heads than build_scratch's -4
            import numpy as np
            import paddle

            state = paddle.load(str(path / "model_state.pdparams"))
            for key in list(state):
                if key.endswith(("linear_start.bias", "linear_end.bias")):
                    state[key] = paddle.to_tensor(np.full(state[key].shape, bias, "float32"))
            paddle.save(state, str(path / "model_state.pdparams"))
    return path


def probe(spec, model_dir, train):
    """examples/s of ``steps`` training steps (forward, backward, AdamW), after 3 warm-up steps."""
    import random

    import paddle

    import finetune
    import uie_model

    kw = spec.get("kwargs", {})
    batch_size = kw.get("batch_size", 16)
    paddle.seed(0)
    model = uie_model.load_uie(model_dir)
    model.train()
    tok = uie_model.OffsetTokenizer.from_dir(model_dir)
    enc = finetune.encode_examples(train, tok, kw.get("max_seq_len", 128))
    opt = paddle.optimizer.AdamW(learning_rate=1e-4, parameters=model.parameters())
    batches = finetune.batches(enc, batch_size, random.Random(0))
    steps = spec["probe"]
    seen, started = 0, None
    for i, batch in enumerate(batches[: steps + 3]):
        if i == 3:
            started, seen = time.perf_counter(), 0
        ids, types, pos, mask, s, e = finetune.to_tensors([enc[k] for k in batch], tok.pad_id)
        sp, ep = model(input_ids=ids, token_type_ids=types, position_ids=pos, attention_mask=mask)
        loss = (paddle.nn.functional.binary_cross_entropy(sp, s, weight=mask)
                + paddle.nn.functional.binary_cross_entropy(ep, e, weight=mask))
        loss.backward()
        opt.step()
        opt.clear_grad()
        seen += len(batch)
    return {"examples_per_second": seen / (time.perf_counter() - started), "steps": steps,
            "batch_size": batch_size}


def main(spec_path, result_path):
    spec = json.loads(Path(spec_path).read_text(encoding="utf-8"))
    import finetune
    from evaluate import evaluate_examples, read_examples

    logging.basicConfig(level=logging.INFO, format="[%(asctime)s] %(levelname)s %(message)s", force=True)
    rate_log = RateLog()
    logging.getLogger("finetune").setLevel(logging.INFO)
    logging.getLogger("finetune").addHandler(rate_log)
    save_dir = Path(spec["save_dir"])
    save_dir.mkdir(parents=True, exist_ok=True)
    model_dir = build(spec) if "build" in spec else Path(spec["model"])
    train = read_examples(spec["train"])
    if "probe" in spec:
        result = probe(spec, model_dir, train)
    else:
        dev = read_examples(spec["dev"]) if spec.get("dev") else None
        started = time.time()
        result = finetune.finetune(train, dev, model_dir, save_dir, device="cpu", **spec["kwargs"])
        result["wall_seconds"] = round(time.time() - started, 1)
        rates = getattr(rate_log, "first_eval_rates", None) or rate_log.rates
        result["train_rate"] = rates[-1][1] if rates else result["examples_per_second"]
        if spec.get("test"):
            import uie_model

            test = read_examples(spec["test"])
            predictor = uie_model.UIEPredictor.from_dir(save_dir / "model_best",
                                                        max_seq_len=spec["kwargs"].get("max_seq_len", 128),
                                                        batch_size=64)
            t = time.time()
            result["test"] = evaluate_examples(predictor, test, per_label=True)
            result["test"]["seconds"] = round(time.time() - t, 1)
    Path(result_path).write_text(json.dumps(result, ensure_ascii=False, indent=2), encoding="utf-8")


if __name__ == "__main__":
    main(*sys.argv[1:3])
