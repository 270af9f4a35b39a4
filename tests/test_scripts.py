"""finetune.py and evaluate.py as a user runs them, and their output in PaddleNLP's Taskflow."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from helpers import EDGE_CASES, PERSON, PLACE, REPO, SEQ_LEN, cluener_tasks, uie_examples


def run(script, *args):
    return subprocess.run([sys.executable, str(REPO / script), *map(str, args)], cwd=REPO,
                          capture_output=True, text=True, timeout=600)


def write_jsonl(path, rows):
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    return path


def read_jsonl(path):
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def span_scores(model, examples, max_seq_len):
    """Micro precision / recall / F1 of exact spans (PaddleNLP's rule), counted here from
    the model's own predictions, not by evaluate.py."""
    import uie.predictor

    found = uie.predictor.UIEPredictor.from_dir(model, max_seq_len=max_seq_len).extract(
        [(ex["content"], [ex["prompt"]]) for ex in examples])
    assert len(found) == len(examples)
    tp = n_pred = n_gold = 0
    for ex, res in zip(examples, found):
        gold = {(r["start"], r["end"]) for r in ex["result_list"]}
        pred = {(s.start, s.end) for s in res[ex["prompt"]]}
        tp, n_pred, n_gold = tp + len(gold & pred), n_pred + len(pred), n_gold + len(gold)
    p = tp / n_pred if n_pred else 0.0
    r = tp / n_gold if n_gold else 0.0
    f1 = 2 * p * r / (p + r) if p + r else 0.0
    return {"tp": tp, "predicted": n_pred, "gold": n_gold, "precision": p, "recall": r, "f1": f1}


def test_the_tutorial_pipeline_from_the_command_line(tmp_path, scratch_small):
    """Label Studio export -> convert.py -> doccano.py -> finetune.py -> evaluate.py."""
    export = tmp_path / "export.json"
    export.write_text(json.dumps(cluener_tasks(20), ensure_ascii=False), encoding="utf-8")
    assert run("convert.py", "--label_studio_file", export, "--doccano_file", tmp_path / "doccano.jsonl").returncode == 0
    done = run("doccano.py", "--doccano_file", tmp_path / "doccano.jsonl", "--save_dir", tmp_path / "data",
               "--splits", "0.8", "0.2", "0", "--negative_ratio", "3")
    assert done.returncode == 0, done.stderr
    trained = run("finetune.py", "--train_path", tmp_path / "data/train.txt", "--dev_path",
                  tmp_path / "data/dev.txt", "--save_dir", tmp_path / "ckpt", "--model", scratch_small,
                  "--num_epochs", 2, "--batch_size", 8, "--max_seq_len", 64, "--device", "cpu",
                  "--logging_steps", 1, "--learning_rate", "1e-3", "--max_negatives", 2,
                  "--tagging_weight", 0.5)
    assert trained.returncode == 0, trained.stderr[-2000:]
    assert "examples/s" in trained.stderr and "Best dev: Precision:" in trained.stdout
    best = tmp_path / "ckpt" / "model_best"
    for name in ("config.json", "model_state.pdparams", "vocab.txt", "special_tokens_map.json",
                 "tokenizer_config.json"):
        assert (best / name).is_file(), name
    assert json.loads((best / "config.json").read_text())["architectures"] == ["UIE"]
    metrics = json.loads((tmp_path / "ckpt" / "metrics.json").read_text())
    assert metrics["epochs_run"] == 2 and metrics["tagging_weight"] == 0.5 and metrics["max_negatives"] == 2
    assert [h["epoch"] for h in metrics["history"]] == [1, 2]      # one evaluation per epoch
    # the saved model is the best evaluation, and its dev scores are what the model it saved
    # predicts on dev.txt (counted here, from its spans and dev.txt's gold ones)
    assert metrics["f1"] == max(h["f1"] for h in metrics["history"])
    dev = read_jsonl(tmp_path / "data" / "dev.txt")
    expected = span_scores(best, dev, 64)
    assert expected["gold"] == sum(len(ex["result_list"]) for ex in dev) > 0
    assert {k: metrics[k] for k in ("tp", "predicted", "gold")} == \
           {k: expected[k] for k in ("tp", "predicted", "gold")}, (metrics, expected)
    for key in ("precision", "recall", "f1"):
        assert metrics[key] == pytest.approx(expected[key], abs=1e-5), key

    evaluated = run("evaluate.py", "--model_path", best, "--test_path", tmp_path / "data/dev.txt",
                    "--max_seq_len", 64, "--debug", "--output_json", tmp_path / "eval.json")
    assert evaluated.returncode == 0, evaluated.stderr[-2000:]
    line = [l for l in evaluated.stdout.splitlines() if l.startswith("Precision:")]
    assert line == [f"Precision: {expected['precision']:.5f} | Recall: {expected['recall']:.5f} | "
                    f"F1: {expected['f1']:.5f}"], (line, expected)
    scored = json.loads((tmp_path / "eval.json").read_text())
    assert (scored["tp"], scored["predicted"], scored["gold"], scored["examples"]) == \
           (expected["tp"], expected["predicted"], expected["gold"], len(dev))
    assert "name: Precision:" in evaluated.stdout     # per label with --debug
    print(f"\ntutorial pipeline: dev {len(dev)} examples, {expected}")


def test_evaluate_scores_a_trained_model(tmp_path, trained_model):
    examples = write_jsonl(tmp_path / "test.txt", uie_examples())
    out = run("evaluate.py", "--model_path", trained_model, "--test_path", examples,
              "--max_seq_len", SEQ_LEN, "--output_json", tmp_path / "m.json")
    assert out.returncode == 0, out.stderr[-2000:]
    assert "Precision: 1.00000 | Recall: 1.00000 | F1: 1.00000" in out.stdout
    # a wrong gold span costs precision and recall
    wrong = uie_examples()
    wrong[0]["result_list"][0].update(start=0, end=3, text=wrong[0]["content"][0:3])
    out = run("evaluate.py", "--model_path", trained_model, "--test_path",
              write_jsonl(tmp_path / "wrong.txt", wrong), "--max_seq_len", SEQ_LEN)
    assert out.returncode == 0, out.stderr[-2000:]
    gold = sum(len(ex["result_list"]) for ex in wrong)              # 16 spans, 15 of them predicted
    assert gold == 16
    assert f"Precision: {15 / 16:.5f} | Recall: {15 / 16:.5f} | F1: {15 / 16:.5f}" in out.stdout


def test_finetune_reports_the_dev_scores_of_the_model_it_saves(tmp_path, trained_model):
    """The fixture model already answers its examples; one epoch at a negligible learning rate
    keeps it so. Against a dev set with one gold span moved, finetune.py must report exactly
    15 of 16 spans right: precision = recall = F1 = 0.9375."""
    wrong = uie_examples()
    wrong[0]["result_list"][0].update(start=0, end=3, text=wrong[0]["content"][0:3])
    trained = run("finetune.py", "--train_path", write_jsonl(tmp_path / "train.txt", uie_examples()),
                  "--dev_path", write_jsonl(tmp_path / "dev.txt", wrong), "--save_dir", tmp_path / "ckpt",
                  "--model", trained_model, "--num_epochs", 1, "--learning_rate", "1e-9",
                  "--tagging_weight", 0, "--batch_size", 8, "--max_seq_len", SEQ_LEN, "--device", "cpu")
    assert trained.returncode == 0, trained.stderr[-2000:]
    metrics = json.loads((tmp_path / "ckpt" / "metrics.json").read_text())
    assert (metrics["tp"], metrics["predicted"], metrics["gold"]) == (15, 16, 16), metrics
    assert metrics["precision"] == metrics["recall"] == metrics["f1"] == 0.9375
    assert metrics["epochs_run"] == 1 and [h["f1"] for h in metrics["history"]] == [0.9375]
    assert span_scores(tmp_path / "ckpt" / "model_best", wrong, SEQ_LEN)["f1"] == 0.9375


@pytest.mark.parametrize("args, message", [
    (["--train_path", "missing.txt"], "file not found"),
    (["--train_path", "{empty}"], "training set is empty"),
    (["--train_path", "{bad}"], "line 2 is not valid JSON"),
    (["--train_path", "{good}", "--model", "/no/such/model"], "no such checkpoint directory"),
])
def test_finetune_rejects_bad_input_with_a_message(tmp_path, args, message):
    files = {"empty": tmp_path / "empty.txt", "bad": tmp_path / "bad.txt", "good": tmp_path / "good.txt"}
    files["empty"].write_text("")
    files["bad"].write_text(json.dumps(uie_examples()[0], ensure_ascii=False) + "\n{oops\n")
    write_jsonl(files["good"], uie_examples()[:2])
    args = [a.format(**files) for a in args]
    out = run("finetune.py", *args, "--save_dir", tmp_path / "ckpt", "--device", "cpu")
    assert out.returncode == 2
    assert message in out.stderr and "Traceback" not in out.stderr


def test_evaluate_rejects_a_missing_model(tmp_path):
    out = run("evaluate.py", "--model_path", tmp_path / "none", "--test_path",
              write_jsonl(tmp_path / "t.txt", uie_examples()[:1]))
    assert out.returncode == 2 and "not a UIE checkpoint" in out.stderr


def test_taskflow_loads_a_finetuned_model_and_agrees_with_the_backend(trained_model, tmp_path):
    import shutil

    import paddlenlp.taskflow.utils as taskflow_utils
    from paddlenlp import Taskflow

    import uie.predictor

    model_dir = tmp_path / "model"          # Taskflow writes static/ into its task_path
    shutil.copytree(trained_model, model_dir)
    taskflow_utils.DOWNLOAD_CHECK = True    # no usage ping
    flow = Taskflow("information_extraction", schema=[PERSON, PLACE], task_path=str(model_dir),
                    max_seq_len=SEQ_LEN)
    texts = [text for text, _ in EDGE_CASES[:5]]
    theirs = flow(texts)
    ours = uie.predictor.UIEPredictor.from_dir(trained_model, max_seq_len=SEQ_LEN).extract(
        [(t, [PERSON, PLACE]) for t in texts])
    assert len(theirs) == len(ours) == len(texts) == 5
    for text, t, o in zip(texts, theirs, ours):
        for label in (PERSON, PLACE):
            assert sorted((x["start"], x["end"]) for x in t.get(label, [])) == \
                   [(s.start, s.end) for s in o[label]], text
            for x, s in zip(sorted(t.get(label, []), key=lambda x: x["start"]), o[label]):
                assert x["probability"] == pytest.approx(s.score, abs=1e-4)
