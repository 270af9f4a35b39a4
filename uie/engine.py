"""How a UIE's forward pass runs: Paddle Inference on an exported static model, or dygraph.

- ``export_static(model_dir)`` turns a UIE checkpoint into the static model
  ``model_dir/static/inference.{pdmodel,pdiparams}`` (the files, input names
  and place that ``Taskflow(task_path=model_dir)`` uses), with
  ``static/export.json`` recording the sha256 of the weights it came from and
  of both files. It writes a temporary directory and renames it into place,
  so an export is whole or absent, and writes the ``.cache_info`` with which
  Taskflow takes the export as it is. A scratch model's span tagger is traced into the
  same directory (``static/tagger.*``), its files' sha256 in the same stamp.
- ``OnnxInt8Engine`` runs a model's INT8 export (``uie.int8``) with ONNX Runtime on the
  CPU; ``load_engine`` serves it when ``INFERENCE_PRECISION`` (``choose_precision``) says
  so and the export is valid, FP32 otherwise (the reason kept in ``precision_reason``).
- ``tagger_runner`` gives the span tagger's: Paddle Inference over its export beside a
  CPU engine other than dygraph, else dygraph (saying why when the export is the cause).
- ``load_engine`` gives the forward pass of a model directory: Paddle
  Inference (oneDNN on CPU, CUDA on GPU) over a checked export, or the dygraph
  UIE when ``INFERENCE_ENGINE=dygraph`` or when the export is missing,
  damaged or does not load (the reason is kept and shown in ``/health``). It
  never exports unless asked to (``export=True``): exporting belongs to
  start-up and to training jobs, never to a request. A promoted version whose
  export is missing or damaged is exported again by ``python -m uie.engine
  export MODEL_DIR``, which ``service.model_store`` starts in the background
  when it loads that version on dygraph.

An engine is a callable ``engine(arrays) -> (start_probs, end_probs)`` over
the padded arrays of ``uie.tokenizer.pad_batch`` (rows may come back wider than
given: read each row up to its input's length); one call runs at a time. Its
``max_batch_tokens`` (or ``None``) bounds the tokens of a batch as its ``batch_tokens(rows, width)``
counts them (padded, where it pads).
"""

from __future__ import annotations

import gc
import hashlib
import json
import logging
import shutil
import tempfile
import threading
from pathlib import Path

import numpy as np
import paddle

import files
import settings
from uie import int8
from uie import tagger as span_tagger
from uie.checkpoint import ModelLoadError, activations_per_token, load_uie

log = logging.getLogger(__name__)

ENGINES = ("paddle-inference", "dygraph")
STATIC_DIR = "static"
PREFIX = "inference"
STAMP = "export.json"
INPUT_NAMES = ("input_ids", "token_type_ids", "position_ids", "attention_mask")


class ExportError(RuntimeError):
    """A static model could not be exported, or an export is missing or damaged."""


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def set_math_threads(n: int):
    """Math threads of Paddle's dygraph kernels (MKL/OpenMP) for the calling thread."""
    paddle.base.core.set_num_threads(max(1, int(n)))


def use_all_cores():
    """Let Paddle's dygraph math use ``CPU_THREADS`` threads, else every core: it uses one
    unless told. For the one-process scripts and jobs; the server sets its threads per
    model (``Settings.math_threads``)."""
    set_math_threads(settings.cpu_threads() or settings.available_cores())


# --------------------------------------------------------------------------
# Export

def _files_in(static_dir: Path) -> tuple[Path, Path]:
    return Path(static_dir) / f"{PREFIX}.pdmodel", Path(static_dir) / f"{PREFIX}.pdiparams"


def static_files(model_dir) -> tuple[Path, Path]:
    """The ``.pdmodel`` and ``.pdiparams`` of ``model_dir``'s export."""
    return _files_in(Path(model_dir) / STATIC_DIR)


