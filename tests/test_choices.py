"""``<Choices>`` on a ``<Text>``: text classification with UIE's classification prompts.

The config is parsed, annotations become doccano records and UIE classification examples
(PaddleNLP's ``prefix[opt1,opt2]`` prompts, negative offsets into the prompt), a scratch
model is trained for real through the Flask app (``POST /train``) and its version
reproduces the annotated choices through ``/predict``, alone and beside labels and relations.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from helpers import (FOUNDER, ORG, PERSON, RELATION_CASES, TOPIC_CASES, TOPICS, annotation_result, wait_job)
from uie import data_parallel, train_inputs

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
    from training_examples import build_examples
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
    assert train_inputs.tagger_classes(examples.train, 64) == [PERSON]     # a cls prompt is never a class
    (x,) = train_inputs.encode_examples([cls[0]], tokenizer, 64)
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


# -- the choice head: what a scratch model serves for <Choices> ------------------------
HEAD_TAGS = ("国内", "国外", "人物")
HEAD_CONFIG = ('<View><Text name="text" value="$text"/>'
               '<Choices name="topic" toName="text" predicted_values="主题">'
               + "".join(f'<Choice value="{t}"/>' for t in TOPICS) + '</Choices>'
               '<Choices name="tags" toName="text" choice="multiple" predicted_values="标签">'
               + "".join(f'<Choice value="{t}"/>' for t in HEAD_TAGS) + '</Choices></View>')
# several tags on some texts: a multiple control, answered by independent sigmoids
HEAD_CASE_TAGS = [("国内", "人物"), ("国内",), ("国内",), ("国内", "国外"), ("国内",), ("国内",),
                  ("国外", "人物"), ("国外",), ("国内",)]


def head_tasks():
    return [{"id": i + 1, "data": {"text": text}, "annotations": [{"id": 700 + i, "was_cancelled": False, "result": [
        choice_result("topic", [topic]), choice_result("tags", list(tags))]}]}
            for i, ((text, topic), tags) in enumerate(zip(TOPIC_CASES, HEAD_CASE_TAGS))]


@pytest.fixture(scope="module")
def head_model(tmp_path_factory, scratch_small):
    """A tiny scratch model trained for real, as a job trains it, on HEAD_CONFIG's choices."""
    import finetune
    from training_examples import build_examples

    examples = build_examples(head_tasks(), HEAD_CONFIG, min_dev_tasks=50)
    save = tmp_path_factory.mktemp("choice-head")
    metrics = finetune.finetune(examples.train, examples.dev or None, scratch_small, save, max_seq_len=64,
                                valid_steps=0, device="cpu")
    return save / "model_best", metrics


def head_choices(predictor, config=HEAD_CONFIG, cases=TOPIC_CASES, run=None):
    """``{control name: [chosen values or None per case]}`` and the items, as ``/predict`` builds them."""
    import choices
    from label_config import parse_choices

    controls = parse_choices(config)
    queries = choices.build_queries([(k, c, text) for k, (text, _) in enumerate(cases) for c in controls])
    found = choices.items(queries, (run or predictor.extract)(choices.asked(queries)))
    out = {c.from_name: [None] * len(cases) for c in controls}
    for t, item in found:
        out[item["from_name"]][t] = item["value"]["choices"]
    return out, found


def test_a_scratch_model_trained_on_choices_saves_a_choice_head_with_its_controls(head_model):
    import uie.choice_head

    model_dir, metrics = head_model
    assert {"choice_head.json", "choice_head.pdparams"} <= {p.name for p in model_dir.iterdir()}
    head = uie.choice_head.load(model_dir)
    # the options in the order of a first training example (any order of them is the same control)
    assert [(c["prefix"], set(c["options"]), c["multiple"]) for c in head.controls] == [
        ("主题", set(TOPICS), False), ("标签", set(HEAD_TAGS), True)]
    assert metrics["choice_controls"] == head.controls
    assert not (model_dir / "tagger.json").exists()       # no span label: no span tagger


