"""Tokenisation with exact character offsets, and the model inputs built from it.

- ``OffsetTokenizer`` tokenises like PaddleNLP's ``ErnieTokenizer`` but keeps,
  for every token, the Python string indices of the characters it came from,
  so spans map back to exactly the text Label Studio shows
  (``uie.checkpoint.load_tokenizer`` reads one from a model directory).
- ``scratch_vocab`` is the fixed character vocabulary of a scratch UIE.
- ``windows``, ``encode_windows`` and ``pad_batch`` build the model inputs
  (``[CLS] prompt [SEP] window [SEP]``) that ``finetune.py`` trains on and
  ``uie.predictor`` predicts from: one rule for both.
- ``prompt_options`` tells a classification prompt (PaddleNLP's
  ``prefix[option1,option2]``) and where its options are: UIE answers such a
  prompt with the span of an option *in the prompt*, not in the text.
"""

from __future__ import annotations

import unicodedata
from dataclasses import dataclass
from functools import lru_cache

import numpy as np

SPECIAL_TOKENS = ["[PAD]", "[CLS]", "[SEP]", "[MASK]", "[UNK]"]


# Character classes (the rules of BERT/ERNIE's BasicTokenizer)

def _is_whitespace(ch):
    return ch in " \t\n\r" or unicodedata.category(ch) == "Zs"


def _is_control(ch):
    if ch in "\t\n\r":
        return False
    return unicodedata.category(ch).startswith("C")


def _is_punctuation(ch):
    cp = ord(ch)
    if 33 <= cp <= 47 or 58 <= cp <= 64 or 91 <= cp <= 96 or 123 <= cp <= 126:
        return True
    return unicodedata.category(ch).startswith("P")


def _is_symbol(ch):
    return unicodedata.category(ch).startswith("S") or ord(ch) in (
        0x00AD, 0x00B2, 0x00BA, 0x3007, 0x00B5, 0x00D8, 0x014B, 0x01B1)


def _is_chinese_char(cp):
    return (0x4E00 <= cp <= 0x9FFF or 0x3400 <= cp <= 0x4DBF or 0x20000 <= cp <= 0x2A6DF
            or 0x2A700 <= cp <= 0x2B73F or 0x2B740 <= cp <= 0x2B81F or 0x2B820 <= cp <= 0x2CEAF
            or 0xF900 <= cp <= 0xFAFF or 0x2F800 <= cp <= 0x2FA1F)


_SKIP, _SPACE, _ALONE, _IN_WORD = "skip", "space", "alone", "in word"


@lru_cache(maxsize=65536)
def _char_kind(ch) -> str:
    """How BasicTokenizer treats ``ch``: dropped, a word boundary, a token of its own (CJK,
    punctuation, symbols) or part of a word."""
    cp = ord(ch)
    if cp == 0 or cp == 0xFFFD or _is_control(ch):
        return _SKIP
    if _is_whitespace(ch):
        return _SPACE
    if _is_chinese_char(cp) or _is_punctuation(ch) or _is_symbol(ch):
        return _ALONE
    return _IN_WORD


def scratch_vocab() -> list[str]:
    """The fixed character vocabulary of a scratch UIE: CJK, ASCII, punctuation."""
    tokens = list(SPECIAL_TOKENS)
    seen = set(tokens)

    def add(tok):
        if tok not in seen:
            seen.add(tok)
            tokens.append(tok)

    word_chars = []
    for cp in range(0x21, 0x7F):                       # printable ASCII
        ch = chr(cp).lower()
        add(ch)
        if ch.isalnum():
            word_chars.append(ch)
    for cp in list(range(0xFF10, 0xFF1A)) + list(range(0xFF41, 0xFF5B)):  # full-width 0-9 a-z
        add(chr(cp))
        word_chars.append(chr(cp))
    for ch in word_chars:
        add("##" + ch)
    for lo, hi in ((0x3000, 0x303F), (0xFF01, 0xFF0F), (0xFF1A, 0xFF20), (0xFF3B, 0xFF40),
                   (0xFF5B, 0xFF65), (0x2010, 0x2027), (0x2030, 0x205E), (0x00A1, 0x00BF)):
        for cp in range(lo, hi + 1):
            ch = chr(cp)
            if not _is_whitespace(ch) and not _is_control(ch):
                add(ch)
    for cp in range(0x4E00, 0xA000):                   # CJK unified ideographs
        add(chr(cp))
    return tokens


