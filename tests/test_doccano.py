"""Tests for doccano.py: doccano JSONL -> UIE train/dev/test examples."""

from __future__ import annotations

import json
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import convert  # noqa: E402
import doccano  # noqa: E402

LABELS = [f"L{k:02d}" for k in range(12)]


def ent(eid, start, end, label):
    return {"id": eid, "label": label, "start_offset": start, "end_offset": end}


def rec(rid, text, entities=(), relations=()):
    return {"id": rid, "text": text, "entities": list(entities), "relations": list(relations)}


def one_label_records(n):
    """n records, record k has one span labelled LABELS[k % 12]."""
    out = []
    for k in range(n):
        text = f"记录{k:03d}: 张三"
        out.append(rec(k, text, [ent(0, len(text) - 2, len(text), LABELS[k % len(LABELS)])]))
    return out


def check_offsets(examples):
    for ex in examples:
        for r in ex["result_list"]:
            assert ex["content"][r["start"]:r["end"]] == r["text"], ex


def key(ex):
    return json.dumps(ex, ensure_ascii=False, sort_keys=True)


# ---------------------------------------------------------------------------
# positives
# ---------------------------------------------------------------------------
def test_entity_examples_group_spans_by_label():
    text = "张三和李四在北京见面"
    r = rec(1, text, [ent(0, 0, 2, "人物"), ent(1, 3, 5, "人物"), ent(2, 6, 8, "地点"), ent(3, 0, 2, "人物")])
    train, dev, test = doccano.convert_doccano([r], splits=(1, 0, 0), is_shuffle=False)
    assert (dev, test) == ([], [])
    assert train == [
        {"content": text, "result_list": [{"text": "张三", "start": 0, "end": 2}, {"text": "李四", "start": 3, "end": 5}],
         "prompt": "人物"},
        {"content": text, "result_list": [{"text": "北京", "start": 6, "end": 8}], "prompt": "地点"},
    ]


@pytest.mark.parametrize("lang,prompt,inverse", [("ch", "张三的出生地", "北京的出生地"),
                                                  ("en", "出生地 of 张三", "出生地 of 北京")])
def test_relation_prompts(lang, prompt, inverse):
    text = "张三出生于北京"
    r = rec(1, text, [ent(10, 0, 2, "人物"), ent(11, 5, 7, "地点")],
            [{"id": 0, "from_id": 10, "to_id": 11, "type": "出生地"}])
    train, _, _ = doccano.convert_doccano([r], splits=(1, 0, 0), schema_lang=lang, is_shuffle=False)
    by_prompt = {ex["prompt"]: ex["result_list"] for ex in train}
    assert by_prompt[prompt] == [{"text": "北京", "start": 5, "end": 7}]
    assert by_prompt["人物"] == [{"text": "张三", "start": 0, "end": 2}]
    assert by_prompt[inverse] == []  # PaddleNLP's inverse-relation negative


def test_relations_carried_through_from_label_studio():
    text = "😀 张三出生于北京，\r\n毕业于清华大学。"

    def region(rid, span, label):
        start = text.index(span)
        return {"id": rid, "type": "labels", "from_name": "label", "to_name": "text",
                "value": {"start": start, "end": start + len(span), "text": span, "labels": [label]}}

    task = {"id": 9, "data": {"text": text}, "annotations": [{
        "id": 1, "was_cancelled": False, "ground_truth": False, "updated_at": "2024-01-01T00:00:00Z",
        "result": [region("a", "张三", "人物"), region("b", "北京", "地点"), region("c", "清华大学", "机构"),
                   {"type": "relation", "from_id": "a", "to_id": "b", "direction": "right", "labels": ["出生地"]},
                   {"type": "relation", "from_id": "a", "to_id": "c", "direction": "right", "labels": ["毕业院校"]}],
    }]}
    records = convert.label_studio_to_doccano([task])
    _, dev, _ = doccano.convert_doccano(records, splits=(0, 1, 0))
    check_offsets(dev)
    by_prompt = {ex["prompt"]: ex["result_list"] for ex in dev}
    start = text.index("北京")
    assert by_prompt["张三的出生地"] == [{"text": "北京", "start": start, "end": start + 2}]
    start = text.index("清华大学")
    assert by_prompt["张三的毕业院校"] == [{"text": "清华大学", "start": start, "end": start + 4}]
    # dev/test relation negatives: every subject x every other relation type (here none left)
    assert {ex["prompt"] for ex in dev} == {"人物", "地点", "机构", "张三的出生地", "张三的毕业院校"}


