"""User configuration: which model providers exist, their endpoints, keys and limits.

The file is ``$XDG_CONFIG_HOME/warren/config.toml`` (default ``~/.config/warren/config.toml``)
or an explicit path. Providers can also come from the environment alone
(``ANTHROPIC_API_KEY``, ``OPENAI_API_KEY``, ``OPENAI_BASE_URL``), so a fresh install with a key
exported works without a file.

This module is imported at daemon start-up, so it must stay cheap: no HTTP stack (``wire``,
``ssl``) here; the HTTP providers import it, never the other way round.

Credentials: a resolved key lives only in ``ProviderConfig.api_key``, which is excluded from
``repr`` (as are the extra headers, which may carry a proxy token). Error messages name the
environment variable or the file, never the value.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Annotated, Any, Literal, Mapping
from urllib.parse import urlsplit

import msgspec
from msgspec import Meta, Struct

from warren.protocol.types import McpServerInput

ProviderType = Literal["openai", "anthropic"]

ANTHROPIC_BASE_URL = "https://api.anthropic.com"
OPENAI_BASE_URL = "https://api.openai.com/v1"
ANTHROPIC_FALLBACK_MODEL = "claude-sonnet-4-5"
OPENAI_FALLBACK_MODEL = "gpt-4o-mini"

#: Built into the core; never part of ``Config.providers`` and not definable in the file.
SCRIPTED = "scripted"

_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
_MCP_NAME_RE = re.compile(r"^[a-zA-Z0-9_-]{1,64}$")

PositiveFloat = Annotated[float, Meta(gt=0)]


class ConfigError(Exception):
    """The configuration is unusable. ``details`` is structured data for the client."""

    def __init__(self, message: str, details: dict[str, Any] | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.details: dict[str, Any] = details or {}


class UnknownProvider(ConfigError):
    """A request named a provider that is neither configured nor built in."""

    def __init__(self, name: str, known: list[str]) -> None:
        super().__init__(
            f"unknown provider {name!r}; known providers: {', '.join(known)}",
            {"reason": "unknown_provider", "provider": name, "providers": known},
        )
        self.name = name
        self.known = known


class NoProviderConfigured(ConfigError):
    """No provider was requested and none can be chosen as the default."""


class AmbiguousProvider(ConfigError):
    """No provider was requested, no default is set, and several are usable."""


# ---------------------------------------------------------------- the resolved shapes


class ProviderConfig(Struct, frozen=True):
    """One provider, with every default applied and its key resolved.

    ``base_url`` is always set (the official endpoint when the file gives none). Only
    ``connect``/``read`` timeouts reach the HTTP client; ``turn_timeout_s`` is for the turn
    loop's overall deadline. A msgspec Struct, not a dataclass: this module is imported
    before the daemon answers ``initialize``, and ``dataclasses`` pulls in ``inspect``.
    """

    name: str
    type: ProviderType
    base_url: str
    api_key_env: str | None = None
    default_model: str | None = None
    headers: dict[str, str] = msgspec.field(default_factory=dict)  # not in repr: may carry a token
    connect_timeout_s: float = 10.0
    read_timeout_s: float = 300.0
    turn_timeout_s: float = 1800.0
    max_retries: int = 3
    api_key: str | None = None  # not in repr
    context_window: int | None = None  # tokens; else known models' windows (``providers``)
    context_windows: dict[str, int] = msgspec.field(default_factory=dict)  # per model, before ``context_window``

    def __repr__(self) -> str:
        shown = (f"{name}={getattr(self, name)!r}" for name in self.__struct_fields__ if name not in _SECRET_FIELDS)
        return f"ProviderConfig({', '.join(shown)})"

    def has_credential(self) -> bool:
        return bool(self.api_key)

    def is_official_endpoint(self) -> bool:
        """True for api.openai.com / api.anthropic.com, which always need a key."""
        host = urlsplit(self.base_url).hostname or ""
        return host in ("api.openai.com", "api.anthropic.com")

    def is_usable(self) -> bool:
        """Worth choosing automatically: it has a key, or it is a keyless local/compatible
        server (an ``openai`` provider pointed somewhere other than api.openai.com)."""
        if self.has_credential():
            return True
        return self.type == "openai" and not self.is_official_endpoint()


_SECRET_FIELDS = frozenset({"headers", "api_key"})


class Config(Struct, frozen=True):
    default_provider: str | None
    default_model: str | None
    providers: dict[str, ProviderConfig]
    #: The file read, or the file that would have been read (named in error messages).
    path: Path
    file_loaded: bool = False
    #: Things worth logging at start-up (e.g. a key in a file others can read).
    warnings: tuple[str, ...] = ()
    #: ``[mcp_servers.NAME]``: servers whose tools every session offers.
    mcp_servers: tuple[McpServerInput, ...] = ()
    #: ``[compaction] threshold``: how full the model's context window may get before a turn compacts.
    compaction_threshold: float = 0.8

    def provider(self, name: str) -> ProviderConfig:
        try:
            return self.providers[name]
        except KeyError:
            raise UnknownProvider(name, known_provider_names(self)) from None


# ---------------------------------------------------------------- the file's schema


class _TimeoutsFile(Struct, forbid_unknown_fields=True):
    connect_s: PositiveFloat = 10.0
    read_s: PositiveFloat = 300.0
    turn_s: PositiveFloat = 1800.0


class _ProviderFile(Struct, forbid_unknown_fields=True):
    type: ProviderType = "openai"  # every OpenAI-compatible server, so two lines point at Ollama
    base_url: Annotated[str, Meta(min_length=1)] | None = None
    api_key_env: Annotated[str, Meta(min_length=1)] | None = None
    api_key: str | None = None
    default_model: Annotated[str, Meta(min_length=1)] | None = None
    headers: dict[str, str] = {}
    max_retries: Annotated[int, Meta(ge=0, le=20)] = 3
    context_window: Annotated[int, Meta(ge=1024)] | None = None
    context_windows: dict[str, Annotated[int, Meta(ge=1024)]] = {}  # per model name
    timeouts: _TimeoutsFile = msgspec.field(default_factory=_TimeoutsFile)


class _DefaultsFile(Struct, forbid_unknown_fields=True):
    provider: Annotated[str, Meta(min_length=1)] | None = None
    model: Annotated[str, Meta(min_length=1)] | None = None


class _McpServerFile(Struct, forbid_unknown_fields=True):
    command: Annotated[str, Meta(min_length=1)] | None = None
    args: list[str] = []
    env: dict[str, str] = {}
    url: Annotated[str, Meta(min_length=1)] | None = None
    headers: dict[str, str] = {}


class _CompactionFile(Struct, forbid_unknown_fields=True):
    threshold: Annotated[float, Meta(gt=0, le=1)] = 0.8


class _ConfigFile(Struct, forbid_unknown_fields=True):
    defaults: _DefaultsFile = msgspec.field(default_factory=_DefaultsFile)
    compaction: _CompactionFile = msgspec.field(default_factory=_CompactionFile)
    # Validated one by one in ``_validate`` so that errors name the provider.
    providers: dict[str, dict[str, Any]] = {}
    mcp_servers: dict[str, _McpServerFile] = {}


# ---------------------------------------------------------------- loading


def default_config_path(env: Mapping[str, str]) -> Path:
    """``$XDG_CONFIG_HOME/warren/config.toml``; a relative XDG_CONFIG_HOME is ignored, as the
    XDG spec requires."""
    xdg = env.get("XDG_CONFIG_HOME", "")
    if xdg and os.path.isabs(xdg):
        base = Path(xdg)
    else:
        home = env.get("HOME")
        base = (Path(home) if home else Path.home()) / ".config"
    return base / "warren" / "config.toml"


def load_config(path: Path | None = None, env: Mapping[str, str] | None = None) -> Config:
    """Read the config file (explicit ``path`` or the XDG default) and merge env providers.

    A missing default file is not an error (the environment may be enough); a missing
    explicit file is. Providers derived from the environment are added unless the file
    defines a provider with the same name.
    """
    env = os.environ if env is None else env
    explicit = path is not None
    file_path = Path(path) if path is not None else default_config_path(env)

    raw: dict[str, Any] | None = None
    try:
        text = file_path.read_bytes().decode("utf-8")
    except FileNotFoundError:
        if explicit:
            raise ConfigError(f"{file_path}: config file not found") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{file_path}: cannot read config file: {exc.__class__.__name__}") from None
    else:
        import tomllib  # only when there is a file to read

        try:
            raw = tomllib.loads(text)
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"{file_path}: invalid TOML: {exc}") from None

    defaults, provider_files, mcp_files, compaction = _validate(raw or {}, file_path)
    providers: dict[str, ProviderConfig] = {}
    for name, pf in provider_files.items():
        providers[name] = _provider_from_file(name, pf, env, file_path)
    for name, pc in _providers_from_env(env).items():
        providers.setdefault(name, pc)

    warnings: list[str] = []
    if any(pf.api_key for pf in provider_files.values()):
        try:
            mode = file_path.stat().st_mode & 0o777
        except OSError:
            mode = 0
        if mode & 0o077:
            warnings.append(
                f"{file_path} holds an api_key and is readable by others (mode {mode:o}); run: chmod 600 {file_path}"
            )

    default_provider = defaults.provider
    if default_provider is not None and default_provider != SCRIPTED and default_provider not in providers:
        known = ", ".join(sorted(providers) + [SCRIPTED])
        raise ConfigError(
            f"{file_path}: defaults.provider: unknown provider {default_provider!r} (known: {known})"
        )
    return Config(
        default_provider=default_provider,
        default_model=defaults.model,
        providers=providers,
        path=file_path,
        file_loaded=raw is not None,
        warnings=tuple(warnings),
        compaction_threshold=compaction.threshold,
        mcp_servers=tuple(
            McpServerInput(name, f.command, list(f.args), dict(f.env), f.url, dict(f.headers))
            for name, f in sorted(mcp_files.items())
        ),
    )


def _validate(
    raw: dict[str, Any], file_path: Path
) -> tuple[_DefaultsFile, dict[str, _ProviderFile], dict[str, _McpServerFile], _CompactionFile]:
    # tomllib already produced typed values; strict conversion keeps "10" from passing as 10.
    try:
        top = msgspec.convert(raw, _ConfigFile, strict=True)
    except msgspec.ValidationError as exc:
        raise ConfigError(f"{file_path}: {_field_path_message(str(exc), '')}") from None
    providers: dict[str, _ProviderFile] = {}
    for name, table in top.providers.items():
        where = f"providers.{name}"
        if name == SCRIPTED:
            raise ConfigError(f"{file_path}: {where}: the name {SCRIPTED!r} is reserved for the built-in provider")
        if not _NAME_RE.match(name):
            raise ConfigError(
                f"{file_path}: {where}: provider names are letters, digits, '_', '-', '.' (at most 64)"
            )
        try:
            providers[name] = msgspec.convert(table, _ProviderFile, strict=True)
        except msgspec.ValidationError as exc:
            raise ConfigError(f"{file_path}: {_field_path_message(str(exc), where)}") from None
    for name, server in top.mcp_servers.items():
        where = f"mcp_servers.{name}"
        if not _MCP_NAME_RE.match(name):
            raise ConfigError(f"{file_path}: {where}: server names are letters, digits, '_', '-' (at most 64)")
        if (server.command is None) == (server.url is None):
            raise ConfigError(f"{file_path}: {where}: give either command (stdio) or url (streamable HTTP)")
    return top.defaults, providers, top.mcp_servers, top.compaction


def _field_path_message(msg: str, prefix: str) -> str:
    """msgspec says ``Expected `str`, got `int` - at `$.base_url```; put the field first, in
    TOML's dotted form under ``prefix``, since that is what the user edits."""
    text, sep, where = msg.rpartition(" - at ")
    if not sep:
        text, where = msg, "$"
    where = where.strip("`").lstrip("$").lstrip(".")
    path = ".".join(p for p in (prefix, where) if p)
    return f"{path or '(top level)'}: {text}"


