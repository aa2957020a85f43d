"""Multimodal arguments (SimpleLLMFunc's `Text`, `ImgUrl`, `ImgPath`).

Annotate a parameter of an `llm_chat` / `llm_function` with them (or pass them) and the
user message becomes a content list: the text lines of the other arguments, then per
image a `name:` text part and an `image_url` part (a local file is sent as a data URL).

    @llm_function(llm_interface=llm)
    async def describe(photo: ImgPath, question: Text) -> str:
        '''Answer the question about the photo.'''

    await describe(ImgPath("cat.png"), Text("What colour is it?"))

Images are read in-process; arguments submitted to workers are JSON, so there an image
is passed as an `ImgUrl` string (`https://` or `data:`) in the arguments instead.
"""

from __future__ import annotations

import base64
from collections.abc import Mapping
from pathlib import Path
from typing import Any

__all__ = [
    "ImgPath",
    "ImgUrl",
    "MultimodalContent",
    "MultimodalList",
    "Text",
    "split_images",
    "user_content",
]

_DETAILS = ("low", "high", "auto")
_MIME = {
    ".jpg": "image/jpeg",
    ".jpeg": "image/jpeg",
    ".png": "image/png",
    ".gif": "image/gif",
    ".bmp": "image/bmp",
    ".webp": "image/webp",
}


class Text:
    """Text content (renders as its text)."""

    def __init__(self, content: str) -> None:
        self.content = content

    def __str__(self) -> str:
        return self.content

    def __repr__(self) -> str:
        return f"Text({self.content!r})"


class ImgUrl:
    """An image by URL (`http://`, `https://` or a `data:` URL)."""

    def __init__(self, url: str, detail: str = "auto") -> None:
        if not url.startswith(("http://", "https://", "data:")):
            raise ValueError("Image URL must start with http://, https://, or data:")
        if detail not in _DETAILS:
            raise ValueError("detail must be 'low', 'high', or 'auto'")
        self.url = url
        self.detail = detail

    def __str__(self) -> str:
        return self.url

    def __repr__(self) -> str:
        return f"ImgUrl({self.url!r}, detail={self.detail!r})"

    def part(self) -> dict[str, Any]:
        return {"type": "image_url", "image_url": {"url": self.url, "detail": self.detail}}


class ImgPath:
    """A local image file, sent as a base64 data URL."""

    def __init__(self, path: str | Path, detail: str = "auto") -> None:
        self.path = Path(path)
        if not self.path.exists():
            raise FileNotFoundError(f"Image file not found: {path}")
        if not self.path.is_file():
            raise ValueError(f"Path is not a file: {path}")
        if detail not in _DETAILS:
            raise ValueError("detail must be 'low', 'high', or 'auto'")
        if self.path.suffix.lower() not in _MIME:
            raise ValueError(f"Unsupported image format: {self.path.suffix}")
        self.detail = detail

    def __str__(self) -> str:
        return str(self.path)

    def __repr__(self) -> str:
        return f"ImgPath({self.path!r}, detail={self.detail!r})"

    def to_base64(self) -> str:
        return base64.b64encode(self.path.read_bytes()).decode("ascii")

    def get_mime_type(self) -> str:
        return _MIME.get(self.path.suffix.lower(), "image/jpeg")

    def part(self) -> dict[str, Any]:
        url = f"data:{self.get_mime_type()};base64,{self.to_base64()}"
        return {"type": "image_url", "image_url": {"url": url, "detail": self.detail}}


MultimodalContent = Text | ImgUrl | ImgPath
MultimodalList = list[MultimodalContent]


def _images(value: Any) -> list[ImgUrl | ImgPath] | None:
    if isinstance(value, ImgUrl | ImgPath):
        return [value]
    if (
        isinstance(value, list | tuple)
        and value
        and all(isinstance(v, MultimodalContent) for v in value)
    ):
        found = [v for v in value if isinstance(v, ImgUrl | ImgPath)]
        return found or None
    return None


def split_images(
    arguments: Mapping[str, Any],
) -> tuple[dict[str, Any], list[tuple[str, list[ImgUrl | ImgPath], list[str]]]]:
    """(the arguments without images, [(name, images, texts of that argument)])."""
    plain: dict[str, Any] = {}
    images: list[tuple[str, list[ImgUrl | ImgPath], list[str]]] = []
    for name, value in arguments.items():
        found = _images(value)
        if found is None:
            plain[name] = value
            continue
        texts = (
            [str(v) for v in value if isinstance(v, Text)]
            if isinstance(value, list | tuple)
            else []
        )
        images.append((name, found, texts))
    return plain, images


def user_content(
    text: str, images: list[tuple[str, list[ImgUrl | ImgPath], list[str]]]
) -> str | list[dict[str, Any]]:
    """The user message's content: `text` alone, or text and image parts."""
    if not images:
        return text
    parts: list[dict[str, Any]] = [{"type": "text", "text": text}] if text else []
    for name, found, texts in images:
        label = f"{name}: {' '.join(texts)}" if texts else f"{name}:"
        parts.append({"type": "text", "text": label})
        parts.extend(image.part() for image in found)
    return parts
