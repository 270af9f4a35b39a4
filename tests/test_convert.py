"""Tests for convert.py: Label Studio tasks -> doccano JSONL records."""

from __future__ import annotations

import json
import logging
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import convert  # noqa: E402
import doccano  # noqa: E402
from helpers import REQUESTS  # noqa: E402

POST_TRAIN = REQUESTS / "post_train.json"


def region(text, start, end, *labels, rid=None, from_name="label", value_text=None):
    item = {
        "from_name": from_name,
        "to_name": "text",
        "type": "labels",
        "value": {
            "start": start,
            "end": end,
            "text": text[start:end] if value_text is None else value_text,
            "labels": list(labels),
        },
    }
    if rid is not None:
        item["id"] = rid
    return item


def relation(from_id, to_id, *labels, direction="right"):
    return {"from_id": from_id, "to_id": to_id, "type": "relation", "direction": direction, "labels": list(labels)}


def annotation(result, aid=1, updated="2024-01-01T00:00:00Z", created=None, **extra):
    ann = {"id": aid, "result": result, "was_cancelled": False, "ground_truth": False,
           "created_at": created or updated, "updated_at": updated}
    ann.update(extra)
    return ann


def task(text, result=None, tid=1, annotations=None, **extra):
    t = {"id": tid, "data": {"text": text},
         "annotations": annotations if annotations is not None else [annotation(result or [])]}
    t.update(extra)
    return t


def spans(record):
    return [(e["label"], record["text"][e["start_offset"]:e["end_offset"]], e["start_offset"], e["end_offset"])
            for e in record["entities"]]


# ---------------------------------------------------------------------------
# hard texts: exact offsets survive Label Studio -> doccano -> (JSONL file) -> UIE
# ---------------------------------------------------------------------------
LONG = "前言。" + "这是一个很长的句子，用来测试长文本。" * 130 + "最后王五去了深圳。"
HARD_CASES = {
    "emoji": ("😀 张三在北京", [("人物", "张三"), ("地点", "北京")]),
    "crlf": ("第一行\r\n李四 works at 百度\r\n第三行\u2028end", [("人物", "李四"), ("机构", "百度"), ("词", "end")]),
    "spaces": ("  Alice met  Bob  ", [("name", "Alice"), ("name", " Bob  ")]),
    "fullwidth": ("ＡＢＣ公司，地址１２３号。", [("机构", "ＡＢＣ公司"), ("号码", "１２３")]),
    "mixed": ("Apple发布了iPhone 15 Pro，售价7999元", [("机构", "Apple"), ("产品", "iPhone 15 Pro"), ("价格", "7999元")]),
    "long": (LONG, [("人物", "王五"), ("地点", "深圳")]),
}


@pytest.mark.parametrize("case", sorted(HARD_CASES))
def test_hard_text_offsets_round_trip(case, tmp_path):
    text, wanted = HARD_CASES[case]
    result, expected = [], []
    for label, span in wanted:
        start = text.rindex(span) if case == "long" else text.index(span)
        result.append(region(text, start, start + len(span), label))
        expected.append((label, span, start, start + len(span)))
    if case == "long":
        assert len(text) > 2000 and expected[-1][3] > 2000

    record = convert.task_to_doccano(task(text, result))
    assert record["text"] == text  # never stripped or normalised
    assert spans(record) == expected

    # through a JSONL file (CRLF and U+2028 must survive line splitting)
    path = tmp_path / "doccano.jsonl"
    assert convert.write_jsonl([record], path) == 1
    (loaded,) = convert.read_jsonl(path)
    assert loaded == record

    train, dev, test = doccano.convert_doccano([loaded], splits=(1, 0, 0), negative_ratio=0)
    assert dev == [] and test == []
    got = set()
    for ex in train:
        assert ex["content"] == text
        for r in ex["result_list"]:
            assert ex["content"][r["start"]:r["end"]] == r["text"]
            got.add((ex["prompt"], r["text"], r["start"], r["end"]))
    assert got == set(expected)