def _provider_from_file(name: str, pf: _ProviderFile, env: Mapping[str, str], file_path: Path) -> ProviderConfig:
    base_url = (pf.base_url or (ANTHROPIC_BASE_URL if pf.type == "anthropic" else OPENAI_BASE_URL)).rstrip("/")
    if urlsplit(base_url).scheme not in ("http", "https"):
        raise ConfigError(f"{file_path}: providers.{name}.base_url: must start with http:// or https://")
    api_key_env = pf.api_key_env
    if api_key_env is None and pf.base_url is None:
        # Only the official endpoint picks up the well-known variable by itself: an OpenAI
        # key must never be sent to some other server just because it is exported.
        api_key_env = "ANTHROPIC_API_KEY" if pf.type == "anthropic" else "OPENAI_API_KEY"
    key = _clean_key(env.get(api_key_env) if api_key_env else None) or _clean_key(pf.api_key)
    return ProviderConfig(
        name=name,
        type=pf.type,
        base_url=base_url,
        api_key_env=api_key_env,
        default_model=pf.default_model,
        headers=dict(pf.headers),
        connect_timeout_s=pf.timeouts.connect_s,
        read_timeout_s=pf.timeouts.read_s,
        turn_timeout_s=pf.timeouts.turn_s,
        max_retries=pf.max_retries,
        context_window=pf.context_window,
        context_windows=dict(pf.context_windows),
        api_key=key,
    )


