"""``POST /webhook``: Label Studio's annotation and training events.

An event is checked first (400 for a bad one, before anything is kept), then applied:
the label config it carries is kept, and its action's handler stores or deletes
annotations (which may start a job every ``TRAIN_EVERY_N`` of them), keeps the texts of
created tasks, forgets deleted tasks (their annotations too), or starts training.
In the scale-out mode, while Redis is unreachable (or older events wait in the spool),
the event is kept durably under ``MODEL_DIR/_spool`` and answered 200 ``"status":
"spooled"``: Label Studio never sends a webhook twice. ``replay_webhook`` applies a
spooled one later (``service/webhook_spool.py``'s replayer).
"""

from __future__ import annotations

import logging

from flask import Blueprint, Flask, jsonify
from werkzeug.exceptions import BadRequest

from label_config import LabelConfigError
from service.api import backend_for, keep_label_config, project_of
from service.request_guards import json_body, parts

log = logging.getLogger("uie-backend")
webhooks = Blueprint("uie_webhooks", __name__)


@webhooks.post("/webhook")
def webhook():
    """Apply a webhook, or spool it while Redis is down (scale-out mode)."""
    body = json_body()
    action = body.get("action")
    if not isinstance(action, str):
        raise BadRequest("'action' is missing")
    project = project_of(body.get("project"))
    check = WEBHOOK_CHECKS.get(action)
    if check is not None:
        check(action, body)         # 400 for a bad event, before anything is kept
    spool = parts().get("spool")
    if spool is None:
        return jsonify(_apply_webhook(body))
    spool.start()               # its replayer also adopts the spools of processes that died
    if not spool.should_spool():
        try:
            answer = _apply_webhook(body)
            spool.breaker.succeeded()
            return jsonify(answer)
        except spool.down_errors as exc:
            spool.breaker.failed()
            log.warning("project %s: Redis unreachable, %s webhook spooled: %s", project, action, exc)
    waiting = spool.add(body)
    return jsonify(status="spooled", action=action, project=project, waiting=waiting)


def replay_webhook(app: Flask, body: dict):
    """Apply a spooled webhook (``WebhookSpool``'s replayer thread)."""
    with app.app_context():
        _apply_webhook(body)


def _apply_webhook(body: dict) -> dict:
    """What a webhook changes (checked already): its label config, then its action's handler."""
    action = body["action"]
    project = project_of(body.get("project"))
    answer = {"status": "ok", "action": action, "project": project}
    warning = _webhook_label_config(project, body.get("project"))
    if warning:
        answer["warning"] = warning
    handler = WEBHOOK_HANDLERS.get(action)
    if handler is None:
        answer["status"] = "ignored"
    else:
        answer["job"] = handler(project, action, body)
    return answer


def _webhook_label_config(project: str, project_obj) -> str | None:
    """Keep the label config a webhook carries; a warning (not an error) if it cannot be kept."""
    config = project_obj.get("label_config") if isinstance(project_obj, dict) else None
    if not isinstance(config, str):
        return None
    try:
        keep_label_config(project, config)
    except LabelConfigError as exc:
        log.warning("project %s: webhook label config not kept: %s", project, exc)
        return f"label config not kept: {exc}"
    return None


# -- the checks and handlers of each action ------------------------------------------
def _check_annotation_changed(action: str, body: dict):
    annotation, task = body.get("annotation"), body.get("task")
    if not isinstance(annotation, dict) or not isinstance(task, dict):
        raise BadRequest(f"{action} needs 'annotation' and 'task' objects")
    annotation_id = annotation.get("id")
    if isinstance(annotation_id, bool) or not isinstance(annotation_id, (int, str)) \
            or annotation_id == "":
        raise BadRequest(f"{action} needs 'annotation.id' (a number or a string)")


def _check_annotations_deleted(action: str, body: dict):
    if not isinstance(body.get("annotations"), list):
        raise BadRequest(f"{action} needs an 'annotations' list")


def _annotation_changed(project: str, action: str, body: dict):
    _check_annotation_changed(action, body)
    ext = parts()
    stored = ext["annotations"].upsert(project, body["task"], body["annotation"])
    if stored is False:         # an older copy than the one kept, or a deleted annotation
        return None
    return ext["jobs"].annotation_changed(project, 1)


def _annotations_deleted(project: str, action: str, body: dict):
    _check_annotations_deleted(action, body)
    ids = [a.get("id") for a in body["annotations"] if isinstance(a, dict)]
    ext = parts()
    ext["annotations"].delete(project, ids)
    return ext["jobs"].annotation_changed(project, len(ids))


def _check_tasks_list(action: str, body: dict):
    if not isinstance(body.get("tasks"), list):
        raise BadRequest(f"{action} needs a 'tasks' list")


def _tasks_created(project: str, action: str, body: dict):
    """Keep the new tasks' texts (``UIEBackend.text_of``): a small scratch project's job learns
    LAC's names on those nobody annotated (``train_job.teach``)."""
    _check_tasks_list(action, body)
    model = backend_for(project)
    texts = [(task.get("id"), text) for task in body["tasks"]
             if isinstance(task, dict) and (text := model.text_of(task)) is not None]
    parts()["annotations"].remember_texts(project, texts)
    return None


def _tasks_deleted(project: str, action: str, body: dict):
    """Forget the deleted tasks: Label Studio sends no ANNOTATIONS_DELETED for their annotations,
    and a job must not train on them."""
    _check_tasks_list(action, body)
    ids = [task.get("id") for task in body["tasks"] if isinstance(task, dict)]
    ext = parts()
    deleted = ext["annotations"].delete_tasks(project, ids)
    return ext["jobs"].annotation_changed(project, deleted)


def _start_training(project: str, action: str, body: dict):
    return backend_for(project).fit(action)


WEBHOOK_HANDLERS = {"ANNOTATION_CREATED": _annotation_changed,
                    "ANNOTATION_UPDATED": _annotation_changed,
                    "ANNOTATIONS_DELETED": _annotations_deleted,
                    "TASKS_CREATED": _tasks_created,
                    "TASKS_DELETED": _tasks_deleted,
                    "START_TRAINING": _start_training}
WEBHOOK_CHECKS = {"ANNOTATION_CREATED": _check_annotation_changed,
                  "ANNOTATION_UPDATED": _check_annotation_changed,
                  "ANNOTATIONS_DELETED": _check_annotations_deleted,
                  "TASKS_CREATED": _check_tasks_list,
                  "TASKS_DELETED": _check_tasks_list}
