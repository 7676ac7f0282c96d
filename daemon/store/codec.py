"""How the store encodes JSON columns: one encoder and one decoder per column type."""

from __future__ import annotations

from typing import Any

import msgspec

from warren.protocol.types import Block, ToolDef

_enc = msgspec.json.Encoder()
BLOCKS = msgspec.json.Decoder(list[Block])
TOOLS = msgspec.json.Decoder(list[ToolDef])
LABELS = msgspec.json.Decoder(dict[str, str])
ANY = msgspec.json.Decoder()


def dumps(value: Any) -> str:
    return _enc.encode(value).decode()
