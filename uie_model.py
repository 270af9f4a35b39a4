"""UIE models: where they come from, how text becomes tokens, how spans come out.

- ``resolve_model`` turns ``UIE_MODEL`` (a PaddleNLP name, a checkpoint
  directory or ``scratch``) into a directory that ``Taskflow(task_path=...)``,
  ``finetune.py`` and ``UIEPredictor.from_dir`` all load.
- ``OffsetTokenizer`` tokenises like PaddleNLP's ``ErnieTokenizer`` but keeps,
  for every token, the Python string indices of the characters it came from,
  so spans map back to exactly the text Label Studio shows.
- ``encode_windows`` and ``pad_batch`` build the model inputs
  (``[CLS] prompt [SEP] window [SEP]``) that ``finetune.py`` trains on and
  ``UIEPredictor`` predicts from: one rule for both.
- ``UIEPredictor`` extracts spans for many (text, prompts) queries at once:
  texts are tokenised once, long texts are split into overlapping windows,
  every (window, prompt) input is batched by length and padded only to the
  longest input of its batch. A model with a span tagger (``span_tagger``,
  scratch models) answers the labels the tagger knows from one prompt-free
  pass per window, and only the others from prompts.
"""

from __future__ import annotations

import zlib  # noqa: F401  (must be imported before paddle, see README)
import hashlib
import json
import logging
import os
import shutil
import tempfile
import threading
import unicodedata
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np

log = logging.getLogger(__name__)


