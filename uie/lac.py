"""Baidu LAC's character embedding and BiGRU, as a start for a scratch model's span tagger.

LAC (``pip install lac==2.1.2``; ``make install`` does it) ships its lexical
analysis model in the package, a BiGRU-CRF trained for word segmentation, part of
speech and PER/LOC/ORG/TIME: ``LAC/lac_model/model/word_emb`` is a 58,224 x 128
character embedding (``for_vocab``), and ``fc_0..3`` with ``gru_0..3`` a 2-layer
bidirectional GRU of 128 (``gru_state``), the shape of the span tagger's. LAC's
own Python code needs the removed ``paddle.fluid``, so the package is never
imported here: its files are read as they are. Without the package a scratch
model starts from random weights (both return None).
"""

from __future__ import annotations

import importlib.util
import logging
import os
import struct
from pathlib import Path

import numpy as np

log = logging.getLogger("lac")
SOURCE = "lac-2.1.2/lac_model/word_emb"
GRU_SOURCE = "lac-2.1.2/lac_model/gru"
GRU_SHAPE = {"embedding_size": 128, "hidden_size": 128, "num_layers": 2}
FP32 = 5          # paddle's VarType.FP32 in a TensorDesc


def model_dir() -> Path | None:
    """The installed ``LAC/lac_model`` directory (``LAC_MODEL_DIR`` overrides), or None."""
    override = os.environ.get("LAC_MODEL_DIR")
    if override:
        return Path(override)
    spec = importlib.util.find_spec("LAC")       # finds the package without running it
    if spec is None or not spec.submodule_search_locations:
        return None
    path = Path(list(spec.submodule_search_locations)[0]) / "lac_model"
    return path if path.is_dir() else None


def _varint(data: bytes, i: int) -> tuple[int, int]:
    value = shift = 0
    while True:
        byte = data[i]
        i += 1
        value |= (byte & 0x7F) << shift
        shift += 7
        if byte < 0x80:
            return value, i


def _tensor_desc(desc: bytes) -> tuple[int | None, list[int]]:
    """``(data type, dims)`` of a serialised ``TensorDesc`` protobuf message."""
    dtype, dims, i = None, [], 0
    while i < len(desc):
        key, i = _varint(desc, i)
        field, wire = key >> 3, key & 7
        if wire == 0:
            value, i = _varint(desc, i)
            if field == 1:
                dtype = value
            elif field == 2:
                dims.append(value)
        elif wire == 2:          # packed dims
            size, i = _varint(desc, i)
            end = i + size
            while i < end:
                value, i = _varint(desc, i)
                if field == 2:
                    dims.append(value)
        else:
            raise ValueError(f"unexpected protobuf wire type {wire}")
    return dtype, dims


def read_tensor(path) -> np.ndarray:
    """A float32 parameter saved by ``fluid.io.save_params`` (one LoDTensor per file)."""
    data = Path(path).read_bytes()
    offset = 4                                            # LoDTensor version
    (lod_levels,) = struct.unpack_from("<Q", data, offset)
    offset += 8
    for _ in range(lod_levels):
        (size,) = struct.unpack_from("<Q", data, offset)
        offset += 8 + size
    offset += 4                                           # Tensor version
    (desc_size,) = struct.unpack_from("<i", data, offset)
    offset += 4
    dtype, dims = _tensor_desc(data[offset: offset + desc_size])
    offset += desc_size
    if dtype != FP32 or not dims:
        raise ValueError(f"{path}: not a float32 tensor (type {dtype}, dims {dims})")
    count = int(np.prod(dims))
    if len(data) - offset < 4 * count:
        raise ValueError(f"{path}: truncated ({len(data) - offset} bytes for {count} floats)")
    return np.frombuffer(data, dtype="<f4", count=count, offset=offset).reshape(dims).copy()


def _read_dict(path) -> dict[str, str]:
    out = {}
    with open(path, encoding="utf-8") as f:
        for line in f:
            key, _, value = line.rstrip("\n").partition("\t")
            out.setdefault(key, value)
    return out


