"""What several test files use: the recorded Label Studio requests, the CLUENER sample, the
edge-case texts, task and webhook bodies, the relation cases. Plain functions and data, no
fixtures (those are in conftest.py); nothing here reads a file outside the checkout."""

from __future__ import annotations

import copy
import json
import time
from pathlib import Path

TESTS = Path(__file__).resolve().parent
REPO = TESTS.parent
FIXTURES = TESTS / "fixtures"
REQUESTS = FIXTURES / "label-studio-1.23.2" / "requests"
CLUENER_SAMPLE = FIXTURES / "cluener" / "train-1000.json"


def load_request(name):
    return json.loads((REQUESTS / name).read_text(encoding="utf-8"))


PERSON, PLACE = "人名", "地名"
LABEL_CONFIG = (
    '<View><Labels name="label" toName="text">'
    f'<Label value="{PERSON}"/><Label value="{PLACE}"/>'
    '</Labels><Text name="text" value="$text"/></View>')
# The max_seq_len the small model is trained and served with: short, so that
# the long texts below are split into several windows.
SEQ_LEN = 48

FILLER = "今天的天气很好，我们一起去公园散步吧。"


def spans_in(text, words):
    """[(label, start, end)] of ``words`` [(label, word)], found in ``text`` in order (a word
    named twice is its next occurrence)."""
    out, cursor = [], {}
    for label, word in words:
        start = text.index(word, cursor.get(word, 0))
        cursor[word] = start + 1
        out.append((label, start, start + len(word)))
    return out


def _example(text, words):
    """(text, [(label, start, end)]) with offsets found in the text itself."""
    return text, spans_in(text, words)


# Texts with every offset trap the backend must get right.
EDGE_CASES = [
    _example("😀张三在北京工作。", [(PERSON, "张三"), (PLACE, "北京")]),
    _example("  李四住在上海\r\n王五去了深圳。", [(PERSON, "李四"), (PLACE, "上海"),
                                             (PERSON, "王五"), (PLACE, "深圳")]),
    _example("ＡＢＣ公司的赵六来自广州。", [(PERSON, "赵六"), (PLACE, "广州")]),
    _example("Alice和孙七去了杭州。🎉", [(PERSON, "孙七"), (PLACE, "杭州")]),
    _example("周八说：“南京欢迎你”。 ", [(PERSON, "周八"), (PLACE, "南京")]),
    _example(FILLER * 2 + "吴九在成都。" + FILLER * 2 + "郑十在武汉。" + FILLER,
             [(PERSON, "吴九"), (PLACE, "成都"), (PERSON, "郑十"), (PLACE, "武汉")]),
    _example(FILLER, []),
]


def uie_examples(cases=EDGE_CASES):
    out = []
    for text, spans in cases:
        for label in (PERSON, PLACE):
            out.append({"content": text, "prompt": label,
                        "result_list": [{"text": text[s:e], "start": s, "end": e}
                                        for lab, s, e in spans if lab == label]})
    return out


def tasks_for(cases=EDGE_CASES, start_id=1):
    return [{"id": start_id + i, "data": {"text": text}} for i, (text, _) in enumerate(cases)]


def spans_of(prediction):
    return sorted((r["value"]["labels"][0], r["value"]["start"], r["value"]["end"])
                  for r in prediction["result"])


def make_settings(model_dir, **overrides):
    from settings import Settings

    values = dict(uie_model="scratch", model_dir=str(model_dir), device="cpu",
                  max_seq_len=SEQ_LEN, batch_size=4, log_level="WARNING")
    values.update(overrides)
    return Settings(**values)


# CLUENER sentences

CLUENER_LABELS = ["name", "address", "company", "organization", "government", "position",
                  "game", "book", "movie", "scene"]
CLUENER_CONFIG = ('<View><Labels name="label" toName="text">'
                  + "".join(f'<Label value="{label}"/>' for label in CLUENER_LABELS)
                  + '</Labels><Text name="text" value="$text"/></View>')


def cluener_tasks(n, start=0):
    """``n`` real CLUENER sentences as Label Studio tasks with one annotation each."""
    tasks = []
    with open(CLUENER_SAMPLE, encoding="utf-8") as f:
        lines = f.readlines()[start: start + n]
    assert len(lines) == n, f"the CLUENER sample has no lines {start}..{start + n - 1}"
    for i, line in enumerate(lines):
        row = json.loads(line)
        text = row["text"]
        result = []
        for label, entities in row["label"].items():
            for spans in entities.values():
                for s, e in spans:   # CLUENER's ends are inclusive
                    result.append({"id": f"r{len(result)}", "from_name": "label", "to_name": "text",
                                   "type": "labels",
                                   "value": {"start": s, "end": e + 1, "text": text[s:e + 1],
                                             "labels": [label]}})
        task_id = 100 + start + i
        tasks.append({"id": task_id, "data": {"text": text},
                      "annotations": [{"id": 1000 + task_id, "result": result, "was_cancelled": False,
                                       "ground_truth": False, "task": task_id,
                                       "created_at": "2026-11-28T19:02:03.674275Z",
                                       "updated_at": "2026-11-28T19:02:03.674322Z"}]})
    return tasks


