"""A tool installed with pip into a virtualenv of its own (Label Studio, label-studio-ml).

Such tools pin packages that clash with the backend's, so each gets its own
venv next to the checkout, made from the base interpreter. It is reused when
it already reports the wanted version; two test runs never install at once
(an ``flock`` next to the venv).
"""

from __future__ import annotations

import fcntl
import subprocess
import sys
import time
from pathlib import Path


class InstallError(RuntimeError):
    """The tool could not be installed; the message holds the tail of pip's log."""


def tail(path: Path, chars=4000) -> str:
    try:
        return Path(path).read_text(encoding="utf-8", errors="replace")[-chars:]
    except OSError:
        return "(no log)"


def installed_version(venv: Path, package: str, command: str, check_import: str = "") -> str | None:
    """``package``'s version in ``venv`` if ``venv/bin/command`` exists (and ``check_import`` imports)."""
    python = venv / "bin" / "python"
    if not (venv / "bin" / command).exists() or not python.exists():
        return None
    code = f"import importlib.metadata as m; print(m.version({package!r}))"
    if check_import:
        code += f"; import {check_import}"
    proc = subprocess.run([str(python), "-c", code], capture_output=True, text=True, timeout=120)
    return proc.stdout.strip() if proc.returncode == 0 else None


def _run(cmd, out, timeout, pip_log):
    out.write(f"$ {' '.join(cmd)}\n")
    out.flush()
    started = time.time()
    try:
        proc = subprocess.run(cmd, stdout=out, stderr=subprocess.STDOUT, timeout=timeout)
    except subprocess.TimeoutExpired:
        raise InstallError(f"{' '.join(cmd)} took more than {timeout:.0f}s; log: {pip_log}") from None
    out.write(f"\n(took {time.time() - started:.0f}s)\n")
    out.flush()
    if proc.returncode != 0:
        raise InstallError(f"{' '.join(cmd)} failed (exit {proc.returncode}); last lines:\n"
                           f"{tail(pip_log)}\nfull log: {pip_log}")


def ensure_tool(venv: Path, package: str, version: str, command: str, requirements=(),
                log_dir: Path | None = None, check_import: str = "", timeout: float = 1800) -> Path:
    """``venv/bin/command`` of ``package==version`` (plus ``requirements``), installed when missing."""
    venv = Path(venv)
    log_dir = Path(log_dir or venv.parent / "test-artifacts")
    log_dir.mkdir(parents=True, exist_ok=True)
    with open(venv.parent / f".{venv.name}.install-lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if installed_version(venv, package, command, check_import) == version:
            return venv / "bin" / command
        pip_log = log_dir / f"{package}-pip.log"
        base = Path(getattr(sys, "_base_executable", sys.executable))   # not the backend's venv
        with open(pip_log, "w", encoding="utf-8") as out:
            _run([str(base), "-m", "venv", "--clear", str(venv)], out, 300, pip_log)
            _run([str(venv / "bin" / "python"), "-m", "pip", "install", "--disable-pip-version-check",
                  f"{package}=={version}", *requirements], out, timeout, pip_log)
        found = installed_version(venv, package, command, check_import)
        if found != version:
            raise InstallError(f"after pip install, {venv / 'bin' / command} is missing or reports "
                               f"{package} {found!r}, not {version}; log: {pip_log}")
        return venv / "bin" / command