def _tune_cpu_env():
    """Before Paddle loads MKL: take its fast code path on AMD CPUs, use every core."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            amd = "AuthenticAMD" in f.read(4096)
    except OSError:
        amd = False
    if amd:
        os.environ.setdefault("MKL_DEBUG_CPU_TYPE", "5")
    os.environ.setdefault("OMP_NUM_THREADS", str(len(os.sched_getaffinity(0))))


_tune_cpu_env()

import paddle  # noqa: E402  (after the environment above)

import span_tagger  # noqa: E402


def use_all_cores():
    """Let Paddle's dygraph math use ``CPU_THREADS`` threads, else ``OMP_NUM_THREADS``
    (every core): it uses one unless told. For the one-process scripts and jobs;
    the server sets its threads per model (``inference_engine``)."""
    for name in ("CPU_THREADS", "OMP_NUM_THREADS"):     # CPU_THREADS=auto: every core
        raw = os.environ.get(name, "").strip()
        if raw.isdigit() and int(raw) > 0:
            paddle.base.core.set_num_threads(int(raw))
            return
    paddle.base.core.set_num_threads(1)


PRETRAINED_NAMES = (
    "uie-base", "uie-medium", "uie-mini", "uie-micro", "uie-nano", "uie-base-en",
    "uie-senta-base", "uie-senta-medium", "uie-senta-mini", "uie-senta-micro", "uie-senta-nano",
)
UNSUPPORTED_NAMES = ("uie-m-base", "uie-m-large", "uie-x-base")
SPECIAL_TOKENS = ["[PAD]", "[CLS]", "[SEP]", "[MASK]", "[UNK]"]
MODEL_FILES = ("config.json", "model_state.pdparams", "vocab.txt",
               "special_tokens_map.json", "tokenizer_config.json")

# Size of the built-in "scratch" UIE: small enough to train on a laptop CPU.
# Two layers: on CLUENER it learned as much per minute as four in the time a
# CPU has (bench/README.md, "Learning"), and trains and predicts twice as fast.
# No dropout: with a dozen annotated tasks it only slows learning down.
SCRATCH_SHAPE = dict(hidden_size=128, num_hidden_layers=2, num_attention_heads=2,
                     intermediate_size=256, hidden_dropout_prob=0.0,
                     attention_probs_dropout_prob=0.0)
SCRATCH_SEED = 20240601
SCRATCH_VOCAB_KIND = "uie-backend-scratch-char-v1"


# The shortest model input the scripts accept (as MAX_SEQ_LEN): room for a
# prompt of up to half of it and a few tokens of text.
MIN_SEQ_LEN = 16


class ModelLoadError(RuntimeError):
    """A model could not be found, downloaded or loaded."""


class DownloadError(ModelLoadError):
    """PaddleNLP could not download a pretrained model by name."""


# --------------------------------------------------------------------------
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


# --------------------------------------------------------------------------
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

    @classmethod
    def from_dir(cls, path) -> "OffsetTokenizer":
        """The tokenizer of a model directory; ``ModelLoadError`` if its files are unusable."""
        path = Path(path)
        if not (path / "vocab.txt").is_file():
            raise ModelLoadError(f"{path} is not a UIE checkpoint: missing vocab.txt")
        try:
            with open(path / "vocab.txt", encoding="utf-8") as f:
                vocab = {line.rstrip("\n"): i for i, line in enumerate(f)}
        except (OSError, UnicodeDecodeError) as exc:
            raise ModelLoadError(f"{path / 'vocab.txt'}: cannot read the vocabulary ({exc})") from exc
        lower = True
        cfg = path / "tokenizer_config.json"
        if cfg.exists():
            lower = bool(read_json_object(cfg).get("do_lower_case", True))
        for tok in SPECIAL_TOKENS:
            if tok not in vocab:
                raise ModelLoadError(f"{path / 'vocab.txt'} has no {tok} token")
        return cls(vocab, lower)

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
        ids, starts, ends = [], [], []
        word, where = [], []   # normalised characters of the current word, their text index

        def flush():
            if not word:
                return
            joined = "".join(word)
            # position in the normalised word -> index in text
            index = [i for piece, i in zip(word, where) for _ in piece]
            cached = len(joined) <= WORD_CACHE_CHARS
            for tid, s, e in (self._wordpiece if cached else self._wordpiece_uncached)(joined):
                ids.append(tid)
                starts.append(index[s])
                ends.append(index[e - 1] + 1)
            word.clear()
            where.clear()

        vocab = self.vocab
        for i, ch in enumerate(text):
            cp = ord(ch)
            if cp == 0 or cp == 0xFFFD or _is_control(ch):
                continue
            if _is_whitespace(ch):
                flush()
                continue
            if _is_chinese_char(cp) or _is_punctuation(ch) or _is_symbol(ch):
                flush()
                normed = self._norm(ch)
                if normed:
                    tid = vocab.get(normed)
                    if tid is None:
                        word.append(normed)
                        where.append(i)
                        flush()
                    else:
                        ids.append(tid)
                        starts.append(i)
                        ends.append(i + 1)
                continue
            normed = self._norm(ch)
            if normed:
                word.append(normed)
                where.append(i)
            elif not word:
                continue
        flush()
        return ids, starts, ends

    def encode(self, text: str) -> list[int]:
        return self.tokenize(text)[0]


# --------------------------------------------------------------------------
# Span decoding

def pair_spans(start_probs, end_probs, threshold):
    """UIE decoding: each end token pairs with the nearest unused start at or before it.

    Returns ``[(start_token, end_token, score)]`` with score = p_start * p_end.
    """
    starts = np.flatnonzero(start_probs > threshold)
    ends = np.flatnonzero(end_probs > threshold)
    spans, si, current = [], 0, None
    for e in ends:
        while si < len(starts) and starts[si] <= e:
            current = starts[si]
            si += 1
        if current is not None:
            spans.append((int(current), int(e), float(start_probs[current] * end_probs[e])))
            current = None
    return spans


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


@dataclass(frozen=True)
class Span:
    start: int
    end: int
    score: float


# --------------------------------------------------------------------------
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
    return [EncodedInput((*head, *content_ids[lo:hi], tokenizer.sep_id), len(head), lo, own_lo, own_hi)
            for lo, hi, own_lo, own_hi in windows(len(content_ids), max_seq_len - 3 - len(prompt_ids))]


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


# --------------------------------------------------------------------------
# Model files

def read_json_object(path: Path) -> dict:
    """A JSON object from a model file; ``ModelLoadError`` for anything else."""
    try:
        value = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:     # UnicodeDecodeError is a ValueError
        raise ModelLoadError(f"{path}: not a readable JSON file ({exc})") from exc
    if not isinstance(value, dict):
        raise ModelLoadError(f"{path}: expected a JSON object, not {type(value).__name__}")
    return value


def read_state_dict(path) -> dict:
    """The named weights in a ``.pdparams`` file (read as PaddleNLP reads them)."""
    from paddlenlp.transformers.model_utils import load_state_dict

    try:
        state = load_state_dict(str(path))
    except Exception as exc:   # pickle, EOF, OS errors, whatever a damaged file raises
        raise ModelLoadError(f"{path}: cannot read the weights ({type(exc).__name__}: {exc})") from exc
    if not (isinstance(state, dict)
            and all(isinstance(k, str) and hasattr(v, "shape") for k, v in state.items())):
        raise ModelLoadError(f"{path}: not a dictionary of named weights")
    return state


def weight_shapes(state) -> dict[str, tuple[int, ...]]:
    return {name: tuple(value.shape) for name, value in state.items()}


def check_weights(model, shapes: dict, where) -> None:
    """``ModelLoadError`` unless ``shapes`` (name -> shape of the weights read) are
    exactly the weights of ``model``, each in the model's shape."""
    expected = weight_shapes(model.state_dict())

    def some(names):
        return ", ".join(names[:3]) + (f" and {len(names) - 3} more" if len(names) > 3 else "")

    problems = []
    missing = sorted(expected.keys() - shapes.keys())
    unexpected = sorted(shapes.keys() - expected.keys())
    mismatched = [f"{k} {shapes[k]} instead of {expected[k]}"
                  for k in sorted(expected.keys() & shapes.keys()) if shapes[k] != expected[k]]
    if missing:
        problems.append(f"{len(missing)} of the model's {len(expected)} weights are missing ({some(missing)})")
    if unexpected:
        problems.append(f"{len(unexpected)} weights are not the model's ({some(unexpected)})")
    if mismatched:
        problems.append(f"shapes differ: {some(mismatched)}")
    if problems:
        raise ModelLoadError(f"{where} does not fit the model of config.json: {'; '.join(problems)}")


