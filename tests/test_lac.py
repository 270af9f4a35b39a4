"""uie/lac.py: LAC's BiGRU read into the span tagger's GRU, checked against LAC itself."""

from __future__ import annotations

import numpy as np
import pytest

TEXT = "北京大学的张三在上海市浦东新区工作了三年"


def lac_files():
    import uie.lac

    where = uie.lac.model_dir()
    ids = {}
    for line in (where / "conf" / "word.dic").read_text(encoding="utf-8").splitlines():
        i, _, char = line.partition("\t")
        ids.setdefault(char, int(i))
    return where, ids


def lac_tags(where, word_ids) -> np.ndarray:
    """LAC's own answer: its inference program run by Paddle Inference (one LoD sequence)."""
    from paddle import inference

    config = inference.Config(str(where / "model"))
    config.disable_glog_info()
    predictor = inference.create_predictor(config)
    feed = predictor.get_input_handle(predictor.get_input_names()[0])
    feed.reshape([len(word_ids), 1])
    feed.copy_from_cpu(word_ids.reshape(-1, 1))
    feed.set_lod([[0, len(word_ids)]])
    predictor.run()
    return predictor.get_output_handle(predictor.get_output_names()[0]).copy_to_cpu().ravel()


def reference_gru(x, state, suffix, reverse):
    """LAC's ``gru`` op's equations (origin_mode=False) on ``paddle.nn.GRU`` weights:
    reset applied to the hidden state before the candidate's matmul."""
    h_size = state["weight_hh" + suffix].shape[1]
    w_ih, w_hh, b = state["weight_ih" + suffix], state["weight_hh" + suffix], state["bias_ih" + suffix]
    sig = lambda v: 1 / (1 + np.exp(-v))  # noqa: E731
    h, out = np.zeros(h_size, "float32"), np.zeros((len(x), h_size), "float32")
    for t in (range(len(x) - 1, -1, -1) if reverse else range(len(x))):
        xs = w_ih @ x[t] + b
        r = sig(xs[:h_size] + w_hh[:h_size] @ h)
        z = sig(xs[h_size:2 * h_size] + w_hh[h_size:2 * h_size] @ h)
        c = np.tanh(xs[2 * h_size:] + w_hh[2 * h_size:] @ (r * h))
        h = z * h + (1 - z) * c
        out[t] = h
    return out


def viterbi(emission, crf):
    start, end, trans = crf[0], crf[1], crf[2:]
    score, back = start + emission[0], []
    for t in range(1, len(emission)):
        s = score[:, None] + trans + emission[t][None]
        back.append(s.argmax(0))
        score = s.max(0)
    best = [int((score + end).argmax())]
    for b in reversed(back):
        best.append(int(b[best[-1]]))
    return np.array(best[::-1])


def test_lacs_gru_as_read_gives_lacs_own_tags():
    """The weights ``gru_state`` reads, run with LAC's equations, tag a sentence as LAC does:
    the gate order, the signs and the layout of LAC's packed GRU weights are right."""
    import uie.lac

    where, ids = lac_files()
    word_ids = np.array([ids.get(c, ids["OOV"]) for c in TEXT], "int64")
    state = uie.lac.gru_state(128, 2)
    x = uie.lac.read_tensor(where / "model" / "word_emb")[word_ids]
    for layer in (0, 1):
        x = np.concatenate([reference_gru(x, state, f"_l{layer}", False),
                            reference_gru(x, state, f"_l{layer}_reverse", True)], axis=1)
    emission = x @ uie.lac.read_tensor(where / "model" / "fc_4.w_0") + uie.lac.read_tensor(where / "model" / "fc_4.b_0")
    tags = viterbi(emission, uie.lac.read_tensor(where / "model" / "crfw"))
    assert np.array_equal(tags, lac_tags(where, word_ids))


def test_a_new_tagger_starts_with_lacs_gru():
    """``uie.tagger.build`` puts LAC's BiGRU in the tagger: on one character (no hidden state
    yet, where paddle's GRU and LAC's equations are the same) its states are LAC's."""
    import paddle

    import uie.lac
    import uie.tagger

    where, ids = lac_files()
    tagger = uie.tagger.build(["[PAD]", "京"], ["地名"])
    assert tagger.config["gru_start"] == uie.lac.GRU_SOURCE
    tagger.eval()
    x = uie.lac.read_tensor(where / "model" / "word_emb")[[ids["京"]]]
    state = uie.lac.gru_state(128, 2)
    for layer in (0, 1):
        x = np.concatenate([reference_gru(x, state, f"_l{layer}", False),
                            reference_gru(x, state, f"_l{layer}_reverse", True)], axis=1)
    hidden, _ = tagger.gru(tagger.embedding(paddle.to_tensor([[1]])), sequence_length=paddle.to_tensor([1]))
    np.testing.assert_allclose(hidden.numpy()[0], x, atol=1e-5)
    assert uie.lac.gru_state(64, 2) is None and uie.lac.gru_state(128, 1) is None   # another shape: none


def test_a_tagger_saved_before_gru_starts_were_recorded_loads(tmp_path):
    import json

    import uie.tagger

    tagger = uie.tagger.build(["[PAD]", "京"], ["地名"])
    uie.tagger.save(tagger, tmp_path)
    config = json.loads((tmp_path / uie.tagger.CONFIG_FILE).read_text(encoding="utf-8"))
    del config["gru_start"]
    (tmp_path / uie.tagger.CONFIG_FILE).write_text(json.dumps(config), encoding="utf-8")
    assert uie.tagger.load(tmp_path).config["gru_start"] == "random"


@pytest.fixture(autouse=True)
def _lac_installed():
    import uie.lac

    assert uie.lac.model_dir() is not None, "make install installs LAC (requirements-lac.txt)"