def test_dev_relation_negatives_are_complete():
    records = [
        rec(1, "张三出生于北京", [ent(0, 0, 2, "人物"), ent(1, 5, 7, "地点")],
            [{"id": 0, "from_id": 0, "to_id": 1, "type": "出生地"}]),
        rec(2, "李四在上海工作", [ent(0, 0, 2, "人物"), ent(1, 3, 5, "地点")],
            [{"id": 0, "from_id": 0, "to_id": 1, "type": "工作地"}]),
    ]
    _, dev, _ = doccano.convert_doccano(records, splits=(0, 1, 0), is_shuffle=False)
    negatives = {(ex["content"][:2], ex["prompt"]) for ex in dev if not ex["result_list"]}
    assert negatives == {("张三", "张三的工作地"), ("李四", "李四的出生地")}


def test_entity_level_classification_label():
    text = "这家店的服务很好"
    r = rec(1, text, [ent(0, 4, 6, "评价维度##正向")])
    train, _, _ = doccano.convert_doccano([r], splits=(1, 0, 0), is_shuffle=False)
    assert train[0] == {"content": text, "result_list": [{"text": "服务", "start": 4, "end": 6}], "prompt": "评价维度"}
    cls = train[-1]
    assert cls["prompt"] in ("服务的情感倾向[正向,负向]", "服务的情感倾向[负向,正向]")
    (res,) = cls["result_list"]
    pos = res["start"] + len(cls["prompt"]) + 1  # PaddleNLP: negative offsets index the prompt
    assert cls["prompt"][pos:pos + len(res["text"])] == "正向" == res["text"]


def test_cls_task_type():
    records = [{"id": k, "text": f"文本{k}", "label": ["正向" if k % 2 else "负向"]} for k in range(4)]
    train, dev, test = doccano.convert_doccano(records, task_type="cls", splits=(0.5, 0.5), is_shuffle=False)
    assert [ex["content"] for ex in train] == ["文本0", "文本1"] and len(dev) == 2 and test == []
    for ex in train + dev:
        (res,) = ex["result_list"]
        pos = res["start"] + len(ex["prompt"]) + 1
        assert ex["prompt"][pos:pos + len(res["text"])] == res["text"]


def test_other_task_type_rejected():
    with pytest.raises(ValueError, match="task_type"):
        doccano.convert_doccano(one_label_records(3), task_type="nope")


# ---------------------------------------------------------------------------
# negatives
# ---------------------------------------------------------------------------
def test_negatives_sampled_for_train_only():
    records = one_label_records(60)
    train, dev, test = doccano.convert_doccano(records, splits=(0.6, 0.2, 0.2), negative_ratio=2)
    for split in (train, dev, test):
        check_offsets(split)
    per_content = {}
    for ex in train:
        per_content.setdefault(ex["content"], []).append(ex)
    assert len(per_content) == 36
    for exs in per_content.values():
        positives = [ex for ex in exs if ex["result_list"]]
        negatives = [ex for ex in exs if not ex["result_list"]]
        assert len(positives) == 1
        assert len(negatives) == 2  # 11 candidates > 2 * 1 -> sampled down to 2
        assert positives[0]["prompt"] not in {ex["prompt"] for ex in negatives}
    for split in (dev, test):
        per = Counter(ex["content"] for ex in split if not ex["result_list"])
        assert len(per) == 12 and set(per.values()) == {11}  # all other labels


def test_negative_ratio_minus_one_keeps_all():
    train, _, _ = doccano.convert_doccano(one_label_records(12), splits=(1, 0, 0), negative_ratio=-1)
    assert len(train) == 12 * 12


