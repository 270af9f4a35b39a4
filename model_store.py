"""Which model each Label Studio project is served by, on disk and in memory.

Layout under ``MODEL_DIR``::

    _base/<name>/              base models (downloaded by PaddleNLP, or scratch)
    <project>/current          name of the project's live version (atomic write)
    <project>/<version>/       a trained version: model files + meta.json
    <project>/jobs/<job>/      training jobs (see jobs.py)

A version directory only ever appears by ``os.rename`` of a complete,
validated directory, so nothing half-written is loaded. Every process reads
``current`` on each request, so all gunicorn workers switch to a new version
without a restart.
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import uie_model
from uie_model import ModelLoadError, ModelSource, UIEPredictor

log = logging.getLogger(__name__)

VERSION_RE = re.compile(r"^v(\d+)-\d{8}-\d{6}$")
PROJECT_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]{0,63}$")


def project_key(raw) -> str:
    """Label Studio's project reference as a directory name.

    ``/setup`` and ``/predict`` send ``"<id>.<created timestamp>"``, webhooks
    send ``{"id": <id>, ...}``; both become ``"<id>"``. No project is ``"default"``.
    """
    if isinstance(raw, dict):
        raw = raw.get("id")
    if raw is None or raw == "":
        return "default"
    key = str(raw).split(".", 1)[0].strip()
    if not PROJECT_RE.match(key):
        raise ValueError(f"project {raw!r} is not a Label Studio project id")
    return key


def atomic_write(path: Path, text: str):
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{threading.get_ident()}.tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)


@dataclass(frozen=True)
class LiveModel:
    version: str
    path: str
    predictor: UIEPredictor
    trained: bool


class ModelStore:
    """Base model + per-project versions; loads each model once per process."""

    def __init__(self, settings, source: ModelSource | None = None):
        self.settings = settings
        self.root = Path(settings.model_dir).resolve()
        self.root.mkdir(parents=True, exist_ok=True)
        self.device = uie_model.select_device(settings.device)
        self.base = source or self._resolve_base()
        self._predictors: dict[str, UIEPredictor] = {}
        self._load_lock = threading.Lock()
        self._serving: dict[str, str] = {}    # project -> path of the model it is served by
        self.predictor(self.base.path)  # load at start-up, not on the first request

    def _resolve_base(self) -> ModelSource:
        spec = self.settings.uie_model
        try:
            return uie_model.resolve_model(spec, self.root / "_base")
        except uie_model.DownloadError as exc:
            log.error("=" * 72)
            log.error("UIE_MODEL=%s could not be loaded: %s", spec, exc)
            log.error("SERVING AN UNTRAINED SCRATCH MODEL INSTEAD: it predicts little until trained.")
            log.error("=" * 72)
            scratch = uie_model.resolve_model("scratch", self.root / "_base")
            return ModelSource(scratch.path, scratch.kind, scratch.name, scratch.version,
                               fallback_reason=f"UIE_MODEL={spec} could not be loaded: {exc}")

    # -- loading ---------------------------------------------------------
    def predictor(self, path) -> UIEPredictor:
        path = str(path)
        found = self._predictors.get(path)
        if found is not None:
            return found
        with self._load_lock:
            if path not in self._predictors:
                max_seq_len = self.serving_seq_len(path)
                log.info("loading model %s on %s (max_seq_len %d)", path, self.device, max_seq_len)
                self._predictors[path] = UIEPredictor.from_dir(
                    path, device=self.device, max_seq_len=max_seq_len,
                    batch_size=self.settings.batch_size, threshold=self.settings.score_threshold)
            return self._predictors[path]

    def serving_seq_len(self, path) -> int:
        """``MAX_SEQ_LEN``, but no longer than a scratch model was trained on.

        A scratch model has learnt only the positions it was trained with;
        windows longer than that would put text on untrained positions.
        """
        limit = self.settings.max_seq_len
        trained = Path(path) / "training_metrics.json"
        if uie_model.is_scratch_model(path) and trained.is_file():
            try:
                limit = min(limit, int(json.loads(trained.read_text(encoding="utf-8"))["max_seq_len"]))
            except (ValueError, KeyError, TypeError):
                pass
        return limit

    def _evict_unused(self):
        """Forget loaded models that no project serves any more (old versions)."""
        keep = {self.base.path} | set(self._serving.values())
        with self._load_lock:
            for path in [p for p in self._predictors if p not in keep]:
                log.info("unloading model %s (no longer served)", path)
                del self._predictors[path]

    # -- versions ----------------------------------------------------------
    def projects(self) -> list[str]:
        """Projects that have anything on disk (versions, jobs)."""
        return sorted(d.name for d in self.root.iterdir() if d.is_dir() and PROJECT_RE.match(d.name))

    def project_dir(self, project: str) -> Path:
        return self.root / project

    def current_version(self, project: str) -> str | None:
        try:
            name = (self.project_dir(project) / "current").read_text(encoding="utf-8").strip()
        except FileNotFoundError:
            return None
        if VERSION_RE.match(name) and (self.project_dir(project) / name / "meta.json").is_file():
            return name
        log.error("project %s: 'current' names %r, which is not a complete version", project, name)
        return None

    def live(self, project: str) -> LiveModel:
        """The model that serves ``project`` now."""
        version = self.current_version(project)
        live = None
        if version is not None:
            path = str(self.project_dir(project) / version)
            try:
                live = LiveModel(version, path, self.predictor(path), True)
            except ModelLoadError as exc:
                log.error("project %s: version %s cannot be loaded (%s); serving the base model",
                          project, version, exc)
        if live is None:
            live = LiveModel(self.base.version, self.base.path, self.predictor(self.base.path), False)
        if self._serving.get(project) != live.path:
            previous = self._serving.get(project)
            self._serving[project] = live.path
            if previous is not None:
                self._evict_unused()
        return live

    def versions(self, project: str) -> list[dict]:
        out = []
        pdir = self.project_dir(project)
        if pdir.is_dir():
            for child in sorted(pdir.iterdir()):
                if VERSION_RE.match(child.name) and (child / "meta.json").is_file():
                    meta = json.loads((child / "meta.json").read_text(encoding="utf-8"))
                    out.append(dict(meta, model_version=child.name))
        out.sort(key=lambda m: int(VERSION_RE.match(m["model_version"]).group(1)))
        return out

    def next_version(self, project: str) -> str:
        numbers = [int(VERSION_RE.match(v["model_version"]).group(1)) for v in self.versions(project)]
        pdir = self.project_dir(project)
        if pdir.is_dir():   # count rejected/half-moved names too, never reuse one
            numbers += [int(m.group(1)) for c in pdir.iterdir() if (m := VERSION_RE.match(c.name))]
        return f"v{max(numbers, default=0) + 1}-{time.strftime('%Y%m%d-%H%M%S')}"

    def promote(self, project: str, checkpoint: Path, meta: dict, make_current=True) -> str:
        """Copy a validated checkpoint in as the project's next version, atomically."""
        pdir = self.project_dir(project)
        pdir.mkdir(parents=True, exist_ok=True)
        version = self.next_version(project)
        tmp = pdir / f".tmp-{version}"
        shutil.rmtree(tmp, ignore_errors=True)
        shutil.copytree(checkpoint, tmp, ignore=shutil.ignore_patterns("static", ".cache_info"))
        (tmp / "meta.json").write_text(json.dumps(dict(meta, model_version=version), indent=2),
                                       encoding="utf-8")
        os.rename(tmp, pdir / version)
        if make_current:
            atomic_write(pdir / "current", version + "\n")
        log.info("project %s: version %s is %s", project, version,
                 "now live" if make_current else "kept but not served")
        return version

    def cleanup_partial(self):
        """Remove temporary version directories left by a process that died mid-copy."""
        for pdir in self.root.iterdir():
            if pdir.is_dir() and pdir.name != "_base":
                for child in pdir.glob(".tmp-*"):
                    shutil.rmtree(child, ignore_errors=True)