def _read_stamp(stamp_path: Path, missing: str) -> tuple[dict | None, str | None]:
    """``(stamp, None)``: an export's stamp (the sha256 of what it came from and of its files),
    or ``(None, why it cannot be used)``; ``missing`` says it when there is none."""
    try:
        stamp = json.loads(stamp_path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return None, missing
    except (OSError, ValueError) as exc:
        return None, f"{stamp_path} is unreadable ({exc})"
    if not isinstance(stamp, dict):
        return None, f"{stamp_path} is not a JSON object"
    return stamp, None


def check_static(model_dir) -> str | None:
    """Why the export of ``model_dir`` cannot be used (``None`` if it can)."""
    model_dir = Path(model_dir)
    stamp, problem = _read_stamp(model_dir / STATIC_DIR / STAMP, "no static model has been exported")
    if problem:
        return problem
    try:
        if stamp.get("weights_sha256") != _sha256(model_dir / "model_state.pdparams"):
            return "the static model was exported from other weights"
        for path in static_files(model_dir):
            if stamp.get(path.name) != _sha256(path):
                return f"{path.name} is missing or damaged"
        return _check_static_tagger(model_dir, stamp)
    except OSError as exc:
        return f"the static model cannot be read ({exc.strerror or exc})"


def _check_static_tagger(model_dir: Path, stamp: dict) -> str | None:
    """Why the export of ``model_dir``'s span tagger cannot be used (``None``: it can, or the
    model has no tagger)."""
    if not span_tagger.has_tagger(model_dir):
        return None
    recorded = stamp.get("tagger")
    if not isinstance(recorded, dict):
        return "the static model has no span tagger (exported before taggers were)"
    for name in span_tagger.FILES:
        if recorded.get(name) != _sha256(model_dir / name):
            return "the static model was exported from another span tagger"
    for path in span_tagger.static_files(model_dir / STATIC_DIR):
        if stamp.get(path.name) != _sha256(path):
            return f"{path.name} is missing or damaged"
    return None


def export_static(model_dir, force: bool = False) -> Path:
    """Export ``model_dir``'s UIE to ``model_dir/static/`` (unless a good export is there)."""

    model_dir = Path(model_dir)
    target = model_dir / STATIC_DIR
    if not force and check_static(model_dir) is None:
        return target
    tmp = Path(tempfile.mkdtemp(prefix=f".{STATIC_DIR}-", dir=model_dir))
    try:
        model = load_uie(model_dir)
        spec = [paddle.static.InputSpec(shape=[None, None], dtype="int64", name=n) for n in INPUT_NAMES]
        paddle.jit.save(paddle.jit.to_static(model, input_spec=spec), str(tmp / PREFIX))
        del model
        stamp = {"weights_sha256": _sha256(model_dir / "model_state.pdparams")}
        stamp.update({p.name: _sha256(p) for p in _files_in(tmp)})
        stamp.update(_export_tagger(model_dir, tmp))
        files.atomic_write_json(tmp / STAMP, stamp)
        _replace_dir(tmp, target)
        _mark_for_taskflow(model_dir)
    except ModelLoadError as exc:
        raise ExportError(f"{model_dir}: cannot export a static model: {exc}") from exc
    except Exception as exc:   # paddle.jit raises many kinds
        raise ExportError(f"{model_dir}: cannot export a static model: {type(exc).__name__}: {exc}") from exc
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
        gc.collect()
    log.info("exported the static model of %s", model_dir)
    return target


def _export_tagger(model_dir: Path, static_dir: Path) -> dict:
    """Trace ``model_dir``'s span tagger, if it has one, into ``static_dir``; what the stamp
    records of it (the sha256 of its files and of the traced ones)."""
    try:
        tagger = span_tagger.load(model_dir)
    except span_tagger.TaggerError as exc:
        raise ModelLoadError(str(exc)) from None
    if tagger is None:
        return {}
    traced = span_tagger.trace(tagger, static_dir)
    return {"tagger": {name: _sha256(model_dir / name) for name in span_tagger.FILES},
            **{p.name: _sha256(p) for p in traced}}


def _mark_for_taskflow(model_dir: Path):
    """Tell Taskflow the export matches the weights (its ``.cache_info``: md5 + "taskflow").

    ``Taskflow(task_path=model_dir)`` then loads ``static/`` as it is, instead of
    rewriting ``model_state.pdparams`` and exporting again.
    """
    md5 = hashlib.md5()
    with open(model_dir / "model_state.pdparams", "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            md5.update(block)
    (model_dir / ".cache_info").write_text(md5.hexdigest() + "taskflow", encoding="utf-8")


def _replace_dir(new: Path, target: Path, check=None):
    """``files.replace_dir``, except that a good export another process put there first wins
    (``check(model_dir)``, default ``check_static``, says whether it is good)."""
    try:
        files.replace_dir(new, target)
    except OSError:
        if (check or check_static)(target.parent) is not None:
            raise


# --------------------------------------------------------------------------
# INT8 export (the ONNX conversion and quantization: uie.int8)

def int8_file(model_dir) -> Path:
    """The ``model.onnx`` of ``model_dir``'s INT8 export."""
    return Path(model_dir) / int8.INT8_DIR / int8.ONNX_FILE


def int8_stamp(model_dir) -> dict | None:
    """``int8/export.json`` as written (None: missing or unreadable)."""
    try:
        return files.read_json_object(Path(model_dir) / int8.INT8_DIR / int8.STAMP)
    except ValueError:
        return None


def check_int8(model_dir) -> str | None:
    """Why the INT8 export of ``model_dir`` cannot be used (``None`` if it can)."""
    model_dir = Path(model_dir)
    stamp, problem = _read_stamp(model_dir / int8.INT8_DIR / int8.STAMP, "no INT8 model has been exported")
    if problem:
        return problem
    try:
        if stamp.get("weights_sha256") != _sha256(model_dir / "model_state.pdparams"):
            return "the INT8 model was exported from other weights"
        if stamp.get(int8.ONNX_FILE) != _sha256(int8_file(model_dir)):
            return f"{int8.INT8_DIR}/{int8.ONNX_FILE} is damaged"
    except FileNotFoundError:
        return f"{int8.INT8_DIR}/{int8.ONNX_FILE} is missing"
    except OSError as exc:
        return f"the INT8 model cannot be read ({exc.strerror or exc})"
    return None


def export_int8(model_dir, force: bool = False) -> Path:
    """Export ``model_dir``'s UIE to ``model_dir/int8/model.onnx`` (unless a good export is
    there), from its static export (made first if need be), with ``int8/export.json``
    recording the sha256 of the weights and of ``model.onnx``. Written into a temporary
    directory and renamed into place: whole or absent. Start-up and jobs, never a request."""
    model_dir = Path(model_dir)
    target = model_dir / int8.INT8_DIR
    if not force and check_int8(model_dir) is None:
        return target
    export_static(model_dir)      # a no-op when it is there and good
    tmp = Path(tempfile.mkdtemp(prefix=f".{int8.INT8_DIR}-", dir=model_dir))
    try:
        onnx_path, info = int8.to_onnx_int8(*static_files(model_dir), tmp)
        stamp = {"weights_sha256": _sha256(model_dir / "model_state.pdparams"),
                 int8.ONNX_FILE: _sha256(onnx_path), **info}
        files.atomic_write_json(tmp / int8.STAMP, stamp)
        _replace_dir(tmp, target, check=check_int8)
    except Exception as exc:   # paddle2onnx, onnx and onnxruntime raise many kinds
        raise ExportError(f"{model_dir}: cannot export an INT8 model: {type(exc).__name__}: {exc}") from exc
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
        gc.collect()
    log.info("exported the INT8 model of %s", model_dir)
    return target


# --------------------------------------------------------------------------
# Engines

def padded_width(width: int) -> int:
    """The width an input batch is padded to on the CPU: a multiple of 16 tokens up to
    128, of 64 beyond (few shapes, little padding where most inputs are)."""
    multiple = 16 if width <= 128 else 64
    return -(-width // multiple) * multiple


def _pad_width(arrays: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """The arrays padded on the right to ``padded_width`` of their width."""
    n, width = arrays["input_ids"].shape
    extra = padded_width(width) - width
    if not extra:
        return arrays
    out = {k: np.pad(v, ((0, 0), (0, extra))) for k, v in arrays.items() if k != "position_ids"}
    out["position_ids"] = np.ascontiguousarray(
        np.broadcast_to(np.arange(width + extra, dtype="int64"), (n, width + extra)))
    return out


class DygraphEngine:
    """The UIE module itself, in Paddle's dygraph mode.

    ``threads`` sets the math threads of the calling thread before each pass;
    ``None`` leaves them as they are (training sets its own).
    """

    name = "dygraph"
    precision = "fp32"
    precision_reason = ""       # why not INT8, when it was asked for (set by load_engine)
    max_batch_tokens = None     # it frees each tensor as soon as it is used

    def __init__(self, model, device="cpu", threads=None, reason=""):
        self.model = model
        self.device = device
        self.threads = threads
        self.reason = reason      # why not Paddle Inference, when it was asked for
        self._lock = threading.Lock()

    @classmethod
    def from_dir(cls, model_dir, device="cpu", threads=None, reason=""):
        return cls(load_uie(model_dir), device, threads, reason)

    @staticmethod
    def batch_tokens(rows: int, width: int) -> int:
        return rows * width

    def __call__(self, arrays: dict[str, np.ndarray]):
        with self._lock, paddle.no_grad():
            paddle.set_device(self.device)
            if self.threads:        # None: leave the calling thread's setting alone
                set_math_threads(self.threads)
            start, end = self.model(**{k: paddle.to_tensor(arrays[k]) for k in INPUT_NAMES})
            return start.numpy(), end.numpy()


class PaddleInferenceEngine:
    """A Paddle Inference predictor over the checked static export of a model directory.

    On the CPU, oneDNN builds kernels, with their own reordered copy of the
    weights, per input shape, and the static graph holds every layer's
    activations of a pass at once. So inputs are padded to few widths
    (``padded_width``), a batch holds at most ``cpu_batch_tokens`` padded tokens
    (fewer for a larger model), and oneDNN keeps the kernels of one shape only.
    Measured on 2 cores: a uie-base-shaped worker peaked at 1.7 GiB after a
    1,500-character text with 7 prompts (2.7 GiB keeping 4 shapes; dygraph: 1.8 GiB),
    and nano batches ran as fast as with more shapes kept. Padding changes no result:
    the attention mask hides it.
    """

    name = "paddle-inference"
    reason = ""
    precision = "fp32"
    precision_reason = ""       # why not INT8, when it was asked for (set by load_engine)
    CPU_BATCH_TOKENS = 1024

    def __init__(self, model_dir, device="cpu", threads=1):
        problem = check_static(model_dir)
        if problem:
            raise ExportError(problem)
        model_file, params_file = static_files(model_dir)
        config = paddle.inference.Config(str(model_file), str(params_file))
        if device == "gpu":
            config.enable_use_gpu(100, 0)
            # the passes Taskflow also leaves out on GPU for UIE
            config.delete_pass("embedding_eltwise_layernorm_fuse_pass")
            config.delete_pass("fused_multi_transformer_encoder_pass")
        else:
            config.disable_gpu()
            config.enable_mkldnn()
            config.set_mkldnn_cache_capacity(1)     # kernels (and reordered weights) of one shape
        config.set_cpu_math_library_num_threads(threads)
        config.switch_use_feed_fetch_ops(False)
        config.disable_glog_info()
        config.enable_memory_optim()
        self.predictor = paddle.inference.create_predictor(config)
        names = self.predictor.get_input_names()
        if sorted(names) != sorted(INPUT_NAMES):
            raise ExportError(f"the static model takes {names}, not {list(INPUT_NAMES)}")
        self._inputs = {n: self.predictor.get_input_handle(n) for n in names}
        self._outputs = [self.predictor.get_output_handle(n) for n in self.predictor.get_output_names()]
        self.device = device
        self.threads = threads
        self.max_batch_tokens = None if device == "gpu" else cpu_batch_tokens(model_dir)
        self._lock = threading.Lock()

    def batch_tokens(self, rows: int, width: int) -> int:
        """The tokens a pass over ``rows`` inputs of at most ``width`` holds (padded on the CPU)."""
        return rows * (width if self.device == "gpu" else padded_width(width))

    def __call__(self, arrays: dict[str, np.ndarray]):
        if self.device != "gpu":
            arrays = _pad_width(arrays)
        with self._lock:
            for name, handle in self._inputs.items():
                handle.reshape(arrays[name].shape)
                handle.copy_from_cpu(np.ascontiguousarray(arrays[name]))
            self.predictor.run()
            start, end = (o.copy_to_cpu() for o in self._outputs)
            return start, end


# One pass's tokens × hidden size × layers on the CPU: 384 tokens of uie-base. A pass of 1,024
# tokens took a uie-base worker's peak to 1.73 GB against 1.27 GB at 384 (dygraph: 1.40), at
# 7 % fewer rows/s; models up to uie-mini's size keep 1,024 tokens (bench/notes.md).
ACTIVATION_BUDGET = 384 * 768 * 12


def cpu_batch_tokens(model_dir) -> int:
    """The padded tokens a Paddle Inference batch holds on the CPU for ``model_dir``'s model:
    ``ACTIVATION_BUDGET`` over its ``activations_per_token``, a multiple of 64 between 128
    and ``CPU_BATCH_TOKENS``."""
    tokens = ACTIVATION_BUDGET // max(1, activations_per_token(model_dir)) // 64 * 64
    return max(128, min(PaddleInferenceEngine.CPU_BATCH_TOKENS, tokens))


class OnnxInt8Engine:
    """ONNX Runtime over the checked INT8 export of a model directory (``export_int8``), CPU only.

    Dynamic quantization: INT8 weights (per channel), activations quantized per pass. No
    per-shape kernel cache, so inputs are not padded to few widths; a batch still holds at
    most ``CPU_BATCH_TOKENS`` tokens (a whole pass's activations are held at once).
    """

    name = "onnx-int8"
    reason = ""
    precision = "int8"
    max_batch_tokens = PaddleInferenceEngine.CPU_BATCH_TOKENS

    def __init__(self, model_dir, threads=1, precision_reason=""):
        problem = check_int8(model_dir)
        if problem:
            raise ExportError(problem)
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.intra_op_num_threads = max(0, int(threads or 0))    # 0: ONNX Runtime's default
        options.inter_op_num_threads = 1
        options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        options.log_severity_level = 3
        self.session = ort.InferenceSession(str(int8_file(model_dir)), options,
                                            providers=["CPUExecutionProvider"])
        names = [i.name for i in self.session.get_inputs()]
        if sorted(names) != sorted(INPUT_NAMES):
            raise ExportError(f"the INT8 model takes {names}, not {list(INPUT_NAMES)}")
        if len(self.session.get_outputs()) != 2:
            raise ExportError(f"the INT8 model has {len(self.session.get_outputs())} outputs, not 2")
        self._names = names
        self.device = "cpu"
        self.threads = threads
        self.precision_reason = precision_reason
        self._lock = threading.Lock()

    batch_tokens = staticmethod(DygraphEngine.batch_tokens)    # no padding

    def __call__(self, arrays: dict[str, np.ndarray]):
        feed = {n: np.ascontiguousarray(arrays[n], dtype=np.int64) for n in self._names}
        with self._lock:
            start, end = self.session.run(None, feed)
        return start, end


PRECISIONS = ("auto", "fp32", "int8")


def choose_precision(model_dir, precision="fp32", engine="paddle-inference", device="cpu") -> tuple[bool, str]:
    """``(serve INT8?, why)`` for ``INFERENCE_PRECISION=precision``; reads no model.

    INT8 only on the CPU with Paddle Inference asked: ``int8`` serves a valid INT8 export;
    ``auto`` one that the model's training job checked within ``uie.int8.F1_BUDGET``
    (``meta.json``); ``fp32`` never. ``DEVICE=gpu`` never touches the INT8 path.
    """
    if precision not in PRECISIONS:
        raise ValueError(f"INFERENCE_PRECISION={precision!r} must be one of {', '.join(PRECISIONS)}")
    if precision == "fp32":
        return False, ""
    if device == "gpu":
        return False, f"INFERENCE_PRECISION={precision}: INT8 runs on the CPU only; DEVICE=gpu serves FP32"
    if engine != "paddle-inference":
        return False, f"INFERENCE_PRECISION={precision}: INT8 needs INFERENCE_ENGINE=paddle-inference"
    if precision == "auto":
        stamp = int8_stamp(model_dir)
        if stamp is None:       # read first: a model without an INT8 export reads no meta.json
            return False, f"INFERENCE_PRECISION=auto: {check_int8(model_dir)}"
        why = int8.checked_reason(model_dir, stamp.get(int8.ONNX_FILE))
        if why:
            return False, f"INFERENCE_PRECISION=auto: {why}"
        problem = check_int8(model_dir)
        if problem:
            return False, f"INFERENCE_PRECISION=auto: the checked INT8 export cannot be used ({problem})"
        record = int8.job_check(model_dir) or {}
        return True, f"INFERENCE_PRECISION=auto: {record.get('reason') or 'checked by its training job'}"
    problem = check_int8(model_dir)
    if problem:
        return False, f"INFERENCE_PRECISION=int8 but {problem}"
    return True, "INFERENCE_PRECISION=int8"


def load_engine(model_dir, engine="paddle-inference", device="cpu", threads=1, export=False,
                precision="fp32"):
    """The forward pass of ``model_dir`` with ``engine``; falls back to dygraph, saying why.

    With ``export=True`` a missing or damaged export is made first (start-up,
    training jobs); otherwise it is served by dygraph. ``precision``
    (``INFERENCE_PRECISION``, ``choose_precision``) may serve the INT8 export with ONNX
    Runtime instead; an INT8 model that cannot be served falls back to FP32, with a
    warning and the reason in the engine's ``precision_reason`` (``/health``).
    With ``export=True`` and ``precision="int8"`` a missing INT8 export is made too.
    """
    if engine not in ENGINES:
        raise ValueError(f"INFERENCE_ENGINE={engine!r} must be one of {', '.join(ENGINES)}")
    if precision == "int8" and export and engine == "paddle-inference" and device != "gpu":
        try:
            export_int8(model_dir)
        except ExportError as exc:
            log.warning("%s", exc)
    use_int8, why = choose_precision(model_dir, precision, engine, device)
    loud = use_int8 or (precision == "int8" and engine == "paddle-inference" and device != "gpu")
    if use_int8:
        try:
            return OnnxInt8Engine(model_dir, threads, precision_reason=why)
        except Exception as exc:   # noqa: BLE001  (any failure: serve FP32, say why)
            problem = str(exc) if isinstance(exc, ExportError) else f"{type(exc).__name__}: {exc}"
            why = f"INFERENCE_PRECISION={precision} but the INT8 model does not load ({problem})"
    elif precision == "auto" and "cannot be used" in why:
        loud = True         # its job allowed INT8, but the export is missing or damaged
    if why and loud:
        log.warning("%s: INT8 not served, serving FP32: %s", model_dir, why)
    served = _load_fp32(model_dir, engine, device, threads, export)
    served.precision_reason = why
    return served


def tagger_runner(model_dir, tagger, engine):
    """What runs ``tagger`` (``uie.tagger.SpanTagger``) of ``model_dir`` beside ``engine``:
    Paddle Inference over the checked export (``export_static``) when ``engine`` runs on
    the CPU and is not dygraph; dygraph otherwise, with the reason when the export is why."""
    if getattr(engine, "name", "dygraph") == "dygraph" or getattr(engine, "device", "cpu") == "gpu":
        return span_tagger.TaggerRunner(tagger)
    problem = check_static(model_dir)
    if problem is None:
        try:
            return span_tagger.StaticTaggerRunner(Path(model_dir) / STATIC_DIR, tagger.classes,
                                                  getattr(engine, "threads", 1))
        except Exception as exc:   # noqa: BLE001  (any failure: dygraph gives the same answers)
            problem = f"its export does not load ({type(exc).__name__}: {exc})"
    log.warning("%s: the span tagger runs in dygraph: %s", model_dir, problem)
    return span_tagger.TaggerRunner(tagger, reason=problem)


def _load_fp32(model_dir, engine, device, threads, export):
    if engine == "dygraph":
        return DygraphEngine.from_dir(model_dir, device, threads)
    try:
        if export:
            export_static(model_dir)
        return PaddleInferenceEngine(model_dir, device, threads)
    except Exception as exc:   # noqa: BLE001  (any failure: serve with dygraph, say why)
        reason = str(exc) if isinstance(exc, ExportError) else f"{type(exc).__name__}: {exc}"
        log.warning("%s: Paddle Inference unavailable (%s); serving with dygraph", model_dir, reason)
        return DygraphEngine.from_dir(model_dir, device, threads, reason=reason)


def main(argv=None) -> int:
    """``python -m uie.engine export MODEL_DIR``: (re)make the static export of a model directory;
    ``export-int8 MODEL_DIR``: its INT8 export (``uie.int8``)."""
    import sys

    argv = sys.argv[1:] if argv is None else argv
    if len(argv) != 2 or argv[0] not in ("export", "export-int8"):
        print("usage: python -m uie.engine export|export-int8 MODEL_DIR", file=sys.stderr)
        return 2
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    set_math_threads(1)     # beside a serving process: tracing needs little math
    try:
        if argv[0] == "export-int8":
            export_int8(argv[1], force=True)
            return 0
        export_static(argv[1], force=True)
    except ExportError as exc:
        print(exc, file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
