"""Networks: the DDPM U-Net for images, a Fourier-feature MLP for low-dimensional data, and
the paper authors' DDPM U-Net, rebuilt with their parameter names (``reference_unet``)."""

from memgen.diffusion.nets.mlp import GaussianFourierEmbedding, ScoreMLP
from memgen.diffusion.nets.presets import PRESETS, NetConfig, count_parameters, get_preset
from memgen.diffusion.nets.reference_unet import ReferenceConfig, ReferenceUNet
from memgen.diffusion.nets.unet import UNet, timestep_embedding

__all__ = [
    "GaussianFourierEmbedding",
    "NetConfig",
    "PRESETS",
    "ReferenceConfig",
    "ReferenceUNet",
    "ScoreMLP",
    "UNet",
    "count_parameters",
    "get_preset",
    "timestep_embedding",
]
