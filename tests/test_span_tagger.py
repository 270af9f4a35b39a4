"""span_tagger.py and lac.py: a scratch model's span tagger, trained, saved, served."""

from __future__ import annotations

import json
import shutil
import time

import numpy as np
import pytest

from helpers import EDGE_CASES, PERSON, PLACE, SEQ_LEN, uie_examples
from uie import train_inputs

OTHER = "其他"


@pytest.fixture(scope="module")
def tagged(tmp_path_factory, scratch_small):
    """A tiny scratch UIE trained with the scratch defaults (its span tagger on)."""
    import finetune

    save = tmp_path_factory.mktemp("tagged")
    metrics = finetune.finetune(uie_examples(), None, scratch_small, save, num_epochs=80, batch_size=4,
                                max_seq_len=SEQ_LEN, valid_steps=0, patience=1000, device="cpu")
    return save / "model_best", metrics


class CountingEngine:
    """The UIE's engine, counting the inputs it is asked for."""

    def __init__(self, engine):
        self.engine, self.rows = engine, 0

    def __call__(self, arrays):
        self.rows += len(arrays["input_ids"])
        return self.engine(arrays)


def gold(prompts=(PERSON, PLACE)):
    return [{p: sorted((s, e) for lab, s, e in spans if lab == p) for p in prompts} for _, spans in EDGE_CASES]


def found(results):
    return [{p: sorted((x.start, x.end) for x in spans) for p, spans in r.items()} for r in results]


def test_lac_is_installed_and_its_embedding_reads():
    """`make install` installs LAC; its character rows start the tagger's embedding."""
    import uie.lac

    where = uie.lac.model_dir()
    assert where is not None and (where / "model" / "word_emb").is_file()
    table = uie.lac.read_tensor(where / "model" / "word_emb")
    assert table.shape == (58224, 128) and table.dtype == np.float32
    ids = {}
    for line in (where / "conf" / "word.dic").read_text(encoding="utf-8").splitlines():
        i, _, char = line.partition("\t")
        ids.setdefault(char, int(i))
    vocab = ["[PAD]", "张", "##张", "京", "\U0001F600"]
    start = uie.lac.for_vocab(vocab, 128)
    assert np.array_equal(start[1], table[ids["张"]]) and np.array_equal(start[2], table[ids["张"]])
    assert np.array_equal(start[3], table[ids["京"]])
    assert uie.lac.for_vocab(vocab, 64) is None          # another width: no start


def test_read_tensor_refuses_a_truncated_file(tmp_path):
    import uie.lac

    src = uie.lac.model_dir() / "model" / "fc_0.b_0"
    (tmp_path / "cut").write_bytes(src.read_bytes()[:-8])
    with pytest.raises(ValueError, match="truncated"):
        uie.lac.read_tensor(tmp_path / "cut")


def test_a_scratch_model_saves_its_tagger_and_answers_its_labels_with_it(tagged):
    import uie.predictor

    path, metrics = tagged
    assert metrics["kind"] == "scratch" and metrics["f1"] == 1.0
    assert sorted(metrics["tagger_classes"]) == sorted([PERSON, PLACE])
    config = json.loads((path / "tagger.json").read_text(encoding="utf-8"))
    assert config["embedding_start"].startswith("lac-")
    predictor = uie.predictor.UIEPredictor.from_dir(path, max_seq_len=SEQ_LEN)
    counting = CountingEngine(predictor.engine)
    predictor.engine = counting
    queries = [(text, [PERSON, PLACE]) for text, _ in EDGE_CASES]
    assert found(predictor.extract(queries)) == gold()
    assert counting.rows == 0                      # the UIE was not asked: one tagger pass per window
    mixed = predictor.extract([(text, [PERSON, OTHER]) for text, _ in EDGE_CASES])
    assert [{PERSON: r[PERSON]} for r in found(mixed)] == gold([PERSON])
    assert counting.rows > 0                       # a label the tagger does not know: prompts


def test_a_text_gets_the_same_tagger_answer_alone_and_beside_longer_ones(tagged):
    """Padding never reaches a text's answer: the GRU stops at each row's length."""
    import uie.predictor

    predictor = uie.predictor.UIEPredictor.from_dir(tagged[0], max_seq_len=SEQ_LEN, threshold=0.01)
    short = (EDGE_CASES[0][0], [PERSON, PLACE])
    alone = predictor.extract([short])[0]
    beside = predictor.extract([(EDGE_CASES[5][0], [PERSON]), short, (EDGE_CASES[1][0], [PLACE])])[1]
    assert found([alone]) == found([beside]) and alone[PERSON]
    for p in alone:        # the same up to float rounding of another batch shape
        assert [x.score for x in alone[p]] == pytest.approx([x.score for x in beside[p]], rel=1e-5)


