"""Variational autoencoders as scikit-learn estimators, trained with PyTorch Lightning."""

from .cvae import CVAE
from .vae import VAE

__all__ = ["VAE", "CVAE"]
__version__ = "0.1.0"