# Tokenisation with exact offsets

# The tokenizer remembers the pieces of up to WORD_CACHE_SIZE words of at most
# WORD_CACHE_CHARS characters: at most ~3 KB each (a word split into one piece
# per character), so the cache stays under ~50 MB whatever the texts; most words
# take a few hundred bytes. Longer words are split anew each time (a word of
# more than 100 characters is one [UNK] without any look-up).
WORD_CACHE_CHARS = 32
WORD_CACHE_SIZE = 16384


class OffsetTokenizer:
    """WordPiece tokenisation (as ErnieTokenizer does it) with character offsets.

    ``tokenize(text)`` returns ``(ids, starts, ends)``: token ``i`` came from
    ``text[starts[i]:ends[i]]``. Characters the tokenizer drops (whitespace,
    control characters) belong to no token; an unknown word is one ``[UNK]``
    covering the whole word.
    """

    def __init__(self, vocab: dict[str, int], do_lower_case: bool = True):
        self.vocab = vocab
        self.do_lower_case = do_lower_case
        self.unk_id = vocab["[UNK]"]
        self.pad_id = vocab["[PAD]"]
        self.cls_id = vocab["[CLS]"]
        self.sep_id = vocab["[SEP]"]
        self._wordpiece = lru_cache(maxsize=WORD_CACHE_SIZE)(self._wordpiece_uncached)
        self._norm = lru_cache(maxsize=65536)(self._norm_uncached)    # single characters

    def _norm_uncached(self, ch):
        if not self.do_lower_case:
            return ch
        decomposed = unicodedata.normalize("NFD", ch.lower())
        return "".join(c for c in decomposed if unicodedata.category(c) != "Mn")

    def _wordpiece_uncached(self, word):
        """Greedy longest-match pieces of a normalised word: [(id, start, end)]."""
        if len(word) > 100:
            return ((self.unk_id, 0, len(word)),)
        pieces, start, vocab = [], 0, self.vocab
        while start < len(word):
            end = len(word)
            while end > start:
                sub = word[start:end] if start == 0 else "##" + word[start:end]
                tid = vocab.get(sub)
                if tid is not None:
                    pieces.append((tid, start, end))
                    break
                end -= 1
            else:
                return ((self.unk_id, 0, len(word)),)
            start = end
        return tuple(pieces)

    def tokenize(self, text: str):
        ids, starts, ends = tokens = ([], [], [])
        word, where = [], []   # normalised characters of the current word, their text index
        for i, ch in enumerate(text):
            kind = _char_kind(ch)
            if kind is _SKIP:
                continue
            if kind is not _IN_WORD:            # a space or a character alone ends a word
                self._add_word(tokens, word, where)
            normed = self._norm(ch) if kind is not _SPACE else ""
            if not normed:
                continue
            if kind is _IN_WORD:
                word.append(normed)
                where.append(i)
            elif (tid := self.vocab.get(normed)) is not None:   # CJK, punctuation, symbols
                ids.append(tid)
                starts.append(i)
                ends.append(i + 1)
            else:
                self._add_word(tokens, [normed], [i])
        self._add_word(tokens, word, where)
        return ids, starts, ends

    def _add_word(self, tokens, word: list[str], where: list[int]):
        """Append the pieces of ``word`` (normalised characters at text indices ``where``)
        to ``tokens``, then empty ``word`` and ``where``."""
        if not word:
            return
        ids, starts, ends = tokens
        joined = "".join(word)
        index = [i for piece, i in zip(word, where) for _ in piece]   # normalised position -> text index
        split = self._wordpiece if len(joined) <= WORD_CACHE_CHARS else self._wordpiece_uncached
        for tid, s, e in split(joined):
            ids.append(tid)
            starts.append(index[s])
            ends.append(index[e - 1] + 1)
        word.clear()
        where.clear()

    def encode(self, text: str) -> list[int]:
        return self.tokenize(text)[0]


