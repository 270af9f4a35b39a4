"""uie_model: the model inputs training and serving build, pinned on the edge cases."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pytest

from helpers import EDGE_CASES, PERSON, PLACE, SEQ_LEN, uie_examples

import uie.checkpoint
import uie.predictor
import uie.tokenizer
from uie import train_inputs

QUERIES = [(text, [PERSON, PLACE]) for text, _ in EDGE_CASES]


@pytest.fixture(scope="module")
def tokenizer(scratch_small):
    return uie.checkpoint.load_tokenizer(scratch_small)


@pytest.fixture(scope="module")
def predictor(scratch_small):
    return uie.predictor.UIEPredictor.from_dir(scratch_small, device="cpu", max_seq_len=SEQ_LEN,
                                           batch_size=4)


def expected_inputs(tokenizer, text, prompt, max_seq_len):
    """``[CLS] prompt [SEP] window [SEP]`` for every window, computed from ``windows()``."""
    ids = tokenizer.tokenize(text)[0]
    p_ids = tokenizer.encode(prompt)[: max_seq_len // 2]
    budget = max_seq_len - 3 - len(p_ids)
    return [([tokenizer.cls_id, *p_ids, tokenizer.sep_id, *ids[lo:hi], tokenizer.sep_id],
             len(p_ids) + 2, lo, own_lo, own_hi)
            for lo, hi, own_lo, own_hi in uie.tokenizer.windows(len(ids), budget)]


def serving_inputs(predictor, queries):
    """``build_inputs`` as ``[(query, prompt, ids, content_start, lo, own_lo, own_hi)]``."""
    inputs, _ = predictor.build_inputs(queries)
    out = []
    for q, prompt, x in inputs:
        assert isinstance(x, uie.tokenizer.EncodedInput)
        out.append((q, prompt, list(x.ids), x.content_start, x.lo, x.own_lo, x.own_hi))
    return out


def training_inputs(encoded):
    """``encode_examples`` as ``[(ids, content_start, starts, ends)]``."""
    return [(list(x.input.ids), x.input.content_start, list(x.starts), list(x.ends)) for x in encoded]


def digest(arrays):
    """A fingerprint of the values and shapes of some arrays (dtype aside)."""
    h = hashlib.sha1()
    for a in arrays:
        a = np.asarray(a)
        h.update(repr(a.shape).encode())
        h.update(np.ascontiguousarray(a, dtype=np.float64).tobytes())
    return h.hexdigest()


class Recorder:
    """Stands in for the model: keeps the arrays it is given, finds nothing."""

    def __init__(self):
        self.calls = []

    def __call__(self, arrays):
        self.calls.append(arrays)
        shape = arrays["input_ids"].shape
        return np.zeros(shape, "float32"), np.zeros(shape, "float32")


def test_the_long_text_spans_several_windows(tokenizer):
    text = EDGE_CASES[5][0]
    assert len(expected_inputs(tokenizer, text, PERSON, SEQ_LEN)) >= 3


def test_serving_inputs_are_the_windows_of_every_prompt(predictor, tokenizer):
    got = serving_inputs(predictor, QUERIES)
    want = []
    for q, (text, prompts) in enumerate(QUERIES):
        windows = {p: expected_inputs(tokenizer, text, p, SEQ_LEN) for p in prompts}
        for k in range(len(windows[prompts[0]])):
            for p in prompts:
                ids, c0, lo, own_lo, own_hi = windows[p][k]
                want.append((q, p, ids, c0, lo, own_lo, own_hi))
    assert got == want
    assert all(len(ids) <= SEQ_LEN for _, _, ids, *_ in got)


def test_training_inputs_are_the_windows_serving_uses(tokenizer):
    examples = uie_examples()
    encoded = train_inputs.encode_examples(examples, tokenizer, SEQ_LEN)
    got = training_inputs(encoded)
    want = []
    for ex in examples:
        for ids, c0, lo, _, _ in expected_inputs(tokenizer, ex["content"], ex["prompt"], SEQ_LEN):
            hi = lo + len(ids) - c0 - 1
            starts, ends = [], []
            for r in ex["result_list"]:
                first, last = train_inputs.token_span(*tokenizer.tokenize(ex["content"])[1:],
                                                  r["start"], r["end"])
                if lo <= first and last < hi:
                    starts.append(c0 + first - lo)
                    ends.append(c0 + last - lo)
            want.append((ids, c0, starts, ends))
    assert got == want
    # every span of the long text is a target of the window that holds it
    long_text = EDGE_CASES[5][0]
    n_long = sum(len(expected_inputs(tokenizer, long_text, p, SEQ_LEN)) for p in (PERSON, PLACE))
    first_long = sum(len(expected_inputs(tokenizer, ex["content"], ex["prompt"], SEQ_LEN))
                     for ex in examples[:10])
    assert [ex["content"] for ex in examples[10:12]] == [long_text, long_text]
    assert sum(len(s) for _, _, s, _ in got[first_long: first_long + n_long]) >= 4


# Fingerprints of the exact arrays the model is given, taken before the
# encoder was shared by training and serving: the refactor must not move them.
SERVING_ARRAYS = "6b7c3326911d3ea71c1e3a56b696ab02bef7fc9b"
TRAINING_ARRAYS = "45e64ad5bbcd51c318e3cb2013dbeefead25d72c"
# The tagger's arrays were pinned again when it became a GRU (span_tagger): it takes
# the ids, lengths and mask, no token types or positions; its inputs did not change.
TAGGING_ARRAYS = "3d1b9babc96e3fca173060682e5dac3fd3222a51"


def test_serving_feeds_the_model_the_same_arrays(predictor, monkeypatch):
    recorder = Recorder()
    monkeypatch.setattr(predictor, "forward",
                        lambda inputs: recorder(uie.tokenizer.pad_batch(inputs, predictor.tokenizer.pad_id)))
    assert predictor.extract(QUERIES) == [{PERSON: [], PLACE: []} for _ in QUERIES]
    arrays = [call[k] for call in recorder.calls
              for k in ("input_ids", "token_type_ids", "position_ids", "attention_mask")]
    assert digest(arrays) == SERVING_ARRAYS


def test_training_feeds_the_model_the_same_arrays(tokenizer):
    encoded = train_inputs.encode_examples(uie_examples(), tokenizer, SEQ_LEN)
    arrays = []
    for b in range(0, len(encoded), 8):
        arrays += [t.numpy() for t in train_inputs.to_tensors(encoded[b: b + 8], tokenizer.pad_id)]
    assert digest(arrays) == TRAINING_ARRAYS


def test_tagging_feeds_the_model_the_same_arrays(tokenizer):
    classes, encoded = train_inputs.encode_tagging(uie_examples(), tokenizer, SEQ_LEN)
    arrays = []
    for b in range(0, len(encoded), 3):
        arrays += [t.numpy() for t in train_inputs.tagging_tensors(encoded[b: b + 3], tokenizer.pad_id,
                                                                len(classes))]
    assert digest(arrays) == TAGGING_ARRAYS


def test_prompts_of_different_lengths_get_the_windows_training_uses(predictor, tokenizer):
    """One budget rule: each prompt's windows depend on its own length, as in training."""

    text = EDGE_CASES[5][0]
    prompts = ["人", "一个很长的提示词" * 4]     # the second one is cut to SEQ_LEN // 2 tokens
    got = serving_inputs(predictor, [(text, prompts)])
    for prompt in prompts:
        served = [(ids, c0) for _, p, ids, c0, *_ in got if p == prompt]
        trained = [(list(x.input.ids), x.input.content_start) for x in train_inputs.encode_examples(
            [{"content": text, "prompt": prompt, "result_list": []}], tokenizer, SEQ_LEN)]
        assert served == trained
        assert served == [(ids, c0) for ids, c0, *_ in expected_inputs(tokenizer, text, prompt, SEQ_LEN)]
        assert all(len(ids) <= SEQ_LEN for ids, _ in served)
    short, long = (sum(p == prompt for _, p, *_ in got) for prompt in prompts)
    assert short < long