def for_vocab(vocab: list[str], dim: int, seed: int = 0) -> np.ndarray | None:
    """A ``len(vocab) x dim`` embedding: LAC's row for every token LAC knows
    (``##x`` as ``x``; traditional characters through LAC's own q2b map), a
    random row of LAC's scale for the others. None when LAC is not installed,
    its files do not read, or its width is not ``dim``."""
    where = model_dir()
    if where is None:
        return None
    try:
        table = read_tensor(where / "model" / "word_emb")
        ids = {char: int(i) for i, char in _read_dict(where / "conf" / "word.dic").items()}
        q2b = _read_dict(where / "conf" / "q2b.dic")
    except (OSError, ValueError, struct.error, IndexError) as exc:
        log.warning("LAC's embedding in %s does not read (%s): starting from random embeddings", where, exc)
        return None
    if table.shape[1] != dim or max(ids.values(), default=-1) >= table.shape[0]:
        log.warning("LAC's embedding is %s, the model needs width %d: random embeddings", table.shape, dim)
        return None
    out = np.random.RandomState(seed).normal(0.0, float(table.std()), (len(vocab), dim)).astype("float32")
    known = 0
    for row, token in enumerate(vocab):
        char = token[2:] if token.startswith("##") else token
        for candidate in (char, q2b.get(char), char.upper()):
            if candidate is not None and candidate in ids:
                out[row] = table[ids[candidate]]
                known += 1
                break
    log.info("embedding from LAC for %d of %d tokens", known, len(vocab))
    return out


def gru_state(hidden_size: int, num_layers: int) -> dict[str, np.ndarray] | None:
    """LAC's BiGRU as a ``paddle.nn.GRU(direction="bidirect")`` state dict (``weight_ih_l0``,
    ``..._reverse``), or None when LAC is not installed, its files do not read, or the
    shape differs from ``GRU_SHAPE``.

    LAC's ``gru`` op (``origin_mode=False``) takes its input projection from an ``fc``
    (gates in the order update, reset, candidate) and computes
    ``c = tanh(x_c + (r * h) @ W_c)``, ``h' = (1 - u) * h + u * c``; ``paddle.nn.GRU``
    orders the gates reset, update, candidate and computes ``c = tanh(x_c + r * (h @ W_c))``,
    ``h' = z * h + (1 - z) * c``. So ``z``'s weights are ``u``'s negated (``1 - sigmoid(a) =
    sigmoid(-a)``), the biases are the ``fc``'s plus the ``gru``'s, and the reset gate acts
    after the candidate's hidden matmul instead of before: a start, not LAC itself (on two
    sentences, LAC's tags from these weights agreed with LAC on 58-86 % of characters,
    the hidden states correlate 0.86; the tagger then trains them).
    """
    where = model_dir()
    if where is None or hidden_size != GRU_SHAPE["hidden_size"] or num_layers != GRU_SHAPE["num_layers"]:
        return None
    try:
        state = {}
        for layer in range(num_layers):
            for reverse in (0, 1):
                suffix = f"_l{layer}" + ("_reverse" if reverse else "")
                parts = _gru_parts(where / "model", 2 * layer + reverse, hidden_size)
                state.update({name + suffix: value for name, value in parts.items()})
    except (OSError, ValueError, struct.error) as exc:
        log.warning("LAC's GRU in %s does not read (%s): the tagger's GRU starts at random", where, exc)
        return None
    return state


def _gru_parts(model: Path, k: int, h: int) -> dict[str, np.ndarray]:
    """``paddle.nn.GRU``'s weights for LAC's ``fc_k`` + ``gru_k`` (one direction of one layer)."""
    fc_w, fc_b = read_tensor(model / f"fc_{k}.w_0"), read_tensor(model / f"fc_{k}.b_0")
    gru_w, gru_b = read_tensor(model / f"gru_{k}.w_0"), read_tensor(model / f"gru_{k}.b_0").ravel()
    if fc_w.shape[1] != 3 * h or gru_w.size != 3 * h * h or gru_b.size != 3 * h:
        raise ValueError(f"fc_{k}/gru_{k} are {fc_w.shape}/{gru_w.shape}, not of a GRU of {h}")
    flat = gru_w.ravel()            # [h, 2h] update and reset, then [h, h] candidate, each contiguous
    w_ur, w_c = flat[:2 * h * h].reshape(h, 2 * h), flat[2 * h * h:].reshape(h, h)
    bias = fc_b + gru_b
    update, reset, cand = slice(0, h), slice(h, 2 * h), slice(2 * h, 3 * h)
    return {"weight_ih": np.concatenate([fc_w[:, reset].T, -fc_w[:, update].T, fc_w[:, cand].T]),
            "weight_hh": np.concatenate([w_ur[:, reset].T, -w_ur[:, update].T, w_c.T]),
            "bias_ih": np.concatenate([bias[reset], -bias[update], bias[cand]]),
            "bias_hh": np.zeros(3 * h, dtype="float32")}