def _hash_files(path: Path) -> str:
    h = hashlib.sha1()
    for name in ("config.json", "vocab.txt", "model_state.pdparams"):
        with open(path / name, "rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                h.update(block)
    return h.hexdigest()[:8]


def is_model_dir(path) -> bool:
    path = Path(path)
    return all((path / name).is_file() for name in MODEL_FILES)


def write_tokenizer_files(path, vocab_tokens, do_lower_case=True, vocab_kind=None):
    path = Path(path)
    (path / "vocab.txt").write_text("\n".join(vocab_tokens) + "\n", encoding="utf-8")
    (path / "special_tokens_map.json").write_text(json.dumps({
        "unk_token": "[UNK]", "sep_token": "[SEP]", "pad_token": "[PAD]",
        "cls_token": "[CLS]", "mask_token": "[MASK]"}), encoding="utf-8")
    (path / "tokenizer_config.json").write_text(json.dumps({
        "do_lower_case": do_lower_case, "tokenizer_class": "ErnieTokenizer",
        "model_max_length": 2048, "vocab_kind": vocab_kind}), encoding="utf-8")


def is_scratch_model(path) -> bool:
    """True for models built by ``build_scratch`` (and those trained from one)."""
    cfg = Path(path) / "tokenizer_config.json"
    try:
        return json.loads(cfg.read_text(encoding="utf-8")).get("vocab_kind") == SCRATCH_VOCAB_KIND
    except (OSError, ValueError):
        return False


def save_model(model, path, tokenizer_src):
    """Save ``model`` into ``path`` with the tokenizer files of ``tokenizer_src``."""
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(str(path))
    _ensure_architectures(path)
    for name in ("vocab.txt", "special_tokens_map.json", "tokenizer_config.json"):
        shutil.copyfile(Path(tokenizer_src) / name, path / name)


def _ensure_architectures(path):
    cfg_path = Path(path) / "config.json"
    cfg = json.loads(cfg_path.read_text(encoding="utf-8"))
    if cfg.get("architectures") != ["UIE"]:
        cfg["architectures"] = ["UIE"]
        cfg_path.write_text(json.dumps(cfg, indent=2), encoding="utf-8")


def build_scratch(path, seed: int = SCRATCH_SEED, max_position: int = 2048, **shape):
    """Write a fresh, randomly initialised UIE with the built-in char vocabulary."""
    import paddle
    from paddlenlp.transformers import UIE, ErnieConfig

    vocab = scratch_vocab()
    options = dict(vocab_size=len(vocab), max_position_embeddings=max_position, type_vocab_size=4,
                   hidden_act="gelu", hidden_dropout_prob=0.1, attention_probs_dropout_prob=0.1,
                   initializer_range=0.02, pad_token_id=0, use_task_id=False)
    options.update(SCRATCH_SHAPE)
    options.update(shape)
    config = ErnieConfig(**options)
    paddle.seed(seed)
    np.random.seed(seed)
    model = UIE(config)
    # Start at the base rate of span boundaries (a few % of tokens) rather than
    # at 0.5: the model then learns where spans are instead of first learning
    # that most tokens are not boundaries.
    for head in (model.linear_start, model.linear_end):
        head.bias.set_value(np.full(head.bias.shape, -4.0, dtype="float32"))
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(str(path))
    _ensure_architectures(path)
    write_tokenizer_files(path, vocab, vocab_kind=SCRATCH_VOCAB_KIND)
    return path


def _atomic_materialise(target: Path, build):
    """Build a model directory into a temporary sibling, then rename it into place."""
    if is_model_dir(target):
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".tmp-{target.name}-", dir=target.parent))
    try:
        build(tmp)
        try:
            os.rename(tmp, target)
        except OSError:
            if not is_model_dir(target):   # someone else won the race with a good copy?
                raise
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return target


