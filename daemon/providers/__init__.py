"""Which providers exist and how a session's provider is chosen.

Provider modules are imported on first use, so HTTP libraries never slow start-up.
"""

from __future__ import annotations

from typing import Any

import msgspec

from .. import errors
from .base import Provider


def _params_error(exc: msgspec.ValidationError, prefix: str) -> errors.InvalidRequest:
    from protocol.validation import split_message

    message, path = split_message(str(exc))
    return errors.InvalidRequest.at(prefix + path[1:], message)


class ProviderRegistry:
    def __init__(self) -> None:
        self._instances: dict[str, Provider] = {}

    def names(self) -> list[str]:
        return ["scripted"]

    def resolve(self, requested: str | None) -> str:
        """The provider a new session uses. Until HTTP providers are configured, an unnamed
        provider means ``scripted``."""
        name = requested or "scripted"
        if name not in self.names():
            raise errors.InvalidRequest.at(
                "$.provider", f"unknown provider {name!r}; known providers: {', '.join(self.names())}"
            )
        return name

    def get(self, name: str) -> Provider:
        provider = self._instances.get(name)
        if provider is None:
            if name != "scripted":
                raise errors.Agent(f"Provider {name!r} is not available in this daemon")
            from .scripted import ScriptedProvider

            provider = self._instances[name] = ScriptedProvider()
        return provider

    def check_params(self, name: str, provider_params: dict[str, Any] | None, path: str) -> None:
        """Reject provider_params the provider cannot use, before anything is stored."""
        if name == "scripted":
            from .scripted import ScriptedProvider

            try:
                ScriptedProvider.parse_params(provider_params)
            except msgspec.ValidationError as exc:
                raise _params_error(exc, path) from None