def test_emoji_offsets_are_python_code_points():
    text = "😀 张三在北京"
    record = convert.task_to_doccano(task(text, [region(text, 2, 4, "人物")]))
    assert record["entities"] == [{"id": 0, "label": "人物", "start_offset": 2, "end_offset": 4}]
    assert text[2:4] == "张三"


def test_overlapping_spans_of_different_labels_are_both_kept():
    text = "北京大学位于北京"
    record = convert.task_to_doccano(task(text, [region(text, 0, 4, "机构"), region(text, 0, 2, "地点")]))
    assert spans(record) == [("机构", "北京大学", 0, 4), ("地点", "北京", 0, 2)]
    train, _, _ = doccano.convert_doccano([record], splits=(1, 0, 0), is_shuffle=False)
    by_prompt = {ex["prompt"]: ex["result_list"] for ex in train}
    assert by_prompt == {"机构": [{"text": "北京大学", "start": 0, "end": 4}],
                         "地点": [{"text": "北京", "start": 0, "end": 2}]}


def test_one_entity_per_label_and_exact_duplicates_dropped():
    text = "张三在北京"
    record = convert.task_to_doccano(task(text, [
        region(text, 0, 2, "人物", "作者"),
        region(text, 0, 2, "人物"),  # exact duplicate
        region(text, 3, 5, "地点"),
    ]))
    assert spans(record) == [("人物", "张三", 0, 2), ("作者", "张三", 0, 2), ("地点", "北京", 3, 5)]
    assert [e["id"] for e in record["entities"]] == [0, 1, 2]


def test_mismatching_value_text_warns_but_offsets_win(caplog):
    text = "  Alice  "
    with caplog.at_level(logging.WARNING, logger="convert"):
        record = convert.task_to_doccano(task(text, [region(text, 2, 7, "name", value_text="Alice ")]))
    assert spans(record) == [("name", "Alice", 2, 7)]
    assert "differs" in caplog.text


@pytest.mark.parametrize("start,end", [(-1, 3), (3, 99), (4, 4), (5, 2), ("0", 2), (None, 2)])
def test_out_of_range_offsets_skip_that_entity(start, end, caplog):
    text = "张三在北京"
    bad = {"type": "labels", "from_name": "label", "to_name": "text",
           "value": {"start": start, "end": end, "labels": ["x"]}}
    with caplog.at_level(logging.WARNING, logger="convert"):
        record = convert.task_to_doccano(task(text, [bad, region(text, 3, 5, "地点")]))
    assert spans(record) == [("地点", "北京", 3, 5)]
    assert "out of range" in caplog.text


# ---------------------------------------------------------------------------
# which annotation
# ---------------------------------------------------------------------------
def test_cancelled_only_task_is_skipped():
    t = task("张三", annotations=[annotation([region("张三", 0, 2, "人物")], was_cancelled=True)])
    assert convert.select_annotation(t) is None
    assert convert.task_to_doccano(t) is None
    assert convert.label_studio_to_doccano([t]) == []


def test_cancelled_newer_annotation_is_ignored():
    old = annotation([region("张三李四", 0, 2, "人物")], aid=1, updated="2024-01-01T00:00:00Z")
    newer_cancelled = annotation([region("张三李四", 2, 4, "人物")], aid=2, updated="2024-06-01T00:00:00Z",
                                 was_cancelled=True)
    record = convert.task_to_doccano(task("张三李四", annotations=[old, newer_cancelled]))
    assert spans(record) == [("人物", "张三", 0, 2)]


def test_ground_truth_preferred_over_newer():
    gt = annotation([region("张三李四", 0, 2, "人物")], aid=1, updated="2024-01-01T00:00:00Z", ground_truth=True)
    newer = annotation([region("张三李四", 2, 4, "人物")], aid=2, updated="2025-01-01T00:00:00Z")
    t = task("张三李四", annotations=[newer, gt])
    assert convert.select_annotation(t)["id"] == 1
    assert spans(convert.task_to_doccano(t)) == [("人物", "张三", 0, 2)]


