"""A small scratch project's promoted candidate is trained again on all its texts (train_job.refits),
and the next job never scores that version on the held-out texts it was refitted on."""

from __future__ import annotations

import json

from helpers import CLUENER_CONFIG, cluener_tasks, wait_job


def held_out_f1(model, dev):
    import uie.predictor
    from evaluate import evaluate_examples

    return evaluate_examples(uie.predictor.UIEPredictor.from_dir(model), dev)["f1"]


def test_a_small_scratch_projects_candidate_is_refitted_on_its_held_out_texts(tmp_path, scratch_small):
    """The job scores the model trained without the held-out texts, promotes, then trains again
    on every text: the served candidate has learnt the held-out texts the scored one never saw."""
    import train_job
    import training_examples

    spec = train_job.JobSpec(project="1", label_config=CLUENER_CONFIG, tasks=cluener_tasks(16), source="test",
                             model_path=str(scratch_small), model_version="base", num_epochs=40,
                             max_seq_len=64, min_dev_tasks=8, inference_precision="fp32")
    result = train_job.train(spec, tmp_path / "work")
    assert result["held_out"] and result["promote"], result["metrics"]
    examples = training_examples.build_examples(spec.tasks, CLUENER_CONFIG, 8)
    refit = result["refit"]
    assert result["candidate"] == str(tmp_path / "work" / "refit" / "model_best")
    assert refit["tasks"] == 16 and refit["held_out_texts"] == sorted(
        {train_job.text_key(ex["content"]) for ex in examples.dev})
    scored = held_out_f1(tmp_path / "work" / "ckpt" / "model_best", examples.dev)
    assert abs(scored - result["metrics"]["f1"]) < 1e-6            # the job's scores: the model before its refit
    assert held_out_f1(result["candidate"], examples.dev) > scored + 0.3    # the refit learnt the held-out texts


def test_a_pretrained_model_or_a_large_project_is_not_refitted(tmp_path, scratch_small, monkeypatch):
    import train_job
    import training_examples

    examples = training_examples.build_examples(cluener_tasks(16), CLUENER_CONFIG, 8)
    (tmp_path / "tokenizer_config.json").write_text('{"vocab_kind": "ernie"}', encoding="utf-8")
    spec = train_job.JobSpec(project="1", label_config=CLUENER_CONFIG, tasks=[], source="test",
                             model_path=str(tmp_path), model_version="base")
    assert not train_job.refits(spec, examples)                    # a pretrained UIE keeps its recipe
    spec.model_path = str(scratch_small)
    assert train_job.refits(spec, examples)
    monkeypatch.setattr(train_job, "REFIT_BELOW", 16)
    assert not train_job.refits(spec, examples)
    assert not train_job.refits(spec, training_examples.build_examples(cluener_tasks(6), CLUENER_CONFIG, 8))   # no held-out


def test_the_next_job_does_not_score_a_refitted_version_on_texts_it_trained_on(tmp_path):
    import train_job
    import training_examples

    dev = training_examples.build_examples(cluener_tasks(30), CLUENER_CONFIG, 8).dev
    texts = sorted({ex["content"] for ex in dev})
    version = tmp_path / "v1"
    version.mkdir()
    assert train_job.fair_dev(dev, version) == dev                          # no meta.json: a base model
    (version / "meta.json").write_text(json.dumps({"refit": None}), encoding="utf-8")
    assert train_job.fair_dev(dev, version) == dev                          # not refitted
    seen = [train_job.text_key(t) for t in texts[:2]]
    (version / "meta.json").write_text(json.dumps({"refit": {"held_out_texts": seen}}), encoding="utf-8")
    fair = train_job.fair_dev(dev, version)
    assert {ex["content"] for ex in fair} == set(texts[2:]) and fair == [ex for ex in dev if ex["content"] in texts[2:]]
    every = [train_job.text_key(t) for t in texts]
    (version / "meta.json").write_text(json.dumps({"refit": {"held_out_texts": every}}), encoding="utf-8")
    assert train_job.fair_dev(dev, version) == dev                          # nothing left: all, as before


def test_a_refitted_version_records_it_and_the_next_job_scores_it_fairly(make_app, scratch_small):
    """Through the server: the version's meta.json (and /versions) say what it was refitted on;
    the next job, with more tasks, scores both models on the texts that version never saw."""
    app = make_app(uie_model=str(scratch_small), train_epochs=30, train_max_seq_len=64, train_min_dev_tasks=8,
                   max_seq_len=512, inference_precision="fp32")
    client = app.test_client()
    first = client.post("/train", json={"annotations": cluener_tasks(16), "project": "9",
                                        "label_config": CLUENER_CONFIG}).json["job"]
    done = wait_job(lambda p: client.get(p).json, "9", first["id"])
    assert done["state"] == "done" and done["promoted"], done
    [version] = client.get("/versions?project=9").json["projects"]["9"]["versions"]
    assert version["refit"]["tasks"] == 16 and version["refit"]["held_out_texts"]
    second = client.post("/train", json={"annotations": cluener_tasks(40), "project": "9",
                                         "label_config": CLUENER_CONFIG}).json["job"]
    again = wait_job(lambda p: client.get(p).json, "9", second["id"])
    assert again["state"] == "done", again
    import train_job
    import training_examples

    dev = training_examples.build_examples(cluener_tasks(40), CLUENER_CONFIG, 8).dev
    unseen = [ex for ex in dev if train_job.text_key(ex["content"]) not in set(version["refit"]["held_out_texts"])]
    assert 0 < len(unseen) < len(dev) and again["metrics"]["examples"] == len(unseen)
