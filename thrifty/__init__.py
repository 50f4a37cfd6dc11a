"""thrifty: middleware that makes LLM calls cheaper and more reliable, and accounts for every token.

    import thrifty, openai
    client = thrifty.wrap(openai.OpenAI())
    client.chat.completions.create(model="local/smollm2-135m", messages=[...])
"""

from thrifty.compressors.base import CompressResult, compress
from thrifty.contracts.contract import Contract
from thrifty.errors import (
    AuthenticationError,
    ConfigurationError,
    InvalidRequestError,
    LedgerError,
    LocalModelError,
    OutputValidationError,
    PermissionDeniedError,
    RateLimitError,
    ThriftyError,
    UnknownContractError,
    UnknownModelError,
    UnknownOptionError,
    UnknownProviderError,
    UpstreamConnectionError,
    UpstreamError,
    UpstreamTimeoutError,
)
from thrifty.middleware.context import CallContext, ThriftyOptions
from thrifty.middleware.engine import Engine
from thrifty.middleware.pipeline import Pipeline, Stage
from thrifty.middleware.wrappers import wrap
from thrifty.settings import ProviderConfig, Settings

__all__ = [
    "AuthenticationError",
    "CallContext",
    "CompressResult",
    "ConfigurationError",
    "Contract",
    "Engine",
    "InvalidRequestError",
    "LedgerError",
    "LocalModelError",
    "OutputValidationError",
    "PermissionDeniedError",
    "Pipeline",
    "ProviderConfig",
    "RateLimitError",
    "Settings",
    "Stage",
    "ThriftyError",
    "ThriftyOptions",
    "UnknownContractError",
    "UnknownModelError",
    "UnknownOptionError",
    "UnknownProviderError",
    "UpstreamConnectionError",
    "UpstreamError",
    "UpstreamTimeoutError",
    "compress",
    "wrap",
]
