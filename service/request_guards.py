"""What every request passes through around its view: an id, basic auth, a JSON-only body
within its size and depth limits, the JSON answer format, and the error handlers.

``install(app)`` registers them all (``_wsgi.create_app``). The views read their body
with ``json_body`` and the app's process-wide parts with ``parts``. Bad input is
answered 4xx with ``{"error": ...}``; an unexpected error 500 with a request id only
(the details go to the log).
"""

from __future__ import annotations

import base64
import binascii
import hmac
import json
import logging
import re
import time
import uuid

from flask import Flask, current_app, g, has_request_context, jsonify, request
from flask.json.provider import DefaultJSONProvider
from werkzeug.exceptions import BadRequest, HTTPException, RequestEntityTooLarge, UnsupportedMediaType

import service.metrics
from label_config import LabelConfigError
from settings import Settings

log = logging.getLogger("uie-backend")

OPEN_PATHS = ("/", "/health")     # answered without basic auth (Label Studio's health check)
MAX_JSON_DEPTH = 100               # Label Studio's requests nest about 8 levels deep
_SURROGATE = re.compile("[\ud800-\udfff]")


def install(app: Flask):
    """The answer format, the hooks (in this order: id, auth, content type) and the error handlers."""
    app.json = JSONProvider(app)
    app.before_request(start_request)
    app.before_request(check_auth)
    app.before_request(require_json)
    app.after_request(add_request_id)
    app.after_request(count_request)
    app.register_error_handler(HTTPException, http_error)
    app.register_error_handler(LabelConfigError, config_error)
    app.register_error_handler(Exception, unexpected_error)


def parts() -> dict:
    """The app's process-wide parts: store, annotations, jobs, settings (``create_app``)."""
    return current_app.extensions["uie"]


class JSONProvider(DefaultJSONProvider):
    """UTF-8 JSON answers in the given key order.

    A string holding a lone surrogate (which JSON input may carry as
    ``"\\ud800"`` but UTF-8 cannot) makes the whole answer ASCII-escaped
    instead of failing to encode.
    """

    ensure_ascii = False
    sort_keys = False

    def dumps(self, obj, **kwargs) -> str:
        text = super().dumps(obj, **kwargs)
        if _SURROGATE.search(text):
            text = super().dumps(obj, **dict(kwargs, ensure_ascii=True))
        return text


# -- the body --------------------------------------------------------------------
def json_body() -> dict:
    """The request body as a JSON object (400 otherwise; 413 past ``MAX_REQUEST_MB``)."""
    try:
        data = _body_bytes()
    except RequestEntityTooLarge:
        raise RequestEntityTooLarge(f"the request body is larger than MAX_REQUEST_MB="
                                    f"{parts()['settings'].max_request_mb} MB") from None
    try:
        body = json.loads(data)
    except RecursionError:
        raise BadRequest(f"request body is nested more than {MAX_JSON_DEPTH} levels deep") from None
    except ValueError:          # also bytes that are not UTF-8
        raise BadRequest("request body is not valid JSON") from None
    if not isinstance(body, dict):
        raise BadRequest("request body must be a JSON object")
    _check_depth(body)
    return body


def _body_bytes() -> bytes:
    """The whole request body; ``RequestEntityTooLarge`` past ``MAX_CONTENT_LENGTH``.

    A body with a ``Content-Length`` over the limit is refused by werkzeug unread. A
    chunked one (no ``Content-Length``) werkzeug reads up to the limit and stops there
    without a word, as if the body ended: whatever came after would be cut off and the
    prefix served. So one more byte is asked of the server's own stream; there is one
    when the body is longer than the limit.
    """
    data = request.get_data(cache=True)
    limit = current_app.config["MAX_CONTENT_LENGTH"]
    if request.content_length is None and limit is not None and len(data) >= limit:
        stream = request.environ.get("wsgi.input")
        if stream is not None and stream.read(1):
            raise RequestEntityTooLarge()
    return data


def _check_depth(value, limit=MAX_JSON_DEPTH):
    """400 when ``value`` nests lists/objects deeper than ``limit`` (no recursion)."""
    stack = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        if depth > limit:
            raise BadRequest(f"request body is nested more than {limit} levels deep")
        children = item.values() if isinstance(item, dict) else item
        stack.extend((child, depth + 1) for child in children if isinstance(child, (dict, list)))


