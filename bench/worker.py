"""One training run in its own process: ``python bench/worker.py spec.json result.json``.

The spec says which model to start from (a directory, or a scratch shape to
build), which UIE example files to train / select on / test on, and the
keyword arguments of ``finetune.finetune``. The result holds finetune's
metrics, the training rate finetune logged before its first evaluation (so
evaluation and saving time are not in it), and, with a test file, the test
metrics of the saved best model.

``{"rate_steps": N}`` instead runs finetune for N steps and returns the
examples/s it logged then (how the learning runs plan their epochs).
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
    import uie.checkpoint

    shape = dict(spec["build"])
    bias = shape.pop("output_bias", None)
    path = Path(spec["save_dir"]) / "init"
    if not uie.checkpoint.is_model_dir(path):
        uie.checkpoint.build_scratch(path, **shape)
        if bias is not None:   # a different start for the span heads than build_scratch's -4
            import numpy as np
            import paddle

            state = paddle.load(str(path / "model_state.pdparams"))
            for key in list(state):
                if key.endswith(("linear_start.bias", "linear_end.bias")):
                    state[key] = paddle.to_tensor(np.full(state[key].shape, bias, "float32"))
            paddle.save(state, str(path / "model_state.pdparams"))
    return path


TEST_CURVE = []     # (training minutes, test P/R/F1 of the model as it was then)


def test_along_the_way(finetune, test, every):
    """Also score the model being trained on ``test`` at its first evaluation
    after every ``every`` seconds of training (the learning curve; the model
    is still selected on dev). The time these take is not training time."""
    evaluate = finetune.Trainer._evaluate
    marks = {"next": every}

    def _evaluate(self, epoch):
        stop = evaluate(self, epoch)
        elapsed = time.time() - self.started
        if elapsed >= marks["next"] or stop:
            t = time.time()
            self.train_mode(False)
            m = evaluate_examples(self.predictor, test)
            self.train_mode(True)
            TEST_CURVE.append({"minutes": round(elapsed / 60, 2), "step": self.step, "epoch": epoch,
                               "precision": m["precision"], "recall": m["recall"], "f1": m["f1"]})
            marks["next"] = elapsed + every
            self.started += time.time() - t        # not training time (max_seconds, train_seconds)
        return stop

    from evaluate import evaluate_examples

    finetune.Trainer._evaluate = _evaluate


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
    if spec.get("math_threads"):   # Paddle's dygraph math library uses one thread unless told
        import paddle

        paddle.base.core.set_num_threads(int(spec["math_threads"]))
    model_dir = build(spec) if "build" in spec else Path(spec["model"])
    train = read_examples(spec["train"])
    if "rate_steps" in spec:   # finetune itself for that many steps: its own logged examples/s
        steps = spec["rate_steps"]
        kwargs = dict(spec["kwargs"], num_epochs=1, valid_steps=steps, logging_steps=steps, max_seconds=0)
        done = finetune.finetune(train, train[:10], model_dir, save_dir / "rate", device="cpu", **kwargs)
        # a data set of fewer steps ends its epoch first: then finetune's overall rate
        rate = rate_log.rates[0][1] if rate_log.rates else done["examples_per_second"]
        result = {"examples_per_second": rate, "steps": min(steps, done["steps"])}
    else:
        dev = read_examples(spec["dev"]) if spec.get("dev") else None
        if spec.get("test_every_seconds"):
            test_along_the_way(finetune, read_examples(spec["test"]), spec["test_every_seconds"])
        started = time.time()
        result = finetune.finetune(train, dev, model_dir, save_dir, device="cpu", **spec["kwargs"])
        result["wall_seconds"] = round(time.time() - started, 1)
        rates = getattr(rate_log, "first_eval_rates", None) or rate_log.rates
        result["train_rate"] = rates[-1][1] if rates else result["examples_per_second"]
        if spec.get("test"):
            import uie.checkpoint
            import uie.predictor

            test = read_examples(spec["test"])
            predictor = uie.predictor.UIEPredictor.from_dir(save_dir / "model_best",
                                                        max_seq_len=spec["kwargs"].get("max_seq_len", 128),
                                                        batch_size=64)
            t = time.time()
            result["test"] = evaluate_examples(predictor, test, per_label=True)
            result["test"]["seconds"] = round(time.time() - t, 1)
            result["test_curve"] = TEST_CURVE
    Path(result_path).write_text(json.dumps(result, ensure_ascii=False, indent=2), encoding="utf-8")


if __name__ == "__main__":
    main(*sys.argv[1:3])
