"""INT8 on the CPU: how a UIE's static export becomes a dynamically quantized ONNX model,
and when one may be served.

- ``to_onnx_int8`` converts: ``paddle2onnx`` (opset 13), every ``Constant`` node's value
  moved into the graph's initializers (paddle2onnx emits the weights as ``Constant``
  nodes, which ``quantize_dynamic`` leaves in FP32), arithmetic between initializers folded
  (``_fold_constant_arithmetic``), then ONNX Runtime's ``quantize_dynamic`` (INT8 weights
  per channel, activations quantized per pass). ``uie.engine.export_int8`` writes it to
  ``MODEL_DIR/<version>/int8/model.onnx`` with its stamp; ``uie.engine.OnnxInt8Engine``
  runs it; ``uie.engine.choose_precision`` decides which precision a model is served with.
- ``job_check(model_dir)`` is what the training job that made a version recorded of its
  INT8 check (``meta.json``'s ``int8``), ``checked_reason`` whether it lets
  ``INFERENCE_PRECISION=auto`` serve INT8; ``judge`` is that check.
- ``F1_BUDGET``: the F1 an INT8 model may lose against FP32 on the job's dev examples.

It imports only the standard library and ``files`` (ONNX, paddle2onnx and ONNX Runtime
inside the functions that use them).
"""

from __future__ import annotations

import logging
from pathlib import Path

import files

log = logging.getLogger(__name__)

INT8_DIR = "int8"
ONNX_FILE = "model.onnx"
STAMP = "export.json"
OPSET = 13
F1_BUDGET = 0.005       # 0.5 F1 points


def _constants_to_initializers(model) -> int:
    """Move every ``Constant`` node's tensor into ``graph.initializer`` (what
    ``quantize_dynamic`` quantizes); returns how many were moved."""
    import onnx

    graph, keep, moved = model.graph, [], 0
    for node in graph.node:
        if node.op_type == "Constant" and len(node.attribute) == 1 and node.attribute[0].name == "value":
            tensor = onnx.TensorProto()
            tensor.CopyFrom(node.attribute[0].t)
            tensor.name = node.output[0]
            graph.initializer.append(tensor)
            moved += 1
        else:
            keep.append(node)
    del graph.node[:]
    graph.node.extend(keep)
    return moved


_FOLDABLE = {"Mul": "multiply", "Add": "add", "Sub": "subtract", "Div": "divide"}


def _fold_constant_arithmetic(model) -> int:
    """Replace each ``Mul``/``Add``/``Sub``/``Div`` of two initializers by its result.

    paddle2onnx writes an embedding with a ``padding_idx`` as its table times a 0/1 mask,
    which every pass would multiply again (the whole vocabulary) and which hides the table
    from the quantizer; folded, the ``Gather`` reads one initializer. Returns how many."""
    import numpy as np
    from onnx import numpy_helper

    graph = model.graph
    inits = {t.name: t for t in graph.initializer}
    uses: dict[str, int] = {}
    for node in graph.node:
        for name in node.input:
            uses[name] = uses.get(name, 0) + 1
    keep, folded = [], 0
    for node in graph.node:
        if node.op_type in _FOLDABLE and len(node.input) == 2 and all(i in inits for i in node.input):
            a, b = (numpy_helper.to_array(inits[i]) for i in node.input)
            value = getattr(np, _FOLDABLE[node.op_type])(a, b).astype(a.dtype)
            graph.initializer.append(numpy_helper.from_array(value, node.output[0]))
            inits[node.output[0]] = graph.initializer[-1]
            for name in node.input:
                uses[name] -= 1
            folded += 1
        else:
            keep.append(node)
    del graph.node[:]
    graph.node.extend(keep)
    unused = [t for t in graph.initializer if uses.get(t.name, 0) <= 0 and t.name in uses]
    for tensor in unused:
        graph.initializer.remove(tensor)
    return folded


def to_onnx_int8(model_file, params_file, work_dir) -> tuple[Path, dict]:
    """The static model ``model_file``/``params_file`` as a dynamically quantized ONNX model
    in ``work_dir`` (``ONNX_FILE``, the only file left there), and what was done to it."""
    import onnx
    import paddle2onnx
    from onnxruntime.quantization import QuantType, quantize_dynamic

    work_dir = Path(work_dir)
    fp32 = work_dir / "fp32.onnx"
    paddle2onnx.export(str(model_file), str(params_file), str(fp32), opset_version=OPSET, verbose=False)
    model = onnx.load(str(fp32))
    moved = _constants_to_initializers(model)
    folded = _fold_constant_arithmetic(model)
    onnx.save(model, str(fp32))
    del model
    out = work_dir / ONNX_FILE
    quantize_dynamic(str(fp32), str(out), weight_type=QuantType.QInt8, per_channel=True)
    for path in work_dir.iterdir():
        if path.name != ONNX_FILE:
            path.unlink()
    return out, {"opset": OPSET, "quantization": "dynamic, INT8 weights per channel",
                 "constants_moved": moved, "folded": folded,
                 "paddle2onnx": getattr(paddle2onnx, "__version__", None)}


def job_check(model_dir) -> dict | None:
    """The INT8 check the training job of ``model_dir`` recorded in its ``meta.json``
    (``{"f1", "fp32_f1", "served", "reason", "onnx_sha256"}``), or None."""
    try:
        meta = files.read_json_object(Path(model_dir) / "meta.json")
    except ValueError:
        return None
    record = meta.get("int8")
    return record if isinstance(record, dict) else None


def checked_reason(model_dir, onnx_sha256: str | None) -> str | None:
    """Why ``INFERENCE_PRECISION=auto`` must not serve ``model_dir`` in INT8 (``None``: its
    training job checked this very export, whose ``model.onnx`` has ``onnx_sha256``, within
    ``F1_BUDGET``)."""
    record = job_check(model_dir)
    if record is None:
        return "no training job checked INT8 for this model"
    if record.get("served") is not True:
        return f"its training job did not allow INT8 ({record.get('reason') or 'no reason recorded'})"
    if not record.get("onnx_sha256") or record.get("onnx_sha256") != onnx_sha256:
        return "the INT8 export is not the one its training job checked"
    return None


def judge(int8_f1: float, fp32_f1: float) -> tuple[bool, str]:
    """``(allowed, reason)``: INT8 may be served if it loses at most ``F1_BUDGET`` F1."""
    lost = fp32_f1 - int8_f1
    if lost <= F1_BUDGET + 1e-9:
        return True, f"INT8 F1 {int8_f1:.4f} vs FP32 {fp32_f1:.4f}: within the {F1_BUDGET} budget"
    return False, f"INT8 F1 {int8_f1:.4f} vs FP32 {fp32_f1:.4f}: loses {lost:.4f}, over the {F1_BUDGET} budget"
