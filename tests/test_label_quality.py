"""Per-label quality: every version's precision, recall and F1 per Label Studio label and relation
(not per prompt), for the candidate and the served model on the same annotations, in the job
record, the version's meta.json (/versions) and Prometheus."""

from __future__ import annotations

from helpers import (EDGE_CASES, FOUNDER, ORG, PERSON, PLACE, RELATION_CASES, RELATION_CONFIG, SEQ_LEN,
                     annotation_result, uie_examples, wait_job)
from test_metrics import parse

# 人名 is asked with two words: the Label Studio label is "Person"
CONFIG = RELATION_CONFIG.replace(f'<Label value="{PERSON}"/>',
                                 f'<Label value="Person" predicted_values="{PERSON},人物"/>')
WITH_PLACE = CONFIG.replace(f'<Label value="{ORG}"/>', f'<Label value="{ORG}"/><Label value="{PLACE}"/>')


def test_prompts_are_grouped_by_label_and_relation():
    import training_examples

    label_of = training_examples.label_of_prompt(CONFIG, "ch")
    assert label_of(PERSON) == label_of("人物") == [("labels", "Person", "")]
    assert label_of(ORG) == [("labels", ORG, "")]
    assert label_of(f"阿里巴巴的{FOUNDER}") == [("relations", FOUNDER, "阿里巴巴")]
    assert label_of(f"马云的{FOUNDER}") == [("relations", FOUNDER, "马云")]       # an inverse negative
    assert label_of(f"阿里巴巴的{PERSON}") == []        # PaddleNLP's negative the server never asks
    assert training_examples.label_of_prompt(CONFIG, "en")(f"{FOUNDER} of 阿里巴巴") == [("relations", FOUNDER, "阿里巴巴")]


def test_a_label_asked_with_two_prompts_is_scored_as_predict_answers_it(trained_model):
    """Each text's spans of 人名 and 人物 pooled against its gold spans, counted once."""
    import training_examples
    import uie.predictor
    from evaluate import evaluate_examples

    predictor = uie.predictor.UIEPredictor.from_dir(trained_model, device="cpu", max_seq_len=SEQ_LEN)
    examples = uie_examples()
    examples += [dict(ex, prompt="人物") for ex in examples if ex["prompt"] == PERSON]
    relation = [{"content": text, "prompt": f"{subject}的{FOUNDER}", "result_list": []}
                for text, spans in EDGE_CASES[:2] for _, s, e in spans for subject in [text[s:e]]]
    seen = []
    metrics = evaluate_examples(predictor, examples + relation, per_label=True,
                                label_of=training_examples.label_of_prompt(WITH_PLACE, "ch"),
                                progress=lambda done, total: seen.append((done, total)))
    persons = sum(1 for _, spans in EDGE_CASES for label, _, _ in spans if label == PERSON)
    places = sum(1 for _, spans in EDGE_CASES for label, _, _ in spans if label != PERSON)
    person, place = metrics["by_label"]["labels"]["Person"], metrics["by_label"]["labels"][PLACE]
    assert person["gold"] == persons and place["gold"] == places          # not once per prompt
    assert metrics["per_label"][PERSON]["gold"] == metrics["per_label"]["人物"]["gold"] == persons
    assert person["recall"] == 1.0 and place["f1"] == 1.0                 # the model knows 人名
    assert person["predicted"] >= metrics["per_label"][PERSON]["predicted"]
    assert set(metrics["by_label"]["relations"]) == {FOUNDER}             # one entry, not one per subject
    assert metrics["by_label"]["relations"][FOUNDER]["gold"] == 0
    assert seen[-1] == (len(examples) + len(relation),) * 2


def relation_tasks():
    tasks = []
    for i, (text, spans, relations) in enumerate(RELATION_CASES, 1):
        result = annotation_result(text, spans, relations)
        for item in result:
            if item["type"] == "labels" and item["value"]["labels"] == [PERSON]:
                item["value"]["labels"] = ["Person"]
        tasks.append({"id": i, "data": {"text": text},
                      "annotations": [{"id": 100 + i, "result": result, "was_cancelled": False}]})
    return tasks


def test_a_job_reports_both_models_per_label_in_jobs_versions_and_metrics(make_app, scratch_small):
    client = make_app(uie_model=str(scratch_small), train_epochs=20, train_max_seq_len=64).test_client()
    job = client.post("/train", json={"annotations": relation_tasks(), "project": "41.1",
                                      "label_config": CONFIG}).json["job"]
    done = wait_job(lambda p: client.get(p).json, "41", job["id"])
    assert done["state"] == "done" and done["promoted"], done
    per_label, previous = done["per_label"], done["previous_per_label"]
    assert {k: set(v) for k, v in per_label.items()} == {"labels": {"Person", ORG}, "relations": {FOUNDER}}
    assert {k: set(v) for k, v in previous.items()} == {k: set(v) for k, v in per_label.items()}
    persons = sum(1 for _, spans, _ in RELATION_CASES for label, _, _ in spans if label == PERSON)
    relations = sum(len(rels) for _, _, rels in RELATION_CASES)
    assert per_label["labels"]["Person"]["gold"] == previous["labels"]["Person"]["gold"] == persons
    assert per_label["relations"][FOUNDER]["gold"] == previous["relations"][FOUNDER]["gold"] == relations
    assert max(m["f1"] for names in per_label.values() for m in names.values()) > 0

    [version] = client.get("/versions?project=41").json["projects"]["41"]["versions"]
    assert version["model_version"] == done["model_version"]
    assert version["per_label"] == per_label and version["previous_per_label"] == previous

    samples = parse(client.get("/metrics").get_data(as_text=True))
    for kind, names in per_label.items():
        for name, scores in names.items():
            for m in ("precision", "recall", "f1"):
                key = (f"uie_version_label_{m}", tuple(sorted({"project": "41", "label": name,
                                                               "kind": kind[:-1]}.items())))
                assert key in samples and samples[key] == scores[m], (key, scores)
    assert not [k for k in samples if k[0].startswith("uie_version_label") and ("label", PERSON) in k[1]]