def test_training_again_keeps_the_tagger_of_known_classes(tagged, tmp_path):
    """A served model trained again starts from its tagger; a new class gets a fresh row."""
    import paddle

    import uie.tagger

    old = uie.tagger.load(tagged[0])
    new = uie.tagger.with_classes(old, [PLACE, OTHER])
    w_old, w_new = old.head.weight.numpy(), new.head.weight.numpy()
    k = old.classes.index(PLACE)
    assert np.array_equal(w_new[:, 0:2], w_old[:, 2 * k: 2 * k + 2])
    assert not np.array_equal(w_new[:, 2:4], w_old[:, 0:2]) and not np.array_equal(w_new[:, 2:4], w_old[:, 2:4])
    assert np.array_equal(new.gru.state_dict()["weight_hh_l0"].numpy(), old.gru.state_dict()["weight_hh_l0"].numpy())
    assert np.array_equal(new.embedding.weight.numpy(), old.embedding.weight.numpy())
    x = paddle.to_tensor([[1, 2, 3]])
    assert new(x, paddle.to_tensor([3]))[0].shape == [1, 3, 2]


@pytest.mark.parametrize("damage", ["config", "weights", "shape"])
def test_a_damaged_tagger_does_not_load(tagged, tmp_path, damage):
    import paddle

    import uie.checkpoint
    import uie.predictor

    path = tmp_path / "model"
    shutil.copytree(tagged[0], path)
    if damage == "config":
        (path / "tagger.json").write_text("{not json", encoding="utf-8")
    elif damage == "weights":
        (path / "tagger.pdparams").write_bytes(b"\0" * 100)
    else:
        state = paddle.load(str(path / "tagger.pdparams"))
        state["head.weight"] = paddle.zeros([4, 4])
        paddle.save(state, str(path / "tagger.pdparams"))
    with pytest.raises(uie.checkpoint.ModelLoadError, match="tagger"):
        uie.predictor.UIEPredictor.from_dir(path, max_seq_len=SEQ_LEN)


def test_relation_prompts_are_no_tagger_class():
    text = "张三出生于北京。"
    examples = [{"content": text, "prompt": PERSON, "result_list": [{"text": "张三", "start": 0, "end": 2}]},
                {"content": text, "prompt": PLACE, "result_list": [{"text": "北京", "start": 5, "end": 7}]},
                {"content": text, "prompt": "张三的出生地", "result_list": [{"text": "北京", "start": 5, "end": 7}]},
                {"content": text, "prompt": "birthplace of 张三", "result_list": []}]
    assert train_inputs.relation_prompts(examples) == {"张三的出生地", "birthplace of 张三"}


def test_other_entity_relation_negatives_are_no_tagger_class():
    """PaddleNLP's "other entity" relation negatives ask a relation of an entity of another
    text: with ``subject_labels`` (organisations), a person in no relation (张三, 李四, ...) is
    asked so only on other texts, where it is no span; still no tagger class."""
    from helpers import FOUNDER, ORG, RELATION_CASES, RELATION_CONFIG, relation_tasks
    from training_examples import build_examples

    config = RELATION_CONFIG.replace(f'<Relation value="{FOUNDER}"/>',
                                     f'<Relation value="{FOUNDER}" subject_labels="{ORG}"/>')
    train = build_examples(relation_tasks(RELATION_CASES), config, min_dev_tasks=50).train
    foreign = {ex["prompt"] for ex in train if ex["prompt"].endswith("的" + FOUNDER)
               and ex["prompt"][:-len(FOUNDER) - 1] not in ex["content"]}
    assert {"张三的" + FOUNDER, "李四的" + FOUNDER} <= foreign     # the case: such negatives exist
    assert foreign <= train_inputs.relation_prompts(train)
    assert train_inputs.tagger_classes(train, 64) == [PERSON, ORG]
    # the English form, an entity of another text only
    text, other = "Alice founded Acme.", "Bob lives in Paris."
    examples = [{"content": text, "prompt": "person", "result_list": [{"text": "Alice", "start": 0, "end": 5}]},
                {"content": other, "prompt": "person", "result_list": [{"text": "Bob", "start": 0, "end": 3}]},
                {"content": text, "prompt": "company", "result_list": [{"text": "Acme", "start": 14, "end": 18}]},
                {"content": text, "prompt": "founder of Acme", "result_list": [{"text": "Alice", "start": 0, "end": 5}]},
                {"content": text, "prompt": "founder of Bob", "result_list": []}]
    assert train_inputs.relation_prompts(examples) == {"founder of Acme", "founder of Bob"}
    assert train_inputs.tagger_classes(examples, 64) == ["person", "company"]