def require_json():
    """415 for a body that is not declared ``application/json``.

    A web page can post ``text/plain`` or a form to any address without asking;
    ``application/json`` needs a CORS preflight, which this server never grants.
    """
    has_body = request.content_length or request.headers.get("Transfer-Encoding")
    if has_body and request.mimetype != "application/json":
        raise UnsupportedMediaType("the request body must be JSON sent with "
                                   "'Content-Type: application/json'")


# -- request ids and counts --------------------------------------------------------
def start_request():
    """Give every request an id: in the ``X-Request-Id`` answer header and the error log."""
    g.request_started = time.perf_counter()
    g.request_id = uuid.uuid4().hex[:16]


def count_request(response):
    """Count the request and its latency by route and status (``GET /metrics``)."""
    started = g.get("request_started")
    if started is not None:
        rule = request.url_rule.rule if request.url_rule is not None else "other"
        service.metrics.observe_request(rule, request.method, response.status_code,
                                       time.perf_counter() - started)
    return response


def add_request_id(response):
    response.headers["X-Request-Id"] = _request_id()
    return response


def _request_id() -> str:
    return g.get("request_id") or "-"


# -- basic auth ------------------------------------------------------------------
def check_auth():
    """401 unless the request carries ``BASIC_AUTH_USER``/``BASIC_AUTH_PASS`` (when set)."""
    settings = parts()["settings"]
    if not settings.basic_auth_user or request.path in OPEN_PATHS:
        return None
    if credentials_match(request.authorization, settings):
        return None
    response = jsonify(error="authentication required")
    response.status_code = 401
    response.headers["WWW-Authenticate"] = 'Basic realm="uie-backend", charset="UTF-8"'
    return response


def credentials_match(auth, settings: Settings) -> bool:
    """Whether the request's basic credentials are ``BASIC_AUTH_USER``/``BASIC_AUTH_PASS``.

    ``auth`` is the ``Authorization`` header as a string; anything else (werkzeug's
    ``request.authorization``, None) means the current request's header. The decoded
    bytes are compared, in constant time, with both the UTF-8 and the Latin-1 bytes
    of the configured pair: RFC 7617 clients send UTF-8, requests' ``HTTPBasicAuth``
    (what Label Studio uses) Latin-1. werkzeug's own parsing drops the latter.
    """
    if not isinstance(auth, str):
        auth = request.headers.get("Authorization") if has_request_context() else None
    sent = _basic_credentials(auth)
    if sent is None:
        return False
    user_ok = _bytes_match(sent[0], settings.basic_auth_user)
    password_ok = _bytes_match(sent[1], settings.basic_auth_pass)
    return user_ok and password_ok


def _basic_credentials(header: str | None) -> tuple[bytes, bytes] | None:
    """``(user, password)`` bytes of a ``Basic`` ``Authorization`` header, or None."""
    scheme, _, token = (header or "").strip().partition(" ")
    if scheme.lower() != "basic":
        return None
    try:
        decoded = base64.b64decode(token.strip().encode("ascii"), validate=True)
    except (UnicodeEncodeError, binascii.Error):
        return None
    user, colon, password = decoded.partition(b":")
    return (user, password) if colon else None


def _bytes_match(sent: bytes, expected: str) -> bool:
    """``sent`` is ``expected`` as UTF-8 or as Latin-1; every encoding compared in constant
    time (``compare_digest`` refuses non-ASCII ``str``)."""
    match = False
    for encoded in _encodings(expected):
        match |= hmac.compare_digest(sent, encoded)
    return match


def _encodings(text: str) -> list[bytes]:
    """``text`` as UTF-8 and, when it can be, as Latin-1."""
    out = [text.encode("utf-8", "surrogatepass")]
    try:
        out.append(text.encode("latin-1"))
    except UnicodeEncodeError:
        pass
    return out


# -- errors ----------------------------------------------------------------------
def http_error(exc: HTTPException):
    return jsonify(error=exc.description), exc.code


def config_error(exc: LabelConfigError):
    return jsonify(error=str(exc)), 422


def unexpected_error(exc: Exception):
    """500 with a request id only; the exception and its traceback go to the log."""
    request_id = _request_id()
    log.exception("request %s: unexpected error on %s %s", request_id, request.method, request.path)
    return jsonify(error=f"internal error; the server log has the details under request id "
                         f"{request_id}", request_id=request_id), 500
