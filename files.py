"""Files that are whole or absent: atomic writes and directory swaps, synced to disk, and JSON
objects read back with one clear error.

Both sides use it: the server's model store and job records, a training job's result, a
model's static export and ``model_best/``. It imports nothing heavy (an RQ worker's main
process reads job records without loading Paddle).
"""

from __future__ import annotations

import json
import os
import shutil
import threading
from pathlib import Path


def fsync_path(path) -> None:
    """Flush a file's or a directory's entry to disk."""
    fd = os.open(path, os.O_RDONLY | (os.O_DIRECTORY if Path(path).is_dir() else 0))
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def fsync_tree(root) -> None:
    """Flush every file and directory under ``root`` (``root`` included) to disk."""
    for dirpath, _, filenames in os.walk(root):
        for name in filenames:
            fsync_path(Path(dirpath) / name)
        fsync_path(Path(dirpath))


def _sibling(path: Path, tag: str) -> Path:
    """A hidden name beside ``path``, unique to this process and thread."""
    return path.with_name(f".{path.name}.{tag}-{os.getpid()}-{threading.get_ident()}")


def atomic_write_text(path, text: str) -> None:
    """Replace ``path`` by ``text``: whole or not at all, also across a power loss."""
    path = Path(path)
    tmp = _sibling(path, "tmp")
    try:
        with open(tmp, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    fsync_path(path.parent)


def atomic_write_json(path, value, **dumps) -> None:
    """``atomic_write_text`` of ``json.dumps(value, indent=2, **dumps)``."""
    atomic_write_text(path, json.dumps(value, **{"indent": 2, **dumps}))


def publish_dir(new, target) -> None:
    """Rename the finished directory ``new`` to ``target``, synced first (``OSError`` when
    a non-empty ``target`` is there)."""
    new, target = Path(new), Path(target)
    fsync_tree(new)
    os.rename(new, target)
    fsync_path(target.parent)


def replace_dir(new, target) -> None:
    """``publish_dir``, an old ``target`` moved aside first and then deleted: a reader sees
    the old tree or the new one, never a mix."""
    target = Path(target)
    old = _sibling(target, "old")
    if target.exists():
        os.rename(target, old)
    try:
        publish_dir(new, target)
    finally:
        shutil.rmtree(old, ignore_errors=True)


def read_json_object(path, error=ValueError) -> dict:
    """The JSON object in ``path``; ``error(message)`` for a missing or unreadable file, bad JSON
    or another JSON value."""
    try:
        value = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:     # UnicodeDecodeError is a ValueError
        raise error(f"{path}: not a readable JSON file ({exc})") from None
    if not isinstance(value, dict):
        raise error(f"{path}: expected a JSON object, not {type(value).__name__}")
    return value
