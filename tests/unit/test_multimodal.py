"""Multimodal arguments (`Text`, `ImgUrl`, `ImgPath`) become image parts of the user
message, as SimpleLLMFunc sends them; checked on the wire against the strict model."""

from __future__ import annotations

import base64
from pathlib import Path
from typing import Any

import pytest

from orchestrator import OpenAICompatible, llm_chat, llm_function
from orchestrator.type import ImgPath, ImgUrl, Text
from tests.fixtures_llm import MockLLMFactory

pytestmark = pytest.mark.timeout(20)

PNG = base64.b64decode(
    "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mP8z8BQDwAEhQGAhKmMIQAAAABJRU5ErkJggg=="
)


async def test_an_llm_function_sends_images_as_parts(
    mock_llm: MockLLMFactory, tmp_path: Path
) -> None:
    server = mock_llm({"strict": True, "fallback": {"content": "a red pixel"}})
    llm = OpenAICompatible(api_keys="k", model_name="scripted", base_url=server.base_url)
    picture = tmp_path / "pixel.png"
    picture.write_bytes(PNG)

    @llm_function(llm_interface=llm)
    async def describe(photo: ImgPath, reference: ImgUrl, question: Text) -> str:
        """Answer the question about the photo."""

    answer = await describe(
        ImgPath(picture, detail="low"), ImgUrl("https://img.test/ref.png"), Text("What is it?")
    )
    await llm.aclose()
    assert answer == "a red pixel"
    (request,) = server.requests()
    assert request["fault"] is None  # a strict server accepts the parts
    parts: list[dict[str, Any]] = request["body"]["messages"][-1]["content"]
    assert parts[0]["type"] == "text"
    assert "question: What is it?" in parts[0]["text"]
    images = [p["image_url"] for p in parts if p["type"] == "image_url"]
    assert images[0] == {
        "url": "data:image/png;base64," + base64.b64encode(PNG).decode(),
        "detail": "low",
    }
    assert images[1] == {"url": "https://img.test/ref.png", "detail": "auto"}
    labels = [p["text"] for p in parts if p["type"] == "text"]
    assert labels[1:] == ["photo:", "reference:"]


async def test_llm_chat_takes_a_list_of_images(mock_llm: MockLLMFactory) -> None:
    server = mock_llm({"fallback": {"content": "two cats"}})
    llm = OpenAICompatible(api_keys="k", model_name="scripted", base_url=server.base_url)

    @llm_chat(llm_interface=llm)
    async def look(message: str, images: list[ImgUrl], history: list[Any] | None = None) -> None:
        """You look at pictures."""

    pictures = [ImgUrl("https://img.test/1.png"), ImgUrl("https://img.test/2.png")]
    async for _ in look("what do you see?", pictures, history=[]):
        pass
    await llm.aclose()
    parts = server.requests()[0]["body"]["messages"][-1]["content"]
    assert parts[0] == {"type": "text", "text": "message: what do you see?"}
    assert [p["image_url"]["url"] for p in parts if p["type"] == "image_url"] == [
        "https://img.test/1.png",
        "https://img.test/2.png",
    ]


def test_invalid_images_are_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="must start with"):
        ImgUrl("ftp://x")
    with pytest.raises(FileNotFoundError):
        ImgPath(tmp_path / "missing.png")
    (tmp_path / "notes.txt").write_text("x")
    with pytest.raises(ValueError, match="Unsupported image format"):
        ImgPath(tmp_path / "notes.txt")
