"""Label Studio's project references, and the directory names they become.

``/setup`` and ``/predict`` name a project ``"<id>.<created timestamp>"``,
webhooks send ``{"id": <id>, ...}``; both mean project ``"<id>"``, which is
also its directory under ``MODEL_DIR``. Nothing else is ever a project name,
so no request can name a path.
"""

from __future__ import annotations

import re

PROJECT_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]{0,63}$")
DEFAULT = "default"     # requests that name no project


def project_key(raw) -> str:
    """Label Studio's project reference as a project name; ``ValueError`` if it is none."""
    if isinstance(raw, dict):
        raw = raw.get("id")
    if raw is None or raw == "":
        return DEFAULT
    key = str(raw).split(".", 1)[0].strip()
    if not PROJECT_RE.match(key):
        raise ValueError(f"project {raw!r} is not a Label Studio project id")
    return key


def is_project_name(name: str) -> bool:
    return bool(PROJECT_RE.match(name))