def test_record_without_entities_gets_every_label_as_negative():
    records = one_label_records(3) + [rec(99, "什么都没有", [])]
    train, _, _ = doccano.convert_doccano(records, splits=(1, 0, 0), negative_ratio=1)
    empty = sorted(ex["prompt"] for ex in train if ex["content"] == "什么都没有")
    assert empty == ["L00", "L01", "L02"]


def test_labels_nobody_annotated_become_negatives():
    records = one_label_records(2)
    train, _, _ = doccano.convert_doccano(records, splits=(1, 0, 0), negative_ratio=-1,
                                          labels=["L00", "没标过"])
    prompts = sorted(ex["prompt"] for ex in train)
    assert prompts == ["L00", "L00", "L01", "L01", "没标过", "没标过"]
    assert all(ex["result_list"] == [] for ex in train if ex["prompt"] == "没标过")


def test_prompts_of_a_label_replace_it():
    examples = [{"content": "张三", "result_list": [{"text": "张三", "start": 0, "end": 2}], "prompt": "PER"},
                {"content": "张三", "result_list": [], "prompt": "LOC"}]
    out = convert.expand_prompts(examples, {"PER": ["人名", "person"]})
    assert [(e["prompt"], len(e["result_list"])) for e in out] == [("人名", 1), ("person", 1), ("LOC", 0)]


def test_train_relation_negatives_bounded_by_ratio():
    records = []
    for k in range(10):
        text = f"人{k}出生于城{k}"
        records.append(rec(k, text, [ent(0, 0, 2, "人物"), ent(1, 5, 7, "地点")],
                           [{"id": 0, "from_id": 0, "to_id": 1, "type": f"关系{k % 4}"}]))
    train, _, _ = doccano.convert_doccano(records, splits=(1, 0, 0), negative_ratio=3)
    for k in range(10):
        exs = [ex for ex in train if ex["content"] == f"人{k}出生于城{k}"]
        rel_pos = [ex for ex in exs if ex["prompt"] == f"人{k}的关系{k % 4}"]
        assert rel_pos and rel_pos[0]["result_list"] == [{"text": f"城{k}", "start": 5, "end": 7}]
        rel_neg = [ex for ex in exs if "的" in ex["prompt"] and not ex["result_list"]]
        assert 1 <= len(rel_neg) <= 3
        assert len({ex["prompt"] for ex in exs}) == len(exs)  # no duplicate prompts


# ---------------------------------------------------------------------------
# splitting & determinism
# ---------------------------------------------------------------------------
def test_deterministic_for_a_seed_and_independent_of_global_random():
    import random

    records = one_label_records(40)
    random.seed(1)
    a = doccano.convert_doccano(records, seed=7)
    random.seed(2)
    b = doccano.convert_doccano(records, seed=7)
    assert a == b
    c = doccano.convert_doccano(records, seed=8)
    assert a != c


def test_split_is_by_record_and_sizes_follow_ratios():
    records = one_label_records(20)
    train, dev, test = doccano.convert_doccano(records, splits=(0.7, 0.2, 0.1), seed=3)
    contents = [{ex["content"] for ex in split} for split in (train, dev, test)]
    assert [len(c) for c in contents] == [14, 4, 2]
    assert not (contents[0] & contents[1] or contents[0] & contents[2] or contents[1] & contents[2])


def test_no_shuffle_keeps_record_order():
    records = one_label_records(10)
    train, dev, test = doccano.convert_doccano(records, is_shuffle=False)
    assert [ex["content"] for ex in train if ex["result_list"]] == [r["text"] for r in records[:8]]
    assert {ex["content"] for ex in dev} == {records[8]["text"]}
    assert {ex["content"] for ex in test} == {records[9]["text"]}


def test_two_and_zero_ratio_splits():
    records = one_label_records(10)
    train, dev, test = doccano.convert_doccano(records, splits=(0.8, 0.2))
    assert len({ex["content"] for ex in train}) == 8 and len({ex["content"] for ex in dev}) == 2 and test == []
    train, dev, test = doccano.convert_doccano(records[:1], splits=(1, 0, 0))
    assert train and dev == [] and test == []