def _download_pretrained(name, tmp):
    from paddlenlp.transformers import UIE, ErnieTokenizer

    model = UIE.from_pretrained(name)
    tokenizer = ErnieTokenizer.from_pretrained(name)
    model.save_pretrained(str(tmp))
    tokenizer.save_pretrained(str(tmp))
    _ensure_architectures(tmp)


@dataclass(frozen=True)
class ModelSource:
    """A loadable UIE directory and how it was chosen."""

    path: str
    kind: str        # "pretrained" | "checkpoint" | "scratch"
    name: str        # what UIE_MODEL said
    version: str     # stable identifier of these weights
    fallback_reason: str = ""


def looks_like_path(spec: str) -> bool:
    """``UIE_MODEL`` values with a path separator, a leading dot or tilde, or that exist."""
    return (os.sep in spec or spec.startswith((".", "~"))
            or Path(spec).expanduser().exists())


def resolve_model(spec: str, cache_dir) -> ModelSource:
    """Turn ``UIE_MODEL`` into a model directory.

    A PaddleNLP name is downloaded by PaddleNLP once and kept under
    ``cache_dir/<name>``; ``scratch`` is built once (fixed seed) under
    ``cache_dir/scratch``; a path must be an existing checkpoint directory
    (or hold ``model_best/``). A name that cannot be downloaded raises
    ``DownloadError``; every other failure ``ModelLoadError``.
    """
    cache_dir = Path(cache_dir)
    spec = spec.strip()
    if spec == "scratch":
        path = _atomic_materialise(cache_dir / "scratch", build_scratch)
        return ModelSource(str(path), "scratch", spec, "scratch-" + _hash_files(path))
    candidate = Path(spec).expanduser()
    if looks_like_path(spec):
        if not candidate.is_dir():
            raise ModelLoadError(f"UIE_MODEL={spec!r}: no such checkpoint directory")
        for sub in ("", "model_best"):
            if is_model_dir(candidate / sub):
                path = (candidate / sub).resolve()
                return ModelSource(str(path), "checkpoint", spec,
                                   f"{path.name}-{_hash_files(path)}")
        missing = [n for n in MODEL_FILES if not (candidate / n).is_file()]
        raise ModelLoadError(f"UIE_MODEL={spec!r} is not a UIE checkpoint: missing {', '.join(missing)}")
    if spec in UNSUPPORTED_NAMES:
        raise ModelLoadError(f"UIE_MODEL={spec!r}: only ERNIE-based UIE models are supported "
                             f"({', '.join(PRETRAINED_NAMES)})")
    try:
        path = _atomic_materialise(cache_dir / spec, lambda tmp: _download_pretrained(spec, tmp))
    except Exception as exc:  # PaddleNLP raises OSError/ValueError/HTTP errors
        raise DownloadError(f"could not download {spec!r} through PaddleNLP: {exc}") from exc
    return ModelSource(str(path), "pretrained", spec, f"{spec}-{_hash_files(path)}")


