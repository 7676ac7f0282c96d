"""Prompts with images: decoding and checking them at the door, and the blocks history keeps.

An image is checked (a known type, valid base64, at most ``MAX_IMAGE_BYTES``) before anything
is written, hashed, and stored once per hash (``store.blobs``); the message holds only an
``ImageBlock`` naming it. Providers are handed the bytes when a request is built.
"""

from __future__ import annotations

import base64
import binascii
import hashlib

from warren.protocol import MAX_IMAGE_BYTES
from warren.protocol.types import Block, ImageBlock, ImageInput, Message, Prompt, TextBlock, TextInput, ToolResultBlock

from .. import errors

Blob = tuple[str, str, bytes]  # sha256, mime type, bytes


def prompt_blocks(prompt: Prompt | None, path: str = "$.prompt") -> tuple[list[Block], list[Blob]]:
    """A prompt as message blocks, and the images to store. A string is one text block."""
    if prompt is None:
        return [], []
    if isinstance(prompt, str):
        return ([TextBlock(prompt)] if prompt else []), []
    blocks: list[Block] = []
    blobs: list[Blob] = []
    for i, item in enumerate(prompt):
        if isinstance(item, TextInput):
            blocks.append(TextBlock(item.text))
            continue
        assert isinstance(item, ImageInput)
        block, blob = decode(item, f"{path}[{i}]")
        blocks.append(block)
        blobs.append(blob)
    return blocks, blobs


def decode(item: ImageInput, path: str) -> tuple[ImageBlock, Blob]:
    """One image of a request, checked: ``path`` names it in errors."""
    try:
        data = base64.b64decode(item.data, validate=True)
    except (binascii.Error, ValueError):
        raise errors.InvalidRequest.at(f"{path}.data", "not valid base64") from None
    if len(data) > MAX_IMAGE_BYTES:
        raise errors.InvalidRequest.at(
            f"{path}.data", f"the image has {len(data)} bytes; limits.max_image_bytes is {MAX_IMAGE_BYTES}"
        )
    if not data:
        raise errors.InvalidRequest.at(f"{path}.data", "the image is empty")
    sha = hashlib.sha256(data).hexdigest()
    return ImageBlock(item.mime_type, sha, len(data)), (sha, item.mime_type, data)


def text_of(prompt: Prompt | None) -> str:
    """The text parts of a prompt (for a title, a log line)."""
    if prompt is None or isinstance(prompt, str):
        return prompt or ""
    return "\n\n".join(p.text for p in prompt if isinstance(p, TextInput))


def image_hashes(messages: list[Message]) -> list[str]:
    """Every image the messages name: in prompts, and in tool results."""
    found: set[str] = set()
    for m in messages:
        for b in m.content:
            if isinstance(b, ImageBlock):
                found.add(b.sha256)
            elif isinstance(b, ToolResultBlock) and b.images:
                found.update(i.sha256 for i in b.images)
    return sorted(found)


def tool_images(items: list[tuple[str, str]]) -> tuple[list[ImageBlock], list[Blob], str | None]:
    """A tool result's images ``(mime type, base64)``: the blocks and blobs, or why they
    cannot be kept (the result then says so instead of carrying them)."""
    blocks: list[ImageBlock] = []
    blobs: list[Blob] = []
    for mime, data in items:
        if mime not in ("image/png", "image/jpeg", "image/gif", "image/webp"):
            return [], [], f"an image of type {mime!r} (png, jpeg, gif or webp are kept)"
        try:
            raw = base64.b64decode(data, validate=True)
        except (binascii.Error, ValueError):
            return [], [], "an image that is not valid base64"
        if not raw or len(raw) > MAX_IMAGE_BYTES:
            return [], [], f"an image of {len(raw)} bytes (at most {MAX_IMAGE_BYTES})"
        sha = hashlib.sha256(raw).hexdigest()
        blobs.append((sha, mime, raw))
        blocks.append(ImageBlock(mime, sha, len(raw)))
    return blocks, blobs, None
