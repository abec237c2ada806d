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
    # the mean's term as a square of a scaled difference: exp(-logvar_p) overflows float32
    # once logvar_p < -88 (a sharp expert on thousands of voxels reached -92), and then
    # 0 * inf is NaN where the two means agree (a joint of one expert is that expert)
    return 0.5 * (
        logvar_p
        - logvar_q
        + torch.exp(logvar_q - logvar_p)
        + ((mu_q - mu_p) * torch.exp(-0.5 * logvar_p)) ** 2
        - 1.0
    ).sum(-1)


def product_of_experts(mu: Tensor, logvar: Tensor, observed: Tensor) -> tuple[Tensor, Tensor]:
    """Product of the observed Gaussian experts (no prior expert), normalised.

    .. math::
        \\frac{1}{s_J^2} = \\sum_{m\\ \\mathrm{observed}} \\frac{1}{s_m^2}, \\qquad
        \\mu_J = s_J^2 \\sum_{m\\ \\mathrm{observed}} \\frac{\\mu_m}{s_m^2}

    Parameters
    ----------
    mu, logvar : Tensor of shape (M, n_samples, latent_dim)
        The M experts' means and log-variances.
    observed : bool Tensor of shape (M, n_samples)
        Which experts enter each row's product; every row needs at least one. A left-out
        expert's values never reach the result, nor its gradient (even if they are not finite).

    Returns
    -------
    mu, logvar : Tensor of shape (n_samples, latent_dim)
    """
    observed = observed[..., None]
    # In log space: precisions exp(-logvar) overflow float32 once logvar < -88, whereas
    # log s_J^2 = -logsumexp(-log s_m^2) and the weights s_J^2 / s_m^2 = softmax(-log s_m^2)
    # stay finite. Masking by where (not by multiplication) keeps a left-out expert's
    # non-finite values out of the result and of the gradients.
    log_precision = torch.where(observed, -logvar, -math.inf)
    weights = torch.softmax(log_precision, dim=0)
    mu_joint = (weights * torch.where(observed, mu, 0.0)).sum(0)
    return mu_joint, -torch.logsumexp(log_precision, dim=0)


def log_mean_exp(log_values: Tensor, n: int | None = None) -> Tensor:
    """:math:`\\log \\frac1n \\sum_k \\exp v_k` over the first dimension, computed stably:
    the importance-weighted estimate of :math:`\\log p(x)` from K log weights

    .. math:: \\log p(x) \\approx \\log \\frac1K \\sum_{k=1}^K \\exp w_k, \\quad
        w_k = \\log p(x|z_k) + \\log p(z_k) - \\log q(z_k|x), \\; z_k \\sim q(z|x)

    Parameters
    ----------
    log_values : Tensor of shape (K, ...)
        One row per draw, or one per chunk of draws holding the chunk's log-sum-exp.
    n : int, optional
        The number of draws the rows stand for; by default the number of rows.

    Returns
    -------
    Tensor of shape log_values.shape[1:]
    """
    return torch.logsumexp(log_values, dim=0) - math.log(len(log_values) if n is None else n)
