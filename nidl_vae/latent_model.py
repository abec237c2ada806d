"""The contract of a model's math: a plain ``torch.nn.Module`` with named inputs and outputs.

A model (``VAEModel`` for the VAE and the CVAE, ``CRMVAEModel``) knows its networks and its
equations, nothing of Lightning or scikit-learn. It reads a **batch**, a dict of tensors named
by what they hold:

``"x"``
    rows of the data (NaN where a cell, or a CRMVAE's whole modality, is missing);
``"c"``
    a CVAE's encoded conditions, one row per row of ``"x"`` or ``"z"``;
``"observed"``
    a CRMVAE's (n_rows, M) mask of the modalities each row has;
``"z"``
    latent rows to decode;
``"eps"``
    standard normal noise, one row per row (a stochastic ``transform``, a prior draw);
``"index"``
    each row's position in the input (put back in order after a distributed prediction).

and answers with named outputs: a :class:`Gaussian` for a posterior or prior, a dict of loss
terms keyed by ``loss_names``, a :class:`DrawLikelihood` for :math:`\\log p(x|z)` over many
latent draws. The Lightning side (:mod:`nidl_vae.module`) writes the ELBO, the
importance-weighted likelihood and imputation once, from these.
"""

from abc import ABC, abstractmethod
from collections.abc import Callable
from typing import NamedTuple

from torch import Tensor, nn

from .objectives import gaussian_kl, gaussian_log_density, reparameterize

Batch = dict[str, Tensor]
# standard normal noise of a shape, on and in the dtype of a tensor (the module's own generator)
Noise = Callable[[tuple[int, ...], Tensor], Tensor]


class Gaussian(NamedTuple):
    """A diagonal Gaussian :math:`N(\\mu, \\mathrm{diag}\\, s^2)` per row."""

    mu: Tensor
    logvar: Tensor

    def sample(self, eps: Tensor) -> Tensor:
        """:math:`z = \\mu + s \\odot \\epsilon`, for noise of the rows' shape or with leading
        draw dimensions (k, B, D)."""
        return reparameterize(self.mu, self.logvar, eps)

    def log_density(self, z: Tensor) -> Tensor:
        """:math:`\\log N(z; \\mu, s^2)` summed over the latent dimension."""
        return gaussian_log_density(z, self.mu, self.logvar)

    def kl(self, prior: "Gaussian | None") -> Tensor:
        """:math:`KL(self \\| prior)` per row; None is :math:`N(0, I)`."""
        if prior is None:
            return gaussian_kl(self.mu, self.logvar)
        return gaussian_kl(self.mu, self.logvar, prior.mu, prior.logvar)


class DrawLikelihood(ABC):
    """:math:`\\log p(x|z)` of one batch's rows for many latent draws ``z`` of shape
    (k, B, D); what a row needs for every draw is computed once, when it is made."""

    @abstractmethod
    def log_prob(self, z: Tensor) -> Tensor:
        """:math:`\\log p(x|z_k)` of each draw and row, shape (k, B)."""

    @abstractmethod
    def log_prob_and_means(self, z: Tensor) -> tuple[Tensor, Tensor]:
        """:math:`\\log p(x|z_k)` (k, B) and the decoded means of every cell (k, B, p), from
        one pass of the decoder."""


class LatentModel(nn.Module, ABC):
    """A latent variable model's math.

    Attributes
    ----------
    loss_names : tuple of str
        The loss terms :meth:`loss_terms` returns, the total first; ``history_`` and the
        logged metrics keep one column per name.
    imputes_by_importance : bool
        Whether imputation weighs the posterior draws by their importance weights
        :math:`p(x_{\\mathrm{obs}}|z) p(z) / q(z|x_{\\mathrm{obs}})` (True), or averages them
        with equal weights.
    latent_dim : int
    """

    loss_names: tuple[str, ...] = ("loss", "reconstruction", "kl")
    imputes_by_importance: bool = True
    latent_dim: int

    @abstractmethod
    def loss_terms(self, batch: Batch, noise: Noise) -> dict[str, Tensor]:
        """The batch means of the training loss and its parts, keyed by ``loss_names``."""

    @abstractmethod
    def posterior(self, batch: Batch) -> Gaussian:
        """:math:`q(z|x)` of each row (for a CRMVAE, of the modalities marked observed)."""

    def prior_distribution(self, batch: Batch) -> Gaussian | None:
        """:math:`p(z)` of each row (a CVAE's :math:`p(z|c)`); None for :math:`N(0, I)`."""
        return None

    @abstractmethod
    def draw_likelihood(self, batch: Batch) -> DrawLikelihood:
        """:math:`\\log p(x|z)` of the batch's rows, for many draws."""

    def posterior_likelihood(self, batch: Batch) -> DrawLikelihood:
        """The likelihood the posterior of the batch's rows is fitted to: :meth:`draw_likelihood`,
        unless the training loss weighs some terms (a CRMVAE's rescale factors)."""
        return self.draw_likelihood(batch)

    @abstractmethod
    def decode(self, batch: Batch) -> Tensor:
        """The mean of :math:`p(x|z)` for each latent row ``batch["z"]``, flattened."""
