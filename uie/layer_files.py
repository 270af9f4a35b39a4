"""A small dygraph layer saved beside a UIE (the span tagger, the choice head): its weights
file read back into a layer built from its configuration, and checked against it first."""

from __future__ import annotations

from pathlib import Path

import paddle


def load_state(layer: paddle.nn.Layer, weights: Path, config_name: str, error: type[Exception]):
    """``layer`` with the state dict of ``weights``, in eval mode; ``error`` when the file does
    not read or its tensors are not the layer's (names and shapes, as ``config_name`` built it)."""
    try:
        state = paddle.load(str(weights))
    except Exception as exc:   # paddle.load raises whatever its unpickler hits
        raise error(f"{weights}: unreadable weights ({exc})") from None
    expected = {k: tuple(v.shape) for k, v in layer.state_dict().items()}
    found = {k: tuple(v.shape) for k, v in state.items()} if isinstance(state, dict) else {}
    if found != expected:
        raise error(f"{weights} does not fit {config_name}: "
                    f"expected {len(expected)} tensors of its shapes, found {len(found)}")
    layer.set_state_dict(state)
    layer.eval()
    return layer
