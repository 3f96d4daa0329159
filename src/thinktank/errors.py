"""One error hierarchy.

``ThinktankError`` carries the HTTP status, the OpenAI error ``type`` and ``code`` a client sees.
Client and configuration mistakes derive from :class:`ClientError` / :class:`ConfigError`;
failures of an upstream derive from :class:`ProviderError` and say whether a retry may help.
Messages never contain secrets: provider errors scrub the deployment's key before they are built.
"""

from __future__ import annotations

import math
from typing import Any

__all__ = [
    "DEFAULT_RETRY_AFTER",
    "AuthenticationError",
    "ClientError",
    "ConfigError",
    "ConflictError",
    "ContextWindowExceededError",
    "DeadlineExceededError",
    "InvalidRequestError",
    "ModelNotFoundError",
    "NotFoundError",
    "PayloadTooLargeError",
    "PermissionDeniedError",
    "ProviderError",
    "RateLimitError",
    "RunFailedError",
    "ServiceUnavailableError",
    "ThinktankError",
    "UnprocessableError",
    "UnsupportedMediaTypeError",
    "UpstreamAuthError",
    "UpstreamBadRequestError",
    "UpstreamBadResponseError",
    "UpstreamConnectionError",
    "UpstreamRateLimitError",
    "UpstreamServerError",
    "UpstreamTimeoutError",
    "retry_after_header",
]


#: Seconds a client is told to wait after a 429 when nobody said how long (the upstream sent no
#: Retry-After): long enough not to hammer, short enough not to stall a client needlessly.
DEFAULT_RETRY_AFTER = 1.0


def retry_after_header(seconds: float | None) -> str:
    """``Retry-After`` in whole seconds, rounded up and at least 1 (:data:`DEFAULT_RETRY_AFTER` if unknown)."""
    wait = DEFAULT_RETRY_AFTER if seconds is None else seconds
    return str(max(1, math.ceil(wait)))


class ThinktankError(Exception):
    status: int = 500
    type: str = "server_error"
    code: str | None = None
    #: Seconds after which trying again may succeed, when known.
    retry_after: float | None = None

    def __init__(self, message: str, *, param: str | None = None, code: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.param = param
        if code is not None:
            self.code = code

    def to_body(self) -> dict[str, Any]:
        """The OpenAI error shape."""
        return {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code}}

    def headers(self) -> dict[str, str]:
        """Headers the error response carries: every 429 says when to try again (``Retry-After``)."""
        if self.status == 429:
            return {"Retry-After": retry_after_header(self.retry_after)}
        return {}


class ConfigError(ThinktankError):
    """The configuration is wrong; the message names the file, the entry and the field."""

    status = 500
    type = "config_error"


class ClientError(ThinktankError):
    status = 400
    type = "invalid_request_error"


class InvalidRequestError(ClientError):
    pass


class AuthenticationError(ClientError):
    status = 401
    type = "authentication_error"
    code = "invalid_api_key"


class PermissionDeniedError(ClientError):
    status = 403
    type = "permission_error"


class ModelNotFoundError(ClientError):
    status = 404
    code = "model_not_found"


class NotFoundError(ClientError):
    """A stored object that does not exist, or that the caller may not see (never 'forbidden')."""

    status = 404
    code = "not_found"


class ConflictError(ClientError):
    status = 409
    code = "conflict"


class PayloadTooLargeError(ClientError):
    status = 413
    code = "payload_too_large"


class UnsupportedMediaTypeError(ClientError):
    status = 415
    code = "unsupported_media_type"


class UnprocessableError(ClientError):
    """Well-formed, but nothing can be made of it (a PDF without a text layer, say)."""

    status = 422
    code = "unprocessable"


class RateLimitError(ClientError):
    status = 429
    type = "rate_limit_error"
    retry_after: float

    def __init__(self, message: str, *, retry_after: float, code: str | None = None) -> None:
        super().__init__(message, code=code)
        self.retry_after = retry_after


class ServiceUnavailableError(ThinktankError):
    """503: a dependency of the server itself (the database, Redis) cannot be reached; trying again after
    ``Retry-After`` seconds may succeed. ``dependency`` names it (``database``, ``redis``)."""

    status = 503
    type = "service_unavailable"
    code = "service_unavailable"

    def __init__(self, message: str, *, code: str | None = None, retry_after: float = DEFAULT_RETRY_AFTER,
                 dependency: str | None = None) -> None:
        super().__init__(message, code=code)
        self.retry_after = retry_after
        self.dependency = dependency

    def headers(self) -> dict[str, str]:
        return {"Retry-After": retry_after_header(self.retry_after)}


class ProviderError(ThinktankError):
    """An upstream call failed. ``retryable`` says whether the router may try again."""

    status = 502
    type = "upstream_error"
    retryable = False
    #: Whether another deployment (a fallback) might succeed where this one failed.
    fallback_ok = True

    def __init__(
        self,
        message: str,
        *,
        deployment: str | None = None,
        upstream_status: int | None = None,
        retry_after: float | None = None,
        code: str | None = None,
    ) -> None:
        super().__init__(message, code=code)
        self.deployment = deployment
        self.upstream_status = upstream_status
        self.retry_after = retry_after


class UpstreamRateLimitError(ProviderError):
    status = 429
    type = "rate_limit_error"
    retryable = True


class UpstreamServerError(ProviderError):
    retryable = True


class UpstreamConnectionError(ProviderError):
    retryable = True


class UpstreamTimeoutError(ProviderError):
    status = 504
    type = "timeout_error"
    retryable = True


class UpstreamBadResponseError(ProviderError):
    """The upstream answered something that is not its wire format."""


class UpstreamAuthError(ProviderError):
    """The upstream refused thinktank's credentials: a configuration problem, not the client's."""


class UpstreamBadRequestError(ProviderError):
    """The upstream rejected the request itself; another deployment would too."""

    status = 400
    type = "invalid_request_error"
    fallback_ok = False


class ContextWindowExceededError(ProviderError):
    status = 400
    type = "invalid_request_error"
    code = "context_length_exceeded"
    fallback_ok = False


class DeadlineExceededError(ProviderError):
    status = 504
    type = "timeout_error"
    code = "deadline_exceeded"


class RunFailedError(ThinktankError):
    """An ensemble or debate could not produce an answer (e.g. every member failed); the run is kept."""

    status = 502
    type = "upstream_error"
    code = "run_failed"
