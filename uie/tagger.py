"""The span tagger of a scratch UIE: one pass per text marks every label it knows.

A scratch UIE asks its transformer once per (text, label) and has to learn
spans from nothing; on CLUENER that underfits in any time a CPU has. The
tagger is what a from-scratch NER model is: character embeddings and a
bidirectional GRU (both started from Baidu LAC's when installed, ``uie.lac``), and a start
and an end probability per token for each of its *classes* (the prompts it
was trained on). ``finetune`` trains it for scratch models and saves it
beside the UIE; ``uie.predictor.UIEPredictor`` asks it for the labels it knows
and the UIE's prompts for everything else (new labels, relations). Spans
are decoded as the UIE's are (start/end pairs, score ``p_start * p_end``).

Files in a model directory: ``tagger.json`` (classes and shape) and
``tagger.pdparams`` (weights). Pretrained UIEs never get them. A promoted
version's ``meta.json`` records the sha256 of both (``file_checksum``), and the
server refuses a version whose tagger files differ (``service.model_store``).

Served beside a CPU engine other than dygraph, the tagger runs on Paddle
Inference (``StaticTaggerRunner``) over ``static/tagger.{pdmodel,pdiparams}``,
which ``uie.engine.export_static`` traces (``trace``) with the UIE's export and
stamps with these files' sha256: the same probabilities as dygraph, about 10x
faster for one task on 2 cores (``bench/notes.md``). ``TaggerRunner`` runs it in
dygraph (GPU, ``INFERENCE_ENGINE=dygraph``, or an export it cannot use).
"""

from __future__ import annotations

import hashlib
import json
import threading
from pathlib import Path

import numpy as np
import paddle

from uie.layer_files import load_state

CONFIG_FILE = "tagger.json"
WEIGHTS_FILE = "tagger.pdparams"
FILES = (CONFIG_FILE, WEIGHTS_FILE)
STATIC_PREFIX = "tagger"     # static/tagger.pdmodel and static/tagger.pdiparams
SHAPE = {"embedding_size": 128, "hidden_size": 128, "num_layers": 2, "dropout": 0.3}
BOUNDARY_BIAS = -4.0     # start at the base rate of span boundaries, as build_scratch does


class TaggerError(ValueError):
    """A tagger's files are missing, unreadable or do not fit each other."""


class SpanTagger(paddle.nn.Layer):
    """Character embeddings -> BiGRU -> start/end probabilities for each class."""

    def __init__(self, vocab_size: int, classes, embedding_size=128, hidden_size=128,
                 num_layers=2, dropout=0.3, embedding_start="random", gru_start="random"):
        super().__init__()
        if not classes:
            raise TaggerError("a tagger needs at least one class")
        self.classes = list(classes)
        self.config = {"classes": self.classes, "vocab_size": int(vocab_size),
                       "embedding_size": embedding_size, "hidden_size": hidden_size,
                       "num_layers": num_layers, "dropout": dropout, "embedding_start": embedding_start,
                       "gru_start": gru_start}
        self.embedding = paddle.nn.Embedding(vocab_size, embedding_size)
        self.dropout = paddle.nn.Dropout(dropout)
        self.gru = paddle.nn.GRU(embedding_size, hidden_size, num_layers=num_layers,
                                 direction="bidirect", dropout=dropout if num_layers > 1 else 0.0)
        self.head = paddle.nn.Linear(2 * hidden_size, 2 * len(self.classes))
        self.head.bias.set_value(np.full(2 * len(self.classes), BOUNDARY_BIAS, dtype="float32"))

    def forward(self, input_ids, lengths):
        """``(start, end)`` probabilities, each ``(batch, width, classes)``; a row's
        tokens past its length (padding) do not change its other rows."""
        hidden, _ = self.gru(self.dropout(self.embedding(input_ids)), sequence_length=lengths)
        probs = paddle.nn.functional.sigmoid(self.head(self.dropout(hidden)))
        return probs[:, :, 0::2], probs[:, :, 1::2]