def test_a_scratch_model_serves_its_choices_from_the_head_single_and_multiple(head_model):
    import numpy as np

    import choices
    from label_config import parse_choices
    from uie import answer_cache
    from uie.predictor import UIEPredictor
    from uie.tokenizer import encode_windows

    model_dir, _ = head_model
    predictor = UIEPredictor.from_dir(model_dir, max_seq_len=64)
    assert predictor.choice_head is not None

    def no_uie(arrays):
        raise AssertionError("a classification prompt of the head went to the UIE")

    predictor.engine = no_uie
    chosen, found = head_choices(predictor)
    assert chosen["topic"] == [[topic] for _, topic in TOPIC_CASES]              # single: the argmax
    assert chosen["tags"] == [[t for t in HEAD_TAGS if t in tags] for tags in HEAD_CASE_TAGS]   # sigmoids > 0.5
    # scores are the head's probabilities: a softmax over the topics, the least sure tag's sigmoid
    runner = predictor.choice_head
    for t, item in found:
        text = TOPIC_CASES[t][0]
        ids = predictor.tokenizer.tokenize(text)[0]
        logits = runner.logits(runner.features(encode_windows(predictor.tokenizer, [], ids, 64),
                                               predictor.tokenizer.pad_id))
        probs = runner.head.probabilities(logits, 0 if item["from_name"] == "topic" else 1)
        if item["from_name"] == "topic":
            assert abs(probs.sum() - 1) < 1e-6 and item["score"] == round(float(probs.max()), 6) > 1 / 3
        else:
            assert item["score"] == round(float(min(p for p in probs if p > 0.5)), 6)
    # counted as the head's prompt-free windows: one per (text, Choices), as the UIE's prompts were
    long = "北京" * 100
    queries = choices.build_queries([(0, c, text) for c in parse_choices(HEAD_CONFIG)
                                     for text in (TOPIC_CASES[0][0], long)])
    assert predictor.count_inputs(choices.asked(queries)) == 2 * (1 + predictor._n_windows(200, 0)) > 2 * 2
    # the answer cache keeps the head's answers like the UIE's
    cache = answer_cache.AnswerCache()
    first, _ = head_choices(predictor, run=lambda qs: cache.extract(predictor.extract, qs))
    again, _ = head_choices(predictor, run=lambda qs: cache.extract(predictor.extract, qs))
    assert first == again == chosen and cache.hits == 2 * len(TOPIC_CASES)
    assert np.isfinite([i["score"] for _, i in found]).all()


def test_a_prompt_the_head_did_not_learn_goes_to_the_uie(head_model):
    from uie.predictor import UIEPredictor

    model_dir, _ = head_model
    predictor = UIEPredictor.from_dir(model_dir, max_seq_len=64)
    calls = []
    engine = predictor.engine
    predictor.engine = lambda arrays: calls.append(len(arrays["input_ids"])) or engine(arrays)
    other = HEAD_CONFIG.replace('<Choice value="天气"/>', '<Choice value="天气"/><Choice value="科技"/>')
    head_choices(predictor, other, TOPIC_CASES[:2])
    assert sum(calls) == 2              # 主题[体育,财经,天气,科技]: a new option, the UIE's prompt


def test_a_damaged_choice_head_is_refused_at_load(head_model, tmp_path):
    import shutil

    from uie.checkpoint import ModelLoadError
    from uie.predictor import UIEPredictor

    model_dir, _ = head_model
    copy = tmp_path / "model"
    shutil.copytree(model_dir, copy)
    (copy / "choice_head.pdparams").write_bytes(b"not weights")
    with pytest.raises(ModelLoadError, match="choice_head.pdparams"):
        UIEPredictor.from_dir(copy, max_seq_len=64)