def _clean_key(value: str | None) -> str | None:
    """A key without surrounding whitespace (a key never contains any, but a value read from
    a CRLF ``.env`` file or a multi-line TOML string often ends in a line break, which no HTTP
    header may carry); empty counts as unset."""
    return (value or "").strip() or None


def _providers_from_env(env: Mapping[str, str]) -> dict[str, ProviderConfig]:
    """``ANTHROPIC_API_KEY`` (with optional ``ANTHROPIC_BASE_URL``) → "anthropic";
    ``OPENAI_API_KEY`` and/or ``OPENAI_BASE_URL`` → "openai" (a base URL alone is a keyless
    compatible server such as Ollama). Empty variables count as unset."""
    out: dict[str, ProviderConfig] = {}
    anthropic_key = _clean_key(env.get("ANTHROPIC_API_KEY"))
    if anthropic_key:
        out["anthropic"] = ProviderConfig(
            name="anthropic",
            type="anthropic",
            base_url=(env.get("ANTHROPIC_BASE_URL") or ANTHROPIC_BASE_URL).rstrip("/"),
            api_key_env="ANTHROPIC_API_KEY",
            api_key=anthropic_key,
        )
    openai_key = _clean_key(env.get("OPENAI_API_KEY"))
    openai_url = env.get("OPENAI_BASE_URL") or None
    if openai_key or openai_url:
        out["openai"] = ProviderConfig(
            name="openai",
            type="openai",
            base_url=(openai_url or OPENAI_BASE_URL).rstrip("/"),
            api_key_env="OPENAI_API_KEY" if openai_key else None,
            api_key=openai_key,
        )
    return out


