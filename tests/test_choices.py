"""``<Choices>`` on a ``<Text>``: text classification with UIE's classification prompts.

The config is parsed, annotations become doccano records and UIE classification examples
(PaddleNLP's ``prefix[opt1,opt2]`` prompts, negative offsets into the prompt), a scratch
model is trained for real through the Flask app (``POST /train``) and its version
reproduces the annotated choices through ``/predict``, alone and beside labels and relations.
"""

from __future__ import annotations

import pytest

from helpers import (FOUNDER, ORG, PERSON, RELATION_CASES, TOPIC_CASES, TOPICS, annotation_result, wait_job)

CHOICES_CONFIG = ('<View><Text name="text" value="$text"/>'
                  '<Choices name="topic" toName="text" predicted_values="主题">'
                  + "".join(f'<Choice value="{t}"/>' for t in TOPICS) + '</Choices></View>')


def choice_result(name, values):
    return {"id": f"c-{name}", "from_name": name, "to_name": "text", "type": "choices",
            "value": {"choices": list(values)}}


def topic_tasks(cases=TOPIC_CASES, start_id=1):
    return [{"id": start_id + i, "data": {"text": text},
             "annotations": [{"id": 500 + start_id + i, "was_cancelled": False,
                              "result": [choice_result("topic", [topic])]}]}
            for i, (text, topic) in enumerate(cases)]


def predicted_choices(predictions, name="topic"):
    return [next((r["value"]["choices"] for r in p["result"] if r.get("from_name") == name), None)
            for p in predictions]


# -- label config ---------------------------------------------------------------
def test_choices_on_a_text_are_parsed_with_their_prompt():
    from label_config import ChoiceControl, parse_choices, parse_label_config

    config = ('<View><Text name="text" value="$body"/><Image name="img" value="$image"/>'
              '<Choices name="sentiment" toName="text" choice="multiple">'
              '<Choice value="Positive" predicted_values="正向"/><Choice value="a, b [c]"/>'
              '<Choice value="Again" predicted_values="正向"/></Choices>'
              '<Choices name="kind" toName="img"><Choice value="cat"/></Choices>'
              '<Choices name="per" toName="text" perRegion="true"><Choice value="x"/></Choices>'
              '<Choices name="topic" toName="text" predicted_values="主题, topic"><Choice value="体育"/></Choices>'
              '</View>')
    sentiment, topic = parse_choices(config)
    assert sentiment == ChoiceControl("sentiment", "text", "body", "sentiment",
                                      (("Positive", "正向"), ("a, b [c]", "a， b (c)")), True)
    assert sentiment.prompt == "sentiment[正向,a， b (c)]"          # the prompt's syntax stays its own
    assert sentiment.value_of("正向") == "Positive" and sentiment.word_of("a, b [c]") == "a， b (c)"
    assert topic.prompt == "主题[体育]" and not topic.multiple
    assert parse_label_config(config) == []                          # a Choices-only config is served


@pytest.mark.parametrize("xml", [
    '<View><Image name="img" value="$image"/><Choices name="c" toName="img"><Choice value="a"/></Choices></View>',
    '<View><Text name="text" value="$text"/><Choices name="c" toName="text"/></View>',
])
def test_a_config_with_no_choices_on_a_text_and_no_labels_is_refused(xml):
    from label_config import LabelConfigError, parse_label_config

    with pytest.raises(LabelConfigError, match="nor a <Choices> control"):
        parse_label_config(xml)


def test_prompt_options_tell_classification_prompts():
    from uie.tokenizer import prompt_options

    prompt = "主题[体育,财经,天气]"
    assert [prompt[s:e] for s, e in prompt_options(prompt)] == list(TOPICS)
    assert prompt_options("人名") == prompt_options("[a,b]") == prompt_options("x[a,]") == []


