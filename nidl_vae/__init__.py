"""Variational autoencoders as scikit-learn estimators, trained with PyTorch Lightning."""

from .vae import VAE

__all__ = ["VAE"]
__version__ = "0.1.0"
