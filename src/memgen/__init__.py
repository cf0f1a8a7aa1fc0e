"""memgen: memorization, spurious states and generalization in diffusion models.

An implementation of "Memorization to Generalization: Emergence of Diffusion Models
from Associative Memory" (Pham, Raya, Negri, Zaki, Ambrogioni, Krotov; arXiv 2505.21777).
"""

__version__ = "0.1.0"

from memgen.metrics.knn import knn  # noqa: E402

__all__ = ["knn", "__version__"]
