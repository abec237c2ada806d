"""VAE: the variational autoencoder as a scikit-learn transformer.

The model (Kingma & Welling 2014; beta-VAE, Higgins et al. 2017):

.. math::
    z \\sim p(z) = N(0, I), \\qquad x \\mid z \\sim p_\\theta(x \\mid z), \\qquad
    q_\\phi(z \\mid x) = N(\\mu_\\phi(x), \\mathrm{diag}\\, s^2_\\phi(x))

trained by minimising, per sample, with one reparameterised draw
:math:`z = \\mu + s \\odot \\epsilon`:

.. math::
    \\mathcal{L}(x) = -\\mathbb{E}_{q_\\phi(z|x)} \\log p_\\theta(x \\mid z)
    + \\beta\\, KL(q_\\phi(z \\mid x) \\,\\|\\, N(0, I))
"""

from numbers import Integral

import numpy as np
import torch
from sklearn.base import _fit_context
from sklearn.utils._param_validation import Interval, StrOptions
from sklearn.utils.validation import check_array, check_is_fitted
from torch import Tensor, nn

from .base import BaseVAEEstimator, draw_seed, private_copy
from .data import as_tensor
from .distributions import DecoderLikelihood, check_data_fits, data_scale
from .module import BaseVAEModule, over_draws
from .networks import GaussianEncoder, mlp, output_width
from .objectives import (
    gaussian_kl,
    gaussian_log_density,
    importance_weighted_log_likelihood,
    reparameterize,
    standard_normal_log_density,
)


def _check_positive_int(value, name: str) -> None:
    if not isinstance(value, Integral) or value < 1:
        raise ValueError(f"{name} must be a positive integer; got {value!r}.")


