"""Span precision / recall / F1 of a UIE checkpoint on UIE examples.

    python evaluate.py --model_path checkpoint/model_best --test_path data/dev.txt [--debug]

Examples are the lines ``doccano.py`` writes: ``{"content", "result_list":
[{"text", "start", "end"}], "prompt"}``. A predicted span counts when its
start and end equal a gold span of the same example (PaddleNLP's rule).

Per Label Studio label (``label_of``): a label asked with several prompts (its
``predicted_values``) and a relation asked once per subject are scored as
``/predict`` answers them: per text and label (and subject), the spans of all
its prompts together against the gold spans of all of them. On a terminal
(stderr a TTY) ``evaluate.py`` shows a progress bar; logs and pipes get none.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections import defaultdict
from pathlib import Path

from convert import read_jsonl


class DataError(ValueError):
    """An examples file is missing or malformed."""


def read_examples(path) -> list[dict]:
    """UIE examples from a JSONL file, checked line by line."""
    try:
        rows = read_jsonl(path)
    except ValueError as exc:
        raise DataError(str(exc)) from None
    for n, ex in enumerate(rows, 1):
        if not (isinstance(ex, dict) and isinstance(ex.get("content"), str)
                and isinstance(ex.get("prompt"), str) and isinstance(ex.get("result_list"), list)):
            raise DataError(f"{path}: example {n}: expected an object with 'content', 'prompt' "
                            "and 'result_list'")
        for r in ex["result_list"]:
            if not (isinstance(r, dict) and isinstance(r.get("start"), int)
                    and isinstance(r.get("end"), int)
                    and (0 <= r["start"] < r["end"] <= len(ex["content"])
                         or -len(ex["prompt"]) - 1 <= r["start"] < r["end"] <= -1)):
                raise DataError(f"{path}: example {n}: bad span {r!r}")
    return rows


def _prf(tp, n_pred, n_gold):
    p = tp / n_pred if n_pred else 0.0
    r = tp / n_gold if n_gold else 0.0
    f = 2 * p * r / (p + r) if p + r else 0.0
    return {"precision": round(p, 5), "recall": round(r, 5), "f1": round(f, 5),
            "tp": tp, "predicted": n_pred, "gold": n_gold}


PIECE = 256     # examples per extract call when progress is reported


def evaluate_examples(predictor, examples, per_label=False, label_of=None, progress=None) -> dict:
    """Micro P/R/F1 of ``predictor`` on ``examples``, and:

    - with ``per_label``, per prompt (``"per_label"``);
    - with ``label_of`` (prompt -> ``[(kind, name, unit)]``: ``"labels"`` or ``"relations"``,
      the Label Studio label or relation, and what tells its questions of one text apart,
      such as a relation's subject), per label: ``"by_label": {kind: {name: P/R/F1}}``,
      the spans of a text's prompts of one (kind, name, unit) pooled (``_pooled``);
    - ``progress(done, total)`` after every ``PIECE`` examples.
    """
    found = _extract(predictor, examples, progress)
    counts = defaultdict(lambda: [0, 0, 0])
    pools = defaultdict(lambda: (set(), set()))
    for ex, spans in zip(examples, found):
        gold = {(r["start"], r["end"]) for r in ex["result_list"]}
        pred = {(s.start, s.end) for s in spans[ex["prompt"]]}
        for key in ("all", ex["prompt"]) if per_label else ("all",):
            counts[key][0] += len(gold & pred)
            counts[key][1] += len(pred)
            counts[key][2] += len(gold)
        for kind, name, unit in label_of(ex["prompt"]) if label_of else ():
            pool = pools[(kind, name, ex["content"], unit)]
            pool[0].update(gold)
            pool[1].update(pred)
    metrics = _prf(*counts.pop("all", [0, 0, 0]))
    metrics["examples"] = len(examples)
    if per_label:
        metrics["per_label"] = {k: _prf(*v) for k, v in sorted(counts.items())}
    if label_of:
        metrics["by_label"] = _pooled(pools)
    return metrics


def _extract(predictor, examples, progress=None) -> list:
    """The predictor's spans of every example; in pieces, each reported, with ``progress``."""
    queries = [(ex["content"], [ex["prompt"]]) for ex in examples]
    if progress is None:
        return predictor.extract(queries)
    found = []
    progress(0, len(queries))
    for start in range(0, len(queries), PIECE):
        found += predictor.extract(queries[start:start + PIECE])
        progress(len(found), len(queries))
    return found


def _pooled(pools) -> dict:
    """``{kind: {name: P/R/F1}}`` of ``{(kind, name, text, unit): (gold, predicted)}``."""
    sums = defaultdict(lambda: defaultdict(lambda: [0, 0, 0]))
    for (kind, name, _, _), (gold, pred) in pools.items():
        c = sums[kind][name]
        c[0] += len(gold & pred)
        c[1] += len(pred)
        c[2] += len(gold)
    return {kind: {name: _prf(*c) for name, c in sorted(names.items())}
            for kind, names in sorted(sums.items())}


def terminal_bar(total, desc, unit="it"):
    """A tqdm bar on stderr when it is a terminal, else None (logs and pipes stay as they are)."""
    if not sys.stderr.isatty():
        return None
    from tqdm import tqdm

    return tqdm(total=total, desc=desc, unit=unit, file=sys.stderr, dynamic_ncols=True, leave=False)


def bar_progress(bar):
    """A ``progress(done, total)`` that moves ``bar`` (None: None)."""
    if bar is None:
        return None

    def progress(done, total):
        bar.total = total
        bar.update(done - bar.n)
    return progress


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model_path", required=True, help="checkpoint directory (e.g. checkpoint/model_best)")
    parser.add_argument("--test_path", required=True, help="UIE examples (doccano.py output)")
    parser.add_argument("--max_seq_len", type=int, default=512)
    parser.add_argument("--batch_size", type=int, default=16)
    parser.add_argument("--device", default="auto", choices=("auto", "cpu", "gpu"))
    parser.add_argument("--debug", action="store_true", help="also print metrics per label (prompt)")
    parser.add_argument("--output_json", help="also write the metrics to this JSON file")
    args = parser.parse_args(argv)

    import uie.checkpoint
    import uie.engine
    import uie.predictor

    if args.max_seq_len < uie.checkpoint.MIN_SEQ_LEN:
        parser.error(f"--max_seq_len must be at least {uie.checkpoint.MIN_SEQ_LEN}")
    uie.engine.use_all_cores()
    try:
        examples = read_examples(args.test_path)
        device = uie.checkpoint.select_device(args.device)
        predictor = uie.predictor.UIEPredictor.from_dir(args.model_path, device=device,
                                                    max_seq_len=args.max_seq_len,
                                                    batch_size=args.batch_size)
    except (DataError, uie.checkpoint.ModelLoadError) as exc:
        print(f"evaluate.py: error: {exc}", file=sys.stderr)
        return 2
    bar = terminal_bar(len(examples), "evaluating", unit="ex")
    metrics = evaluate_examples(predictor, examples, per_label=args.debug, progress=bar_progress(bar))
    if bar is not None:
        bar.close()
    print(f"Evaluation on {len(examples)} examples")
    print(f"Precision: {metrics['precision']:.5f} | Recall: {metrics['recall']:.5f} | F1: {metrics['f1']:.5f}")
    if args.debug:
        for label, m in metrics["per_label"].items():
            print(f"  {label}: Precision: {m['precision']:.5f} | Recall: {m['recall']:.5f} | "
                  f"F1: {m['f1']:.5f} (gold {m['gold']})")
    if args.output_json:
        Path(args.output_json).write_text(json.dumps(metrics, ensure_ascii=False, indent=2),
                                          encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