def test_newest_annotation_by_updated_then_created_then_id():
    a = annotation([], aid=7, updated="2024-03-01T10:00:00.000001Z", created="2024-01-01T00:00:00Z")
    b = annotation([], aid=3, updated="2024-03-01T10:00:00Z", created="2024-02-01T00:00:00Z")
    assert convert.select_annotation({"annotations": [a, b]})["id"] == 7
    c = annotation([], aid=1, updated="2024-03-01T10:00:00Z", created="2024-02-01T00:00:00Z")
    d = annotation([], aid=2, updated="2024-03-01T10:00:00Z", created="2024-01-01T00:00:00Z")
    assert convert.select_annotation({"annotations": [c, d]})["id"] == 1
    e = annotation([], aid=5, updated="2024-03-01T10:00:00Z")
    f = annotation([], aid=9, updated="2024-03-01T10:00:00Z")
    assert convert.select_annotation({"annotations": [f, e]})["id"] == 9
    # timezone-aware comparison, not string comparison
    g = annotation([], aid=1, updated="2024-03-01T12:00:00+02:00")  # 10:00Z
    h = annotation([], aid=2, updated="2024-03-01T11:00:00Z")
    assert convert.select_annotation({"annotations": [h, g]})["id"] == 2


def test_empty_result_annotation_is_kept_as_negative():
    records = convert.label_studio_to_doccano([
        task("张三在北京", [region("张三在北京", 0, 2, "人物")], tid=1),
        task("今天天气不错", [], tid=2),
    ])
    assert [r["id"] for r in records] == [1, 2]
    assert records[1] == {"id": 2, "text": "今天天气不错", "entities": [], "relations": []}
    train, _, _ = doccano.convert_doccano(records, splits=(1, 0, 0), is_shuffle=False)
    negatives = [ex for ex in train if ex["content"] == "今天天气不错"]
    assert negatives == [{"content": "今天天气不错", "result_list": [], "prompt": "人物"}]


def test_drafts_never_count():
    t = task("张三", annotations=[], drafts=[{"id": 1, "result": [region("张三", 0, 2, "人物")]}])
    assert convert.select_annotation(t) is None
    assert convert.task_to_doccano(t) is None


# ---------------------------------------------------------------------------
# relations, from_names, text_key
# ---------------------------------------------------------------------------
def test_relations_map_region_ids_to_entity_ids(caplog):
    text = "张三出生于北京"
    record = convert.task_to_doccano(task(text, [
        region(text, 0, 2, "人物", rid="r1"),
        region(text, 5, 7, "地点", rid="r2"),
        relation("r1", "r2", "出生地"),
        relation("r2", "r1", "出生地", direction="left"),  # left = arrow points to from_id: same as above
        relation("r1", "r2"),  # no label: skipped with a warning
        relation("r1", "missing", "x"),  # dangling: dropped
    ]))
    assert record["entities"] == [
        {"id": 0, "label": "人物", "start_offset": 0, "end_offset": 2},
        {"id": 1, "label": "地点", "start_offset": 5, "end_offset": 7},
    ]
    assert record["relations"] == [{"id": 0, "from_id": 0, "to_id": 1, "type": "出生地"}]
    assert "relation r1 -> r2 has no label" in caplog.text
    assert "relation r1 -> missing refers to a region that is not an entity" in caplog.text


