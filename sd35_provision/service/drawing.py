"""What generations and edits share when they draw: seeded noise and PNG bytes."""

from __future__ import annotations

import io
from typing import Any


def seeded_generators(seed: int, n: int) -> list[Any]:
    """One generator per image (seed, seed + 1, ...)."""
    import torch

    # CPU generators: the same seed gives the same noise whatever the device.
    return [torch.Generator(device="cpu").manual_seed(seed + i) for i in range(n)]


def encode_png(image: Any) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()