def windows(n_tokens: int, budget: int):
    """Split ``n_tokens`` content tokens into overlapping windows of ``budget``.

    Returns ``[(lo, hi, own_lo, own_hi)]``: the window covers tokens ``lo:hi``
    and is the one that reports spans starting in ``own_lo:own_hi``. Windows
    overlap by ``budget // 3`` (at most 96) tokens and ownership changes in
    the middle of each overlap, so a span of up to half the overlap is always
    seen whole by the window that owns it.
    """
    if n_tokens <= budget:
        return [(0, n_tokens, 0, n_tokens)]
    if budget < 1:
        raise ValueError(f"no room for the text in a window of {budget} tokens (max_seq_len too short)")
    overlap = max(1, min(budget // 3, 96)) if budget > 1 else 0
    stride = budget - overlap
    out, lo = [], 0
    while True:
        hi = min(lo + budget, n_tokens)
        out.append([lo, hi, 0, 0])
        if hi >= n_tokens:
            break
        lo += stride
    for k, w in enumerate(out):
        w[2] = 0 if k == 0 else out[k - 1][3]
        w[3] = n_tokens if k == len(out) - 1 else out[k + 1][0] + overlap // 2
    return [tuple(w) for w in out]


def prompt_options(prompt: str) -> list[tuple[int, int]]:
    """``[(start, end)]`` character offsets of the options of a classification prompt
    ``prefix[option1,option2,...]`` (a prefix, options none of them empty); ``[]`` for
    any other prompt."""
    at = prompt.rfind("[")
    if at <= 0 or not prompt.endswith("]") or "]" in prompt[at:-1]:
        return []
    out, start = [], at + 1
    for option in prompt[at + 1:-1].split(","):
        if not option.strip():
            return []
        out.append((start, start + len(option)))
        start += len(option) + 1
    return out


# Model inputs: one encoder for training and serving

@dataclass(frozen=True, slots=True)
class EncodedInput:
    """One model input: ``[CLS] prompt [SEP] content[lo:hi] [SEP]``.

    ``ids[content_start]`` is content token ``lo``; the input reports the
    spans that start at content tokens ``own_lo:own_hi`` (see ``windows``).
    """

    ids: tuple[int, ...]
    content_start: int
    lo: int
    own_lo: int
    own_hi: int

    @property
    def n_content(self) -> int:
        """How many content tokens the input holds (``hi - lo``)."""
        return len(self.ids) - self.content_start - 1

    @property
    def hi(self) -> int:
        return self.lo + self.n_content


def encode_windows(tokenizer, prompt_ids, content_ids, max_seq_len: int) -> list[EncodedInput]:
    """The inputs of one prompt over one tokenised content, one per window.

    The prompt keeps at most ``max_seq_len // 2`` tokens; the content is split
    into windows of ``max_seq_len - 3 - len(prompt)`` tokens, so every input
    has at most ``max_seq_len`` tokens. No prompt (``[]``) gives the
    prompt-free ``[CLS] [SEP] window [SEP]``. An empty content has no input.
    """
    if not content_ids:
        return []
    prompt_ids = prompt_ids[: max_seq_len // 2]
    head = (tokenizer.cls_id, *prompt_ids, tokenizer.sep_id)
    budget = window_budget(len(prompt_ids), max_seq_len)
    return [EncodedInput((*head, *content_ids[lo:hi], tokenizer.sep_id), len(head), lo, own_lo, own_hi)
            for lo, hi, own_lo, own_hi in windows(len(content_ids), budget)]


def window_budget(n_prompt: int, max_seq_len: int) -> int:
    """Content tokens per window beside a prompt of ``n_prompt`` tokens (the prompt keeps at
    most ``max_seq_len // 2`` of them)."""
    return max_seq_len - 3 - min(n_prompt, max_seq_len // 2)


def pad_batch(inputs, pad_id: int) -> dict[str, np.ndarray]:
    """The UIE's keyword arrays for ``inputs`` (int64), padded to the longest of them.

    ``input_ids``, ``token_type_ids`` (1 from the content on), ``position_ids``
    and ``attention_mask`` (1 on every token but the padding).
    """
    width = max(len(x.ids) for x in inputs)
    n = len(inputs)
    input_ids = np.full((n, width), pad_id, dtype="int64")
    token_type_ids = np.zeros((n, width), dtype="int64")
    attention_mask = np.zeros((n, width), dtype="int64")
    for r, x in enumerate(inputs):
        input_ids[r, : len(x.ids)] = x.ids
        token_type_ids[r, x.content_start: len(x.ids)] = 1
        attention_mask[r, : len(x.ids)] = 1
    position_ids = np.ascontiguousarray(np.broadcast_to(np.arange(width, dtype="int64"), (n, width)))
    return {"input_ids": input_ids, "token_type_ids": token_type_ids,
            "position_ids": position_ids, "attention_mask": attention_mask}