@pytest.mark.parametrize("splits,message", [
    ((0.8, 0.1), "sum to 1"),
    ((0.5, 0.3, 0.1, 0.1), "2 or 3"),
    ((1.2, -0.2, 0.0), "non-negative"),
    ((1,), "2 or 3"),
])
def test_bad_splits(splits, message):
    with pytest.raises(ValueError, match=message):
        doccano.convert_doccano(one_label_records(10), splits=splits)


def test_too_few_records_raises_clear_error():
    with pytest.raises(ValueError) as err:
        doccano.convert_doccano(one_label_records(5), splits=(0.8, 0.1, 0.1))
    msg = str(err.value)
    assert "5 record" in msg and "dev" in msg and "at least 6 records" in msg
    with pytest.raises(ValueError, match="1 record"):
        doccano.convert_doccano(one_label_records(1), splits=(0.5, 0.5))
    with pytest.raises(ValueError, match="no doccano records"):
        doccano.convert_doccano([], splits=(1, 0, 0))


def test_records_without_any_entity_rejected():
    with pytest.raises(ValueError, match="nothing to train on"):
        doccano.convert_doccano([rec(1, "空", []), rec(2, "空2", [])], splits=(1, 0, 0))


@pytest.mark.parametrize("bad,message", [
    (rec(1, "张三", [ent(0, 0, 9, "人物")]), "outside"),
    (rec(1, "张三", [ent(0, 0, 2, "人物")], [{"id": 0, "from_id": 0, "to_id": 5, "type": "x"}]), "unknown entity"),
    ({"id": 1, "entities": []}, "text"),
])
def test_malformed_records(bad, message):
    with pytest.raises(ValueError, match=message):
        doccano.convert_doccano([bad], splits=(1, 0, 0))


def test_old_doccano_label_format():
    train, _, _ = doccano.convert_doccano([{"text": "张三在北京", "label": [[0, 2, "人物"], [3, 5, "地点"]]}],
                                          splits=(1, 0, 0), is_shuffle=False)
    assert [(ex["prompt"], ex["result_list"][0]["text"]) for ex in train] == [("人物", "张三"), ("地点", "北京")]


def test_write_splits(tmp_path):
    train, dev, test = doccano.convert_doccano(one_label_records(4), splits=(1, 0, 0))
    paths = doccano.write_splits(train, dev, test, tmp_path / "out")
    assert sorted(Path(p).name for p in paths.values()) == ["dev.txt", "test.txt", "train.txt"]
    assert (tmp_path / "out/dev.txt").read_text(encoding="utf-8") == ""
    assert (tmp_path / "out/test.txt").read_text(encoding="utf-8") == ""
    raw = (tmp_path / "out/train.txt").read_text(encoding="utf-8")
    assert "张三" in raw  # ensure_ascii=False
    assert [json.loads(line) for line in raw.splitlines()] == train


# ---------------------------------------------------------------------------
# CLI
# ---------------------------------------------------------------------------
def run_cli(*args):
    return subprocess.run([sys.executable, str(REPO / "doccano.py"), *map(str, args)],
                          capture_output=True, text=True, encoding="utf-8", timeout=60)


def write_records(path, records):
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records), encoding="utf-8")


def test_cli_writes_splits_with_paddlenlp_flags(tmp_path):
    src = tmp_path / "doccano_ext.jsonl"
    records = one_label_records(20)
    write_records(src, records)
    out = tmp_path / "data"
    args = ["--doccano_file", src, "--task_type", "ext", "--save_dir", out, "--splits", "0.8", "0.1", "0.1",
            "--negative_ratio", "5", "--schema_lang", "ch", "--seed", "1000", "--is_shuffle", "False",
            "--separator", "##"]
    proc = run_cli(*args)
    assert proc.returncode == 0, proc.stderr
    expected = doccano.convert_doccano(records, is_shuffle=False)
    for name, examples in zip(("train", "dev", "test"), expected):
        lines = (out / f"{name}.txt").read_text(encoding="utf-8").splitlines()
        assert [json.loads(line) for line in lines] == examples
    assert "Saved" in proc.stdout


