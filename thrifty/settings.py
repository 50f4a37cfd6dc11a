"""Settings: loaded explicitly with :meth:`Settings.load`, never at import.

Sources, later ones winning: built-in defaults, a TOML config file, then
``THRIFTY_*`` environment variables (nested keys with ``__``, e.g.
``THRIFTY_LEDGER__BATCH_SIZE=200``).
"""

from __future__ import annotations

import os
import tomllib
from pathlib import Path
from typing import Any, Literal

import platformdirs
from pydantic import BaseModel, ConfigDict, Field, SecretStr, ValidationError, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from thrifty.errors import ConfigurationError

#: The prompt compressor's modes (see :mod:`thrifty.compressors.lingua`).
CompressionMode = Literal["fast", "exact", "turbo"]
#: What the fast and turbo modes run in: ``auto``, the fastest here (measured once), or one pinned.
Precision = Literal["auto", "float32", "bfloat16", "int8"]


class ProviderConfig(BaseModel):
    """One upstream provider, addressed in model names as ``<name>/<model>``."""

    model_config = ConfigDict(extra="forbid")

    kind: str = Field(description="a registered provider kind: openai, anthropic, openai-compatible, local, ...")
    base_url: str | None = None
    api_key: SecretStr | None = None
    api_key_env: str | None = Field(default=None, description="environment variable holding the key")
    timeout_s: float = 600.0
    headers: dict[str, str] = Field(default_factory=dict)
    pricing_id: str | None = Field(
        default=None, description="genai-prices provider id used to price this provider's models"
    )
    default_model: str | None = Field(
        default=None,
        description="what the model name ``default`` means when no alias named ``default`` is configured "
        "and this is the default provider; the provider kind's own default if unset (local: smollm2-135m)",
    )

    @field_validator("kind")
    @classmethod
    def _known_kind(cls, kind: str) -> str:
        from thrifty.middleware.providers.base import provider_kinds

        known = provider_kinds()
        if kind not in known:
            raise ValueError(f"unknown provider kind {kind!r}; registered kinds: {', '.join(sorted(known))}")
        return kind

    def resolved_api_key(self) -> str | None:
        if self.api_key is not None:
            return self.api_key.get_secret_value()
        if self.api_key_env:
            return os.environ.get(self.api_key_env) or None
        return None


def _default_providers() -> dict[str, ProviderConfig]:
    return {
        "openai": ProviderConfig(kind="openai", api_key_env="OPENAI_API_KEY"),
        "anthropic": ProviderConfig(kind="anthropic", api_key_env="ANTHROPIC_API_KEY"),
        "local": ProviderConfig(kind="local"),
    }


class LedgerSettings(BaseModel):
    model_config = ConfigDict(extra="forbid")

    enabled: bool = True
    batch_size: int = Field(default=500, ge=1)
    flush_interval_s: float = Field(default=0.5, gt=0)
    max_buffer_rows: int = Field(default=1_000_000, ge=1)
    retry_interval_s: float = Field(default=2.0, gt=0)
    store_prompts: bool = False
    prompt_retention_days: int = Field(default=30, ge=1)


class LocalModelSettings(BaseModel):
    model_config = ConfigDict(extra="forbid")

    cache_dir: Path | None = None  # default: <user cache dir>/thrifty/models
    threads: int | None = None
    dtype: Literal["auto", "float32", "bfloat16"] = "auto"


class RetrySettings(BaseModel):
    """When and how often an upstream attempt is tried again (each attempt its own ledger row)."""

    model_config = ConfigDict(extra="forbid")

    max_attempts: int = Field(default=2, ge=1, description="attempts per model, the first included")
    backoff_s: float = Field(default=0.5, ge=0)
    max_backoff_s: float = Field(default=8.0, ge=0)
    on_status: list[int] = Field(default_factory=lambda: [408, 409, 429, 500, 502, 503, 504, 529])
    on_timeout: bool = True