def build(vocab: list[str], classes, seed: int = 0, **shape) -> SpanTagger:
    """A fresh tagger for a tokenizer's ``vocab`` (tokens in id order), started from LAC
    where LAC is installed: its embedding, and its BiGRU (``lac.gru_state``) over it."""
    from uie import lac

    options = dict(SHAPE, **shape)
    paddle.seed(seed)
    start = lac.for_vocab(vocab, options["embedding_size"], seed=seed)
    gru = lac.gru_state(options["hidden_size"], options["num_layers"]) if start is not None else None
    tagger = SpanTagger(len(vocab), classes, embedding_start=lac.SOURCE if start is not None else "random",
                        gru_start=lac.GRU_SOURCE if gru is not None else "random", **options)
    if start is not None:
        tagger.embedding.weight.set_value(start)
    if gru is not None:
        for name, value in gru.items():      # the GRU's flat names (its cells share these tensors)
            getattr(tagger.gru, name).set_value(value)
    return tagger


def with_classes(tagger: SpanTagger, classes) -> SpanTagger:
    """``tagger`` for ``classes``: the same embedding and GRU, the head's rows of
    the classes it already knows, fresh rows for the others."""
    if list(classes) == tagger.classes:
        return tagger
    options = {k: v for k, v in tagger.config.items() if k not in ("classes", "vocab_size")}
    new = SpanTagger(tagger.config["vocab_size"], classes, **options)
    state = {k: v for k, v in tagger.state_dict().items() if not k.startswith("head.")}
    new.set_state_dict(state)
    old_w, old_b = tagger.head.weight.numpy(), tagger.head.bias.numpy()
    w, b = new.head.weight.numpy(), new.head.bias.numpy()
    for k, name in enumerate(new.classes):
        if name in tagger.classes:
            j = tagger.classes.index(name)
            w[:, 2 * k: 2 * k + 2] = old_w[:, 2 * j: 2 * j + 2]
            b[2 * k: 2 * k + 2] = old_b[2 * j: 2 * j + 2]
    new.head.weight.set_value(w)
    new.head.bias.set_value(b)
    return new


def save(tagger: SpanTagger, path) -> None:
    """Write ``tagger.json`` and ``tagger.pdparams`` into the model directory ``path``."""
    path = Path(path)
    paddle.save(tagger.state_dict(), str(path / WEIGHTS_FILE))
    (path / CONFIG_FILE).write_text(json.dumps(tagger.config, ensure_ascii=False, indent=2), encoding="utf-8")


