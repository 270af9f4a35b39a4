"""A model version's files: the name, ``meta.json``, and the checksums that make it whole.

A version directory (``MODEL_DIR/<project>/vN-YYYYmmdd-HHMMSS``) holds a checkpoint and a
``meta.json`` that records the sha256 of its weights, of its span tagger's files and of its
choice head's (or that it has none). ``check_weights`` refuses a version whose files differ;
``stage_version`` writes a checkpoint's copy with that record, ready to be renamed into place
(``service.model_store.ModelStore.promote``). No Paddle is needed to read any of it.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
from pathlib import Path

import files
import uie.checkpoint
import uie.choice_head
import uie.tagger
from uie.checkpoint import ModelLoadError

VERSION_RE = re.compile(r"^v(\d+)-\d{8}-\d{6}$")


def version_number(version: str) -> int:
    """The ``N`` of a version name ``vN-YYYYmmdd-HHMMSS``."""
    return int(VERSION_RE.match(version).group(1))


def weights_checksum(path) -> str:
    """sha256 of a model directory's ``model_state.pdparams``."""
    h = hashlib.sha256()
    with open(Path(path) / "model_state.pdparams", "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def read_meta(version_dir: Path) -> dict:
    """A version's ``meta.json``; ``ModelLoadError`` if it is missing or not a JSON object."""
    return files.read_json_object(Path(version_dir) / "meta.json", error=ModelLoadError)


def check_weights(version_dir) -> None:
    """``ModelLoadError`` unless the files match what ``meta.json`` records: the sha256 of
    the weights (a ``meta.json`` without it is refused), and the span tagger and the choice
    head: none where it records none, else both of the head's files with the recorded sha256."""
    meta = read_meta(version_dir)
    expected = meta.get("weights_sha256")
    if not isinstance(expected, str) or not expected:
        raise ModelLoadError("its meta.json records no weights_sha256")
    if weights_checksum(version_dir) != expected:
        raise ModelLoadError("its weights do not match the checksum in meta.json")
    _check_tagger(Path(version_dir), meta)
    _check_recorded_files(Path(version_dir), meta.get("choice_head"), uie.choice_head.FILES, "choice head")


def tagger_record(model_dir) -> dict | None:
    """What ``meta.json`` records of a model directory's span tagger: its classes and the
    sha256 of each of its files (None: it has none)."""
    present = [name for name in uie.tagger.FILES if (Path(model_dir) / name).exists()]
    if not present:
        return None
    record = {"sha256": {name: uie.tagger.file_checksum(Path(model_dir) / name) for name in present}}
    try:
        config = json.loads((Path(model_dir) / uie.tagger.CONFIG_FILE).read_text(encoding="utf-8"))
        record["classes"] = list(config["classes"])
    except (OSError, ValueError, KeyError, TypeError):
        pass    # refused at load
    return record


def head_record(model_dir) -> dict | None:
    """What ``meta.json`` records of a model directory's choice head (``uie.choice_head``):
    the sha256 of each of its files (None: it has none)."""
    present = [name for name in uie.choice_head.FILES if (Path(model_dir) / name).exists()]
    if not present:
        return None
    return {"sha256": {name: uie.tagger.file_checksum(Path(model_dir) / name) for name in present}}


def _check_tagger(version_dir: Path, meta: dict) -> None:
    """``ModelLoadError`` unless the tagger files are those ``meta.json`` records.

    A version promoted before taggers were recorded (no ``tagger`` key) must hold both
    files or neither, and both when its ``training_metrics.json`` names tagger classes.
    """
    present = {name for name in uie.tagger.FILES if (version_dir / name).exists()}
    if "tagger" not in meta:
        if present and present != set(uie.tagger.FILES):
            raise ModelLoadError(f"its span tagger is incomplete: {', '.join(sorted(set(uie.tagger.FILES) - present))} missing")
        if not present and _trained_tagger_classes(version_dir):
            raise ModelLoadError(f"its span tagger is missing ({', '.join(uie.tagger.FILES)})")
        return
    _check_recorded_files(version_dir, meta["tagger"], uie.tagger.FILES, "span tagger")


def _check_recorded_files(version_dir: Path, record, names, what: str) -> None:
    """``ModelLoadError`` unless the files ``names`` of a head (``what``: the span tagger,
    the choice head) are those ``record`` (``meta.json``'s) has the sha256 of; with no
    record (None), none of them may be there."""
    present = {name for name in names if (version_dir / name).exists()}
    if record is None:
        if present:
            raise ModelLoadError(f"it holds {what} files ({', '.join(sorted(present))}) "
                                 "that its meta.json does not record")
        return
    sums = record.get("sha256") if isinstance(record, dict) else None
    if not isinstance(sums, dict) or set(sums) != set(names):
        raise ModelLoadError(f"its meta.json records no valid {what} checksums")
    for name in names:
        if name not in present:
            raise ModelLoadError(f"its {what} file {name} is missing")
        if uie.tagger.file_checksum(version_dir / name) != sums[name]:
            raise ModelLoadError(f"its {what} file {name} does not match the checksum in meta.json")


def _trained_tagger_classes(version_dir: Path) -> list:
    try:
        metrics = json.loads((version_dir / "training_metrics.json").read_text(encoding="utf-8"))
        return list(metrics.get("tagger_classes") or []) if isinstance(metrics, dict) else []
    except (OSError, ValueError, TypeError):
        return []


def signature(path) -> tuple:
    """What a model directory's files look like now (to retry a failed load only after a change)."""
    out = []
    for name in ("meta.json", *uie.checkpoint.MODEL_FILES, *uie.tagger.FILES, *uie.choice_head.FILES):
        try:
            st = (Path(path) / name).stat()
            out.append((name, st.st_size, st.st_mtime_ns))
        except OSError:
            out.append((name, None, None))
    return tuple(out)


def parse_current(raw: bytes) -> tuple[str | None, str | None]:
    """``(version, None)`` for the bytes of a ``current`` file, or ``(None, why not)``."""
    try:
        name = raw.decode("utf-8").strip()
    except UnicodeDecodeError:
        return None, "'current' is not UTF-8 text"
    if not VERSION_RE.match(name):
        return None, f"'current' holds {name[:80]!r}, which is not a version name"
    return name, None


def stage_version(tmp: Path, checkpoint: Path, meta: dict) -> None:
    """A copy of ``checkpoint`` with ``meta.json`` (and its weights' checksum) at ``tmp``."""
    shutil.rmtree(tmp, ignore_errors=True)
    shutil.copytree(checkpoint, tmp)    # with its static export, if the job made one
    meta = dict(meta, weights_sha256=weights_checksum(tmp), tagger=tagger_record(tmp),
                choice_head=head_record(tmp))
    (tmp / "meta.json").write_text(json.dumps(meta, indent=2), encoding="utf-8")


def delete_version(pdir: Path, version: str) -> None:
    doomed = pdir / f".tmp-deleted-{version}"
    os.rename(pdir / version, doomed)   # gone at once for every reader
    shutil.rmtree(doomed, ignore_errors=True)
