"""Networks: the DDPM U-Net for images and a Fourier-feature MLP for low-dimensional data."""

from memgen.diffusion.nets.mlp import GaussianFourierEmbedding, ScoreMLP
from memgen.diffusion.nets.presets import PRESETS, NetConfig, count_parameters, get_preset
from memgen.diffusion.nets.unet import UNet, timestep_embedding

__all__ = [
    "GaussianFourierEmbedding",
    "NetConfig",
    "PRESETS",
    "ScoreMLP",
    "UNet",
    "count_parameters",
    "get_preset",
    "timestep_embedding",
]
