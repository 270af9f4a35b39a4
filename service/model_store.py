"""Which model each Label Studio project is served by, on disk and in memory.

Layout under ``MODEL_DIR``::

    _base/<name>/              base models (downloaded by PaddleNLP, or scratch)
    <project>/current          name of the project's live version (atomic write)
    <project>/<version>/       a trained version: model files + meta.json
    <project>/jobs/<job>/      training jobs (see jobs.py)

A version directory only ever appears by ``os.rename`` of a complete,
validated directory whose files were synced to disk (``files.py``), so nothing
half-written is loaded, even after a power loss; its ``meta.json`` records a
checksum of its weights and of its span tagger's files (or that it has none),
checked on load (``service.version_files``): a version without them, or whose files
differ, is refused.
A version loaded on dygraph (its UIE or its span tagger) because its static export is
missing or damaged has the export rebuilt in the background (``_rebuild_export``). Every process reads ``current`` on
each request, so all gunicorn workers switch to a new version without a
restart; while that version loads, a request reads nothing else (no other
version's ``meta.json``).

Damaged state never takes a project back to the untrained base model: when
``current`` is unreadable or names a version that does not load, the newest
promoted version that loads is served, the failure is logged once and shown
in ``/health`` (``ModelStore.problems``), and the broken files are not retried
until they change. The newest ``KEEP_VERSIONS`` versions of a project stay on
disk, and each process keeps at most ``MAX_LOADED_MODELS`` models loaded.
"""

from __future__ import annotations

import json
import logging
import subprocess
import sys
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path

import files
import uie.checkpoint
import uie.engine
import uie.tagger
from service import version_files
from service.projects import is_project_name
from training_examples import untrained_labels
from uie.checkpoint import ModelLoadError, ModelSource
from uie.predictor import UIEPredictor

log = logging.getLogger(__name__)

def _export_problem(predictor: UIEPredictor) -> str:
    """Why ``predictor``'s UIE or span tagger runs on dygraph because of its static export
    (``""``: neither does)."""
    tagger_reason = getattr(predictor.tagger, "reason", "") if predictor.tagger is not None else ""
    if predictor.engine.name == "dygraph" and predictor.engine.reason:
        return predictor.engine.reason
    return f"its span tagger: {tagger_reason}" if tagger_reason else ""


@dataclass(frozen=True)
class LiveModel:
    version: str
    path: str
    predictor: UIEPredictor