def test_cli_defaults_match_api(tmp_path):
    src = tmp_path / "d.jsonl"
    records = one_label_records(20)
    write_records(src, records)
    proc = run_cli("--doccano_file", src, "--save_dir", tmp_path / "o")
    assert proc.returncode == 0, proc.stderr
    train, _, _ = doccano.convert_doccano(records)  # same defaults: seed 1000, shuffle, ratio 5
    assert [json.loads(x) for x in (tmp_path / "o/train.txt").read_text(encoding="utf-8").splitlines()] == train


@pytest.mark.parametrize("case", ["missing", "malformed", "bad_splits", "too_few", "bad_bool"])
def test_cli_bad_input_exits_2(tmp_path, case):
    src = tmp_path / "d.jsonl"
    extra = []
    if case == "malformed":
        src.write_text(json.dumps(one_label_records(1)[0]) + "\n{broken json\n", encoding="utf-8")
    elif case != "missing":
        write_records(src, one_label_records(3))
    if case == "bad_splits":
        extra = ["--splits", "0.5", "0.1"]
    if case == "bad_bool":
        extra = ["--is_shuffle", "maybe"]
    proc = run_cli("--doccano_file", src, "--save_dir", tmp_path / "o", *extra)
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr
    expected = {"missing": "not found", "malformed": "line 2", "bad_splits": "sum to 1",
                "too_few": "too few records", "bad_bool": "True or False"}[case]
    assert expected in proc.stderr
    if case != "bad_bool":
        assert proc.stderr.startswith("error: ") and proc.stderr.count("\n") == 1
    assert not (tmp_path / "o" / "train.txt").exists()


def test_every_cli_flag_says_what_it_does():
    parser = doccano.build_parser()
    flags = {a.option_strings[-1]: a for a in parser._actions if a.option_strings}
    assert set(flags) >= {"--doccano_file", "--save_dir", "--negative_ratio", "--splits", "--task_type",
                          "--options", "--prompt_prefix", "--is_shuffle", "--seed", "--separator",
                          "--schema_lang", "--labels"}
    assert all(action.help for action in flags.values()), [f for f, a in flags.items() if not a.help]
    assert "-1 keeps them all" in flags["--negative_ratio"].help


# ---------------------------------------------------------------------------
# relations: the same examples as PaddleNLP 2.8.1's own converter
# ---------------------------------------------------------------------------
def _ls_task(tid, text, entities, relations):
    """A Label Studio task: entities [(id, label, words)], relations [(from, to, label)]."""
    result = []
    for rid, label, words in entities:
        start = text.index(words)
        result.append({"id": rid, "type": "labels", "from_name": "label", "to_name": "text",
                       "value": {"start": start, "end": start + len(words), "text": words, "labels": [label]}})
    for a, b, label in relations:
        result.append({"type": "relation", "from_id": a, "to_id": b, "direction": "right", "labels": [label]})
    return {"id": tid, "data": {"text": text}, "annotations": [{"id": tid, "result": result}]}


PADDLE_TASKS = [
    _ls_task(1, "马云在杭州创办了阿里巴巴。", [("a", "人名", "马云"), ("b", "组织机构", "阿里巴巴"), ("c", "地名", "杭州")],
             [("b", "a", "创始人")]),
    _ls_task(2, "李彦宏是百度的创始人。", [("a", "人名", "李彦宏"), ("b", "组织机构", "百度")], [("b", "a", "创始人")]),
    _ls_task(3, "张三出生于北京。", [("a", "人名", "张三"), ("b", "地名", "北京")], [("a", "b", "出生地")]),
    _ls_task(4, "王五是华为的工程师。", [("a", "人名", "王五"), ("b", "组织机构", "华为")], []),
]


def _as_set(examples):
    return {json.dumps(ex, ensure_ascii=False, sort_keys=True) for ex in examples}