def test_relation_directions_bi_and_unknown(caplog):
    text = "张三和李四是同学"
    record = convert.task_to_doccano(task(text, [
        region(text, 0, 2, "人物", rid="a"),
        region(text, 3, 5, "人物", rid="b"),
        relation("a", "b", "同学", direction="bi"),      # both ways
        relation("a", "b", "朋友", direction="up"),      # not a direction: skipped
        {"from_id": "b", "to_id": "a", "type": "relation", "labels": ["老乡"]},   # none: right
    ]))
    assert [(r["from_id"], r["to_id"], r["type"]) for r in record["relations"]] == [
        (0, 1, "同学"), (1, 0, "同学"), (1, 0, "老乡")]
    assert "has direction 'up' (not right, left or bi); skipped" in caplog.text
    # each way is a relation example; neither way's inverse negative contradicts the other
    train, _, _ = doccano.convert_doccano([record], splits=(1, 0, 0), negative_ratio=-1)
    by_prompt = {ex["prompt"]: ex["result_list"] for ex in train}
    assert by_prompt["张三的同学"] == [{"text": "李四", "start": 3, "end": 5}]
    assert by_prompt["李四的同学"] == [{"text": "张三", "start": 0, "end": 2}]
    assert by_prompt["李四的老乡"] == [{"text": "张三", "start": 0, "end": 2}]
    assert by_prompt["张三的老乡"] == []             #老乡's inverse negative


def test_relation_types_become_the_words_the_server_asks():
    records = [{"id": 1, "text": "张三出生于北京", "entities": [], "relations": [
        {"id": 0, "from_id": 0, "to_id": 1, "type": "born_in"},
        {"id": 1, "from_id": 1, "to_id": 0, "type": "other"}]}]
    out = convert.expand_relation_types(records, {"born_in": ["出生地", "出生于"]})
    assert out[0]["relations"] == [
        {"id": 0, "from_id": 0, "to_id": 1, "type": "出生地"},
        {"id": 1, "from_id": 0, "to_id": 1, "type": "出生于"},
        {"id": 2, "from_id": 1, "to_id": 0, "type": "other"}]
    assert records[0]["relations"][0]["type"] == "born_in"     # a copy


def test_from_names_filter():
    text = "张三在北京"
    result = [region(text, 0, 2, "人物", from_name="ner"), region(text, 3, 5, "地点", from_name="other")]
    record = convert.task_to_doccano(task(text, result), from_names={"ner"})
    assert spans(record) == [("人物", "张三", 0, 2)]


def test_text_key_selection(caplog):
    t = {"id": 4, "data": {"body": "张三", "meta": 3}, "annotations": [annotation([region("张三", 0, 2, "人物")])]}
    assert convert.task_to_doccano(t)["text"] == "张三"  # the single string value
    t2 = {"id": 5, "data": {"title": "T", "text": "张三"}, "annotations": [annotation([region("张三", 0, 2, "人物")])]}
    assert convert.task_to_doccano(t2)["text"] == "张三"  # falls back to "text"
    assert convert.task_to_doccano(t2, text_key="title")["text"] == "T"
    with caplog.at_level(logging.WARNING, logger="convert"):
        assert convert.task_to_doccano(t2, text_key="nope") is None
        assert convert.task_to_doccano({"id": 6, "data": {"a": "x", "b": "y"}, "annotations": [annotation([])]}) is None
        assert convert.task_to_doccano({"id": 7, "data": {"text": 12}, "annotations": [annotation([])]}) is None
    assert "no text" in caplog.text


# ---------------------------------------------------------------------------
# loading files
# ---------------------------------------------------------------------------
def test_real_post_train_body():
    envelope = json.loads(POST_TRAIN.read_text(encoding="utf-8"))
    tasks = envelope["body"]["annotations"]
    records = convert.label_studio_to_doccano(tasks)
    assert records == [{
        "id": 1,
        "text": "Alice works at Acme Corp in Paris since 2019.",
        "entities": [
            {"id": 0, "label": "name", "start_offset": 0, "end_offset": 5},
            {"id": 1, "label": "organization", "start_offset": 15, "end_offset": 24},
        ],
        "relations": [],
    }]