def test_a_served_tagger_runs_on_paddle_inference_with_dygraphs_answers(tagged, tmp_path, caplog):
    """The static export holds the tagger's traced program, stamped with its files: beside a
    CPU engine other than dygraph it answers on Paddle Inference, with dygraph's probabilities
    (padding included) and spans. A damaged tagger export is a damaged export: the UIE and the
    tagger answer in dygraph, saying why."""
    import uie.engine
    import uie.predictor
    import uie.tagger
    from uie.tokenizer import encode_windows, pad_batch

    path = tmp_path / "model"
    shutil.copytree(tagged[0], path)
    engine = uie.engine.load_engine(path, "paddle-inference", "cpu", 2, export=True)
    assert engine.name == "paddle-inference" and (path / "static" / "tagger.pdmodel").is_file()
    served = uie.predictor.UIEPredictor.from_dir(path, engine=engine, max_seq_len=SEQ_LEN, threshold=0.01)
    plain = uie.predictor.UIEPredictor.from_dir(path, max_seq_len=SEQ_LEN, threshold=0.01)
    assert (served.tagger.name, plain.tagger.name) == ("paddle-inference", "dygraph")
    tok = served.tokenizer
    arrays = pad_batch([encode_windows(tok, [], tok.tokenize(text)[0], SEQ_LEN)[0] for text, _ in EDGE_CASES],
                       tok.pad_id)
    for a, b in zip(served.tagger(arrays), plain.tagger(arrays)):
        assert a.shape == b.shape and np.allclose(a, b, atol=1e-5)
    queries = [(text, [PERSON, PLACE]) for text, _ in EDGE_CASES]
    assert found(served.extract(queries)) == found(plain.extract(queries))

    traced = path / "static" / "tagger.pdiparams"
    traced.write_bytes(traced.read_bytes()[:-64])
    assert uie.engine.check_static(path) == "tagger.pdiparams is missing or damaged"
    int8_like = type("Engine", (), {"name": "onnx-int8", "device": "cpu", "threads": 1})()
    runner = uie.engine.tagger_runner(path, uie.tagger.load(path), int8_like)
    assert runner.name == "dygraph" and "tagger.pdiparams" in runner.reason
    assert "span tagger runs in dygraph" in caplog.text
    assert uie.engine.load_engine(path, "paddle-inference", "cpu", 2).name == "dygraph"
    (path / "tagger.pdparams").write_bytes((tagged[0] / "tagger.pdparams").read_bytes() + b"\0")
    assert uie.engine.check_static(path) == "the static model was exported from another span tagger"


def test_a_version_exported_before_taggers_were_gets_its_tagger_exported(tagged, store_for, tmp_path):
    """A promoted version whose static export has no tagger (as exported before) is served at
    once in dygraph, its export rebuilt in the background, then served on Paddle Inference,
    tagger included (``/health``)."""
    import uie.engine
    from service.model_store import ModelStore

    model = tmp_path / "exported"
    shutil.copytree(tagged[0], model)
    uie.engine.export_static(model)
    store = store_for()
    version = store.promote("1", model, {})
    static = store.project_dir("1") / version / "static"
    stamp = json.loads((static / "export.json").read_text(encoding="utf-8"))
    for name in ("tagger", "tagger.pdmodel", "tagger.pdiparams"):
        stamp.pop(name)
        (static / name).unlink(missing_ok=True)
    (static / "export.json").write_text(json.dumps(stamp), encoding="utf-8")
    store = ModelStore(store.settings, source=store.base)
    live = store.live("1")
    assert live.version == version and live.predictor.tagger.name == "dygraph"
    assert "no span tagger" in store.problems()["1"]["errors"][0]
    deadline = time.time() + 300
    while store.exports_in_progress():
        assert time.time() < deadline, "the export was not rebuilt"
        time.sleep(0.5)
    info = store.engines()[str(store.project_dir("1") / version)]
    assert (info["engine"], info["tagger_engine"]) == ("paddle-inference", "paddle-inference")
    assert "tagger_fallback_reason" not in info and "1" not in store.problems()