# LAC's tags that name things: its entity types and its proper-noun tags (works ``nw``, other ``nz``).
# ``tag.dic`` gives ids 16-21 both their part-of-speech names (nr, ns, nt) and these, second.
ENTITY_TYPES = ("PER", "LOC", "ORG", "TIME", "nw", "nz")


class Tagger:
    """LAC's own lexical model (its BiGRU-CRF program, ``lac_model/model``) run by Paddle
    Inference: ``spans(texts)`` are the ``(type, start, end)`` of its ``ENTITY_TYPES``, in
    characters (end exclusive). About 50,000 characters/s on one thread. A training job's
    teacher (``uie.teacher``), never a request's."""

    def __init__(self, where: Path, threads: int = 1):
        from paddle import inference

        config = inference.Config(str(where / "model"))
        config.disable_glog_info()
        config.set_cpu_math_library_num_threads(max(1, threads))
        self.predictor = inference.create_predictor(config)
        self.ids = {char: int(i) for i, char in _read_dict(where / "conf" / "word.dic").items()}
        self.q2b = _read_dict(where / "conf" / "q2b.dic")
        self.tags = _read_tags(where / "conf" / "tag.dic")
        self.oov = self.ids.get("OOV", 0)

    def spans(self, texts: list[str], batch: int = 64) -> list[list[tuple[str, int, int]]]:
        filled = [t for t in texts if t]            # LAC's program takes no empty sequence
        found = []
        for first in range(0, len(filled), batch):
            found += self._batch(filled[first:first + batch])
        answers = iter(found)
        return [next(answers) if t else [] for t in texts]

    def _batch(self, texts: list[str]) -> list[list[tuple[str, int, int]]]:
        ids = [self.ids.get(self.q2b.get(c, c), self.oov) for text in texts for c in text]
        lod = np.cumsum([0] + [len(t) for t in texts]).tolist()
        feed = self.predictor.get_input_handle(self.predictor.get_input_names()[0])
        feed.reshape([len(ids), 1])
        feed.copy_from_cpu(np.asarray(ids, dtype="int64").reshape(-1, 1))
        feed.set_lod([lod])
        self.predictor.run()
        tags = self.predictor.get_output_handle(self.predictor.get_output_names()[0]).copy_to_cpu().ravel()
        return [_entity_spans([self.tags.get(int(t), "O") for t in tags[lod[k]:lod[k + 1]]])
                for k in range(len(texts))]


def _read_tags(path) -> dict[int, str]:
    """``{id: tag}``; an id listed twice keeps its last name (PER-B, not nr-B)."""
    out = {}
    with open(path, encoding="utf-8") as f:
        for line in f:
            key, _, tag = line.rstrip("\n").partition("\t")
            if key.strip().isdigit():
                out[int(key)] = tag
    return out


def _entity_spans(tags: list[str]) -> list[tuple[str, int, int]]:
    """``(type, start, end)`` of the ``ENTITY_TYPES`` runs in LAC's ``TYPE-B``/``TYPE-I`` tags."""
    spans, current = [], None
    for i, tag in enumerate(tags + ["O-B"]):
        kind, _, place = tag.rpartition("-")
        if current and (place != "I" or kind != current[0]):
            spans.append(tuple(current))
            current = None
        if place == "B":
            current = [kind, i, i + 1]
        elif current:
            current[2] = i + 1
    return [s for s in spans if s[0] in ENTITY_TYPES]


def tagger(threads: int = 1) -> Tagger | None:
    """LAC's model, or None (logged) when LAC is not installed or its model does not load."""
    where = model_dir()
    if where is None:
        return None
    try:
        return Tagger(where, threads)
    except Exception as exc:   # noqa: BLE001  (a teacher is worth less than the job)
        log.warning("LAC's model in %s does not load (%s: %s)", where, type(exc).__name__, exc)
        return None
