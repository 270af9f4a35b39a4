"""The layout's promises: no import cycle among the backend's modules, and the modules an RQ
worker's main process imports load neither Paddle nor the model package's heavy parts."""

from __future__ import annotations

import ast
import subprocess
import sys

from helpers import REPO

PACKAGES = ("uie", "service")


def module_files() -> dict[str, object]:
    """Module name -> file, for the top level and the packages."""
    paths = list(REPO.glob("*.py")) + [p for pkg in PACKAGES for p in (REPO / pkg).glob("*.py")]
    names = {}
    for path in paths:
        parts = path.relative_to(REPO).with_suffix("").parts
        names[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return names


def imports_of(path, known) -> set[str]:
    """The backend's modules that ``path`` imports anywhere (in functions too)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found |= {node.module} | {f"{node.module}.{a.name}" for a in node.names}
    return found & known


def cycle_from(start, graph) -> list[str] | None:
    """A cycle through ``start`` in ``graph`` (depth first), or None."""
    stack = [(start, [start])]
    seen = set()
    while stack:
        node, path = stack.pop()
        for nxt in graph[node]:
            if nxt == start:
                return path + [start]
            if nxt not in seen:
                seen.add(nxt)
                stack.append((nxt, path + [nxt]))
    return None


def test_no_module_imports_itself_through_others():
    files = module_files()
    assert {"uie.predictor", "uie.engine", "service.jobs", "my_ml_backend"} <= files.keys()
    graph = {name: imports_of(path, files.keys()) - {name} for name, path in files.items()}
    assert "uie.checkpoint" in graph["uie.engine"]       # the graph sees real imports
    cycles = [c for name in graph if (c := cycle_from(name, graph))]
    assert not cycles, f"import cycles: {cycles}"


def test_the_worker_side_modules_do_not_load_paddle():
    """An RQ worker's main process forks a work horse per job: it must not have loaded Paddle."""
    code = ("import sys, job_queue, service.jobs, service.job_queue, service.redis_annotation_store, "
            "train_job, settings, files\n"
            "print(sorted(m for m in ('paddle', 'paddlenlp', 'uie.checkpoint') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True,
                         timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"
