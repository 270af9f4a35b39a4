"""finetune.py's training inputs: the auxiliary tagging task and negatives drawn per epoch."""

from __future__ import annotations

import json
import random

import pytest

from helpers import EDGE_CASES, PERSON, PLACE, SEQ_LEN, uie_examples
from uie import train_inputs


@pytest.fixture(scope="module")
def tokenizer(scratch_small):
    import uie.checkpoint

    return uie.checkpoint.load_tokenizer(scratch_small)


def test_tagging_marks_every_prompts_spans_in_one_prompt_free_input(tokenizer):
    text = "张三在北京工作。"
    examples = [
        {"content": text, "prompt": PERSON, "result_list": [{"text": "张三", "start": 0, "end": 2}]},
        {"content": text, "prompt": PLACE, "result_list": [{"text": "北京", "start": 3, "end": 5}]},
        {"content": "今天很好。", "prompt": PLACE, "result_list": []},
    ]
    classes, encoded = train_inputs.encode_tagging(examples, tokenizer, 64)
    assert sorted(classes) == sorted([PERSON, PLACE])
    assert len(encoded) == 2                       # one input per content, not per prompt
    seq, c0 = encoded[0].input.ids, encoded[0].input.content_start
    assert seq[:2] == (tokenizer.cls_id, tokenizer.sep_id) and seq[-1] == tokenizer.sep_id and c0 == 2
    assert list(seq[c0:-1]) == tokenizer.tokenize(text)[0]
    person, place = classes.index(PERSON), classes.index(PLACE)
    assert sorted(encoded[0].asked) == sorted([person, place])
    assert sorted(encoded[0].starts) == sorted([(c0 + 0, person), (c0 + 3, place)])
    assert sorted(encoded[0].ends) == sorted([(c0 + 1, person), (c0 + 4, place)])
    # A content asked about one prompt only says nothing about the others.
    assert encoded[1].asked == (place,) and encoded[1].starts == () and encoded[1].ends == ()


def test_tagging_windows_long_contents_like_prediction(tokenizer):
    examples = uie_examples(EDGE_CASES[5:6])          # the long text with spans far apart
    _, encoded = train_inputs.encode_tagging(examples, tokenizer, SEQ_LEN)
    assert len(encoded) > 1 and all(len(x.input.ids) <= SEQ_LEN for x in encoded)
    marked = sum(len(x.starts) for x in encoded)
    assert marked >= 4                                  # every span lies whole in some window


def test_negatives_are_capped_per_content_and_drawn_anew(tokenizer):
    prompts = [f"标签{k}" for k in range(8)]
    examples = []
    for n, (text, spans) in enumerate(EDGE_CASES[:4]):
        for k, prompt in enumerate(prompts):
            result = [{"text": text[s:e], "start": s, "end": e} for _, s, e in spans] if k == n else []
            examples.append({"content": text, "prompt": prompt, "result_list": result})
    origins = []
    encoded = train_inputs.encode_examples(examples, tokenizer, 128, origins)
    assert len(origins) == len(encoded) == len(examples)
    rng = random.Random(0)
    draws = [train_inputs.sample_negatives(examples, origins, 2, rng) for _ in range(5)]
    for kept in draws:
        chosen = [examples[origins[k]] for k in kept]
        assert sum(1 for ex in chosen if ex["result_list"]) == 4          # every positive, every time
        for text, _ in EDGE_CASES[:4]:
            assert sum(1 for ex in chosen if ex["content"] == text and not ex["result_list"]) == 2
    assert len({tuple(sorted(k)) for k in draws}) > 1


def test_a_scratch_model_trains_its_tagger_and_the_uie_the_prompts_it_does_not_know(tmp_path, scratch_small):
    """The tagger learns the entity prompts and is saved; the UIE learns only the rest."""
    import paddle

    import finetune

    relation = "张三的出生地"
    text = "张三出生于北京。"
    extra = [{"content": text, "prompt": PERSON, "result_list": [{"text": "张三", "start": 0, "end": 2}]},
             {"content": text, "prompt": relation, "result_list": [{"text": "北京", "start": 5, "end": 7}]}]
    metrics = finetune.finetune(uie_examples() + extra, None, scratch_small, tmp_path, learning_rate=1e-3,
                                num_epochs=3, batch_size=8, max_seq_len=SEQ_LEN, valid_steps=0,
                                device="cpu", max_negatives=1)
    assert metrics["tagging_weight"] == 1.0 and metrics["max_negatives"] == 1
    assert sorted(metrics["tagger_classes"]) == sorted([PERSON, PLACE])
    assert metrics["train_inputs"] == 1               # the relation example, for the UIE
    saved = paddle.load(str(tmp_path / "model_best" / "model_state.pdparams"))
    initial = paddle.load(str(scratch_small / "model_state.pdparams"))
    assert sorted(saved) == sorted(initial)
    assert (tmp_path / "model_best" / "tagger.pdparams").is_file()
    written = json.loads((tmp_path / "metrics.json").read_text())
    assert written["tagging_weight"] == 1.0


def test_tagging_weight_0_trains_and_saves_the_uie_alone(tmp_path, scratch_small):
    import finetune

    metrics = finetune.finetune(uie_examples(), None, scratch_small, tmp_path, num_epochs=1, batch_size=8,
                                max_seq_len=SEQ_LEN, valid_steps=0, device="cpu", tagging_weight=0.0)
    assert metrics["tagger_classes"] == [] and metrics["train_inputs"] > len(uie_examples())   # windows
    assert not (tmp_path / "model_best" / "tagger.json").exists()


def test_init_from_ckpt_refuses_weights_of_another_model(tmp_path, scratch_small):
    import paddle

    import finetune
    import uie.checkpoint

    state = paddle.load(str(scratch_small / "model_state.pdparams"))
    paddle.save({"bert." + k: v for k, v in state.items()}, str(tmp_path / "foreign.pdparams"))
    with pytest.raises(uie.checkpoint.ModelLoadError, match="foreign.pdparams does not fit"):
        finetune.finetune(uie_examples()[:2], None, scratch_small, tmp_path / "out", num_epochs=1,
                          max_seq_len=SEQ_LEN, device="cpu", init_from_ckpt=tmp_path / "foreign.pdparams")
    assert not (tmp_path / "out" / "model_best").exists()


def test_a_max_seq_len_without_room_for_text_is_refused(tmp_path, scratch_small):
    import evaluate
    import finetune

    with pytest.raises(finetune.DataError, match="max_seq_len must be at least 16"):
        finetune.finetune(uie_examples()[:2], None, scratch_small, tmp_path, max_seq_len=4, device="cpu")
    with pytest.raises(SystemExit) as exit_:
        evaluate.main(["--model_path", str(scratch_small), "--test_path", "none.txt", "--max_seq_len", "4"])
    assert exit_.value.code == 2
