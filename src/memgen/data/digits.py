"""The 8 x 8 digits bundled with scikit-learn (1797 images, grey levels 0..16)."""

from __future__ import annotations

import numpy as np

from memgen.data.types import LabelledImages


def load_digits() -> LabelledImages:
    """Images (1797, 1, 8, 8) float32 in [-1, 1] (level v -> v / 8 - 1) and labels int64.

    Needs scikit-learn: ``pip install scikit-learn``.
    """
    try:
        # optional: the digits extra
        from sklearn.datasets import load_digits as sklearn_load_digits
    except ImportError:
        raise ImportError(
            "the digits data set needs scikit-learn: pip install scikit-learn"
        ) from None
    bunch = sklearn_load_digits()
    images = bunch.images.astype(np.float32)[:, None] / np.float32(8.0) - np.float32(1.0)
    return LabelledImages(images, bunch.target.astype(np.int64))