def test_a_pretrained_shaped_model_keeps_answering_choices_from_prompts(scratch_small, tmp_path):
    """No span tagger (``tagging_weight=0``, a pretrained UIE's default): no choice head is
    trained or saved, and the classification prompt goes to the UIE, as Taskflow asks it."""
    import finetune
    from training_examples import build_examples
    from uie.predictor import UIEPredictor

    examples = build_examples(head_tasks(), HEAD_CONFIG, min_dev_tasks=50)
    metrics = finetune.finetune(examples.train, None, scratch_small, tmp_path, max_seq_len=64, num_epochs=1,
                                valid_steps=0, device="cpu", tagging_weight=0.0)
    model_dir = tmp_path / "model_best"
    assert metrics["choice_controls"] == [] and not (model_dir / "choice_head.json").exists()
    for path in (model_dir, scratch_small):
        predictor = UIEPredictor.from_dir(path, max_seq_len=64)
        assert predictor.choice_head is None
        calls = []
        engine = predictor.engine
        predictor.engine = lambda arrays: calls.append(len(arrays["input_ids"])) or engine(arrays)
        head_choices(predictor, cases=TOPIC_CASES[:3])
        assert sum(calls) == 2 * 3                         # every (text, Choices) prompt ran on the UIE


def test_a_served_head_trained_again_keeps_what_it_knows(head_model):
    """A version trained again starts from its head: the encoder, and the outputs of the options
    it knows; a new option (or control) gets fresh ones."""
    import numpy as np

    import uie.choice_head

    model_dir, _ = head_model
    served = uie.choice_head.load(model_dir)
    topic, tags = served.controls
    controls = [dict(topic, options=topic["options"] + ["科技"]), tags]
    head = uie.choice_head.with_controls(served, controls)
    assert head.controls == controls
    assert head.find(f"主题[{','.join(controls[0]['options'])}]") == (0, [0, 1, 2, 3])
    assert head.find("主题[科技,体育,财经,天气]")[1][0] == 3                # any order of them
    assert head.find("主题[体育,财经,天气]") is None                      # another control: the UIE's
    assert np.array_equal(head.embedding.weight.numpy(), served.embedding.weight.numpy())
    old_w, new_w = served.out.weight.numpy(), head.out.weight.numpy()
    for k, option in enumerate(topic["options"]):
        assert np.array_equal(new_w[:, k], old_w[:, k]), option
    assert np.array_equal(new_w[:, 4:], old_w[:, 3:])                    # the tags, shifted


def test_the_choices_round_counts_in_the_task_score(make_app, scratch_small):
    """Under ``TASK_SCORE=entropy`` a Choices-only task's score comes from the choice decisions
    (on the prompt tokens, where UIE decides an option), as a Labels task's does from its spans:
    not a sure 1.0 for every task."""
    client = make_app(uie_model=str(scratch_small), task_score="entropy").test_client()
    predictions = predict(client, topic_tasks(), CHOICES_CONFIG, 34)
    assert all(0 < p["score"] < 1 for p in predictions), [p["score"] for p in predictions]


def test_a_control_declared_multiple_is_multiple_before_any_task_chooses_two(monkeypatch):
    """``choice="multiple"`` in the config makes the head's control multiple (sigmoids) even
    when every annotation so far picked one option; the job passes the config's prompts."""
    import finetune
    import train_job
    import training_examples
    import uie.choice_head
    from label_config import parse_choices

    tasks = head_tasks()
    for task in tasks:      # one tag per text
        result = task["annotations"][0]["result"]
        result[1]["value"]["choices"] = result[1]["value"]["choices"][:1]
    examples = training_examples.build_examples(tasks, HEAD_CONFIG, min_dev_tasks=50)
    declared = [c.prompt for c in parse_choices(HEAD_CONFIG) if c.multiple]
    assert [c["multiple"] for c in uie.choice_head.controls_of(examples.train)[0]] == [False, False]
    assert [c["multiple"] for c in uie.choice_head.controls_of(examples.train, declared)[0]] == [False, True]

    passed = {}
    monkeypatch.setattr(finetune, "finetune", lambda *a, **k: passed.update(k) or {})
    spec = train_job.JobSpec(project="1", label_config=HEAD_CONFIG, tasks=tasks, source="test",
                             model_path="unused", model_version="v1")
    train_job._finetune(spec, examples, Path("unused"))
    assert passed["multiple_choice"] == declared == ["标签[国内,国外,人物]"]
    assert data_parallel.launch_flags(finetune.TrainingOptions(
        None, None, 16, 64, 1, 10, 0, "cpu", None, 0.01, 0.06, None, None, None, None, None, None,
        multiple_choice=tuple(declared)))[-2:] == ["--multiple_choice", declared[0]]
