"""Multimodal argument types at the import path SimpleLLMFunc users know.

`from SimpleLLMFunc.type import ImgPath, ImgUrl, Text` becomes
`from orchestrator.type import ImgPath, ImgUrl, Text` (see runtime/multimodal.py).
"""

from __future__ import annotations

from orchestrator.runtime.multimodal import ImgPath, ImgUrl, MultimodalContent, MultimodalList, Text

__all__ = ["ImgPath", "ImgUrl", "MultimodalContent", "MultimodalList", "Text"]