def test_an_empty_text_or_no_prompt_has_no_input(predictor):
    inputs, tokens = predictor.build_inputs([("", [PERSON]), ("张三", []), (" \r\n", [PLACE])])
    assert inputs == [] and len(tokens) == 3
    assert predictor.extract([("", [PERSON]), ("张三", [])]) == [{PERSON: []}, {}]


# --------------------------------------------------------------------------
# Loading refuses what does not fit (never another exception than ModelLoadError)

@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    path = tmp_path_factory.mktemp("tiny") / "model"
    return uie.checkpoint.build_scratch(path, hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                                   intermediate_size=64)


@pytest.fixture
def model_copy(tiny, tmp_path):
    import shutil

    return Path(shutil.copytree(tiny, tmp_path / "model"))


def save_state(path, state):
    import paddle

    paddle.save(state, str(path / "model_state.pdparams"))


def load_state(path):
    import paddle

    return paddle.load(str(path / "model_state.pdparams"))


def test_a_tiny_model_loads(tiny):
    model = uie.checkpoint.load_uie(tiny)
    assert not model.training
    predictor = uie.predictor.UIEPredictor.from_dir(tiny, max_seq_len=SEQ_LEN)
    assert predictor.extract([("张三在北京。", [PERSON])])[0].keys() == {PERSON}


