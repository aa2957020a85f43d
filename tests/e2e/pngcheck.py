"""Is a screenshot a picture of something? Its size from the PNG header, and its colours
counted by decoding it in a blank browser page (a canvas), so the browser tests need no
imaging library and no slow pure-Python PNG decoding."""

from __future__ import annotations

import asyncio
import base64
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Any

__all__ = ["ImageStats", "image_stats"]

_SIGNATURE = b"\x89PNG\r\n\x1a\n"

_COUNT_COLOURS = """
async (url) => {
  const image = new Image();
  image.src = url;
  await image.decode();
  const canvas = document.createElement("canvas");
  canvas.width = image.naturalWidth;
  canvas.height = image.naturalHeight;
  const context = canvas.getContext("2d");
  context.drawImage(image, 0, 0);
  const pixels = context.getImageData(0, 0, canvas.width, canvas.height).data;
  const counts = new Map();
  let sampled = 0;
  for (let i = 0; i < pixels.length; i += 4 * 5) {
    const key = (pixels[i] << 16) | (pixels[i + 1] << 8) | pixels[i + 2];
    counts.set(key, (counts.get(key) || 0) + 1);
    sampled += 1;
  }
  return [counts.size, Math.max(...counts.values()) / sampled];
}
"""


@dataclass(frozen=True)
class ImageStats:
    width: int
    height: int
    bytes: int
    colours: int  # distinct colours among the sampled pixels
    dominant_share: float  # share of the sampled pixels in the commonest colour

    @property
    def blank(self) -> bool:
        """One colour nearly everywhere: an empty or unrendered page."""
        return self.colours < 16 or self.dominant_share > 0.97


async def image_stats(browser: Any, path: Path) -> ImageStats:
    data = await asyncio.to_thread(path.read_bytes)
    if not data.startswith(_SIGNATURE) or data[12:16] != b"IHDR":
        raise ValueError(f"{path} is not a PNG")
    width, height = struct.unpack(">II", data[16:24])
    page = await browser.new_page()
    try:
        url = "data:image/png;base64," + base64.b64encode(data).decode()
        colours, dominant = await page.evaluate(_COUNT_COLOURS, url)
    finally:
        await page.close()
    return ImageStats(width, height, len(data), int(colours), float(dominant))
