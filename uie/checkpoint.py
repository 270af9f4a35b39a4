"""UIE checkpoints: where a model comes from, how it is built, saved, loaded and checked.

``resolve_model`` turns ``UIE_MODEL`` (a PaddleNLP name, a checkpoint directory
or ``scratch``) into a directory that ``Taskflow(task_path=...)``,
``finetune.py`` and ``uie.predictor.UIEPredictor.from_dir`` all load.
``load_uie`` and ``load_tokenizer`` read one and refuse anything damaged with
``ModelLoadError``.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import paddle

import files
from uie.tokenizer import SPECIAL_TOKENS, OffsetTokenizer, scratch_vocab

PRETRAINED_NAMES = (
    "uie-base", "uie-medium", "uie-mini", "uie-micro", "uie-nano", "uie-base-en",
    "uie-senta-base", "uie-senta-medium", "uie-senta-mini", "uie-senta-micro", "uie-senta-nano",
)
UNSUPPORTED_NAMES = ("uie-m-base", "uie-m-large", "uie-x-base")
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


def read_json_object(path: Path) -> dict:
    """A JSON object from a model file; ``ModelLoadError`` for anything else."""
    return files.read_json_object(path, error=ModelLoadError)


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
            files.publish_dir(tmp, target)
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


def _config_value(path, key: str, default: int) -> int:
    """An integer of the model's ``config.json`` in ``path`` (``default`` when absent)."""
    try:
        return int(json.loads((Path(path) / "config.json").read_text(encoding="utf-8")).get(key, default))
    except (OSError, ValueError, TypeError, AttributeError) as exc:
        raise ModelLoadError(f"{path}: unreadable config.json ({exc})") from None


def max_position_of(path) -> int:
    """The longest input the model in ``path`` has positions for (``config.json``)."""
    return _config_value(path, "max_position_embeddings", 512)


def activations_per_token(path) -> int:
    """Hidden size × layers of the model in ``path``: what one token's activations of a whole
    pass grow with (uie-base 9,216, uie-nano 1,248)."""
    return _config_value(path, "hidden_size", 768) * _config_value(path, "num_hidden_layers", 12)


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


def load_tokenizer(path) -> OffsetTokenizer:
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
    return OffsetTokenizer(vocab, lower)