def test_an_empty_state_dict_is_refused(model_copy):
    save_state(model_copy, {})
    with pytest.raises(uie.checkpoint.ModelLoadError, match=r"model_state.pdparams does not fit .*missing"):
        uie.checkpoint.load_uie(model_copy)


def test_a_foreign_state_dict_is_refused(model_copy):
    save_state(model_copy, {"bert." + k: v for k, v in load_state(model_copy).items()})
    with pytest.raises(uie.checkpoint.ModelLoadError, match=r"missing.*not the model's") as err:
        uie.checkpoint.load_uie(model_copy)
    assert "bert.ernie.embeddings" in str(err.value)


def test_extra_weights_are_refused(model_copy):
    import numpy as np

    state = load_state(model_copy)
    state["linear_middle.weight"] = np.zeros((32, 1), dtype="float32")
    save_state(model_copy, state)
    with pytest.raises(uie.checkpoint.ModelLoadError, match="linear_middle.weight"):
        uie.checkpoint.load_uie(model_copy)


def test_a_shape_mismatch_is_refused(model_copy):
    import numpy as np

    state = load_state(model_copy)
    state["linear_start.weight"] = np.zeros((31, 1), dtype="float32")
    save_state(model_copy, state)
    with pytest.raises(uie.checkpoint.ModelLoadError, match=r"linear_start.weight \(31, 1\) instead of \(32, 1\)"):
        uie.checkpoint.load_uie(model_copy)


def test_a_config_of_another_shape_is_refused(model_copy):
    cfg = json.loads((model_copy / "config.json").read_text())
    cfg["intermediate_size"] = 128
    (model_copy / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(uie.checkpoint.ModelLoadError, match="shapes differ"):
        uie.checkpoint.load_uie(model_copy)


@pytest.mark.parametrize("damage", ["empty", "truncated", "garbage", "not-a-dict"])
def test_unreadable_weights_are_refused(model_copy, damage):
    weights = model_copy / "model_state.pdparams"
    data = weights.read_bytes()
    if damage == "not-a-dict":
        save_state(model_copy, [1, 2, 3])
    else:
        weights.write_bytes({"empty": b"", "truncated": data[: len(data) // 2],
                             "garbage": bytes(range(256)) * 64}[damage])
    with pytest.raises(uie.checkpoint.ModelLoadError, match="model_state.pdparams"):
        uie.checkpoint.load_uie(model_copy)


@pytest.mark.parametrize("name", ["config.json", "tokenizer_config.json"])
@pytest.mark.parametrize("text", ["{oops", "[1, 2]", "", "\udcff"])
def test_invalid_json_files_are_refused(model_copy, name, text):
    (model_copy / name).write_bytes(text.encode("utf-8", "surrogateescape"))
    with pytest.raises(uie.checkpoint.ModelLoadError, match=name):
        uie.checkpoint.load_uie(model_copy)
    with pytest.raises(uie.checkpoint.ModelLoadError, match=name):
        uie.predictor.UIEPredictor.from_dir(model_copy)


@pytest.mark.parametrize("damage", ["missing", "binary", "no-special-tokens", "directory"])
def test_a_missing_or_garbage_vocabulary_is_refused(model_copy, damage):
    vocab = model_copy / "vocab.txt"
    if damage == "missing":
        vocab.unlink()
    elif damage == "binary":
        vocab.write_bytes(b"[PAD]\n\xff\xfe\x00garbage\n")
    elif damage == "no-special-tokens":
        vocab.write_text("a\nb\n")
    else:
        vocab.unlink()
        vocab.mkdir()
    with pytest.raises(uie.checkpoint.ModelLoadError, match="vocab.txt"):
        uie.checkpoint.load_tokenizer(model_copy)
    with pytest.raises(uie.checkpoint.ModelLoadError, match="vocab.txt"):
        uie.predictor.UIEPredictor.from_dir(model_copy)


def test_a_vocabulary_larger_than_the_embeddings_is_refused(model_copy):
    vocab = model_copy / "vocab.txt"
    vocab.write_text(vocab.read_text() + "".join(f"extra{k}\n" for k in range(10)))
    with pytest.raises(uie.checkpoint.ModelLoadError, match="vocab.txt has .* tokens"):
        uie.checkpoint.load_uie(model_copy)
    with pytest.raises(uie.checkpoint.ModelLoadError, match="vocab.txt has .* tokens"):
        uie.predictor.UIEPredictor.from_dir(model_copy)