class VAEModule(BaseVAEModule):
    """The VAE's math as a LightningModule, optionally conditional (the CVAE's module too).

    A batch is ``(x,)``, or ``(x, c)`` with conditions ``c``; then the encoder is
    :math:`q(z|x, c)`, the decoder :math:`p(x|z, c)` reads ``[z, c]`` and the prior is
    :math:`p(z|c)` from ``prior`` (or :math:`N(0, I)` when ``prior`` is None):

    .. math:: \\mathcal{L} = -\\log p(x|z, c) + \\beta\\, KL(q(z|x, c) \\| p(z|c)),
        \\quad z = \\mu + s \\odot \\epsilon

    Parameters
    ----------
    encoder : GaussianEncoder
        Maps x (``[x, c]`` when ``encoder_reads_conditions``), and c, to the posterior's mean
        and log-variance.
    decoder : nn.Module
        Maps z (``[z, c]`` with conditions) to the likelihood's location or logits; its output
        is flattened per row.
    likelihood : DecoderLikelihood
        The family of :math:`p(x|z)` and its scale.
    beta : float
        Weight of the KL term in the training loss.
    lr, weight_decay, max_epochs
        See :class:`~nidl_vae.module.BaseVAEModule`.
    prior : GaussianEncoder, optional
        Maps c to the conditional prior's mean and log-variance.
    encoder_reads_conditions : bool, default=False
        Whether the encoder's backbone reads ``[x, c]`` (the default MLP) or x alone (a user's
        module, e.g. a CNN); the heads always read c.
    """

    def __init__(
        self,
        encoder: GaussianEncoder,
        decoder: nn.Module,
        likelihood: DecoderLikelihood,
        beta: float,
        lr: float,
        weight_decay: float,
        max_epochs: int,
        prior: GaussianEncoder | None = None,
        encoder_reads_conditions: bool = False,
    ):
        super().__init__(("loss", "reconstruction", "kl"), lr, weight_decay, max_epochs)
        self.encoder = encoder
        self.decoder = decoder
        self.likelihood = likelihood
        self.beta = beta
        self.prior = prior
        self.encoder_reads_conditions = encoder_reads_conditions

    def encode(self, x: Tensor, c: Tensor | None) -> tuple[Tensor, Tensor]:
        if c is None:
            return self.encoder(x)
        return self.encoder(torch.cat([x, c], 1) if self.encoder_reads_conditions else x, c)

    def decode(self, z: Tensor, c: Tensor | None = None) -> Tensor:
        if c is not None:
            z = torch.cat([z, c.expand(*z.shape[:-1], c.shape[-1])], -1)
        return self.decoder(z).flatten(1)

    def prior_params(self, c: Tensor | None) -> tuple[Tensor | None, Tensor | None]:
        """Mean and log-variance of :math:`p(z|c)`; (None, None) for :math:`N(0, I)`."""
        return (None, None) if self.prior is None or c is None else self.prior(c)

    def loss_terms(self, batch: tuple[Tensor, ...]) -> Tensor:
        x, c = _split(batch)
        mu, logvar = self.encode(x, c)
        z = reparameterize(mu, logvar, torch.randn_like(mu))
        reconstruction = -self.likelihood.log_prob(x, self.decode(z, c)).mean()
        kl = gaussian_kl(mu, logvar, *self.prior_params(c)).mean()
        return torch.stack([reconstruction + self.beta * kl, reconstruction, kl])

    def transform_step(self, batch: tuple[Tensor, ...]) -> tuple[Tensor, Tensor]:
        return self.encode(*_split(batch))

    def _log_prob_draws(self, x: Tensor, c: Tensor | None, z: Tensor) -> Tensor:
        """:math:`\\log p(x|z_k, c)` for latent draws ``z`` of shape (K, B, D): shape (K, B)."""

        def log_prob(chunk: Tensor) -> Tensor:
            flat_c = None if c is None else c.repeat(len(chunk), 1)
            loc = self.decode(chunk.flatten(0, 1), flat_c)
            return self.likelihood.log_prob(x, loc.unflatten(0, chunk.shape[:2]))

        return over_draws(log_prob, z)

    def elbo_step(self, batch: tuple[Tensor, ...], eps: Tensor) -> Tensor:
        """Per-row ELBO at beta = 1, averaged over the K shared noise draws ``eps`` (K, D)."""
        x, c = _split(batch)
        mu, logvar = self.encode(x, c)
        z = reparameterize(mu, logvar, eps[:, None, :])
        kl = gaussian_kl(mu, logvar, *self.prior_params(c))
        return self._log_prob_draws(x, c, z).mean(0) - kl

    def log_likelihood_step(self, batch: tuple[Tensor, ...], eps: Tensor) -> Tensor:
        """Importance-weighted :math:`\\log p(x|c)` with the posterior as proposal."""
        x, c = _split(batch)
        mu, logvar = self.encode(x, c)
        z = reparameterize(mu, logvar, eps[:, None, :])
        mu_p, logvar_p = self.prior_params(c)
        log_prior = (
            standard_normal_log_density(z)
            if mu_p is None
            else gaussian_log_density(z, mu_p, logvar_p)
        )
        log_w = self._log_prob_draws(x, c, z) + log_prior - gaussian_log_density(z, mu, logvar)
        return importance_weighted_log_likelihood(log_w)

    def decode_step(self, batch: tuple[Tensor, ...]) -> Tensor:
        """The mean of :math:`p(x|z, c)` for each latent row (``batch`` is (z,) or (z, c))."""
        return self.likelihood.mean(self.decode(*_split(batch)))

    def prior_step(self, batch: tuple[Tensor, ...]) -> tuple[Tensor, Tensor]:
        """Mean and log-variance of :math:`p(z|c)` for each row of conditions."""
        (c,) = batch
        mu, logvar = self.prior_params(c)
        if mu is None:
            zeros = c.new_zeros(len(c), self.encoder.mu.out_features)
            return zeros, zeros
        return mu, logvar


def _split(batch: tuple[Tensor, ...]) -> tuple[Tensor, Tensor | None]:
    return batch[0], (batch[1] if len(batch) > 1 else None)