def select_device(device: str) -> str:
    """``auto`` means the GPU when Paddle was built with CUDA and sees one."""
    has_gpu = paddle.device.is_compiled_with_cuda() and paddle.device.cuda.device_count() > 0
    if device == "auto":
        return "gpu" if has_gpu else "cpu"
    if device == "gpu" and not has_gpu:
        raise ModelLoadError("DEVICE=gpu but Paddle sees no GPU (install requirements-gpu.txt)")
    return device


def max_position_of(path) -> int:
    """The longest input the model in ``path`` has positions for (``config.json``)."""
    try:
        return int(json.loads((Path(path) / "config.json").read_text(encoding="utf-8"))
                   .get("max_position_embeddings", 512))
    except (OSError, ValueError, TypeError, AttributeError) as exc:
        raise ModelLoadError(f"{path}: unreadable config.json ({exc})") from None


def load_uie(path):
    """The ``UIE`` module stored in ``path`` (eval mode).

    Every failure is a ``ModelLoadError``: missing files, a config or
    tokenizer config that is not a JSON object, unreadable weights, and
    weights that are not exactly the model's (missing, foreign or extra
    names, other shapes), which PaddleNLP would only warn about and fill
    with random values.
    """
    from paddlenlp.transformers import UIE

    path = Path(path)
    if not is_model_dir(path):
        missing = [n for n in MODEL_FILES if not (path / n).is_file()]
        raise ModelLoadError(f"{path} is not a UIE checkpoint: missing {', '.join(missing)}")
    cfg = read_json_object(path / "config.json")
    if cfg.get("architectures", ["UIE"]) != ["UIE"]:
        raise ModelLoadError(f"{path}: architecture {cfg.get('architectures')} is not supported (UIE only)")
    read_json_object(path / "tokenizer_config.json")
    weights = path / "model_state.pdparams"
    state = read_state_dict(weights)
    shapes = weight_shapes(state)
    try:
        # PaddleNLP skips weights of another shape (check_weights names them)
        model = UIE.from_pretrained(str(path), state_dict=state, ignore_mismatched_sizes=True)
    except Exception as exc:
        raise ModelLoadError(f"{path}: cannot build the model of config.json or load its weights: {exc}") from exc
    del state
    check_weights(model, shapes, weights)
    try:
        with open(path / "vocab.txt", "rb") as f:
            n_vocab = sum(1 for _ in f)
    except OSError as exc:
        raise ModelLoadError(f"{path / 'vocab.txt'}: cannot read the vocabulary ({exc})") from exc
    if n_vocab > model.config.vocab_size:
        raise ModelLoadError(f"{path / 'vocab.txt'} has {n_vocab} tokens, the model embeds "
                             f"{model.config.vocab_size}: they do not belong together")
    model.eval()
    return model


# --------------------------------------------------------------------------
# Prediction