def gold_spans(tasks):
    return {(t["id"], r["value"]["labels"][0], r["value"]["start"], r["value"]["end"])
            for t in tasks for r in t["annotations"][0]["result"]}


def predicted_spans(predictions, tasks):
    return {(t["id"], r["value"]["labels"][0], r["value"]["start"], r["value"]["end"])
            for t, p in zip(tasks, predictions) for r in p["result"]}


def webhook_body(action, task, annotation, project_id, label_config):
    """The real ANNOTATION_CREATED body, carrying another task and annotation."""
    body = copy.deepcopy(load_request("post_webhook_annotation_created.json")["body"])
    body["action"] = action
    body["annotation"].update(annotation)
    body["annotation"]["task"] = task["id"]
    body["task"].update({k: v for k, v in task.items() if k != "annotations"})
    body["project"].update(id=project_id, label_config=label_config)
    return body


def start_training_body(project_id, label_config):
    body = copy.deepcopy(load_request("post_webhook_start_training.json")["body"])
    body["project"].update(id=project_id, label_config=label_config)
    return body


def wait_job(get, project, job_id, timeout=600):
    deadline = time.time() + timeout
    while time.time() < deadline:
        jobs = {j["id"]: j for j in get(f"/jobs?project={project}")["jobs"]}
        job = jobs.get(job_id)
        if job and job["state"] in ("done", "failed"):
            return job
        time.sleep(1)
    raise AssertionError(f"job {job_id} did not finish in {timeout}s: {jobs}")


def wait_until(check, timeout=60, interval=0.2):
    """``check()``'s first true value within ``timeout`` seconds; its last value if none."""
    deadline = time.time() + timeout
    while not (value := check()) and time.time() < deadline:
        time.sleep(interval)
    return value


def cluener_texts(n):
    """The first ``n`` CLUENER sentences of the sample."""
    with open(CLUENER_SAMPLE, encoding="utf-8") as f:
        texts = [json.loads(line)["text"] for line, _ in zip(f, range(n))]
    assert len(texts) == n, f"the CLUENER sample has fewer than {n} lines"
    return texts


def annotated_tasks(cases, label_of=lambda label: label):
    """Label Studio tasks with one annotation each, from (text, [(label, start, end)])."""
    tasks = []
    for i, (text, spans) in enumerate(cases, 1):
        result = [{"id": f"r{k}", "from_name": "label", "to_name": "text", "type": "labels",
                   "value": {"start": s, "end": e, "text": text[s:e], "labels": [label_of(label)]}}
                  for k, (label, s, e) in enumerate(spans)]
        tasks.append({"id": i, "data": {"text": text},
                      "annotations": [{"id": 100 + i, "result": result, "was_cancelled": False}]})
    return tasks


# Relations

ORG, FOUNDER = "组织机构", "创始人"      # the persons are PERSON
RELATION_CONFIG = (
    '<View>'
    f'<Labels name="label" toName="text"><Label value="{PERSON}"/><Label value="{ORG}"/></Labels>'
    '<Text name="text" value="$text"/>'
    f'<Relations><Relation value="{FOUNDER}"/></Relations>'
    '</View>')
PLAIN_CONFIG = RELATION_CONFIG.replace(f'<Relations><Relation value="{FOUNDER}"/></Relations>', "")


def case(text, entities, relations=(), directions=None):
    """(text, [(label, start, end)], [(subject, object, label, direction)]) with offsets found in
    the text: ``entities`` is [(label, words)], ``relations`` [(subject words, object words)]
    of FOUNDER; ``direction`` is how the annotator drew the arrow (Label Studio's
    ``right``: subject -> object; ``left``: the arrow drawn from the object, pointing back)."""
    spans = spans_in(text, entities)
    where = {text[s:e]: (s, e) for _, s, e in spans}
    rels = [(where[subj], where[obj], FOUNDER, (directions or {}).get(k, "right"))
            for k, (subj, obj) in enumerate(relations)]
    return text, spans, rels