def file_checksum(path) -> str:
    """sha256 of one tagger file (what ``meta.json`` records of it)."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def has_tagger(path) -> bool:
    return (Path(path) / CONFIG_FILE).exists()


def load(path) -> SpanTagger | None:
    """The tagger saved in the model directory ``path`` (eval mode), None if it has
    none; ``TaggerError`` if its files are damaged or do not fit together."""
    path = Path(path)
    if not has_tagger(path):
        return None
    try:
        config = json.loads((path / CONFIG_FILE).read_text(encoding="utf-8"))
        classes = config.pop("classes")
        vocab_size = config.pop("vocab_size")
        if not isinstance(classes, list) or not all(isinstance(c, str) for c in classes):
            raise TaggerError("classes must be a list of strings")
        tagger = SpanTagger(vocab_size, classes, **config)
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
        raise TaggerError(f"{path / CONFIG_FILE}: not a tagger configuration ({exc})") from None
    return load_state(tagger, path / WEIGHTS_FILE, CONFIG_FILE, TaggerError)


class TaggerRunner:
    """A loaded tagger answering padded batches, one at a time (a dygraph layer
    is not run by two threads at once). ``reason``: why not Paddle Inference, when it
    was asked for (``/health``)."""

    name = "dygraph"

    def __init__(self, tagger: SpanTagger, reason: str = ""):
        self.tagger = tagger
        self.classes = tagger.classes
        self.reason = reason
        self._lock = threading.Lock()

    def __call__(self, arrays: dict) -> tuple[np.ndarray, np.ndarray]:
        """Start/end probabilities ``(batch, width, classes)`` for ``uie.tokenizer.pad_batch`` arrays."""
        lengths = arrays["attention_mask"].sum(axis=1).astype("int64")
        with self._lock, paddle.no_grad():
            start, end = self.tagger(paddle.to_tensor(arrays["input_ids"]), paddle.to_tensor(lengths))
            return start.numpy(), end.numpy()


# --------------------------------------------------------------------------
# The static program (Paddle Inference)

def static_files(static_dir) -> tuple[Path, Path]:
    """The ``.pdmodel`` and ``.pdiparams`` of a tagger traced into ``static_dir``."""
    return Path(static_dir) / f"{STATIC_PREFIX}.pdmodel", Path(static_dir) / f"{STATIC_PREFIX}.pdiparams"


def trace(tagger: SpanTagger, static_dir) -> tuple[Path, Path]:
    """Write ``tagger``'s program and weights into ``static_dir`` (``static_files``).

    ``paddle.jit`` keeps process-wide state: for export time (start-up, jobs,
    ``python -m uie.engine export``), never beside requests."""
    inputs = [paddle.static.InputSpec([None, None], "int64", "input_ids"),
              paddle.static.InputSpec([None], "int64", "lengths")]
    paddle.jit.save(paddle.jit.to_static(_eval_copy(tagger), input_spec=inputs),
                    str(Path(static_dir) / STATIC_PREFIX))
    return static_files(static_dir)


def _eval_copy(tagger: SpanTagger) -> SpanTagger:
    """A copy of ``tagger`` in eval mode (``paddle.jit.to_static`` rewrites the layer it is given)."""
    config = dict(tagger.config)
    copy = SpanTagger(config.pop("vocab_size"), config.pop("classes"), **config)
    copy.set_state_dict(tagger.state_dict())
    copy.eval()
    return copy


class StaticTaggerRunner:
    """A tagger's traced program (``trace``) answering padded batches on Paddle Inference
    (CPU), one at a time: as ``TaggerRunner``, with ``classes`` those of its ``tagger.json``."""

    name = "paddle-inference"
    reason = ""

    def __init__(self, static_dir, classes, threads: int = 1):
        model_file, params_file = static_files(static_dir)
        config = paddle.inference.Config(str(model_file), str(params_file))
        config.disable_gpu()
        config.set_cpu_math_library_num_threads(max(1, int(threads or 1)))
        config.switch_use_feed_fetch_ops(False)
        config.disable_glog_info()
        self._predictor = paddle.inference.create_predictor(config)
        names = self._predictor.get_input_names()
        if names != ["input_ids", "lengths"] or len(self._predictor.get_output_names()) != 2:
            raise TaggerError(f"{model_file}: not a traced span tagger (inputs {names})")
        self._inputs = [self._predictor.get_input_handle(n) for n in names]
        self._outputs = [self._predictor.get_output_handle(n) for n in self._predictor.get_output_names()]
        self.classes = list(classes)
        self._lock = threading.Lock()

    def __call__(self, arrays: dict) -> tuple[np.ndarray, np.ndarray]:
        """As ``TaggerRunner``'s."""
        lengths = arrays["attention_mask"].sum(axis=1).astype("int64")
        with self._lock:
            for handle, array in zip(self._inputs, (arrays["input_ids"].astype("int64"), lengths)):
                handle.reshape(array.shape)
                handle.copy_from_cpu(np.ascontiguousarray(array))
            self._predictor.run()
            start, end = (h.copy_to_cpu() for h in self._outputs)
        if start.shape[-1] != len(self.classes):
            raise TaggerError(f"the traced tagger answers {start.shape[-1]} classes, not {len(self.classes)}")
        return start, end
