"""Pure functions of the variational objectives.

Every function here works on per-sample quantities and returns per-sample values (the
estimators average them over a batch), so each can be checked against a hand-computed value.

Notation: a diagonal Gaussian is given by its mean ``mu`` and log-variance ``logvar``
(:math:`\\log s^2`); latent quantities are summed over the last (latent) dimension.
"""

import math

import torch
from torch import Tensor

LOG_2PI = math.log(2.0 * math.pi)


def reparameterize(mu: Tensor, logvar: Tensor, eps: Tensor) -> Tensor:
    """Draw :math:`z = \\mu + s \\epsilon` from :math:`N(\\mu, s^2)` given standard noise.

    The noise is an argument so that callers decide where randomness comes from (the training
    RNG, or one fixed set of draws shared by every row at inference).
    """
    return mu + torch.exp(0.5 * logvar) * eps


def gaussian_log_density(z: Tensor, mu: Tensor, logvar: Tensor) -> Tensor:
    """:math:`\\log N(z; \\mu, s^2)` summed over the last dimension.

    .. math:: -\\frac12 \\sum_j \\left[\\log 2\\pi + \\log s_j^2 + (z_j - \\mu_j)^2 / s_j^2\\right]
    """
    return -0.5 * (LOG_2PI + logvar + (z - mu) ** 2 * torch.exp(-logvar)).sum(-1)


def standard_normal_log_density(z: Tensor) -> Tensor:
    """:math:`\\log N(z; 0, I)` summed over the last dimension."""
    return -0.5 * (LOG_2PI + z**2).sum(-1)


def gaussian_kl(
    mu_q: Tensor, logvar_q: Tensor, mu_p: Tensor | None = None, logvar_p: Tensor | None = None
) -> Tensor:
    """KL divergence between diagonal Gaussians, summed over the last dimension.

    .. math::
        KL(N(\\mu_q, s_q^2) \\| N(\\mu_p, s_p^2)) = \\frac12 \\sum_j \\left[
        \\log \\frac{s_{p,j}^2}{s_{q,j}^2} + \\frac{s_{q,j}^2 + (\\mu_{q,j} - \\mu_{p,j})^2}
        {s_{p,j}^2} - 1 \\right]

    With ``mu_p`` and ``logvar_p`` left out, the prior is :math:`N(0, I)`.
    """
    if mu_p is None:
        return 0.5 * (torch.exp(logvar_q) + mu_q**2 - 1.0 - logvar_q).sum(-1)
    return 0.5 * (
        logvar_p
        - logvar_q
        + (torch.exp(logvar_q) + (mu_q - mu_p) ** 2) * torch.exp(-logvar_p)
        - 1.0
    ).sum(-1)


def negative_elbo(log_likelihood: Tensor, kl: Tensor, beta: float = 1.0) -> Tensor:
    """Per-sample beta-VAE loss :math:`-\\log p(x|z) + \\beta\\, KL(q \\| p)`."""
    return -log_likelihood + beta * kl


def importance_weighted_log_likelihood(log_weights: Tensor) -> Tensor:
    """Importance-weighted estimate of :math:`\\log p(x)` from K log weights.

    .. math:: \\log p(x) \\approx \\log \\frac1K \\sum_{k=1}^K \\exp w_k, \\quad
        w_k = \\log p(x|z_k) + \\log p(z_k) - \\log q(z_k|x), \\; z_k \\sim q(z|x)

    Parameters
    ----------
    log_weights : Tensor of shape (K, n_samples)
        One row per importance draw.

    Returns
    -------
    Tensor of shape (n_samples,)
    """
    return torch.logsumexp(log_weights, dim=0) - math.log(log_weights.shape[0])