# A dozen sentences with persons, organisations and who founded what (organisation
# 的创始人 -> person): some with two relations, some with a person or an organisation
# in no relation, and the offset traps (emoji, CRLF, full width, a trailing space).
RELATION_CASES = [
    case("😀马云在杭州创办了阿里巴巴。", [(PERSON, "马云"), (ORG, "阿里巴巴")], [("阿里巴巴", "马云")]),
    case("1998年，马化腾创立了腾讯公司。\r\n总部在深圳。", [(PERSON, "马化腾"), (ORG, "腾讯公司")],
         [("腾讯公司", "马化腾")], {0: "left"}),
    case("李彦宏是百度的创始人。", [(PERSON, "李彦宏"), (ORG, "百度")], [("百度", "李彦宏")]),
    case("ＡＢＣ科技由赵六创办，孙七是那里的员工。", [(ORG, "ＡＢＣ科技"), (PERSON, "赵六"), (PERSON, "孙七")],
         [("ＡＢＣ科技", "赵六")], {0: "left"}),
    case("雷军创办的小米公司今天发布了新手机。", [(PERSON, "雷军"), (ORG, "小米公司")], [("小米公司", "雷军")]),
    case("张一鸣创立了字节跳动，王兴则创办了美团。",
         [(PERSON, "张一鸣"), (ORG, "字节跳动"), (PERSON, "王兴"), (ORG, "美团")],
         [("字节跳动", "张一鸣"), ("美团", "王兴")]),
    case("京东由刘强东创办，张三在那里工作了五年。", [(ORG, "京东"), (PERSON, "刘强东"), (PERSON, "张三")],
         [("京东", "刘强东")]),
    case("丁磊创立了网易，他的同学李四后来加入了搜狐。",
         [(PERSON, "丁磊"), (ORG, "网易"), (PERSON, "李四"), (ORG, "搜狐")], [("网易", "丁磊")]),
    case("黄峥创办的拼多多发展很快。 ", [(PERSON, "黄峥"), (ORG, "拼多多")], [("拼多多", "黄峥")]),
    case("王五是华为的一名工程师。", [(PERSON, "王五"), (ORG, "华为")]),
    case("程维创立了滴滴出行，柳青后来加入了滴滴出行。", [(PERSON, "程维"), (ORG, "滴滴出行"), (PERSON, "柳青")],
         [("滴滴出行", "程维")]),
    case("周鸿祎创办了奇虎公司。", [(PERSON, "周鸿祎"), (ORG, "奇虎公司")], [("奇虎公司", "周鸿祎")]),
]

# For the model the fixture trains until it knows them: the offset traps, and a text
# longer than SEQ_LEN whose subject and object are in different windows.
LONG_TEXT = "华为公司成立于深圳。" + FILLER * 3 + "任正非是它的创始人。"
EDGE_RELATION_CASES = [
    RELATION_CASES[0], RELATION_CASES[1], RELATION_CASES[3], RELATION_CASES[8],
    case(LONG_TEXT, [(ORG, "华为公司"), (PERSON, "任正非")], [("华为公司", "任正非")]),
    case(FILLER, []),
]


def relation_tasks(cases, start_id=1):
    """Label Studio tasks with one annotation each (regions and relations), from ``case``s."""
    tasks = []
    for i, (text, spans, relations) in enumerate(cases):
        tid = start_id + i
        tasks.append({"id": tid, "data": {"text": text}, "annotations": [{
            "id": 1000 + tid, "result": annotation_result(text, spans, relations), "was_cancelled": False,
            "ground_truth": False, "task": tid, "created_at": "2026-11-28T19:02:03.674275Z",
            "updated_at": "2026-11-28T19:02:03.674322Z"}]})
    return tasks


def annotation_result(text, spans, relations):
    """Label Studio's result: regions with ids, relation items between them."""
    ids = {}
    result = []
    for k, (label, s, e) in enumerate(spans):
        ids[(s, e)] = f"r{k}"
        result.append({"id": f"r{k}", "from_name": "label", "to_name": "text", "type": "labels",
                       "value": {"start": s, "end": e, "text": text[s:e], "labels": [label]}})
    for subject, obj, label, direction in relations:
        a, b = (subject, obj) if direction == "right" else (obj, subject)
        result.append({"from_id": ids[a], "to_id": ids[b], "type": "relation", "direction": direction,
                       "labels": [label]})
    return result


# Choices: short texts of three topics, for a <Choices> project
TOPICS = ("体育", "财经", "天气")
TOPIC_CASES = [
    ("姚明在篮球比赛中得了三十分。", "体育"), ("股市今天大涨，银行股领涨。", "财经"),
    ("明天北京有大雨，气温下降。", "天气"), ("中国女排赢得了世界杯冠军。", "体育"),
    ("央行宣布降低存款准备金率。", "财经"), ("台风将在周末登陆广东沿海。", "天气"),
    ("梅西在决赛中打进两球。", "体育"), ("这家公司的季度利润增长了两成。", "财经"),
    ("今天上海晴转多云，微风。", "天气"),
]


def show_logs_on_failure(request, servers: list):
    """Have a failed test's report end with the logs of ``servers`` (a list the fixture fills;
    anything with a ``log_path``): see ``pytest_runtest_makereport`` in conftest.py."""
    request.node.__dict__.setdefault("_servers_to_show", []).append(servers)


def span_f1(found, gold) -> float:
    """F1 of the set ``found`` against the set ``gold`` (1.0 when both are empty)."""
    found, gold = set(found), set(gold)
    if not found and not gold:
        return 1.0
    hits = len(found & gold)
    return 2 * hits / (len(found) + len(gold))
