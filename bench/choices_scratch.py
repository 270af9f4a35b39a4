"""Choices on a scratch model (bench/notes.md, "Choices on a scratch model").

A classification derived from the CLUENER sample (tests/fixtures/cluener/train-1000.json):
does the sentence name a person (a ``name`` entity)? ``<Choices name="person"
predicted_values="人名">`` with the choices 有 / 无. The first 800 sentences are annotated
tasks, trained as a server job trains them (``training_examples.build_examples``: 20 % held out to
pick the checkpoint; ``finetune`` with a scratch model's defaults); the last 200 are the test
set, predicted as ``/predict`` predicts them (``choices.py``). A test sentence is right when
the one choice predicted is its annotation (no choice counts as wrong).

    .venv/bin/python bench/choices_scratch.py [--train 800] [--max_seconds 900] [--uie_prompts | --pooled]

By default this measures what a scratch model serves: ``finetune`` with its defaults trains
the choice head (``uie.choice_head``) beside the UIE, and ``UIEPredictor`` answers the
classification prompt from it. ``--uie_prompts`` measures the UIE's classification prompts
instead (``tagging_weight=0``: no tagger, no choice head; the UIE learns the prompts, what
a scratch model served before the head).

``--pooled`` measures the alternative instead, on the same split (the job's train and
held-out sentences, the same 200 test ones): a pooled classifier on a span tagger's
encoder (``uie.tagger``: LAC's character embedding, the BiGRU), max-pooled over the
sentence, a linear layer over the choices, cross-entropy, the best epoch on held-out.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
SAMPLE = REPO / "tests" / "fixtures" / "cluener" / "train-1000.json"
CONFIG = ('<View><Text name="text" value="$text"/><Choices name="person" toName="text" '
          'predicted_values="人名"><Choice value="有"/><Choice value="无"/></Choices></View>')


def cases():
    rows = [json.loads(line) for line in SAMPLE.read_text(encoding="utf-8").splitlines() if line.strip()]
    return [(r["text"], "有" if "name" in r["label"] else "无") for r in rows]


def tasks_of(cases_):
    return [{"id": i + 1, "data": {"text": text}, "annotations": [{"id": i + 1, "was_cancelled": False, "result": [
        {"from_name": "person", "to_name": "text", "type": "choices", "value": {"choices": [label]}}]}]}
            for i, (text, label) in enumerate(cases_)]


def accuracy(model_dir, test, max_seq_len):
    import choices
    from label_config import parse_choices
    from uie.predictor import UIEPredictor

    predictor = UIEPredictor.from_dir(model_dir, max_seq_len=max_seq_len)
    control = parse_choices(CONFIG)[0]
    queries = choices.build_queries([(k, control, text) for k, (text, _) in enumerate(test)])
    chosen = {t: item["value"]["choices"] for t, item in choices.items(queries, predictor.extract(choices.asked(queries)))}
    right = sum(chosen.get(k) == [label] for k, (_, label) in enumerate(test))
    per_class = {c: (sum(chosen.get(k) == [c] for k, (_, lab) in enumerate(test) if lab == c),
                     sum(lab == c for _, lab in test)) for c in ("有", "无")}
    return right / len(test), per_class, sum(k not in chosen for k in range(len(test)))


def pooled(examples, test, epochs=12, batch=32, seed=0):
    """The alternative: (test accuracy, seconds, best held-out accuracy)."""
    import random

    import numpy as np
    import paddle

    import uie.checkpoint
    import uie.tagger
    from uie.tokenizer import OffsetTokenizer, scratch_vocab

    labels = ("有", "无")
    gold = dict(cases())
    texts = lambda exs: list(dict.fromkeys(ex["content"] for ex in exs))   # noqa: E731
    train, dev = texts(examples.train), texts(examples.dev)
    vocab = scratch_vocab()
    tok = OffsetTokenizer({t: i for i, t in enumerate(vocab)})
    encoder = uie.tagger.build(vocab, ["x"], seed=seed)
    head = paddle.nn.Linear(2 * encoder.config["hidden_size"], len(labels))
    params = encoder.parameters() + head.parameters()
    optimizer = paddle.optimizer.AdamW(learning_rate=2e-3, parameters=params)

    def logits(batch_texts):
        ids = [tok.encode(t)[:126] or [tok.unk_id] for t in batch_texts]
        width = max(map(len, ids))
        arr = np.array([x + [tok.pad_id] * (width - len(x)) for x in ids], dtype="int64")
        hidden, _ = encoder.gru(encoder.dropout(encoder.embedding(paddle.to_tensor(arr))),
                                sequence_length=paddle.to_tensor([len(x) for x in ids]))
        mask = paddle.to_tensor((arr != tok.pad_id)[:, :, None].astype("float32"))
        return head(paddle.max(hidden * mask - 1e4 * (1 - mask), axis=1))

    def accuracy(batch_texts):
        encoder.eval()
        with paddle.no_grad():
            pred = np.concatenate([logits(batch_texts[k:k + 64]).numpy().argmax(-1)
                                   for k in range(0, len(batch_texts), 64)])
        encoder.train()
        return float(np.mean([labels[p] == gold[t] for p, t in zip(pred, batch_texts)]))

    rng, started, best = random.Random(seed), time.time(), (-1.0, 0.0)
    for _ in range(epochs):
        rng.shuffle(train)
        for k in range(0, len(train), batch):
            chunk = train[k:k + batch]
            target = paddle.to_tensor([labels.index(gold[t]) for t in chunk], dtype="int64")
            loss = paddle.nn.functional.cross_entropy(logits(chunk), target)
            loss.backward()
            optimizer.step()
            optimizer.clear_grad()
        dev_acc = accuracy(dev)
        if dev_acc > best[0]:
            best = (dev_acc, accuracy([t for t, _ in test]))
    return best[1], time.time() - started, best[0]


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--train", type=int, default=800)
    parser.add_argument("--max_seconds", type=float, default=900)
    parser.add_argument("--max_seq_len", type=int, default=128)
    parser.add_argument("--pooled", action="store_true")
    parser.add_argument("--uie_prompts", action="store_true")
    parser.add_argument("--seed", type=int, default=1000)
    args = parser.parse_args()
    import finetune
    import training_examples
    import uie.checkpoint

    data = cases()
    train_cases, test = data[:args.train], data[800:]
    work = Path(tempfile.mkdtemp(prefix="choices-bench-"))
    base = uie.checkpoint.build_scratch(work / "scratch")
    examples = training_examples.build_examples(tasks_of(train_cases), CONFIG, min_dev_tasks=50)
    if args.pooled:
        acc, seconds, dev_acc = pooled(examples, test)
        print(json.dumps({"pooled_classifier": True, "test_accuracy": round(acc, 3), "seconds": round(seconds, 1),
                          "held_out_accuracy": round(dev_acc, 3)}))
        return
    started = time.time()
    metrics = finetune.finetune(examples.train, examples.dev, base, work / "ckpt", max_seq_len=args.max_seq_len,
                                valid_steps=0, device="cpu", max_seconds=args.max_seconds, seed=args.seed,
                                tagging_weight=0.0 if args.uie_prompts else None)
    seconds = time.time() - started
    served = (work / "ckpt" / "model_best" / "choice_head.json").exists()
    acc, per_class, none = accuracy(work / "ckpt" / "model_best", test, args.max_seq_len)
    majority = max(sum(lab == c for _, lab in test) for c in ("有", "无")) / len(test)
    print(json.dumps({"classifier": "choice head (served)" if served else "UIE classification prompts",
                      "seed": args.seed, "train_tasks": len(train_cases), "train_examples": len(examples.train),
                      "dev_examples": len(examples.dev), "test": len(test), "train_seconds": round(seconds, 1),
                      "epochs_run": metrics["epochs_run"], "steps": metrics["steps"], "dev_f1": metrics["f1"],
                      "test_accuracy": round(acc, 3), "per_class_right": per_class, "no_choice": none,
                      "majority_baseline": majority}, ensure_ascii=False))


if __name__ == "__main__":
    main()
