"""Variational autoencoders as scikit-learn estimators, trained with PyTorch Lightning."""

from .crmvae import CRMVAE
from .cvae import CVAE
from .persistence import load
from .vae import VAE

__all__ = ["VAE", "CVAE", "CRMVAE", "load"]
__version__ = "0.1.0"
