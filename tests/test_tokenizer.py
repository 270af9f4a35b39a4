"""OffsetTokenizer: ErnieTokenizer's tokens, with exact character offsets."""

import random

import pytest

import uie.checkpoint
import uie.predictor
import uie.tokenizer


@pytest.fixture(scope="module")
def tokenizers(scratch_small):
    from paddlenlp.transformers import ErnieTokenizer

    return (uie.checkpoint.load_tokenizer(scratch_small),
            ErnieTokenizer(str(scratch_small / "vocab.txt")))


ALPHABET = "ab Zé😀张三北京，。 \r\n\t\x00\u200bＡ１$€²µ-İ\u0308ßx9"


def test_same_tokens_as_ernie_tokenizer(tokenizers):
    ours, ernie = tokenizers
    rng = random.Random(7)
    for _ in range(2000):
        text = "".join(rng.choice(ALPHABET) for _ in range(rng.randint(0, 24)))
        ids, starts, ends = ours.tokenize(text)
        assert ids == ernie.convert_tokens_to_ids(ernie.tokenize(text)), repr(text)
        assert all(0 <= s < e <= len(text) for s, e in zip(starts, ends))
        assert starts == sorted(starts)


@pytest.mark.parametrize("text, pieces", [
    ("😀 张三", ["😀", "张", "三"]),
    ("  Ａb１\r\n北", ["Ａ", "b", "１", "北"]),
    ("Héllo-world", ["H", "é", "l", "l", "o", "-", "w", "o", "r", "l", "d"]),
    ("x\u200by", ["x", "y"]),          # dropped control char inside a word
    ("a😀😀b", ["a", "😀", "😀", "b"]),
])
def test_offsets_point_at_the_original_characters(tokenizers, text, pieces):
    ours, _ = tokenizers
    _, starts, ends = ours.tokenize(text)
    assert [text[s:e] for s, e in zip(starts, ends)] == pieces


def test_windows_partition_ownership():
    for n, budget in [(10, 20), (200, 50), (1000, 45), (61, 60)]:
        ws = uie.tokenizer.windows(n, budget)
        assert ws[0][0] == 0 and ws[-1][1] == n
        assert all(hi - lo <= budget for lo, hi, _, _ in ws)
        owned = [(a, b) for _, _, a, b in ws]
        assert owned[0][0] == 0 and owned[-1][1] == n
        assert all(owned[k][1] == owned[k + 1][0] for k in range(len(owned) - 1))
        # every owned start has at least half the overlap of room to its window's end
        for lo, hi, a, b in ws:
            assert lo <= a and (b <= hi - min(budget // 3, 96) // 2 or hi == n)


def test_pair_spans_follows_uie_decoding():
    import numpy as np

    start = np.array([0.9, 0.1, 0.8, 0.1, 0.1, 0.7])
    end = np.array([0.1, 0.9, 0.1, 0.9, 0.1, 0.8])
    spans = uie.predictor.pair_spans(start, end, 0.5)
    assert [(s, e) for s, e, _ in spans] == [(0, 1), (2, 3), (5, 5)]
    assert spans[0][2] == pytest.approx(0.81)


def test_long_words_are_not_kept_in_the_caches(tokenizers):
    """Words of up to MAX_TEXT_CHARS characters must not pile up in the word cache."""
    ours, ernie = tokenizers
    fresh = uie.tokenizer.OffsetTokenizer(ours.vocab, ours.do_lower_case)
    rng = random.Random(3)
    letters = "abcdefghijklmnopqrstuvwxyz"
    lengths = [2000] * 100 + [101, 150, 60, 40, uie.tokenizer.WORD_CACHE_CHARS + 1]
    words = ["".join(rng.choice(letters) for _ in range(n)) for n in lengths]
    texts = [f"张三 {w}，Hello" for w in words]
    results = [fresh.tokenize(t) for t in texts]
    assert fresh._wordpiece.cache_info().currsize == 1             # "hello" only
    assert fresh._norm.cache_info().currsize <= len(set("".join(texts)))   # single characters
    # the same tokens as ErnieTokenizer's, and as the cached tokenizer's
    for t, (ids, _, _) in zip(texts[-5:], results[-5:]):
        assert ids == ernie.convert_tokens_to_ids(ernie.tokenize(t))
    assert [fresh.tokenize(t) for t in texts] == results
    assert [ours.tokenize(t) for t in texts] == results


def test_the_word_cache_is_bounded(tokenizers):
    """Distinct words of the longest cached length, each char its own piece (the worst
    case): the cache keeps WORD_CACHE_SIZE of them, in a few tens of MB."""
    import tracemalloc

    ours, _ = tokenizers
    fresh = uie.tokenizer.OffsetTokenizer(ours.vocab, ours.do_lower_case)
    rng = random.Random(5)

    def word():
        return "".join(rng.choice("abcdefghijklmnopqrstuvwxyz0123456789")
                       for _ in range(uie.tokenizer.WORD_CACHE_CHARS))

    sample = 2000
    tracemalloc.start()
    try:
        base = tracemalloc.get_traced_memory()[0]
        for _ in range(sample):
            fresh.tokenize(word())
        per_word = (tracemalloc.get_traced_memory()[0] - base) / sample
    finally:
        tracemalloc.stop()
    for _ in range(uie.tokenizer.WORD_CACHE_SIZE):
        fresh.tokenize(word())
    assert fresh._wordpiece.cache_info().currsize == uie.tokenizer.WORD_CACHE_SIZE
    assert per_word * uie.tokenizer.WORD_CACHE_SIZE < 64 * 2**20, f"{per_word:.0f} bytes a word"


def test_windows_of_one_token_and_of_none():
    assert uie.tokenizer.windows(3, 1) == [(0, 1, 0, 1), (1, 2, 1, 2), (2, 3, 2, 3)]
    assert uie.tokenizer.windows(0, 0) == [(0, 0, 0, 0)]
    with pytest.raises(ValueError, match="max_seq_len too short"):
        uie.tokenizer.windows(3, 0)          # used to loop for ever