# -- conversion and examples ----------------------------------------------------
def test_choices_results_become_doccano_choices_and_paddlenlp_labels():
    from convert import task_to_doccano

    task = {"id": 7, "data": {"text": "梅西在决赛中打进两球。"}, "annotations": [{"id": 1, "result": [
        choice_result("topic", ["体育", "体育"]), choice_result("other", ["x"]),
        {"id": "r1", "from_name": "label", "to_name": "text", "type": "labels",
         "value": {"start": 0, "end": 2, "text": "梅西", "labels": [PERSON]}}]}]}
    record = task_to_doccano(task)
    assert record["choices"] == {"topic": ["体育"], "other": ["x"]} and "label" not in record
    record = task_to_doccano(task, choice_names={"topic"})
    assert record["choices"] == {"topic": ["体育"]} and record["label"] == ["体育"]
    assert record["entities"] == [{"id": 0, "label": PERSON, "start_offset": 0, "end_offset": 2}]
    task["annotations"][0]["result"] = task["annotations"][0]["result"][2:]
    assert "choices" not in task_to_doccano(task)


def test_a_job_builds_classification_examples_beside_the_span_ones():
    import finetune
    from train_job import build_examples
    from uie.tokenizer import OffsetTokenizer, scratch_vocab

    config = CHOICES_CONFIG.replace("</View>", f'<Labels name="label" toName="text"><Label value="{PERSON}"/>'
                                               '</Labels></View>')
    tasks = topic_tasks()
    tasks[6]["annotations"][0]["result"].append(
        {"id": "m", "from_name": "label", "to_name": "text", "type": "labels",
         "value": {"start": 0, "end": 2, "text": "梅西", "labels": [PERSON]}})
    tasks[0]["annotations"][0]["result"].append(choice_result("topic", ["gone"]))   # no Choice (any more)
    examples = build_examples(tasks, config, min_dev_tasks=50)
    served = "主题[体育,财经,天气]"
    cls = [ex for ex in examples.train if ex["prompt"].startswith("主题[")]
    assert {ex["prompt"] for ex in cls} == {served, "主题[财经,天气,体育]", "主题[天气,体育,财经]"}
    assert len(cls) == 3 * len(TOPIC_CASES)
    for ex in cls:                                   # PaddleNLP's offsets: into the prompt, negative
        (answer,) = ex["result_list"]
        start = answer["start"] + len(ex["prompt"]) + 1
        assert ex["prompt"][start:start + 2] == answer["text"] == dict(TOPIC_CASES)[ex["content"]]
    assert sum(ex["prompt"] == PERSON for ex in examples.train) == len(TOPIC_CASES)   # negatives too

    tokenizer = OffsetTokenizer({t: i for i, t in enumerate(scratch_vocab())})
    assert finetune.tagger_classes(examples.train, 64) == [PERSON]     # a cls prompt is never a class
    (x,) = finetune.encode_examples([cls[0]], tokenizer, 64)
    assert x.classifies and [tokenizer.encode(cls[0]["prompt"])[p - 1] for p in x.starts + x.ends] == \
        tokenizer.encode(cls[0]["result_list"][0]["text"])


def test_answers_become_a_choices_item_single_or_multiple():
    from choices import ChoiceQuery, items
    from label_config import parse_choices
    from uie.predictor import Span

    single = parse_choices(CHOICES_CONFIG)[0]
    multiple = parse_choices(CHOICES_CONFIG.replace('<Choices ', '<Choices choice="multiple" '))[0]
    # 主题[体育,财经,天气]: 体育 at -10..-8, 财经 at -7..-5, 天气 at -4..-2; -13..-11 is 主题
    spans = [Span(-4, -2, 0.6), Span(-10, -8, 0.9), Span(-13, -11, 0.99), Span(-10, -5, 0.95)]
    queries = [ChoiceQuery(0, single, "t"), ChoiceQuery(1, multiple, "t"), ChoiceQuery(2, single, "u")]
    answers = [{single.prompt: spans}, {multiple.prompt: spans}, {single.prompt: []}]
    (t0, one), (t1, several) = items(queries, answers)
    assert (t0, t1) == (0, 1)
    assert one == {"id": one["id"], "from_name": "topic", "to_name": "text", "type": "choices",
                   "value": {"choices": ["体育"]}, "score": 0.9}
    assert several["value"] == {"choices": ["体育", "天气"]} and several["score"] == 0.6