def test_load_tasks_accepts_all_shapes(tmp_path):
    body = json.loads(POST_TRAIN.read_text(encoding="utf-8"))["body"]
    tasks = body["annotations"]
    shapes = {
        "export.json": json.dumps(tasks),
        "train_body.json": json.dumps(body),
        "single.json": json.dumps(tasks[0]),
        "tasks.jsonl": "\n".join(json.dumps(t) for t in tasks + tasks) + "\n",
    }
    expected = {"export.json": 1, "train_body.json": 1, "single.json": 1, "tasks.jsonl": 2}
    for name, content in shapes.items():
        path = tmp_path / name
        path.write_text(content, encoding="utf-8")
        loaded = convert.load_tasks(path)
        assert len(loaded) == expected[name], name
        assert loaded[0]["data"]["text"].startswith("Alice"), name
    # the recorded request file itself
    assert convert.load_tasks(POST_TRAIN) == tasks


@pytest.mark.parametrize("content,message", [
    ("{not json", "not valid JSON"),
    ('{"data": {"text": "a"}}\n{broken\n', "line 2"),
    ('{"foo": 1}', "found keys"),
    ("[1, 2]", "item 0"),
    ("42", "expected a list"),
    ("", "empty"),
])
def test_load_tasks_rejects_bad_input(tmp_path, content, message):
    path = tmp_path / "bad.json"
    path.write_text(content, encoding="utf-8")
    with pytest.raises(ValueError, match=message):
        convert.load_tasks(path)


def test_load_tasks_missing_file(tmp_path):
    with pytest.raises(ValueError, match="not found"):
        convert.load_tasks(tmp_path / "nope.json")


# ---------------------------------------------------------------------------
# CLI
# ---------------------------------------------------------------------------
def run_cli(*args):
    return subprocess.run([sys.executable, str(REPO / "convert.py"), *map(str, args)],
                          capture_output=True, text=True, encoding="utf-8", timeout=60)


def test_cli_converts_export(tmp_path):
    text = "😀 张三在北京\r\n"
    tasks = [
        task(text, [region(text, 2, 4, "人物"), region(text, 5, 7, "地点")], tid=1),
        task("x", annotations=[annotation([], was_cancelled=True)], tid=2),
        {"id": 3, "data": {"content": "李四"}, "annotations": [annotation([region("李四", 0, 2, "人物")])]},
    ]
    src = tmp_path / "export.json"
    src.write_text(json.dumps(tasks, ensure_ascii=False), encoding="utf-8")
    out = tmp_path / "sub" / "doccano.jsonl"
    proc = run_cli("--label_studio_file", src, "--doccano_file", out)
    assert proc.returncode == 0, proc.stderr
    assert "Wrote 2 records" in proc.stdout and "1 of 3 tasks skipped" in proc.stdout
    raw = out.read_text(encoding="utf-8")
    assert "张三" in raw  # ensure_ascii=False
    records = convert.read_jsonl(out)
    assert [r["id"] for r in records] == [1, 3]
    assert spans(records[0]) == [("人物", "张三", 2, 4), ("地点", "北京", 5, 7)]

    proc = run_cli("--label_studio_file", src, "--doccano_file", out, "--text_key", "content")
    assert proc.returncode == 0, proc.stderr
    assert [r["id"] for r in convert.read_jsonl(out)] == [3]


def test_cli_real_post_train_file(tmp_path):
    out = tmp_path / "d.jsonl"
    proc = run_cli("--label_studio_file", POST_TRAIN, "--doccano_file", out)
    assert proc.returncode == 0, proc.stderr
    assert len(convert.read_jsonl(out)) == 1


@pytest.mark.parametrize("content", [None, "{oops", '{"a": 1}'])
def test_cli_bad_input_exits_2(tmp_path, content):
    src = tmp_path / "in.json"
    if content is not None:
        src.write_text(content, encoding="utf-8")
    out = tmp_path / "out.jsonl"
    proc = run_cli("--label_studio_file", src, "--doccano_file", out)
    assert proc.returncode == 2
    assert proc.stderr.startswith("error: ")
    assert "Traceback" not in proc.stderr
    assert not out.exists()
