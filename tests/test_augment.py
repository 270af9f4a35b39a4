"""uie/augment.py: a small scratch project's training texts, copied with their mentions swapped."""

from __future__ import annotations

from helpers import CLUENER_CONFIG, RELATION_CASES, RELATION_CONFIG, cluener_tasks, relation_tasks


def test_copies_shrink_as_a_project_grows():
    from uie.augment import copies_for

    assert [copies_for(n, up_to=800) for n in (0, 40, 160, 300, 400, 401, 800, 5000)] == [0, 3, 3, 1, 1, 0, 0, 0]
    # the default: a 1,000-task job (about 800 training texts) gets one copy of each, 1,500 tasks none
    assert [copies_for(n) for n in (160, 500, 600, 800, 850, 1000, 1001, 1600)] == [3, 3, 2, 1, 1, 1, 0, 0]
    assert all(n * (1 + copies_for(n)) <= max(n, 2000) for n in range(1, 3000))


def test_a_copy_swaps_each_mention_for_another_of_its_label_with_exact_offsets():
    from convert import label_studio_to_doccano
    from uie.augment import swap_mentions

    records = label_studio_to_doccano(relation_tasks(RELATION_CASES))
    copies = swap_mentions(records, 2, seed=1)
    assert len(copies) == 2 * len(records)          # none has overlapping entities or choices
    mentions = {(e["label"], r["text"][e["start_offset"]:e["end_offset"]]) for r in records for e in r["entities"]}
    changed = 0
    for record, copy in zip([r for r in records for _ in range(2)], copies):
        assert [e["id"] for e in copy["entities"]] == [e["id"] for e in sorted(record["entities"], key=lambda e: e["start_offset"])]
        assert copy["relations"] == record["relations"]          # the same entity ids: relations hold
        for old, new in zip(sorted(record["entities"], key=lambda e: e["start_offset"]), copy["entities"]):
            word = copy["text"][new["start_offset"]:new["end_offset"]]
            assert new["label"] == old["label"] and (new["label"], word) in mentions
            changed += word != record["text"][old["start_offset"]:old["end_offset"]]
        outside = [copy["text"][:copy["entities"][0]["start_offset"]], copy["text"][copy["entities"][-1]["end_offset"]:]]
        assert record["text"].startswith(outside[0]) and record["text"].endswith(outside[1])
    assert changed == sum(len(c["entities"]) for c in copies)    # every label has other mentions here


def test_overlapping_entities_and_choices_are_not_copied():
    from uie.augment import swap_mentions

    nested = {"id": 1, "text": "北京大学在北京", "relations": [],
              "entities": [{"id": 1, "start_offset": 0, "end_offset": 4, "label": "组织"},
                           {"id": 2, "start_offset": 0, "end_offset": 2, "label": "地点"},
                           {"id": 3, "start_offset": 5, "end_offset": 7, "label": "地点"}]}
    chosen = {"id": 2, "text": "上海下雨了", "relations": [], "choices": {"topic": ["天气"]},
              "entities": [{"id": 4, "start_offset": 0, "end_offset": 2, "label": "地点"}]}
    assert swap_mentions([nested, chosen], 3) == []


def test_a_scratch_job_trains_on_copies_of_its_training_texts_only():
    """``build_examples(augment=True)`` adds copies of the training split's texts (never of the
    held-out texts, which stay as they are), each with its spans at the swapped mentions."""
    from training_examples import build_examples, held_out_split

    tasks = cluener_tasks(60)
    plain = build_examples(tasks, CLUENER_CONFIG, min_dev_tasks=50)
    augmented = build_examples(tasks, CLUENER_CONFIG, min_dev_tasks=50, augment=True)
    assert plain.held_out and augmented.dev == plain.dev
    texts = {t["data"]["text"] for t in tasks}
    train_texts = {t for t in texts if not held_out_split({"text": t})}
    new = [ex for ex in augmented.train if ex["content"] not in texts]
    assert augmented.train[:len(plain.train)] == plain.train and len(new) == len(augmented.train) - len(plain.train)
    assert len({ex["content"] for ex in new}) > 2 * len(train_texts)      # 3 copies each, most of them new texts
    for ex in new:
        for span in ex["result_list"]:
            assert ex["content"][span["start"]:span["end"]] == span["text"]
    held = {ex["content"] for ex in plain.dev}
    assert not any(text in ex["content"] for ex in new for text in held if len(text) > 30)


def test_a_job_on_a_pretrained_model_is_not_augmented(tmp_path):
    """Only scratch models: a pretrained UIE keeps its recipe (``_is_scratch``)."""
    import train_job

    (tmp_path / "tokenizer_config.json").write_text('{"vocab_kind": "ernie"}', encoding="utf-8")
    assert not train_job._is_scratch(tmp_path)
    import uie.checkpoint

    (tmp_path / "tokenizer_config.json").write_text(
        '{"vocab_kind": "%s"}' % uie.checkpoint.SCRATCH_VOCAB_KIND, encoding="utf-8")
    assert train_job._is_scratch(tmp_path)


def test_relation_tasks_are_augmented_with_their_relations():
    from training_examples import build_examples

    tasks = relation_tasks(RELATION_CASES)
    plain = build_examples(tasks, RELATION_CONFIG, min_dev_tasks=50)
    augmented = build_examples(tasks, RELATION_CONFIG, min_dev_tasks=50, augment=True)
    new = [ex for ex in augmented.train[len(plain.train):] if ex["result_list"] and "的" in ex["prompt"]]
    assert new, "copies of relation texts keep relation examples"
    for ex in new:
        subject = ex["prompt"].split("的")[0]
        assert subject in ex["content"]


def test_without_held_out_texts_a_job_scores_on_the_annotated_texts_not_their_copies():
    from training_examples import build_examples

    tasks = cluener_tasks(20)
    augmented = build_examples(tasks, CLUENER_CONFIG, min_dev_tasks=50, augment=True)
    plain = build_examples(tasks, CLUENER_CONFIG, min_dev_tasks=50)
    assert not augmented.held_out and augmented.dev == plain.train and len(augmented.train) > len(plain.train)