# ---------------------------------------------------------------- resolution


def known_provider_names(config: Config) -> list[str]:
    return sorted(config.providers) + [SCRIPTED]


def resolve_provider(config: Config, requested: str | None) -> str:
    """Pick the provider for a session: the requested one, else ``defaults.provider``, else
    the single usable one. ``"scripted"`` is only chosen when named (here or as default)."""
    if requested is not None:
        if requested == SCRIPTED or requested in config.providers:
            return requested
        raise UnknownProvider(requested, known_provider_names(config))
    if config.default_provider is not None:
        return config.default_provider
    usable = sorted(n for n, p in config.providers.items() if p.is_usable())
    if len(usable) == 1:
        return usable[0]
    if len(usable) > 1:
        raise AmbiguousProvider(
            f"several providers are usable ({', '.join(usable)}) and none is the default",
            {
                "reason": "ambiguous_provider",
                "providers": usable,
                "how_to_fix": f"Pass provider: \"NAME\", or set provider under [defaults] in {config.path}.",
            },
        )
    raise NoProviderConfigured(
        "no model provider is configured",
        {
            "reason": "no_provider_configured",
            "providers": known_provider_names(config),
            "how_to_fix": (
                "Set ANTHROPIC_API_KEY or OPENAI_API_KEY (or OPENAI_BASE_URL for a local server "
                f"such as Ollama), or add [providers.NAME] to {config.path}, or pass "
                'provider: "scripted" for the offline provider.'
            ),
        },
    )


def fallback_model(provider: ProviderConfig) -> str | None:
    """The model used when nothing names one: only where the endpoint is known."""
    if provider.type == "anthropic":
        return ANTHROPIC_FALLBACK_MODEL
    if provider.is_official_endpoint():
        return OPENAI_FALLBACK_MODEL
    return None


def resolve_model(config: Config, provider_name: str, requested: str | None) -> str:
    """The request's model, else the provider's ``default_model``, else ``defaults.model``
    (when the default provider is this one, or no default provider is set), else a fallback
    for the official endpoints. A compatible server with none of these is an error: we cannot
    guess which model it serves."""
    if requested:
        return requested
    applies_default = config.default_provider in (None, provider_name)
    if provider_name == SCRIPTED:
        return (config.default_model if applies_default else None) or SCRIPTED
    provider = config.provider(provider_name)
    model = provider.default_model or (config.default_model if applies_default else None) or fallback_model(provider)
    if model is None:
        raise ConfigError(
            f"provider {provider_name!r} has no model: pass model, or set default_model under "
            f"[providers.{provider_name}] in {config.path}",
            {"reason": "no_model_configured", "provider": provider_name},
        )
    return model