# -- trained for real, through the app ---------------------------------------------
def train(client, tasks, config, project):
    answer = client.post("/train", json={"annotations": tasks, "project": f"{project}.1", "label_config": config})
    assert answer.status_code == 201, answer.json
    job = wait_job(lambda p: client.get(p).json, str(project), answer.json["job"]["id"])
    assert job["state"] == "done" and job["promoted"], job
    return job


def predict(client, tasks, config, project):
    answer = client.post("/predict", json={"tasks": [{"id": t["id"], "data": t["data"]} for t in tasks],
                                           "label_config": config, "project": f"{project}.1"})
    assert answer.status_code == 200, answer.json
    return answer.json["results"]


def test_a_choices_only_project_trains_and_its_version_reproduces_the_choices(make_app, scratch_small):
    app = make_app(uie_model=str(scratch_small), train_max_seq_len=64, task_score="min")  # score = its item's
    client = app.test_client()
    assert client.post("/setup", json={"project": "31.1", "schema": CHOICES_CONFIG}).status_code == 200
    tasks = topic_tasks()
    before = predict(client, tasks, CHOICES_CONFIG, 31)           # served by the base model
    assert len(before) == len(tasks)
    job = train(client, tasks, CHOICES_CONFIG, 31)
    predictions = predict(client, tasks, CHOICES_CONFIG, 31)
    assert {p["model_version"] for p in predictions} == {job["model_version"]}
    assert predicted_choices(predictions) == [[topic] for _, topic in TOPIC_CASES]
    for p in predictions:
        (item,) = p["result"]
        assert item["type"] == "choices" and item["to_name"] == "text" and 0.25 < item["score"] <= 1
        assert p["score"] == item["score"]

    # the choices round is counted: one input per task (one window, one prompt)
    small = make_app(uie_model=str(scratch_small), max_queries_per_request=len(tasks) - 1).test_client()
    answer = small.post("/predict", json={"tasks": tasks, "label_config": CHOICES_CONFIG, "project": "32.1"})
    assert answer.status_code == 413 and f"{len(tasks)} for the choices round" in answer.json["error"]


MIXED_CONFIG = ('<View>'
                f'<Labels name="label" toName="text"><Label value="{PERSON}"/><Label value="{ORG}"/></Labels>'
                '<Text name="text" value="$text"/>'
                f'<Relations><Relation value="{FOUNDER}"/></Relations>'
                '<Choices name="facts" toName="text" choice="multiple" predicted_values="提到">'
                '<Choice value="founding" predicted_values="创办"/><Choice value="work" predicted_values="工作"/>'
                '</Choices></View>')


def mixed_facts(text):
    facts = [f for f, words in (("founding", ("创办", "创立", "创始人")), ("work", ("工作", "员工", "加入")))
             if any(w in text for w in words)]
    return facts


def test_labels_relations_and_choices_train_in_one_job(make_app, scratch_small):
    app = make_app(uie_model=str(scratch_small), train_max_seq_len=64)
    client = app.test_client()
    tasks = []
    for i, (text, spans, relations) in enumerate(RELATION_CASES[:9]):
        result = annotation_result(text, spans, relations)
        if mixed_facts(text):
            result.append(choice_result("facts", mixed_facts(text)))
        tasks.append({"id": i + 1, "data": {"text": text},
                      "annotations": [{"id": 900 + i, "was_cancelled": False, "result": result}]})
    assert {tuple(mixed_facts(t["data"]["text"])) for t in tasks} == {("founding",), ("founding", "work")}
    train(client, tasks, MIXED_CONFIG, 33)
    predictions = predict(client, tasks, MIXED_CONFIG, 33)
    assert predicted_choices(predictions, "facts") == [mixed_facts(t["data"]["text"]) for t in tasks]
    kinds = {r["type"] for p in predictions for r in p["result"]}
    assert {"labels", "choices"} <= kinds