@pytest.mark.parametrize("lang", ["ch", "en"])
@pytest.mark.parametrize("is_train", [False, True], ids=["dev", "train"])
def test_relation_examples_are_paddlenlps(lang, is_train):
    """PaddleNLP's DataConverter.convert_ext_examples on the same Label Studio tasks gives the
    same examples (as sets: PaddleNLP repeats a prompt that two negative pools both hold,
    doccano.py keeps it once). With negative_ratio=-1 nothing is sampled; the one draw left,
    a random relation type of the record for each other entity name (PaddleNLP's second
    pool), has one choice here: each record's relations have one type."""
    import random

    from paddlenlp.utils.tools import DataConverter

    random.seed(0)
    theirs = DataConverter("unused", negative_ratio=-1, schema_lang=lang).convert_ext_examples(
        PADDLE_TASKS, is_train=is_train)
    records = convert.label_studio_to_doccano(PADDLE_TASKS)
    train, dev, _ = doccano.convert_doccano(records, splits=(1, 0, 0) if is_train else (0, 1, 0),
                                            negative_ratio=-1, schema_lang=lang, is_shuffle=False)
    ours = train if is_train else dev
    assert _as_set(ours) == _as_set(theirs)
    assert len(ours) == len(_as_set(ours))
    prompt = "阿里巴巴的创始人" if lang == "ch" else "创始人 of 阿里巴巴"
    inverse = "马云的创始人" if lang == "ch" else "创始人 of 马云"
    by = {(ex["content"][:2], ex["prompt"]): ex["result_list"] for ex in ours}
    assert by[("马云", prompt)] == [{"text": "马云", "start": 0, "end": 2}]
    if is_train:
        assert by[("马云", inverse)] == []       # the inverse negative
    else:
        assert ("马云", inverse) not in by      # dev: every subject x every relation type only


def test_relation_negative_ratio_bounds_paddlenlps_pools_and_asked_relations_add_the_servers():
    records = convert.label_studio_to_doccano(PADDLE_TASKS)
    unbounded, _, _ = doccano.convert_doccano(records, splits=(1, 0, 0), negative_ratio=-1,
                                              is_shuffle=False)
    bounded, _, _ = doccano.convert_doccano(records, splits=(1, 0, 0), negative_ratio=-1,
                                            relation_negative_ratio=1, is_shuffle=False)
    entity_prompts = {"人名", "组织机构", "地名"}
    negatives = lambda exs, k: [ex["prompt"] for ex in exs  # noqa: E731
                                if ex["content"].startswith(k) and ex["prompt"] not in entity_prompts
                                and not ex["result_list"]]
    # entity negatives stay at -1; relation negatives are ratio x the record's relation prompts
    assert [ex for ex in bounded if ex["prompt"] in entity_prompts] == \
        [ex for ex in unbounded if ex["prompt"] in entity_prompts]
    assert len(negatives(bounded, "马云")) == 1 < len(negatives(unbounded, "马云"))
    assert "阿里巴巴的创始人" not in negatives(bounded, "马云")
    # asked: every entity text whose label a relation starts from, with every word
    asked = {"创始人": ("组织机构",), "出生地": ()}
    train, dev, _ = doccano.convert_doccano(records, splits=(0.5, 0.5, 0), negative_ratio=-1,
                                            relation_negative_ratio=0, asked_relations=asked,
                                            is_shuffle=False)
    for split in (train, dev):
        for record in records[:2] if split is train else records[2:]:
            got = {ex["prompt"] for ex in split if ex["content"] == record["text"]}
            text = record["text"]
            for entity in record["entities"]:
                name = text[entity["start_offset"]:entity["end_offset"]]
                assert name + "的出生地" in got
                if entity["label"] == "组织机构":
                    assert name + "的创始人" in got
                elif split is train:      # (dev also asks each annotated subject every type)
                    assert name + "的创始人" not in got
    by = {(ex["content"][:2], ex["prompt"]): ex["result_list"] for ex in train + dev}
    assert by[("王五", "华为的创始人")] == [] and by[("王五", "王五的出生地")] == []
    assert by[("马云", "阿里巴巴的创始人")] == [{"text": "马云", "start": 0, "end": 2}]