class VAE(BaseVAEEstimator):
    """Variational autoencoder, a scikit-learn transformer trained with Lightning.

    .. math::
        \\mathcal{L}(x) = -\\mathbb{E}_{q(z|x)} \\log p(x|z) + \\beta\\, KL(q(z|x) \\| N(0, I)),
        \\qquad q(z|x) = N(\\mu(x), \\mathrm{diag}\\, s^2(x))

    ``transform`` returns the posterior mean :math:`\\mu(x)`; ``score`` the mean ELBO at
    :math:`\\beta = 1` (higher is better, comparable across ``beta`` and ``latent_dim``).

    Parameters
    ----------
    encoder : nn.Module, default=None
        Maps a batch of rows of X to features; two linear heads map those (flattened) to the
        posterior mean and log-variance. None builds an MLP with ``hidden_layer_sizes``. A
        given module is copied at fit (never trained in place) and keeps its initial weights.
    decoder : nn.Module, default=None
        Maps a batch of latents to the likelihood's location (or logits for 'bernoulli'), one
        row of ``n_features_in_`` values (flattened) per latent. None builds the mirror MLP.
    encoder_out_dim : int, default=None
        Width of the encoder's flattened output; None infers it from one forward pass.
    latent_dim : int, default=10
        Dimension of z.
    hidden_layer_sizes : tuple of int, default=(256, 128)
        Widths of the default encoder's hidden layers (the decoder mirrors them).
    beta : float, default=1.0
        Weight of the KL term (beta-VAE).
    decoder_dist : {'normal', 'laplace', 'bernoulli'}, default='normal'
        Family of :math:`p(x|z)`. 'bernoulli' reads the decoder output as logits and needs
        X in [0, 1].
    decoder_scale : float or 'learned', default='learned'
        Scale of 'normal' and 'laplace'. 'learned' (default) learns one scale per feature,
        starting at 0.4 times the features' root-mean-square standard deviation and
        floored at 0.1 times it. A fixed scale too large for the data (1.0 on data in
        [0, 1], MultiVae's default) collapses the posterior: the KL falls to almost 0 and the
        latents carry nothing.
    stochastic_transform : bool, default=False
        If True, ``transform`` returns one draw from :math:`q(z|x)` (seeded, the same at every
        call) instead of its mean.
    lr : float, default=1e-3
        Adam's learning rate.
    weight_decay : float, default=0.0
        Adam's L2 penalty.
    batch_size : int, default=128
        Rows per training step.
    max_epochs : int, default=100
        Passes over the data.
    early_stopping : bool, default=False
        Hold out ``validation_fraction`` of the rows, stop when their loss has not improved for
        ``n_iter_no_change`` epochs, and keep the weights of the best epoch.
    validation_fraction : float, default=0.1
    n_iter_no_change : int, default=10
    accelerator : str or Accelerator, default='auto'
        Lightning accelerator: 'auto' uses a GPU when there is one.
    devices : int, str or list, default=1
        Lightning devices. Several devices start a distributed strategy.
    precision : str or int, default='32-true'
        Lightning precision, e.g. 'bf16-mixed' on GPUs.
    trainer_params : dict, default=None
        Any other ``pytorch_lightning.Trainer`` argument (logger, callbacks, strategy,
        gradient_clip_val, default_root_dir, ...). Without ``default_root_dir``, the Trainer's
        root is a temporary directory removed after fit.
    verbose : bool, default=False
        Show a progress bar with the loss. Otherwise nothing is printed.
    random_state : int, RandomState instance or None, default=None
        Seeds weight initialisation, shuffling, the validation split, training noise and the
        draws of ``score``, ``log_likelihood``, ``sample`` and a stochastic ``transform``.
        Global generators are never touched; None draws fresh entropy.

    Attributes
    ----------
    module_ : VAEModule
        The trained LightningModule (eval mode, on the training device).
    history_ : dict of list of float
        Per-epoch means of 'loss', 'reconstruction' and 'kl' (nats), and 'val_*' with early
        stopping.
    n_iter_ : int
        Epochs run.
    n_features_in_ : int
    feature_names_in_ : ndarray of str
        Only when X has string column names.

    Examples
    --------
    >>> from sklearn.datasets import load_digits
    >>> from nidl_vae import VAE
    >>> X = load_digits().data / 16
    >>> Z = VAE(latent_dim=8, max_epochs=5, random_state=0).fit_transform(X)
    >>> Z.shape
    (1797, 8)
    """

    _parameter_constraints: dict = {
        **BaseVAEEstimator._parameter_constraints,
        "encoder": [nn.Module, None],
        "decoder": [nn.Module, None],
        "encoder_out_dim": [Interval(Integral, 1, None, closed="left"), None],
        "hidden_layer_sizes": [tuple, list],
        "decoder_dist": [StrOptions({"normal", "laplace", "bernoulli"})],
        "decoder_scale": BaseVAEEstimator._scale_constraint,
        "stochastic_transform": ["boolean"],
    }

    def __init__(
        self,
        *,
        encoder: nn.Module | None = None,
        decoder: nn.Module | None = None,
        encoder_out_dim: int | None = None,
        latent_dim: int = 10,
        hidden_layer_sizes: tuple[int, ...] = (256, 128),
        beta: float = 1.0,
        decoder_dist: str = "normal",
        decoder_scale: float | str = "learned",
        stochastic_transform: bool = False,
        lr: float = 1e-3,
        weight_decay: float = 0.0,
        batch_size: int = 128,
        max_epochs: int = 100,
        early_stopping: bool = False,
        validation_fraction: float = 0.1,
        n_iter_no_change: int = 10,
        accelerator="auto",
        devices=1,
        precision="32-true",
        trainer_params: dict | None = None,
        verbose: bool = False,
        random_state=None,
    ):
        self.encoder = encoder
        self.decoder = decoder
        self.encoder_out_dim = encoder_out_dim
        self.latent_dim = latent_dim
        self.hidden_layer_sizes = hidden_layer_sizes
        self.beta = beta
        self.decoder_dist = decoder_dist
        self.decoder_scale = decoder_scale
        self.stochastic_transform = stochastic_transform
        self.lr = lr
        self.weight_decay = weight_decay
        self.batch_size = batch_size
        self.max_epochs = max_epochs
        self.early_stopping = early_stopping
        self.validation_fraction = validation_fraction
        self.n_iter_no_change = n_iter_no_change
        self.accelerator = accelerator
        self.devices = devices
        self.precision = precision
        self.trainer_params = trainer_params
        self.verbose = verbose
        self.random_state = random_state

    # ------------------------------------------------------------------ fit
    @_fit_context(prefer_skip_nested_validation=True)
    def fit(self, X, y=None) -> "VAE":
        """Train the VAE on X.

        Parameters
        ----------
        X : array-like of shape (n_samples, n_features)
        y : None
            Ignored.

        Returns
        -------
        self
        """
        return self._fit_transactional(lambda: self._fit(X))

    def _fit(self, X) -> "VAE":
        self._check_trainer_params()
        X = self._validate_X(X, reset=True)
        check_data_fits(X, self.decoder_dist)
        seed = draw_seed(self.random_state)
        self._fit_dtype = X.dtype
        self._set_fitted(self._train((as_tensor(X),), seed), seed)
        return self

    def _build_module(self, tensors: tuple[Tensor, ...]) -> VAEModule:
        X = tensors[0]
        C = tensors[1] if len(tensors) > 1 else X[:, :0]
        n_features, n_cond = X.shape[1], C.shape[1]
        hidden = tuple(self.hidden_layer_sizes)
        backbone = private_copy(self.encoder) or mlp(n_features + n_cond, hidden)
        example = X[:2] if self.encoder is not None else torch.cat([X[:2], C[:2]], 1)
        out_dim = self.encoder_out_dim or output_width(backbone, example)
        decoder = private_copy(self.decoder) or mlp(
            self.latent_dim + n_cond, hidden[::-1], n_features
        )
        if self.decoder is not None:
            width = output_width(decoder, torch.zeros(2, self.latent_dim + n_cond))
            if width != n_features:
                raise ValueError(
                    f"The decoder outputs {width} values per latent row but X has {n_features} "
                    "features: its output (flattened) must match one row of X."
                )
        return VAEModule(
            encoder=GaussianEncoder(backbone, out_dim, self.latent_dim, n_cond),
            decoder=decoder,
            likelihood=DecoderLikelihood(
                self.decoder_dist, self.decoder_scale, n_features, data_scale(X)
            ),
            beta=self.beta,
            lr=self.lr,
            weight_decay=self.weight_decay,
            max_epochs=self.max_epochs,
            prior=self._build_prior(C) if n_cond else None,
            encoder_reads_conditions=bool(n_cond) and self.encoder is None,
        )

    def _build_prior(self, C: Tensor) -> GaussianEncoder | None:
        return None

    # ------------------------------------------------------------------ inference
    def transform(self, X) -> np.ndarray:
        """Encode X: the posterior mean (or a seeded draw if ``stochastic_transform``).

        Parameters
        ----------
        X : array-like of shape (n_samples, n_features)

        Returns
        -------
        Z : ndarray of shape (n_samples, latent_dim), X's float dtype
        """
        X = self._validate_X(X, reset=False)
        return self._encode([X], X.dtype)

    def _encode(self, arrays: list, dtype) -> np.ndarray:
        mu, logvar = self._infer("transform_step", arrays, dtype=dtype)
        if self.stochastic_transform:
            mu = reparameterize(mu, logvar, self._standard_normal(mu.shape, offset=1).to(mu.dtype))
        return self._to_numpy(mu, dtype)

    def inverse_transform(self, Z) -> np.ndarray:
        """Decode latents: the mean of :math:`p(x|z)` for each row of Z.

        Parameters
        ----------
        Z : array-like of shape (n_samples, latent_dim)

        Returns
        -------
        X : ndarray of shape (n_samples, n_features)
        """
        Z = self._validate_Z(Z)
        return self._to_numpy(self._infer("decode_step", [Z], dtype=Z.dtype), Z.dtype)

    def _validate_Z(self, Z) -> np.ndarray:
        check_is_fitted(self)
        Z = check_array(Z, dtype=(np.float64, np.float32))
        if Z.shape[1] != self.latent_dim:
            raise ValueError(
                f"Z has {Z.shape[1]} columns, but {type(self).__name__} has latent_dim="
                f"{self.latent_dim}."
            )
        return Z

    def sample(self, n_samples: int = 1, random_state=None) -> np.ndarray:
        """Generate rows: decoder means for :math:`z \\sim N(0, I)`.

        Parameters
        ----------
        n_samples : int, default=1
        random_state : int, RandomState instance or None, default=None
            None uses the estimator's own seed: the same rows at every call.

        Returns
        -------
        X : ndarray of shape (n_samples, n_features)
        """
        check_is_fitted(self)
        _check_positive_int(n_samples, "n_samples")
        seed = self._seed + 4 if random_state is None else draw_seed(random_state)
        z = torch.randn((n_samples, self.latent_dim), generator=torch.Generator().manual_seed(seed))
        X = self._infer("decode_step", [z], dtype=self._fit_dtype)
        return self._to_numpy(X, self._fit_dtype)

    def score_samples(self, X, n_draws: int = 10) -> np.ndarray:
        """Per-sample evidence lower bound (ELBO) at beta = 1, in nats.

        .. math:: \\mathrm{ELBO}(x) = \\frac1K \\sum_k \\log p(x|z_k) - KL(q(z|x) \\| N(0, I)),
            \\quad z_k = \\mu(x) + s(x) \\odot \\epsilon_k

        The K noise draws are seeded and shared by every row, so a row's score does not depend
        on the other rows or on the call.

        Parameters
        ----------
        X : array-like of shape (n_samples, n_features)
        n_draws : int, default=10
            Number K of latent draws per row.

        Returns
        -------
        ndarray of shape (n_samples,)
        """
        X = self._validate_X(X, reset=False)
        return self._elbo([X], X.dtype, n_draws)

    def _elbo(self, arrays: list, dtype, n_draws: int) -> np.ndarray:
        _check_positive_int(n_draws, "n_draws")
        eps = self._standard_normal((n_draws, self.latent_dim), offset=2)
        return self._to_numpy(self._infer("elbo_step", arrays, eps, dtype=dtype), np.float64)

    def score(self, X, y=None) -> float:
        """Mean per-sample ELBO at beta = 1 (nats; higher is better).

        Parameters
        ----------
        X : array-like of shape (n_samples, n_features)
        y : None
            Ignored.
        """
        return float(np.mean(self.score_samples(X)))

    def log_likelihood(self, X, n_importance: int = 100) -> np.ndarray:
        """Importance-weighted estimate of :math:`\\log p(x)` per sample, in nats.

        .. math:: \\log p(x) \\approx \\log \\frac1K \\sum_{k=1}^K
            \\frac{p(x|z_k)\\, p(z_k)}{q(z_k|x)}, \\quad z_k \\sim q(z|x)

        A lower bound in expectation, tighter than the ELBO, tight as K grows. The K draws
        are seeded and shared by every row; computed in batches of rows and draws at once.

        Parameters
        ----------
        X : array-like of shape (n_samples, n_features)
        n_importance : int, default=100
            Number K of importance draws.

        Returns
        -------
        ndarray of shape (n_samples,)
        """
        X = self._validate_X(X, reset=False)
        return self._importance_weighted([X], X.dtype, n_importance)

    def _importance_weighted(self, arrays: list, dtype, n_importance: int) -> np.ndarray:
        _check_positive_int(n_importance, "n_importance")
        eps = self._standard_normal((n_importance, self.latent_dim), offset=3)
        scores = self._infer("log_likelihood_step", arrays, eps, dtype=dtype)
        return self._to_numpy(scores, np.float64)
