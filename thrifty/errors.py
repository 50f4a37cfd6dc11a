"""thrifty's exceptions: one tree, documented here.

    ThriftyError                   base of everything thrifty raises
    ├── ConfigurationError         settings or a config file are wrong (names the file/field)
    │   └── ContractFileError      contract files are invalid (each problem names file:line and field)
    ├── InvalidRequestError        the caller's request is wrong (HTTP 400)
    │   ├── UnknownOptionError     an unknown key in the thrifty options
    │   ├── UnknownContractError   the call names a contract that is not loaded
    │   ├── UnknownModelError      no provider serves that model name (HTTP 404)
    │   └── UnknownProviderError   the ``provider/`` prefix names no provider (HTTP 404)
    ├── AuthenticationError        a missing or unknown key, or a provider key not configured (HTTP 401)
    ├── PermissionDeniedError      the key may not use that model or endpoint (HTTP 403)
    ├── RateLimitError             a thrifty rate limit or budget was hit (HTTP 429)
    ├── UpstreamError              the upstream provider answered with an error (its HTTP status)
    │   ├── UpstreamTimeoutError   the upstream did not answer in time
    │   └── UpstreamConnectionError the upstream could not be reached
    ├── LocalModelError            a local model is missing, corrupt or failed to load (HTTP 503)
    ├── OutputValidationError      no answer met the output contract after re-asks and fallbacks (HTTP 422)
    └── LedgerError                the ledger could not be opened or migrated

Foreign errors (httpx2, SDK, database) are mapped to this tree at the boundary
where they occur, chained with ``raise ... from``. Each class carries the HTTP
status and the OpenAI/Anthropic error ``type`` that codecs use to answer a
client in its own API's error shape, which is how a wrapped SDK client raises
its own exception type (``openai.NotFoundError`` for an unknown model, say).
"""

from __future__ import annotations

import math
from typing import Any


class ThriftyError(Exception):
    status_code: int = 500
    openai_type: str = "server_error"
    anthropic_type: str = "api_error"

    def __init__(self, message: str, *, param: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.param = param


class ConfigurationError(ThriftyError):
    status_code = 500
    openai_type = "server_error"
    anthropic_type = "api_error"


class ContractFileError(ConfigurationError):
    """``problems``: one ``file:line: field: message`` entry per problem found, in file order."""

    def __init__(self, problems: list[Any]) -> None:
        super().__init__("\n".join(str(p) for p in problems))
        self.problems = list(problems)


class InvalidRequestError(ThriftyError):
    status_code = 400
    openai_type = "invalid_request_error"
    anthropic_type = "invalid_request_error"


class UnknownOptionError(InvalidRequestError):
    pass


class UnknownContractError(InvalidRequestError):
    pass


class UnknownModelError(InvalidRequestError):
    status_code = 404
    anthropic_type = "not_found_error"


class UnknownProviderError(UnknownModelError):
    pass


class AuthenticationError(ThriftyError):
    status_code = 401
    openai_type = "authentication_error"
    anthropic_type = "authentication_error"


class PermissionDeniedError(ThriftyError):
    status_code = 403
    openai_type = "permission_error"
    anthropic_type = "permission_error"


class RateLimitError(ThriftyError):
    """``retry_after`` is how many seconds to wait before trying again, when known (``Retry-After``)."""

    status_code = 429
    openai_type = "rate_limit_error"
    anthropic_type = "rate_limit_error"

    def __init__(self, message: str, *, retry_after: float | None = None, param: str | None = None) -> None:
        super().__init__(message, param=param)
        self.retry_after = retry_after

    @property
    def headers(self) -> dict[str, str]:
        """The ``Retry-After`` header to answer with (whole seconds, rounded up), if any."""
        if self.retry_after is None:
            return {}
        return {"retry-after": str(max(1, math.ceil(self.retry_after)))}


class UpstreamError(ThriftyError):
    """The upstream answered with an error; ``body`` is its parsed error body, if any."""

    openai_type = "upstream_error"
    anthropic_type = "api_error"

    def __init__(
        self,
        message: str,
        *,
        status_code: int = 502,
        body: Any = None,
        headers: dict[str, str] | None = None,
        param: str | None = None,
    ) -> None:
        super().__init__(message, param=param)
        self.status_code = status_code
        self.body = body
        self.headers = headers or {}


class UpstreamTimeoutError(UpstreamError):
    def __init__(self, message: str) -> None:
        super().__init__(message, status_code=504)


class UpstreamConnectionError(UpstreamError):
    def __init__(self, message: str) -> None:
        super().__init__(message, status_code=502)


class LocalModelError(ThriftyError):
    status_code = 503
    openai_type = "server_error"
    anthropic_type = "overloaded_error"


class OutputValidationError(ThriftyError):
    """No answer met the call's output contract (JSON schema, checks), re-asks and fallback models included.

    422, not a 5xx: the SDKs retry 5xx answers on their own, which would run the
    whole contingency (and its cost) again. ``errors``: what was wrong with the
    last answer; ``attempts``: how many upstream attempts were made.
    """

    status_code = 422
    openai_type = "output_validation_error"
    anthropic_type = "invalid_request_error"

    def __init__(self, message: str, *, errors: list[str] | None = None, attempts: int = 0,
                 param: str | None = None) -> None:
        super().__init__(message, param=param)
        self.errors = list(errors or [])
        self.attempts = attempts


class LedgerError(ThriftyError):
    pass
