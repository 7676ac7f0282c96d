"""Config loading, env-derived providers, provider/model resolution, errors, key hygiene."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from warren.daemon.config import (
    AmbiguousProvider,
    Config,
    ConfigError,
    NoProviderConfigured,
    ProviderConfig,
    UnknownProvider,
    default_config_path,
    load_config,
    resolve_model,
    resolve_provider,
)

SECRET = "sk-test-SECRET-9f8e7d6c5b4a"

FULL = """
[defaults]
provider = "ollama"
model = "llama3.2"

[providers.ollama]
type = "openai"
base_url = "http://localhost:11434/v1/"
api_key_env = "OLLAMA_API_KEY"
default_model = "llama3.2"
headers = { "X-Title" = "warren" }
max_retries = 5
[providers.ollama.timeouts]
connect_s = 2
read_s = 60.5
turn_s = 900

[providers.claude]
type = "anthropic"
"""


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "config.toml"
    path.write_text(text)
    return path


def test_full_file(tmp_path: Path) -> None:
    path = write(tmp_path, FULL)
    config = load_config(path, {"OLLAMA_API_KEY": SECRET, "ANTHROPIC_API_KEY": "sk-ant-x"})
    assert (config.default_provider, config.default_model, config.path, config.file_loaded) == ("ollama", "llama3.2", path, True)
    assert sorted(config.providers) == ["anthropic", "claude", "ollama"]  # env-derived "anthropic" too
    assert config.providers["ollama"] == ProviderConfig(
        name="ollama",
        type="openai",
        base_url="http://localhost:11434/v1",
        api_key_env="OLLAMA_API_KEY",
        default_model="llama3.2",
        headers={"X-Title": "warren"},
        connect_timeout_s=2.0,
        read_timeout_s=60.5,
        turn_timeout_s=900.0,
        max_retries=5,
        api_key=SECRET,
    )
    claude = config.providers["claude"]
    # the official endpoint picks up its well-known variable by itself
    assert (claude.base_url, claude.api_key_env, claude.api_key) == ("https://api.anthropic.com", "ANTHROPIC_API_KEY", "sk-ant-x")
    assert (claude.connect_timeout_s, claude.read_timeout_s, claude.turn_timeout_s, claude.max_retries) == (10.0, 300.0, 1800.0, 3)


def test_key_sources(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        """
[providers.a]
type = "openai"
base_url = "http://a.local/v1"
api_key_env = "A_KEY"
api_key = "from-file-key"
[providers.b]
type = "openai"
base_url = "http://b.local/v1"
api_key = "from-file-key"
[providers.c]
type = "openai"
base_url = "http://c.local/v1"
""",
    )
    env = {"A_KEY": "from-env-key", "OPENAI_API_KEY": SECRET}
    config = load_config(path, env)
    assert config.providers["a"].api_key == "from-env-key"  # the env var wins over the file
    assert config.providers["b"].api_key == "from-file-key"
    # an OpenAI key is never sent to some other server just because it is exported
    assert config.providers["c"].api_key is None
    assert config.providers["c"].is_usable() and not config.providers["c"].has_credential()
    assert load_config(path, {}).providers["a"].api_key == "from-file-key"
    path.chmod(0o644)
    assert "chmod 600" in load_config(path, {}).warnings[0]
    path.chmod(0o600)
    assert load_config(path, {}).warnings == ()


def test_xdg_path_and_home_fallback(tmp_path: Path) -> None:
    assert default_config_path({"XDG_CONFIG_HOME": "/x/cfg", "HOME": "/h"}) == Path("/x/cfg/warren/config.toml")
    assert default_config_path({"XDG_CONFIG_HOME": "relative", "HOME": "/h"}) == Path("/h/.config/warren/config.toml")
    assert default_config_path({"HOME": "/h"}) == Path("/h/.config/warren/config.toml")
    (tmp_path / "warren").mkdir()
    (tmp_path / "warren" / "config.toml").write_text('[defaults]\nprovider = "scripted"\n')
    config = load_config(None, {"XDG_CONFIG_HOME": str(tmp_path)})
    assert config.file_loaded and config.default_provider == "scripted"


def test_no_file_env_only(tmp_path: Path) -> None:
    env = {"XDG_CONFIG_HOME": str(tmp_path), "ANTHROPIC_API_KEY": SECRET}
    config = load_config(None, env)
    assert not config.file_loaded and config.path == tmp_path / "warren" / "config.toml"
    assert list(config.providers) == ["anthropic"]
    assert config.providers["anthropic"] == ProviderConfig(
        "anthropic", "anthropic", "https://api.anthropic.com", api_key_env="ANTHROPIC_API_KEY", api_key=SECRET
    )
    assert "scripted" not in config.providers


def test_env_openai_variants(tmp_path: Path) -> None:
    base = {"XDG_CONFIG_HOME": str(tmp_path)}
    keyed = load_config(None, {**base, "OPENAI_API_KEY": SECRET}).providers["openai"]
    assert (keyed.base_url, keyed.api_key, keyed.is_usable()) == ("https://api.openai.com/v1", SECRET, True)
    local = load_config(None, {**base, "OPENAI_BASE_URL": "http://localhost:11434/v1/"}).providers["openai"]
    assert (local.base_url, local.api_key, local.is_usable()) == ("http://localhost:11434/v1", None, True)
    both = load_config(None, {**base, "OPENAI_API_KEY": SECRET, "OPENAI_BASE_URL": "https://openrouter.ai/api/v1"})
    assert (both.providers["openai"].base_url, both.providers["openai"].api_key) == ("https://openrouter.ai/api/v1", SECRET)
    assert load_config(None, {**base, "OPENAI_API_KEY": "", "ANTHROPIC_API_KEY": ""}).providers == {}


def test_env_providers_merge_with_file_unless_same_name(tmp_path: Path) -> None:
    path = write(tmp_path, '[providers.openai]\ntype = "openai"\nbase_url = "http://vllm:8000/v1"\ndefault_model = "qwen"\n')
    config = load_config(path, {"OPENAI_API_KEY": SECRET, "ANTHROPIC_API_KEY": SECRET})
    assert sorted(config.providers) == ["anthropic", "openai"]
    assert config.providers["openai"].base_url == "http://vllm:8000/v1"  # the file's definition wins
    assert config.providers["openai"].api_key is None


def config_of(*providers: ProviderConfig, default: str | None = None, model: str | None = None) -> Config:
    return Config(default, model, {p.name: p for p in providers}, Path("/cfg/warren/config.toml"))


ANTH = ProviderConfig("anthropic", "anthropic", "https://api.anthropic.com", api_key=SECRET)
OAI = ProviderConfig("openai", "openai", "https://api.openai.com/v1", api_key=SECRET)
OAI_NOKEY = ProviderConfig("openai", "openai", "https://api.openai.com/v1")
OLLAMA = ProviderConfig("ollama", "openai", "http://localhost:11434/v1", default_model="llama3.2")


def test_resolve_provider_order() -> None:
    config = config_of(ANTH, OLLAMA, default="ollama")
    assert resolve_provider(config, "anthropic") == "anthropic"  # requested first
    assert resolve_provider(config, "scripted") == "scripted"  # always available by name
    assert resolve_provider(config, None) == "ollama"  # then the default
    assert resolve_provider(config_of(ANTH, OAI_NOKEY), None) == "anthropic"  # then the one usable
    assert resolve_provider(config_of(OLLAMA), None) == "ollama"  # keyless local server counts
    assert resolve_provider(config_of(default="scripted"), None) == "scripted"


def test_unknown_provider_lists_known() -> None:
    with pytest.raises(UnknownProvider) as info:
        resolve_provider(config_of(ANTH, OLLAMA), "gemini")
    assert isinstance(info.value, ConfigError)
    assert info.value.known == ["anthropic", "ollama", "scripted"]
    assert "anthropic, ollama, scripted" in str(info.value)


def test_ambiguous_provider() -> None:
    with pytest.raises(AmbiguousProvider) as info:
        resolve_provider(config_of(ANTH, OAI), None)
    assert info.value.details["reason"] == "ambiguous_provider"
    assert info.value.details["providers"] == ["anthropic", "openai"]


def test_no_provider_configured_details(tmp_path: Path) -> None:
    config = load_config(None, {"XDG_CONFIG_HOME": str(tmp_path)})
    with pytest.raises(NoProviderConfigured) as info:
        resolve_provider(config, None)
    assert isinstance(info.value, ConfigError)
    path = tmp_path / "warren" / "config.toml"
    assert info.value.details == {
        "reason": "no_provider_configured",
        "providers": ["scripted"],
        "how_to_fix": (
            "Set ANTHROPIC_API_KEY or OPENAI_API_KEY (or OPENAI_BASE_URL for a local server such as Ollama), "
            f'or add [providers.NAME] to {path}, or pass provider: "scripted" for the offline provider.'
        ),
    }
    # a configured provider without its key is known but not usable
    with pytest.raises(NoProviderConfigured) as info:
        resolve_provider(config_of(OAI_NOKEY), None)
    assert info.value.details["providers"] == ["openai", "scripted"]


def test_resolve_model() -> None:
    config = config_of(ANTH, OLLAMA, OAI, ProviderConfig("vllm", "openai", "http://vllm/v1"), default="ollama", model="llama3.1")
    assert resolve_model(config, "ollama", "qwen2.5") == "qwen2.5"  # the request
    assert resolve_model(config, "ollama", None) == "llama3.2"  # the provider's default_model
    assert resolve_model(config, "anthropic", None) == "claude-sonnet-4-5"  # fallback, not defaults.model
    assert resolve_model(config, "openai", None) == "gpt-4o-mini"  # fallback on api.openai.com only
    with pytest.raises(ConfigError, match=r"default_model.*\[providers\.vllm\].*/cfg/warren/config\.toml"):
        resolve_model(config, "vllm", None)
    vllm_default = config_of(ProviderConfig("vllm", "openai", "http://vllm/v1"), default="vllm", model="qwen")
    assert resolve_model(vllm_default, "vllm", None) == "qwen"  # defaults.model for the default provider
    assert resolve_model(config, "scripted", None) == "scripted"


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("[providers.x\n", "invalid TOML"),
        ('[providers.x]\ntype = "gemini"\n', "providers.x.type: Invalid enum value 'gemini'"),
        ('[providers.x]\ntype = 3\n', "providers.x.type: Expected `str`, got `int`"),
        ('[providers.x]\ntype = "openai"\nbase_url = 3\n', "providers.x.base_url: Expected `str | null`, got `int`"),
        ('[providers.x]\ntype = "openai"\nmax_retries = "3"\n', "providers.x.max_retries: Expected `int`, got `str`"),
        ('[providers.x]\ntype = "openai"\nmax_retries = -1\n', "providers.x.max_retries: Expected `int` >= 0"),
        ('[providers.x]\ntype = "openai"\ncolour = "red"\n', "providers.x: Object contains unknown field `colour`"),
        ('[providers.x]\ntype = "openai"\n[providers.x.timeouts]\nread_s = 0\n', "providers.x.timeouts.read_s: Expected `float` > 0.0"),
        ('[providers.x]\ntype = "openai"\nheaders = { A = 1 }\n', "providers.x.headers"),
        ('[providers.x]\ntype = "openai"\nbase_url = "localhost:11434"\n', "providers.x.base_url: must start with http"),
        ('[providers.scripted]\ntype = "openai"\n', "providers.scripted: the name 'scripted' is reserved"),
        ('[defaults]\nprovider = "nope"\n', "defaults.provider: unknown provider 'nope'"),
        ('[defaults]\nmodel = 4\n', "defaults.model: Expected `str | null`, got `int`"),
        ("providers = 1\n", "providers: Expected `object`, got `int`"),
        ("debug = true\n", "Object contains unknown field `debug`"),
    ],
)
def test_invalid_config_names_file_and_field(tmp_path: Path, text: str, expected: str) -> None:
    path = write(tmp_path, text)
    with pytest.raises(ConfigError) as info:
        load_config(path, {})
    assert str(info.value).startswith(f"{path}: ")
    assert expected in str(info.value)


def test_missing_explicit_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="not found"):
        load_config(tmp_path / "nope.toml", {})


def test_key_never_in_repr_or_errors(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        f'[providers.p]\ntype = "openai"\nbase_url = "http://p/v1"\napi_key = "{SECRET}"\n'
        f'headers = {{ "X-Proxy-Token" = "{SECRET}-hdr" }}\n',
    )
    config = load_config(path, {"ANTHROPIC_API_KEY": SECRET})
    assert config.providers["p"].has_credential()
    for text in (repr(config), str(config), repr(config.providers), repr(config.providers["p"])):
        assert SECRET not in text
    bad = write(tmp_path, f'[providers.p]\ntype = "openai"\napi_key = "{SECRET}"\nbase_url = 7\n')
    with pytest.raises(ConfigError) as info:
        load_config(bad, {})
    assert SECRET not in str(info.value)
    with pytest.raises(ConfigError) as info2:
        resolve_model(config, "p", None)
    assert SECRET not in str(info2.value) and SECRET not in repr(info2.value.details)


def test_importing_config_does_not_import_the_http_stack() -> None:
    """Config is read at start-up; the HTTP client (and ``ssl``, which it loads) only when a
    provider or an HTTP MCP server is first used."""
    code = (
        "import sys, warren.daemon.config; "
        "print(*(m in sys.modules for m in ('warren.daemon.providers.wire', 'warren.daemon.providers.http', "
        "'ssl', 'httpx', 'httpx_sse')))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["False"] * 5


def test_two_lines_point_at_ollama(tmp_path) -> None:
    """The README's promise: a section with only base_url is an OpenAI-compatible provider."""
    path = tmp_path / "config.toml"
    path.write_text('[providers.ollama]\nbase_url = "http://localhost:11434/v1"\n')
    config = load_config(path, {})
    assert config.providers["ollama"].type == "openai"
    assert config.providers["ollama"].base_url == "http://localhost:11434/v1"
    assert resolve_provider(config, None) == "ollama"