class UIEPredictor:
    """Batched UIE span extraction over many texts and prompts.

    ``engine`` runs the forward pass (``inference_engine``: Paddle Inference or
    dygraph; a dygraph ``UIE`` module is taken as it is). With ``batch_wait_ms``
    the forward passes of concurrent ``extract`` calls are batched together
    (``batcher.Batcher``); otherwise each call runs its own batches.
    ``tagger`` (a ``span_tagger.SpanTagger`` or ``TaggerRunner``) answers the
    prompts that are its classes, one pass per window for all of them.
    """

    def __init__(self, engine, tokenizer: OffsetTokenizer, device="cpu", max_seq_len=512,
                 batch_size=16, threshold=0.5, max_position=None, batch_wait_ms=None, tagger=None):
        import inference_engine

        if isinstance(tagger, span_tagger.SpanTagger):
            tagger = span_tagger.TaggerRunner(tagger)
        self.tagger = tagger

        if isinstance(engine, paddle.nn.Layer):
            max_position = max_position or engine.config.max_position_embeddings
            engine = inference_engine.DygraphEngine(engine, device)
        self.engine = engine
        self.tokenizer = tokenizer
        self.device = device
        self.max_seq_len = min(max_seq_len, max_position or 512)
        self.batch_size = batch_size
        self.max_batch_tokens = getattr(engine, "max_batch_tokens", None)
        self.threshold = threshold
        self._batcher = None
        if batch_wait_ms is not None:
            from batcher import Batcher

            self._batcher = Batcher(self.forward, batch_size, batch_wait_ms, self.max_batch_tokens)

    @classmethod
    def from_dir(cls, path, device="cpu", engine=None, **kwargs) -> "UIEPredictor":
        """The model in ``path``, run by ``engine`` (default: its dygraph module)."""
        import inference_engine

        paddle.set_device(device)
        tokenizer = OffsetTokenizer.from_dir(path)   # first: a broken vocabulary loads no model
        try:
            tagger = span_tagger.load(path)
        except span_tagger.TaggerError as exc:
            raise ModelLoadError(str(exc)) from None
        if tagger is not None and tagger.config["vocab_size"] < len(tokenizer.vocab):
            raise ModelLoadError(f"{path}: the tagger embeds {tagger.config['vocab_size']} tokens, "
                                 f"vocab.txt has {len(tokenizer.vocab)}")
        engine = engine or inference_engine.DygraphEngine.from_dir(path, device)
        return cls(engine, tokenizer, device=device, max_position=max_position_of(path),
                   tagger=tagger, **kwargs)

    def close(self):
        """Stop the batching thread (the model is being unloaded)."""
        if self._batcher is not None:
            self._batcher.close()

    def build_inputs(self, queries):
        """Tokenise ``queries`` [(text, prompts)] into model inputs.

        Returns ``(inputs, tokens)``: ``inputs`` is ``[(query, prompt,
        EncodedInput)]`` (``query`` indexes ``queries``), window by window and
        prompt by prompt within a window; ``tokens[query]`` is ``(ids,
        starts, ends)`` of its text.
        """
        tok = self.tokenizer
        text_cache, prompt_cache = {}, {}
        inputs, tokens = [], []
        for q, (text, prompts) in enumerate(queries):
            if text not in text_cache:
                text_cache[text] = tok.tokenize(text)
            ids, starts, ends = text_cache[text]
            tokens.append((ids, starts, ends))
            per_prompt = []
            for prompt in prompts:
                if prompt not in prompt_cache:
                    prompt_cache[prompt] = tok.encode(prompt)
                per_prompt.append(encode_windows(tok, prompt_cache[prompt], ids, self.max_seq_len))
            for k in range(max(map(len, per_prompt), default=0)):
                inputs += [(q, prompt, encoded[k]) for prompt, encoded in zip(prompts, per_prompt)
                           if k < len(encoded)]
        return inputs, tokens

    def forward(self, inputs):
        """Start/end probabilities (numpy) for a batch of ``EncodedInput`` (padded here)."""
        return self.engine(pad_batch(inputs, self.tokenizer.pad_id))

    def rows(self, encoded) -> list[tuple]:
        """``(start_probs, end_probs)`` of every ``EncodedInput``, each of its own length.

        Batches hold inputs of similar length (little padding); through the
        batcher they also hold the inputs of concurrent calls.
        """
        if self._batcher is not None:
            return self._batcher.run(encoded)
        out = [None] * len(encoded)
        order = sorted(range(len(encoded)), key=lambda k: len(encoded[k].ids))
        for batch in self._batches(order, encoded):
            start, end = self.forward([encoded[k] for k in batch])
            for row, k in enumerate(batch):
                n = len(encoded[k].ids)
                out[k] = (start[row, :n], end[row, :n])
        return out

    def _batches(self, order, encoded):
        """``order`` (shortest first) cut into batches of ``batch_size`` inputs and at
        most ``max_batch_tokens`` padded tokens (a longer input still runs alone)."""
        batch = []
        for k in order:
            rows, width = len(batch) + 1, len(encoded[k].ids)
            if batch and (rows > self.batch_size or
                          (self.max_batch_tokens and rows * width > self.max_batch_tokens)):
                yield batch
                batch = []
            batch.append(k)
        if batch:
            yield batch

    def extract(self, queries) -> list[dict[str, list[Span]]]:
        """Spans for every ``(text, prompts)`` query, as ``{prompt: [Span]}`` per query.

        Span offsets are Python string indices into the query's text.
        """
        queries = [(text, list(dict.fromkeys(prompts))) for text, prompts in queries]
        tagged = self.tagger.classes if self.tagger is not None else ()
        asked = [(text, [p for p in prompts if p not in tagged]) for text, prompts in queries]
        inputs, tokens = self.build_inputs(asked)
        results = [{p: {} for p in prompts} for _, prompts in queries]
        rows = self.rows([x for _, _, x in inputs])
        for (q, prompt, x), (start, end) in zip(inputs, rows):
            self._collect(x, start, end, tokens[q], results[q][prompt])
        if tagged:
            self._tag(queries, tokens, results)
        return [{p: [Span(s, e, sc) for (s, e), sc in sorted(spans.items())]
                 for p, spans in res.items()} for res in results]

    def _collect(self, x, start, end, tokens, found):
        """Add the spans of one input's start/end rows that its window owns to
        ``found`` {(char start, char end): score} (the best score of a span seen twice)."""
        c0, c1 = x.content_start, x.content_start + x.n_content
        _, t_starts, t_ends = tokens
        for s, e, score in pair_spans(start[c0:c1], end[c0:c1], self.threshold):
            if not x.own_lo <= x.lo + s < x.own_hi:
                continue
            key = (t_starts[x.lo + s], t_ends[x.lo + e])
            if score > found.get(key, -1.0):
                found[key] = score

    def _tag(self, queries, tokens, results):
        """The tagger's spans for the prompts of ``queries`` that are its classes:
        one prompt-free input per window of each distinct text."""
        classes = {p: k for k, p in enumerate(self.tagger.classes)}
        windows_of, inputs = {}, []
        for q, (text, prompts) in enumerate(queries):
            if text not in windows_of and any(p in classes for p in prompts):
                windows_of[text] = encode_windows(self.tokenizer, [], tokens[q][0], self.max_seq_len)
                inputs += windows_of[text]
        order = sorted(range(len(inputs)), key=lambda k: len(inputs[k].ids))
        rows = [None] * len(inputs)
        for batch in self._batches(order, inputs):
            start, end = self.tagger(pad_batch([inputs[k] for k in batch], self.tokenizer.pad_id))
            for r, k in enumerate(batch):
                rows[k] = (start[r], end[r])
        row_of = {id(x): row for x, row in zip(inputs, rows)}
        for q, (text, prompts) in enumerate(queries):
            for x in windows_of.get(text, ()):
                start, end = row_of[id(x)]
                for p in prompts:
                    if p in classes:
                        k = classes[p]
                        self._collect(x, start[:, k], end[:, k], tokens[q], results[q][p])
