"""What a job reads from Label Studio itself (``LABEL_STUDIO_URL`` and ``LABEL_STUDIO_API_KEY``).

Through label-studio-sdk, with a legacy token or a personal access token:

* ``export_annotated_tasks``: the project's annotated tasks, as its JSON export
  holds them (what the job trains on);
* ``unannotated_texts``: the texts of the project's tasks that have no annotation
  yet, for a small scratch project's job, which learns LAC's names on them
  (``train_job.teach``). A new project's tasks reach ``/predict`` only as
  annotators open them, so without this the job would see few such texts.
"""

from __future__ import annotations

import json

from convert import TaskTextError, task_text
from train_job import JobError

PAGE_SIZE = 500             # tasks per page of Label Studio's task list
SCANNED_PER_TEXT = 5        # read at most this many tasks per text asked for


def _client(url: str, api_key: str, project: str):
    from label_studio_sdk import LabelStudio

    if not project.isdigit():
        raise JobError(f"project {project!r} is not a Label Studio project id")
    return LabelStudio(base_url=url, api_key=api_key)


def export_annotated_tasks(url: str, api_key: str, project: str) -> list[dict]:
    """All annotated tasks of ``project`` (Label Studio's JSON export); ``JobError`` if
    they cannot be read."""
    client = _client(url, api_key, project)
    try:
        raw = b"".join(client.projects.exports.download_sync(id=int(project), export_type="JSON"))
    except Exception as exc:
        raise JobError(f"could not export project {project} from {url}: {exc}") from None
    tasks = json.loads(raw)
    if not isinstance(tasks, list):
        raise JobError(f"Label Studio's export of project {project} is not a task list")
    return tasks


def unannotated_texts(url: str, api_key: str, project: str, data_key: str, limit: int) -> list[str]:
    """Up to ``limit`` distinct texts (``data[data_key]``, as training reads a task's text) of
    ``project``'s tasks with no annotation, in Label Studio's task order; at most
    ``SCANNED_PER_TEXT * limit`` tasks are read. ``JobError`` if the list cannot be read."""
    client = _client(url, api_key, project)
    texts, scanned = {}, 0
    try:
        for task in client.tasks.list(project=int(project), page_size=PAGE_SIZE):
            scanned += 1
            text = _unannotated_text(task, data_key)
            if text is not None:
                texts.setdefault(text, None)
            if len(texts) >= limit or scanned >= SCANNED_PER_TEXT * limit:
                break
    except Exception as exc:
        raise JobError(f"could not list the tasks of project {project} at {url}: {exc}") from None
    return list(texts)


def _unannotated_text(task, data_key: str) -> str | None:
    """The text of one listed task (an SDK object) if it has no annotation, else None."""
    if getattr(task, "total_annotations", None) != 0:
        return None
    try:
        text = task_text({"data": getattr(task, "data", None)}, data_key)
    except TaskTextError:
        return None
    return text if text.strip() else None
