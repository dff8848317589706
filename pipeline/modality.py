"""Input modalities (text, image, audio): the one place that knows how each is held and moved.

(Being filled in: see issue 13. `modality_of` is the stable entry point.)
"""

from __future__ import annotations

BACKBONE_KIND_MODALITY = {"causal": "text", "encoder": "text", "vision": "image", "audio": "audio"}


def modality_of(kind: str) -> str:
    """The input modality a backbone kind embeds."""
    return BACKBONE_KIND_MODALITY[kind]
