"""The one error hierarchy of Tollgate and the one handler that turns every exception into
OpenAI's error shape (SPEC 3): `{"error": {"message", "type", "param", "code"}}`.

Every failure a client can see goes through `error_response`, so the status, `type` and `code`
of each case live in exactly one place, and a 500 never shows a traceback.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

from litestar import Request, Response
from litestar.exceptions import (
    ClientException,
    HTTPException,
    MethodNotAllowedException,
    NotFoundException,
    ValidationException,
)
from litestar.exceptions.http_exceptions import RequestEntityTooLarge

from app.middleware import request_id as get_request_id

logger = logging.getLogger("app.errors")


class TollgateError(Exception):
    status_code: int = 500
    type: str = "server_error"
    code: str = "internal_error"

    def __init__(
        self,
        message: str,
        *,
        param: str | None = None,
        code: str | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.param = param
        if code is not None:
            self.code = code
        self.headers: dict[str, str] = dict(headers or {})

    def body(self) -> dict[str, dict[str, str | None]]:
        return {
            "error": {
                "message": self.message,
                "type": self.type,
                "param": self.param,
                "code": self.code,
            }
        }


class InvalidRequest(TollgateError):
    status_code = 400
    type = "invalid_request_error"
    code = "invalid_request"


class InvalidJson(InvalidRequest):
    """A body that is not JSON at all (OpenAI's words), or nested deeper than a parser's stack
    (`RecursionError` while decoding or re-encoding it): no real request nests that deep."""

    code = "invalid_json"

    def __init__(self, *, too_deep: bool = False) -> None:
        super().__init__(
            "The JSON body of your request is nested too deeply."
            if too_deep
            else "We could not parse the JSON body of your request. The body must be valid JSON."
        )


class InvalidApiKey(TollgateError):
    status_code = 401
    type = "invalid_request_error"
    code = "invalid_api_key"


class InsufficientQuota(TollgateError):
    status_code = 402
    type = "insufficient_quota"
    code = "insufficient_quota"

    def __init__(self, message: str, **kwargs: object) -> None:
        super().__init__(message, **kwargs)  # type: ignore[arg-type]
        # OpenAI's SDKs retry 4xx/5xx unless told not to; retrying cannot create credit.
        self.headers.setdefault("x-should-retry", "false")


class SpendLimitExceeded(InsufficientQuota):
    """A key's or an end user's spend limit does not cover the hold (SPEC 3.6)."""

    def __init__(self, message: str, *, code: str, retry_after: int | None) -> None:
        super().__init__(message, code=code)
        if retry_after is not None:
            self.headers["retry-after"] = str(retry_after)


class PermissionDenied(TollgateError):
    status_code = 403
    type = "permission_error"
    code = "permission_denied"


class ModelNotAllowed(PermissionDenied):
    code = "model_not_allowed"


class AccountSuspended(PermissionDenied):
    code = "account_suspended"


class NotFound(TollgateError):
    status_code = 404
    type = "invalid_request_error"
    code = "not_found"


class ModelNotFound(NotFound):
    code = "model_not_found"


class MethodNotAllowed(TollgateError):
    status_code = 405
    type = "invalid_request_error"
    code = "method_not_allowed"


class Conflict(TollgateError):
    status_code = 409
    type = "invalid_request_error"
    code = "conflict"


class RequestTooLarge(TollgateError):
    status_code = 413
    type = "invalid_request_error"
    code = "request_too_large"


class ClientDisconnected(TollgateError):
    """The client left before its request was read: nobody sees the answer (nginx's 499)."""

    status_code = 499
    type = "invalid_request_error"
    code = "client_disconnected"


class RateLimitExceeded(TollgateError):
    status_code = 429
    type = "rate_limit_exceeded"
    code = "rate_limit_exceeded"


class UpstreamUnavailable(TollgateError):
    status_code = 502
    type = "upstream_error"
    code = "upstream_unavailable"


class ServiceUnavailable(TollgateError):
    status_code = 503
    type = "server_error"
    code = "service_unavailable"


class UpstreamTimeout(TollgateError):
    status_code = 504
    type = "upstream_error"
    code = "upstream_timeout"


def _from_validation(exc: ValidationException) -> TollgateError:
    """Litestar's body/parameter validation → 400 naming the field where it can."""
    extra = exc.extra if isinstance(exc.extra, list) else []
    detail: dict[str, Any] = extra[0] if extra and isinstance(extra[0], dict) else {}
    message = str(detail.get("message") or exc.detail)
    key = detail.get("key")
    param = key.removeprefix("$.") if isinstance(key, str) and key else None
    lowered = message.lower()
    if "object missing required field" in lowered:
        field = message.rsplit("`", 2)[-2] if message.count("`") >= 2 else param
        return InvalidRequest(f"Missing required field: {field}", param=field, code="missing_field")
    if "unknown field" in lowered:
        field = message.rsplit("`", 2)[-2] if message.count("`") >= 2 else param
        return InvalidRequest(
            f"Unrecognized request field: {field}", param=field, code="unknown_field"
        )
    return InvalidRequest(
        f"Invalid request: {message}" + (f" (at {param})" if param else ""),
        param=param,
        code="invalid_type",
    )


def _is_json_decode_error(detail: str) -> bool:
    # msgspec's decoder messages, surfaced by Litestar as a plain 400 ClientException.
    lowered = detail.lower()
    return any(
        m in lowered for m in ("json is malformed", "input data was truncated", "invalid json")
    )


def to_tollgate_error(request: Request[Any, Any, Any], exc: Exception) -> TollgateError:
    if isinstance(exc, TollgateError):
        return exc
    if isinstance(exc, ValidationException):
        return _from_validation(exc)
    if isinstance(exc, NotFoundException):
        return NotFound(f"Invalid URL ({request.method} {request.url.path})", code="unknown_url")
    if isinstance(exc, MethodNotAllowedException):
        return MethodNotAllowed(
            f"Method {request.method} is not allowed on {request.url.path}",
            headers=exc.headers,
        )
    if isinstance(exc, RequestEntityTooLarge):
        return RequestTooLarge("The request body is larger than this gateway accepts.")
    if isinstance(exc, ClientException) and _is_json_decode_error(str(exc.detail)):
        return InvalidJson()
    if isinstance(exc, HTTPException) and exc.status_code < 500:
        error = InvalidRequest(str(exc.detail), headers=exc.headers, code="invalid_request")
        error.status_code = exc.status_code
        return error
    request_id = get_request_id(request.scope)
    logger.exception(
        "unhandled error in %s %s (request %s)", request.method, request.url.path, request_id
    )
    return TollgateError(
        "The server had an error while processing your request. "
        f"Contact support with the request id {request_id} if it persists."
    )


def error_response(request: Request[Any, Any, Any], exc: Exception) -> Response[Any]:
    error = to_tollgate_error(request, exc)
    return Response(content=error.body(), status_code=error.status_code, headers=error.headers)