class StructuredSettings(BaseModel):
    """``[structured]``: how a ``response_format`` json_schema is enforced when no contract says otherwise."""

    model_config = ConfigDict(extra="forbid")

    enabled: bool = Field(default=True, description="enforce json_schema response formats (validate, re-ask)")
    reasks: int = Field(default=1, ge=0, description="re-asks with the errors after an answer fails its schema")
    fallback_models: list[str] = Field(default_factory=list, description="models to try after the re-asks")
    anthropic_mode: Literal["native", "tool"] = Field(
        default="native",
        description="Anthropic models: native structured output (output_config.format), or a forced tool "
        "whose input schema is the schema (for models without native support)",
    )


class ContractSettings(BaseModel):
    """``[contracts]``: where the 5C contract files (TOML or YAML, one each) are loaded from, once per engine."""

    model_config = ConfigDict(extra="forbid")

    dir: Path | None = Field(
        default=None, description="directory of contract files; default: <data_dir>/contracts, if it exists"
    )
    paths: list[Path] = Field(default_factory=list, description="more contract files or directories")


class CompressionSettings(BaseModel):
    """``[compression]``: prompt compression (LLMLingua-2) of long user and tool text.

    Off unless ``enabled`` or a call (or its alias) asks with the ``compress`` option.
    """

    model_config = ConfigDict(extra="forbid")

    enabled: bool = Field(default=False, description="compress every call's eligible text, not only those that ask")
    compressor: str = Field(default="llmlingua2", description="a registered compressor")
    mode: CompressionMode = "fast"
    precision: Precision = Field(
        default="auto",
        description="what the fast and turbo modes run in (auto: the fastest, measured once per machine); "
        "pin it so that machines of different kinds compress alike")
    model: Path | None = Field(default=None, description="weights directory; default: thrifty's shipped weights")
    rate: float = Field(default=0.5, gt=0, le=1, description="share of the compressible tokens to keep")
    min_tokens: int = Field(default=256, ge=0, description="text parts shorter than this (break-even) are left alone")
    roles: list[Literal["user", "tool", "assistant"]] = Field(default_factory=lambda: ["user", "tool"])
    force_keep: list[str] = Field(default_factory=list, description="terms always kept as written")
    protect: list[str] = Field(default_factory=list, description="regular expressions whose matches are kept")
    fail_open: bool = Field(default=True, description="on a compressor failure send the call uncompressed")
    sentence_weight: float | None = Field(
        default=None, ge=0, le=100,
        description="lift of a sentence's mean keep probability on its words (0: llmlingua's rule; "
        "unset: the compressor's default, 2 for llmlingua2)")
    relation_weight: float | None = Field(
        default=None, ge=0, le=100,
        description="lift of the relation words' (by, to, than...) keep scores (0: llmlingua's rule; "
        "unset: the compressor's default, 0.4 for llmlingua2)")
    question: bool = Field(
        default=True,
        description="compress each part for the question found in the messages: the user text of its own "
        "message, or of the last user message before it (see thrifty.compressors.stage)")
    target_tokens: int | None = Field(
        default=None, ge=1,
        description="a budget for each prompt: compress only prompts over it, only as far as they must be "
        "(rate is then not used, unless a call or alias gives one)")
    fit_context: bool = Field(
        default=False,
        description="compress a prompt that would not fit its model's context window (less max_tokens, or "
        "1,024 tokens for the answer), only as far as it must, even where compression is not otherwise asked for")


class AliasConfig(BaseModel):
    """A model alias (``default``, ``fast``, ``smart``...): a target model, its fallbacks and retries."""

    model_config = ConfigDict(extra="forbid")

    model: str
    fallbacks: list[str] = Field(default_factory=list)
    retry: RetrySettings | None = None
    options: dict[str, Any] = Field(
        default_factory=dict,
        description="thrifty options every call to this alias gets (compress, contract, ...); a call's own win",
    )


class KeyConfig(BaseModel):
    """A virtual key declared in the config file (keys can also be made with ``thrifty keys create``)."""

    model_config = ConfigDict(extra="forbid")

    name: str
    key: SecretStr | None = Field(default=None, description="the key itself; or give key_sha256")
    key_sha256: str | None = None
    budget_usd: float | None = Field(default=None, gt=0)
    budget_period: Literal["day", "week", "month", "total"] = "month"
    rpm: int | None = Field(default=None, ge=1)
    models: list[str] = Field(default_factory=lambda: ["*"])