class ModelStore:
    """Base model + per-project versions; loads each model once per process."""

    def __init__(self, settings, source: ModelSource | None = None):
        self.settings = settings
        self.root = Path(settings.model_dir).resolve()
        self.root.mkdir(parents=True, exist_ok=True)
        self.device = uie.checkpoint.select_device(settings.device)
        self.base = source or self._resolve_base()
        self._predictors: OrderedDict[str, UIEPredictor] = OrderedDict()   # least recent first
        self._lock = threading.Lock()         # guards the dicts below
        self._load_lock = threading.Lock()    # one model load at a time
        self._serving: dict[str, str] = {}    # project -> path of the model it is served by
        self._failed: dict[str, tuple] = {}   # path -> (files' signature, why it does not load)
        self._problems: dict[str, dict] = {}  # project -> what is wrong with its files now
        self._exports: dict[str, str | None] = {}   # path -> None while its export is rebuilt, else why it failed
        self.predictor(self.base.path, export=True)  # at start-up, not on the first request

    def _resolve_base(self) -> ModelSource:
        spec = self.settings.uie_model
        try:
            return uie.checkpoint.resolve_model(spec, self.root / "_base")
        except uie.checkpoint.DownloadError as exc:
            _log_scratch_fallback(spec, exc)
            scratch = uie.checkpoint.resolve_model("scratch", self.root / "_base")
            return ModelSource(scratch.path, scratch.kind, scratch.name, scratch.version,
                               fallback_reason=f"UIE_MODEL={spec} could not be loaded: {exc}")

    # -- loading ---------------------------------------------------------
    def predictor(self, path, export=False) -> UIEPredictor:
        """The loaded model in ``path`` (loaded now if need be); ``ModelLoadError`` if it cannot be.

        It runs on ``INFERENCE_ENGINE`` with ``CPU_THREADS`` math threads; a
        missing static export is made only with ``export`` (start-up): a
        request never exports, it is served by dygraph instead.
        """
        path = str(path)
        predictor = self._cached(path)
        return predictor if predictor is not None else self._load_once(path, export)

    def _cached(self, path: str) -> UIEPredictor | None:
        """The loaded model in ``path``, now the most recently used, or None."""
        with self._lock:
            predictor = self._predictors.get(path)
            if predictor is not None:
                self._predictors.move_to_end(path)
            return predictor

    def _load_once(self, path: str, export: bool) -> UIEPredictor:
        """Load ``path`` unless a concurrent request just did; one load at a time."""
        with self._load_lock:
            predictor = self._cached(path)
            if predictor is None:
                predictor = self._load(path, export)
                with self._lock:
                    self._predictors[path] = predictor
                    self._evict_least_recent()
            return predictor

    def _load(self, path: str, export: bool) -> UIEPredictor:
        log.info("loading model %s on %s", path, self.device)
        try:
            predictor = self._build(path, export)
        except ModelLoadError:
            raise
        except Exception as exc:   # damaged files surface as many exception types
            raise ModelLoadError(f"{path}: cannot load the model: {type(exc).__name__}: {exc}") from exc
        engine = predictor.engine
        log.info("loaded model %s on %s: %s, %s, %d math threads, max_seq_len %d%s%s", path, self.device,
                 engine.name, getattr(engine, "precision", "fp32"), self.settings.math_threads,
                 predictor.max_seq_len, f" ({engine.reason})" if engine.reason else "",
                 f" ({engine.precision_reason})" if getattr(engine, "precision_reason", "") else "")
        return predictor

    def _build(self, path: str, export: bool) -> UIEPredictor:
        s = self.settings
        engine = uie.engine.load_engine(path, s.inference_engine, self.device, s.math_threads,
                                        export=export, precision=s.inference_precision)
        return UIEPredictor.from_dir(path, device=self.device, engine=engine,
                                     max_seq_len=self.serving_seq_len(path), batch_size=s.batch_size,
                                     threshold=s.score_threshold, batch_wait_ms=s.batch_wait_ms)

    def engines(self) -> dict[str, dict]:
        """How each loaded model runs: engine, threads, precision (``fp32``/``int8``) and why,
        why not Paddle Inference if so,
        and the labels its span tagger answers (scratch models)."""
        with self._lock:
            loaded = dict(self._predictors)
        return {path: self._engine_info(p) for path, p in loaded.items()}

    def _engine_info(self, p: UIEPredictor) -> dict:
        info = {"engine": p.engine.name, "threads": self.settings.math_threads, "device": self.device,
                "precision": getattr(p.engine, "precision", "fp32")}
        if getattr(p.engine, "precision_reason", ""):   # why INT8 or why not (INFERENCE_PRECISION)
            info["precision_reason"] = p.engine.precision_reason
        if p.engine.reason:
            info["engine_fallback_reason"] = p.engine.reason
        if p.tagger is not None:
            info["tagger_labels"] = list(p.tagger.classes)
            info["tagger_engine"] = p.tagger.name
            if p.tagger.reason:
                info["tagger_fallback_reason"] = p.tagger.reason
        return info

    def _evict_least_recent(self):
        """Unload the least recently used models beyond ``MAX_LOADED_MODELS`` (never the base)."""
        limit = max(1, self.settings.max_loaded_models)
        for path in [p for p in self._predictors if p != self.base.path]:
            if len(self._predictors) <= limit:
                break
            log.info("unloading model %s (least recently used of %d loaded)", path, len(self._predictors))
            self._predictors.pop(path).close()

    def loaded(self) -> list[str]:
        """Paths of the models this process holds, least recently used first."""
        with self._lock:
            return list(self._predictors)

    def serving_seq_len(self, path) -> int:
        """``MAX_SEQ_LEN``, but no longer than a scratch model was trained on.

        A scratch model has learnt only the positions it was trained with;
        windows longer than that would put text on untrained positions.
        """
        limit = self.settings.max_seq_len
        trained = Path(path) / "training_metrics.json"
        if uie.checkpoint.is_scratch_model(path) and trained.is_file():
            try:
                limit = min(limit, int(json.loads(trained.read_text(encoding="utf-8"))["max_seq_len"]))
            except (OSError, ValueError, KeyError, TypeError):
                pass
        return limit

    def _evict_unused(self):
        """Forget loaded models that no project serves any more (old versions)."""
        keep = {self.base.path} | set(self._serving.values())
        with self._lock:
            for path in [p for p in self._predictors if p not in keep]:
                log.info("unloading model %s (no longer served)", path)
                self._predictors.pop(path).close()

    # -- versions ----------------------------------------------------------
    def projects(self) -> list[str]:
        """Projects that have anything on disk (versions, jobs)."""
        return sorted(d.name for d in self.root.iterdir() if d.is_dir() and is_project_name(d.name))

    def project_dir(self, project: str) -> Path:
        return self.root / project

    def read_current(self, project: str) -> tuple[str | None, str | None]:
        """``(version, None)`` from ``<project>/current``, ``(None, None)`` if there is none,
        or ``(None, why)`` if it is unreadable or names no complete version."""
        try:
            raw = (self.project_dir(project) / "current").read_bytes()
        except FileNotFoundError:
            return None, None
        except OSError as exc:
            return None, f"'current' cannot be read ({exc.strerror or exc})"
        name, problem = version_files.parse_current(raw)
        if name and not (self.project_dir(project) / name / "meta.json").is_file():
            return None, f"'current' names {name}, which is not a complete version"
        return name, problem

    def current_version(self, project: str) -> str | None:
        return self.read_current(project)[0]

    def _load_version(self, project: str, version: str) -> LiveModel:
        """A version, loaded; a version that failed is not retried until its files change."""
        path = str(self.project_dir(project) / version)
        signature = version_files.signature(path)
        with self._lock:
            failed = self._failed.get(path)
        if failed and failed[0] == signature:
            raise ModelLoadError(failed[1])
        try:
            return LiveModel(version, path, self._checked_predictor(path))
        except (ModelLoadError, OSError) as exc:
            with self._lock:
                self._failed[path] = (signature, str(exc))
            raise ModelLoadError(str(exc)) from None

    def _checked_predictor(self, path: str) -> UIEPredictor:
        """``predictor(path)``; its files are checked against ``meta.json`` when it is loaded,
        and a missing or damaged static export is then rebuilt (``_rebuild_export``)."""
        predictor = self._cached(path)
        if predictor is not None:
            return predictor
        version_files.check_weights(path)
        predictor = self.predictor(path)
        self._rebuild_export(path, predictor)
        return predictor

    # -- static exports of versions ----------------------------------------------
    def _export_wanted(self, predictor: UIEPredictor) -> bool:
        """Paddle Inference is asked for, but ``predictor`` (or its span tagger) runs on dygraph
        because of its export."""
        return self.settings.inference_engine == "paddle-inference" and bool(_export_problem(predictor))

    def _rebuild_export(self, path: str, predictor: UIEPredictor) -> None:
        """A version loaded on dygraph because its export is missing, damaged or does not load:
        export it again, in a child process started from a background thread (never in the
        request that loaded it, which is served by dygraph meanwhile), then swap the loaded
        model for one on Paddle Inference. Until then ``problems`` says so; a failed rebuild
        stays there and is tried again at the version's next load."""
        if not self._export_wanted(predictor):
            return
        with self._lock:
            if self._exports.get(path, "") is None:     # already being rebuilt
                return
            self._exports[path] = None
        log.warning("%s: served with dygraph (%s); rebuilding its static export",
                    path, _export_problem(predictor))
        threading.Thread(target=self._export_and_swap, args=(path,), daemon=True,
                         name=f"export {Path(path).name}").start()

    def _export_and_swap(self, path: str) -> None:
        try:
            run = subprocess.run([sys.executable, "-m", "uie.engine", "export", path],
                                 cwd=str(Path(__file__).resolve().parents[1]), capture_output=True,
                                 text=True, timeout=3600)
            if run.returncode != 0:
                tail = " | ".join((run.stderr or run.stdout).strip().splitlines()[-3:])
                raise uie.engine.ExportError(f"the export exited with code {run.returncode}: {tail}")
            fresh = self._build(path, export=False)
            if self._export_wanted(fresh):
                fresh.close()
                raise uie.engine.ExportError(_export_problem(fresh))
        except Exception as exc:   # noqa: BLE001  (kept and shown in /health)
            why = str(exc) if isinstance(exc, uie.engine.ExportError) else f"{type(exc).__name__}: {exc}"
            log.error("%s: its static export could not be rebuilt (%s); it stays on dygraph", path, why)
            with self._lock:
                self._exports[path] = why
            return
        with self._lock:
            self._exports.pop(path, None)
            old = self._predictors.get(path)
            if old is not None and self._export_wanted(old):
                self._predictors[path] = fresh       # same place in the LRU order
            else:
                old, fresh = fresh, None              # unloaded meanwhile: drop the new one
        if old is not None:   # let requests that hold it finish first
            closer = threading.Timer(60, old.close)
            closer.daemon = True
            closer.start()
        if fresh is not None:
            log.info("%s: static export rebuilt; served with Paddle Inference", path)

    def exports_in_progress(self) -> list[str]:
        """Paths whose static export is being rebuilt now."""
        with self._lock:
            return [p for p, why in self._exports.items() if why is None]

    def _engine_problems(self) -> dict[str, str]:
        """project -> why the version serving it runs on dygraph instead of Paddle Inference."""
        with self._lock:
            serving = dict(self._serving)
            loaded = dict(self._predictors)
            exports = dict(self._exports)
        out = {}
        for project, path in serving.items():
            predictor = loaded.get(path)
            if path == self.base.path or predictor is None or not self._export_wanted(predictor):
                continue
            version = Path(path).name
            failed = exports.get(path)
            out[project] = (f"version {version} is served with dygraph: {_export_problem(predictor)}; "
                            + (f"its static export could not be rebuilt: {failed}" if failed
                               else "its static export is being rebuilt"))
        return out

    def live(self, project: str) -> LiveModel:
        """The model that serves ``project`` now.

        ``current``'s version; only if it cannot be read or loaded, the newest promoted
        version that loads (the only case that reads the other versions' ``meta.json``);
        the base model if the project has none.
        """
        problems: list[str] = []
        live = self._first_that_loads(project, self._candidates(project, problems), problems)
        if live is None:
            live = LiveModel(self.base.version, self.base.path, self.predictor(self.base.path))
        self._note_problems(project, problems, live)
        self._note_serving(project, live)
        return live

    def _candidates(self, project: str, problems: list[str]):
        """``current``'s version, then the fallbacks; lazily: the fallback list is built
        only when ``current``'s version is not served. Problems with ``current`` go to
        ``problems``."""
        wanted, problem = self.read_current(project)
        if problem:
            problems.append(problem)
        if wanted:
            yield wanted
        if wanted or problem:   # fall back only where a version was served
            yield from (v for v in self._promoted_newest_first(project) if v != wanted)

    def _first_that_loads(self, project: str, versions, problems: list[str]) -> LiveModel | None:
        """The first of ``versions`` that loads (the rest are not looked at), or None."""
        for version in versions:
            try:
                return self._load_version(project, version)
            except ModelLoadError as exc:
                problems.append(f"version {version} cannot be loaded: {exc}")
        return None

    def _note_problems(self, project, problems, live):
        """Remember (and log once) what is wrong with a project's files."""
        entry = {"errors": problems, "served_version": live.version} if problems else None
        with self._lock:
            changed = self._problems.get(project) != entry
            if entry:
                self._problems[project] = entry
            else:
                self._problems.pop(project, None)
        if changed and entry:
            log.error("project %s: %s; serving %s", project, "; ".join(problems), live.version)
        elif changed:
            log.info("project %s: its versions load again; serving %s", project, live.version)

    def _note_serving(self, project, live):
        with self._lock:
            previous = self._serving.get(project)
            self._serving[project] = live.path
        if previous is not None and previous != live.path:
            self._evict_unused()

    def problems(self) -> dict[str, dict]:
        """Projects whose ``current`` or versions are damaged, or whose version runs on dygraph
        because its static export is (being rebuilt): the errors and what is served."""
        with self._lock:
            out = {p: dict(v, errors=list(v["errors"])) for p, v in self._problems.items()}
            serving = dict(self._serving)
        for project, error in self._engine_problems().items():
            entry = out.setdefault(project, {"errors": [], "served_version": Path(serving[project]).name})
            entry["errors"].append(error)
        return out

    def served_version(self, project: str) -> str:
        """The version that serves ``project``, as far as it is known without loading any
        model (``/versions``, ``/metrics``): ``current``'s version, unless it is known not to
        load or its files are plainly incomplete, else the newest promoted version that is
        not; the base model's if none. ``live`` decides for good when a request comes."""
        wanted, problem = self.read_current(project)
        if wanted and self._may_load(project, wanted):
            return wanted
        if wanted or problem:
            for version in self._promoted_newest_first(project):
                if version != wanted and self._may_load(project, version):
                    return version
        return self.base.version

    def _may_load(self, project: str, version: str) -> bool:
        """No load has failed on the version's files as they are, and a quick look (no
        checksum) finds its ``meta.json``, weights checksum and model files."""
        path = str(self.project_dir(project) / version)
        with self._lock:
            failed = self._failed.get(path)
            serving = path in self._predictors
        if serving:
            return True
        if failed and failed[0] == version_files.signature(path):
            return False
        try:
            meta = version_files.read_meta(path)
        except ModelLoadError:
            return False
        if not meta.get("weights_sha256"):
            return False
        tagger = meta.get("tagger")
        if "tagger" in meta and not tagger and any((Path(path) / n).exists() for n in uie.tagger.FILES):
            return False
        needed = list(uie.checkpoint.MODEL_FILES) + (list(uie.tagger.FILES) if tagger else [])
        return all((Path(path) / name).is_file() for name in needed)

    def versions(self, project: str) -> list[dict]:
        """Every complete version of a project, oldest first (unreadable ones are left out)."""
        pdir = self.project_dir(project)
        children = sorted(pdir.iterdir()) if pdir.is_dir() else []
        out = [meta for child in children if (meta := self._version_meta(project, child))]
        out.sort(key=lambda m: version_files.version_number(m["model_version"]))
        return out

    @staticmethod
    def _version_meta(project: str, child: Path) -> dict | None:
        """The ``meta.json`` of a version directory, with its name; None for anything else."""
        if not (version_files.VERSION_RE.match(child.name) and (child / "meta.json").is_file()):
            return None
        try:
            return dict(version_files.read_meta(child), model_version=child.name)
        except ModelLoadError as exc:
            log.warning("project %s: version %s left out: %s", project, child.name, exc)
            return None

    def labels_without_examples(self, project: str, label_config: str | None) -> dict | None:
        """The labels, relations and Choices options of the project's ``label_config`` that
        the version serving it (``served_version``: no model is loaded) has no training
        example for (``untrained_labels``): a scratch version never predicts them until a
        job trains them. Nothing for a model that answers any prompt (a pretrained UIE, and
        the versions trained from one); everything for the untrained scratch base; None
        where it is not known: no label config, a scratch checkpoint trained elsewhere
        (``UIE_MODEL=/path``), a version made before versions recorded ``trained_labels``."""
        if not label_config:
            return None
        path = self.project_dir(project) / self.served_version(project)
        trained = self._trained_labels(path, self._version_meta(project, path))
        if trained is True:
            return {"labels": [], "relations": [], "choices": {}}
        return untrained_labels(label_config, trained) if isinstance(trained, dict) else None

    def _trained_labels(self, path: Path, meta: dict | None) -> dict | bool | None:
        """What the version in ``path`` (its ``meta``; None: the base model) has training
        examples of (``training_examples.trained_labels``); True: it answers any prompt; None: not known."""
        if meta is None:
            if not uie.checkpoint.is_scratch_model(self.base.path):
                return True
            return None if (Path(self.base.path) / "training_metrics.json").exists() else {}
        kind = meta.get("kind") or ("scratch" if uie.checkpoint.is_scratch_model(path) else "pretrained")
        if kind != "scratch":
            return True
        trained = meta.get("trained_labels")
        return trained if isinstance(trained, dict) else None

    def _promoted_newest_first(self, project: str) -> list[str]:
        """Versions that were served once (not those kept unserved), newest first."""
        return [v["model_version"] for v in reversed(self.versions(project))
                if v.get("promoted", True)]

    def next_version(self, project: str) -> str:
        numbers = [version_files.version_number(v["model_version"]) for v in self.versions(project)]
        pdir = self.project_dir(project)
        if pdir.is_dir():   # count rejected/half-moved names too, never reuse one
            numbers += [int(m.group(1)) for c in pdir.iterdir() if (m := version_files.VERSION_RE.match(c.name))]
        return f"v{max(numbers, default=0) + 1}-{time.strftime('%Y%m%d-%H%M%S')}"

    def promote(self, project: str, checkpoint: Path, meta: dict, make_current=True) -> str:
        """Copy a validated checkpoint in as the project's next version, atomically.

        Its files are synced to disk before it is renamed into place, and
        ``current`` is switched only then; ``meta.json`` records whether it was
        served and the sha256 of its weights.
        """
        pdir = self.project_dir(project)
        pdir.mkdir(parents=True, exist_ok=True)
        version = self.next_version(project)
        version_files.stage_version(pdir / f".tmp-{version}", checkpoint,
                       dict(meta, model_version=version, promoted=make_current))
        files.publish_dir(pdir / f".tmp-{version}", pdir / version)     # synced, then renamed
        if make_current:
            files.atomic_write_text(pdir / "current", version + "\n")
        log.info("project %s: version %s is %s", project, version,
                 "now live" if make_current else "kept but not served")
        self.prune(project)
        return version

    def prune(self, project: str) -> list[str]:
        """Delete all but ``KEEP_VERSIONS`` versions: the current one and the newest others."""
        keep = max(1, self.settings.keep_versions)
        removed = self._beyond_keep(project, keep)
        for version in removed:
            version_files.delete_version(self.project_dir(project), version)
            log.info("project %s: version %s deleted (KEEP_VERSIONS=%d)", project, version, keep)
        return removed

    def _beyond_keep(self, project: str, keep: int) -> list[str]:
        """The versions to delete to keep ``keep``: the current one and the newest others."""
        current = self.current_version(project)
        names = [v["model_version"] for v in self.versions(project)]
        others = [v for v in names if v != current]
        room = keep - 1 if current in names else keep
        return others[: max(0, len(others) - room)]


def _log_scratch_fallback(spec: str, exc: Exception) -> None:
    log.error("=" * 72)
    log.error("UIE_MODEL=%s could not be loaded: %s", spec, exc)
    log.error("SERVING AN UNTRAINED SCRATCH MODEL INSTEAD: it predicts little until trained.")
    log.error("=" * 72)
