"""Image transforms applied when a data set is prepared for a model."""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from memgen.errors import UserError


def resize_images(images: np.ndarray, size: int) -> np.ndarray:
    """Resize (N, C, H, W) images to size × size (bilinear with antialiasing), same range."""
    if images.ndim != 4:
        raise UserError(f"expected images of shape (N, C, H, W), got {images.shape}")
    if images.shape[-2:] == (size, size):
        return images
    x = torch.from_numpy(np.ascontiguousarray(images, dtype=np.float32))
    out = F.interpolate(x, size=(size, size), mode="bilinear", antialias=True,
                        align_corners=False)
    return out.clamp(-1, 1).numpy()
