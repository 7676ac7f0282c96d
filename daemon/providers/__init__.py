"""Which providers exist, how a session's provider and model are chosen, and their objects.

Provider modules (and so the HTTP client, ``wire``, with ``ssl``) are imported on first use, so
they never slow start-up.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import msgspec

from warren.protocol.types import ProviderInfo

from .. import errors
from ..config import (
    SCRIPTED,
    Config,
    ConfigError,
    UnknownProvider,
    default_config_path,
    known_provider_names,
    load_config,
    resolve_model,
    resolve_provider,
)
from .base import Provider
from ..logs import get_logger

log = get_logger("warren.providers")


def _params_error(exc: msgspec.ValidationError, prefix: str) -> errors.InvalidRequest:
    from warren.protocol.validation import split_message

    from .scripted import ScriptedParams

    message, path = split_message(str(exc), ScriptedParams)
    return errors.InvalidRequest.at(prefix + path[1:], message)


def _without_password(url: str | None) -> str | None:
    """A base URL may embed proxy credentials; ``providers/list`` must never show them."""
    if not url:
        return url
    from urllib.parse import urlsplit, urlunsplit

    parts = urlsplit(url)
    if parts.password is None and parts.username is None:
        return url
    host = parts.hostname or ""
    if parts.port is not None:
        host = f"{host}:{parts.port}"
    return urlunsplit(parts._replace(netloc=f"***@{host}"))


def _config_failure(exc: ConfigError) -> errors.WarrenError:
    if isinstance(exc, UnknownProvider):
        return errors.InvalidRequest.at("$.provider", exc.message, details=exc.details)
    return errors.FailedWithData(exc.message, exc.details)


#: Context windows of well-known models, by name prefix (first match wins).
KNOWN_WINDOWS = (
    ("claude", 200_000), ("gpt-4.1", 1_047_576), ("gpt-5", 400_000), ("gpt-4o", 128_000),
    ("o3", 200_000), ("o4", 200_000), ("llama3", 128_000), ("qwen", 32_768), ("mistral", 32_768),
)


class ProviderRegistry:
    """The configured providers plus the built-in ``scripted``.

    A config file that fails to load does not stop the daemon: ``config_error`` is kept and
    every call that needs a provider reports it (``SESSION_ERROR``, ``reason:
    "invalid_config"``), while everything else keeps working.
    """

    def __init__(self, config: Config, config_error: ConfigError | None = None) -> None:
        self.config = config
        self.config_error = config_error
        self._instances: dict[str, Provider] = {}

    def names(self) -> list[str]:
        return known_provider_names(self.config)

    def _check_config(self, requested: str | None) -> None:
        if self.config_error is not None and requested != SCRIPTED:
            raise errors.FailedWithData(
                f"The config file is invalid: {self.config_error.message}",
                {"reason": "invalid_config", "message": self.config_error.message, **self.config_error.details},
            )

    def resolve(self, requested: str | None, model: str | None) -> tuple[str, str | None]:
        """The provider and model a new session uses."""
        self._check_config(requested)
        try:
            name = resolve_provider(self.config, requested)
        except ConfigError as exc:
            raise _config_failure(exc) from None
        try:
            return name, resolve_model(self.config, name, model)
        except ConfigError as exc:
            if exc.details.get("reason") == "no_model_configured" and self.config.provider(name).type == "openai":
                return name, None  # asked of the server (GET /models) when the first turn runs
            raise _config_failure(exc) from None

    def get(self, name: str) -> Provider:
        provider = self._instances.get(name)
        if provider is None:
            provider = self._instances[name] = self._build(name)
        return provider

    def _build(self, name: str) -> Provider:
        if name == SCRIPTED:
            from .scripted import ScriptedProvider

            return ScriptedProvider()
        self._check_config(name)
        try:
            config = self.config.provider(name)
        except ConfigError as exc:
            raise errors.FailedWithData(
                f"Provider {name!r} is no longer configured: {exc.message}", exc.details
            ) from None
        from .http import build_provider

        return build_provider(config)

    def prepare_default(self) -> tuple[str, Provider] | None:
        """Build the provider a new session would get, with its one-off work done (imports
        of the HTTP stack, its client, TLS for an ``https://`` endpoint), so that the first
        turn does not pay for it. Meant for a worker thread once the first request is
        answered; ``adopt`` its result on the loop. None when there is nothing to prepare."""
        if self.config_error is not None:
            return None
        try:
            name = resolve_provider(self.config, None)
        except ConfigError:
            return None
        if name == SCRIPTED or name in self._instances:
            return None
        provider = self._build(name)
        warm = getattr(provider, "warm", None)
        if warm is not None:
            warm()
        return name, provider

    def adopt(self, prepared: tuple[str, Provider]) -> None:
        """Keep a provider built by ``prepare_default`` unless a turn built one meanwhile."""
        name, provider = prepared
        self._instances.setdefault(name, provider)

    def check_credential(self, name: str) -> None:
        """Refuse, before a session is stored, a provider that needs a key and has none: the
        same PROVIDER_ERROR its first call would give."""
        configured = self.config.providers.get(name)
        if configured is not None and not configured.has_credential() and configured.is_official_endpoint():
            where = configured.api_key_env or ("ANTHROPIC_API_KEY" if configured.type == "anthropic" else "OPENAI_API_KEY")
            raise errors.ProviderFailed(
                name, "auth", f"no API key for provider {name!r}: set {where} or api_key in the config file",
                retryable=False,
            )

    def context_window(self, name: str, model: str | None, provider_params: dict[str, Any]) -> int:
        """The model's context window in tokens, for automatic compaction: the provider's
        ``context_window`` in the config, else a well-known model's, else 128,000 (the
        scripted provider takes ``provider_params.context_window``, default 200,000)."""
        if name == SCRIPTED:
            window = provider_params.get("context_window")
            return window if isinstance(window, int) and window > 0 else 200_000
        configured = self.config.providers.get(name)
        if configured is not None and model in configured.context_windows:
            return configured.context_windows[model]  # type: ignore[index]
        if configured is not None and configured.context_window:
            return configured.context_window
        for prefix, window in KNOWN_WINDOWS:
            if (model or "").startswith(prefix):
                return window
        return 128_000

    def check_params(self, name: str, provider_params: dict[str, Any] | None, path: str) -> None:
        """Reject provider_params the provider cannot use, before anything is stored."""
        if name == SCRIPTED:
            from .scripted import ScriptedProvider

            try:
                ScriptedProvider.parse_params(provider_params)
            except msgspec.ValidationError as exc:
                raise _params_error(exc, path) from None

    def describe(self) -> list[ProviderInfo]:
        """What ``providers/list`` shows: never a credential, only whether one is present."""
        default = self.config.default_provider
        out = [
            ProviderInfo(
                name=p.name,
                type=p.type,
                base_url=_without_password(p.base_url),
                default_model=p.default_model,
                has_credential=p.has_credential(),
                credential_env=p.api_key_env,
                is_default=p.name == default,
            )
            for p in sorted(self.config.providers.values(), key=lambda p: p.name)
        ]
        out.append(ProviderInfo(SCRIPTED, SCRIPTED, None, None, True, None, default == SCRIPTED))
        return out

    async def aclose(self) -> None:
        for provider in self._instances.values():
            close = getattr(provider, "aclose", None)
            if close is not None:
                try:
                    await close()
                except Exception:  # noqa: BLE001 - closing idle HTTP pools is best effort
                    log.warning("provider_close_failed", provider=provider.name)


def load_providers(path: Path | None) -> tuple[ProviderRegistry, list[tuple[str, str, dict[str, Any]]]]:
    """Read the config; a broken file is reported on use instead of stopping the daemon.
    Returns the log lines to write once start-up is over."""
    try:
        config = load_config(path)
    except ConfigError as exc:
        config = Config(None, None, {}, path or default_config_path(os.environ))
        return ProviderRegistry(config, exc), [("error", "config_invalid", {"error": exc.message})]
    logs: list[tuple[str, str, dict[str, Any]]] = [("warning", "config_warning", {"warning": w}) for w in config.warnings]
    logs.append(("info", "config_loaded", {"path": str(config.path), "file_loaded": config.file_loaded,
                                           "providers": sorted(config.providers), "default": config.default_provider}))
    return ProviderRegistry(config), logs