class ServerSettings(BaseModel):
    model_config = ConfigDict(extra="forbid")

    host: str = "127.0.0.1"
    port: int = Field(default=8787, ge=0, le=65535)
    max_body_bytes: int = Field(default=8 * 1024 * 1024, ge=1024)
    cors_origins: list[str] = Field(default_factory=list, description="CORS is off unless origins are listed")
    admin_key: SecretStr | None = None


def default_data_dir() -> Path:
    return Path(platformdirs.user_data_dir("thrifty", appauthor=False))


class Settings(BaseSettings):
    model_config = SettingsConfigDict(
        env_prefix="THRIFTY_", env_nested_delimiter="__", extra="forbid", validate_default=True
    )

    data_dir: Path = Field(default_factory=default_data_dir)
    db_url: str | None = Field(default=None, description="SQLAlchemy URL; default: SQLite file in data_dir")
    providers: dict[str, ProviderConfig] = Field(default_factory=_default_providers)
    default_provider: str = Field(
        default="local", description="provider of bare model names when no wrapped client gives one"
    )
    ledger: LedgerSettings = Field(default_factory=LedgerSettings)
    local: LocalModelSettings = Field(default_factory=LocalModelSettings)
    aliases: dict[str, AliasConfig] = Field(default_factory=dict)
    retry: RetrySettings = Field(default_factory=RetrySettings)
    compression: CompressionSettings = Field(default_factory=CompressionSettings)
    contracts: ContractSettings = Field(default_factory=ContractSettings)
    structured: StructuredSettings = Field(default_factory=StructuredSettings)
    keys: list[KeyConfig] = Field(default_factory=list)
    server: ServerSettings = Field(default_factory=ServerSettings)
    redis_url: str | None = Field(default=None, description="shared budgets and rate limits across processes")

    @property
    def ledger_url(self) -> str:
        return self.db_url or f"sqlite:///{self.data_dir / 'ledger.db'}"

    @classmethod
    def load(cls, config_file: str | os.PathLike[str] | None = None, **overrides: Any) -> Settings:
        """Defaults, then the TOML ``config_file`` (or ``$THRIFTY_CONFIG``), then env, then ``overrides``."""
        path = config_file or os.environ.get("THRIFTY_CONFIG")
        data: dict[str, Any] = {}
        if path:
            data = _read_toml(Path(path))
        providers: dict[str, Any] = dict(_default_providers())
        providers.update(data.pop("providers", None) or {})
        providers.update(overrides.pop("providers", None) or {})
        data["providers"] = providers
        try:
            # file, then environment, then explicit overrides
            merged = _deep_merge(_deep_merge(data, cls._env_values()), overrides)
            return cls(**merged)
        except ValidationError as exc:
            first = exc.errors()[0]
            where = ".".join(str(p) for p in first["loc"])
            source = f" in {path}" if path else ""
            raise ConfigurationError(f"invalid setting {where!r}{source}: {first['msg']}") from None

    @classmethod
    def _env_values(cls) -> dict[str, Any]:
        out: dict[str, Any] = {}
        prefix = "THRIFTY_"
        for key, value in os.environ.items():
            if not key.startswith(prefix) or key == "THRIFTY_CONFIG":
                continue
            parts = key[len(prefix) :].lower().split("__")
            if parts[0] not in cls.model_fields:
                continue
            node = out
            for part in parts[:-1]:
                node = node.setdefault(part, {})
            node[parts[-1]] = value
        return out


def _deep_merge(base: dict[str, Any], top: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in top.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = _deep_merge(out[key], value)
        elif isinstance(value, dict) and isinstance(out.get(key), BaseModel):
            out[key] = _deep_merge(out[key].model_dump(), value)
        else:
            out[key] = value
    return out


def _read_toml(path: Path) -> dict[str, Any]:
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigurationError(f"cannot read config file {path}: {exc.strerror}") from exc
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigurationError(f"{path}: {exc}") from exc
