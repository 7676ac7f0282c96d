"""A ``tools/call`` result as the text a model reads."""

from __future__ import annotations

from typing import Any

import msgspec

from .types import McpCallResult

_encoder = msgspec.json.Encoder()


def _b64_size(data: Any) -> int:
    """Decoded size of a base64 string, without decoding it."""
    if not isinstance(data, str):
        return 0
    n = len(data.rstrip("\r\n"))
    return max(0, n * 3 // 4 - data.rstrip("\r\n")[-2:].count("="))


def _summary(item: dict[str, Any]) -> tuple[str, bool]:
    """One content item as text, and whether it is text the model can read."""
    kind = item.get("type")
    if kind == "text":
        text = item.get("text")
        return (text if isinstance(text, str) else ""), True
    if kind in ("image", "audio"):
        return f"[{kind} {item.get('mimeType') or 'unknown type'}, {_b64_size(item.get('data'))} bytes]", False
    if kind == "resource_link":
        name = item.get("title") or item.get("name")
        label = f"{name} " if isinstance(name, str) and name else ""
        return f"[resource link {label}<{item.get('uri', '')}>]", False
    if kind == "resource":
        resource = item.get("resource") if isinstance(item.get("resource"), dict) else {}
        text = resource.get("text")
        if isinstance(text, str):
            return text, True
        mime = resource.get("mimeType") or "unknown type"
        return f"[resource {resource.get('uri', '')} {mime}, {_b64_size(resource.get('blob'))} bytes]", False
    return f"[{kind if isinstance(kind, str) else 'unknown'} content]", False


def to_call_result(server: str, tool: str, result: Any) -> McpCallResult:
    if not isinstance(result, dict):
        return McpCallResult(f"MCP server {server!r}: tool {tool!r} answered with an invalid result", True)
    items = result.get("content")
    parts: list[str] = []
    images: list[tuple[str, str]] = []
    has_text = False
    if isinstance(items, list):
        for item in items:
            if isinstance(item, dict):
                text, is_text = _summary(item)
                parts.append(text)
                has_text = has_text or is_text
                if item.get("type") == "image" and isinstance(item.get("data"), str):
                    images.append((str(item.get("mimeType") or "image/png"), item["data"]))
    structured = result.get("structuredContent")
    if not has_text and structured is not None:
        parts.insert(0, _encoder.encode(structured).decode())
    return McpCallResult("\n".join(parts), result.get("isError") is True, images)
