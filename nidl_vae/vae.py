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
from torch import Tensor, nn

from .base import BaseVAEEstimator, check_layer_sizes, fill_shared_docs
from .data import Moments, Rows, n_rows
from .distributions import DecoderLikelihood, LinearNormalReadout, check_data_fits
from .latent_model import Batch, DrawLikelihood, Gaussian, LatentModel, Noise
from .missing import missing_cells
from .networks import GaussianEncoder, Networks, build_networks
from .normative import NormativeMixin
from .objectives import log_mean_exp, standard_normal_log_density


class VAEModel(LatentModel):
    """The VAE's math, optionally conditional (the CVAE's model too).

    A batch holds ``x``, and conditions ``c`` for a CVAE; then the encoder is
    :math:`q(z|x, c)`, the decoder :math:`p(x|z, c)` reads ``[z, c]`` and the prior is
    :math:`p(z|c)` from ``prior`` (or :math:`N(0, I)` when ``prior`` is None):

    .. math:: \\mathcal{L} = -\\log p(x|z, c) + \\beta\\, KL(q(z|x, c) \\| p(z|c)),
        \\quad z = \\mu + s \\odot \\epsilon

    Parameters
    ----------
    networks : Networks
        The encoder's input, the Gaussian encoder and the decoder
        (:func:`~nidl_vae.networks.build_networks`).
    likelihood : DecoderLikelihood
        The family of :math:`p(x|z)` and its scale.
    beta : float
        Weight of the KL term in the training loss.
    prior : GaussianEncoder, optional
        Maps c to the conditional prior's mean and log-variance.
    n_train_draws : int, default=1
        Number K of posterior draws per row in training; above 1 the loss is the
        importance-weighted bound (IWAE, Burda et al. 2016; MIWAE with missing cells):

        .. math:: -\\log \\frac1K \\sum_k p(x|z_k, c) \\left[\\frac{p(z_k|c)}{q(z_k|x, c)}
            \\right]^\\beta, \\quad z_k \\sim q(z|x, c)
    """

    def __init__(
        self,
        networks: Networks,
        likelihood: DecoderLikelihood,
        beta: float,
        prior: GaussianEncoder | None = None,
        n_train_draws: int = 1,
    ):
        super().__init__()
        self.encoder_input = networks.encoder_input
        self.encoder = networks.encoder
        self.decoder = networks.decoder
        self.encoder_reads_conditions = networks.encoder_reads_conditions
        self.likelihood = likelihood
        self.beta = beta
        self.prior = prior
        self.n_train_draws = n_train_draws
        self.latent_dim = self.encoder.mu.out_features
        self._readout_cache = None

    def posterior(self, batch: Batch) -> Gaussian:
        x, c = self.encoder_input(batch["x"]), batch.get("c")
        if c is None:
            return Gaussian(*self.encoder(x))
        return Gaussian(
            *self.encoder(torch.cat([x, c], 1) if self.encoder_reads_conditions else x, c)
        )

    def prior_distribution(self, batch: Batch) -> Gaussian | None:
        c = batch.get("c")
        return None if self.prior is None or c is None else Gaussian(*self.prior(c))

    def _decoder_output(self, z: Tensor, c: Tensor | None) -> Tensor:
        """The decoder's output for latents z (..., B, D), each row with its conditions,
        flattened per row: (..., B, p)."""
        inputs = z if c is None else torch.cat([z, c.expand(*z.shape[:-1], c.shape[-1])], -1)
        return self.decoder(inputs.flatten(0, -2)).flatten(1).unflatten(0, z.shape[:-1])

    def decode(self, batch: Batch) -> Tensor:
        return self.likelihood.mean(self._decoder_output(batch["z"], batch.get("c")))

    def loss_terms(self, batch: Batch, noise: Noise) -> dict[str, Tensor]:
        x, c = batch["x"].flatten(1), batch.get("c")
        posterior, prior = self.posterior(batch), self.prior_distribution(batch)
        kl = posterior.kl(prior).mean()
        if self.n_train_draws > 1:
            return self._importance_weighted_loss(x, c, posterior, prior, kl, noise)
        z = posterior.sample(noise(posterior.mu.shape, posterior.mu))
        out = self._decoder_output(z, c)
        reconstruction = -self.likelihood.log_prob(x, out).mean()
        return {"loss": reconstruction + self.beta * kl, "reconstruction": reconstruction, "kl": kl}

    def _importance_weighted_loss(self, x, c, posterior, prior, kl, noise) -> dict[str, Tensor]:
        """The IWAE loss over K draws per row, with the mean reconstruction term over the
        draws and the analytic KL beside it (for ``history_``)."""
        z = posterior.sample(noise((self.n_train_draws, *posterior.mu.shape), posterior.mu))
        out = self._decoder_output(z, c)
        log_lik = self.likelihood.log_prob(x, out)
        log_prior = standard_normal_log_density(z) if prior is None else prior.log_density(z)
        log_w = log_lik + self.beta * (log_prior - posterior.log_density(z))
        bound = log_mean_exp(log_w)
        return {"loss": -bound.mean(), "reconstruction": -log_lik.mean(), "kl": kl}

    def _readout(self) -> LinearNormalReadout | None:
        """The last layer's quadratic form when it applies, computed once per state of the
        weights (inference runs it for every batch of rows)."""
        last = self.decoder[-1] if isinstance(self.decoder, nn.Sequential) else None
        if not LinearNormalReadout.applies(last, self.likelihood.dist):
            return None
        family = self.likelihood
        tensors = (*last.parameters(), *family.parameters(), *family.buffers())
        # in-place updates (an optimizer step) bump a tensor's version; moves make new tensors
        key = tuple((t.data_ptr(), t._version, t.dtype) for t in tensors)
        if self._readout_cache is None or self._readout_cache[0] != key:
            self._readout_cache = (key, LinearNormalReadout(last, family.scale(), family.unit()))
        return self._readout_cache[1]

    def draw_likelihood(self, batch: Batch) -> "VAEDrawLikelihood":
        return VAEDrawLikelihood(self, batch["x"].flatten(1), batch.get("c"))

    def __getstate__(self):
        state = super().__getstate__()
        state["_readout_cache"] = None
        return state


class VAEDrawLikelihood(DrawLikelihood):
    """:math:`\\log p(x|z, c)` of a batch's rows for many draws. Rows without missing cells,
    under a Normal read from a wide linear layer, are scored through the layer's quadratic
    form (:class:`~nidl_vae.distributions.LinearNormalReadout`), without decoding every cell.
    """

    def __init__(self, model: VAEModel, x: Tensor, c: Tensor | None):
        self.model, self.c = model, c
        self.log_prob_of = model.likelihood.log_prob_of(x)
        readout = model._readout()
        # each row's quadratic form would run over its own observed cells
        self.readout = None if readout is None or missing_cells(x) is not None else readout.rows(x)

    def log_prob(self, z: Tensor) -> Tensor:
        if self.readout is None:
            return self.log_prob_of(self.model._decoder_output(z, self.c))
        c = self.c
        inputs = z if c is None else torch.cat([z, c.expand(*z.shape[:-1], c.shape[-1])], -1)
        hidden = self.model.decoder[:-1](inputs.flatten(0, -2)).unflatten(0, z.shape[:-1])
        return self.readout(hidden)

    def log_prob_and_means(self, z: Tensor) -> tuple[Tensor, Tensor]:
        out = self.model._decoder_output(z, self.c)
        return self.log_prob_of(out), self.model.likelihood.mean(out)


# n_train_draws='auto' with missing cells in the training data (benchmarks/bench_missing.py)
AUTO_TRAIN_DRAWS = 20


def train_draws(n_train_draws: int | str, missing: bool) -> int:
    """The posterior draws per row in training: ``n_train_draws``, or for 'auto' 20 when the
    training data have missing cells (the better imputer) and 1 otherwise."""
    if n_train_draws != "auto":
        return int(n_train_draws)
    return AUTO_TRAIN_DRAWS if missing else 1


def training_statistics(X, moments: Moments, decoder_dist: str) -> dict:
    """What the VAE's (and CVAE's) model is built from: the data's spread and mean, and whether
    it has missing cells. A ValueError for a feature missing in every row, or values the
    likelihood cannot take."""
    empty = np.flatnonzero(moments.count == 0)
    if len(empty):
        raise ValueError(
            f"Feature {empty[0]} (and {len(empty) - 1} others) is NaN in every training row: "
            "there is nothing to learn of it. Drop it, or impute it first."
        )
    check_data_fits(moments.min.min(), moments.max.max(), decoder_dist)
    missing = bool((moments.count < n_rows(X)).any())
    return {"spread": moments.scale(), "mean": moments.mean, "missing": missing}


def build_vae_model(estimator, rows: Rows, stats: dict, generator: torch.Generator, prior=None):
    """The VAE's (or, with conditions ``c`` in ``rows``, the CVAE's) model, with default
    networks for whatever the user did not give."""
    example = rows.first(2)
    X = example["x"]
    mean = torch.as_tensor(stats["mean"], dtype=torch.float32).reshape(X.shape[1:])
    likelihood = DecoderLikelihood(
        estimator.decoder_dist,
        estimator.decoder_scale,
        X[0].numel(),
        stats["spread"],
        model_units=estimator.decoder is None,
    )
    n_conditions = example["c"].shape[1] if "c" in example else 0
    networks = build_networks(
        X,
        n_conditions=n_conditions,
        latent_dim=estimator.latent_dim,
        hidden_layer_sizes=tuple(estimator.hidden_layer_sizes_),
        conv_channels=check_layer_sizes(estimator.conv_channels, "conv_channels"),
        linear_path=estimator.linear_path,
        likelihood=likelihood,
        mean=mean,
        spread=stats["spread"],
        with_mask=stats["missing"],
        generator=generator,
        encoder=estimator.encoder,
        decoder=estimator.decoder,
        encoder_out_dim=estimator.encoder_out_dim,
    )
    draws = train_draws(estimator.n_train_draws, stats["missing"])
    return VAEModel(networks, likelihood, estimator.beta, prior, draws)


@fill_shared_docs
class VAE(NormativeMixin, BaseVAEEstimator):
    """Variational autoencoder, a scikit-learn transformer trained with Lightning.

    .. math::
        \\mathcal{L}(x) = -\\mathbb{E}_{q(z|x)} \\log p(x|z) + \\beta\\, KL(q(z|x) \\| N(0, I))

    .. math:: q(z|x) = N(\\mu(x), \\mathrm{diag}\\, s^2(x))

    ``transform`` returns the posterior mean :math:`\\mu(x)`; ``score`` the mean ELBO at
    :math:`\\beta = 1` (higher is better, comparable across ``beta`` and ``latent_dim``).

    <shared:input>

    <shared:images>

    Parameters
    ----------
    encoder : nn.Module, default=None
        Maps a batch of rows of X to features; two linear heads map those (flattened) to the
        posterior mean and log-variance. None builds an MLP with ``hidden_layer_sizes``; when
        X has more features than training rows, Adam trains its first layer with one second
        moment per unit (:class:`~nidl_vae.optim.RowwiseAdam`): with many uninformative
        features (a volume's background) Adam's per-weight steps let the encoder read the
        noise. A given module
        is copied at fit (never trained in place), keeps its initial weights, and is
        trained by Adam.
    decoder : nn.Module, default=None
        Maps a batch of latents to the likelihood's location (or logits for 'bernoulli'), one
        row of ``n_features_in_`` values (flattened) per latent. None builds the mirror MLP.
    encoder_out_dim : int, default=None
        Width of the encoder's flattened output; None infers it from one forward pass.
    latent_dim : int, default=10
        Dimension of z.
    <shared:hidden>
    <shared:conv>
    <shared:linear_path>
    beta : float, default=1.0
        Weight of the KL term (beta-VAE).
    <shared:train_draws>
    decoder_dist : {'normal', 'laplace', 'bernoulli'}, default='normal'
        Family of :math:`p(x|z)`. 'bernoulli' reads the decoder output as logits and needs
        X in [0, 1].
    decoder_scale : float or 'learned', default='learned'
        Scale of 'normal' and 'laplace'. 'learned' (default) learns one scale per feature,
        starting at 0.4 times the features' root-mean-square standard deviation and
        floored at 0.1 times it. A fixed scale too large for the data (1.0 on data in
        [0, 1], MultiVae's default) collapses the posterior: the KL falls to almost 0 and the
        latents carry nothing.
    lr : float, default=1e-3
        Adam's learning rate.
    weight_decay : float, default=0.0
        Adam's L2 penalty on every weight. With the default decoder started at the data's
        mean it changes how well the latents read an effect by less than the seed does (on
        300 masked brains, ``benchmarks/bench_volumes.py --weight-decay``).
    <shared:budget>
    <shared:training>

    Attributes
    ----------
    n_train_draws_ : int
        The posterior draws per row training used (``n_train_draws``, resolved).
    <shared:attributes>

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
        "conv_channels": [tuple, list],
        "linear_path": ["boolean", StrOptions({"auto"})],
        "n_train_draws": [Interval(Integral, 1, None, closed="left"), StrOptions({"auto"})],
        "decoder_dist": [StrOptions({"normal", "laplace", "bernoulli"})],
        "decoder_scale": BaseVAEEstimator._scale_constraint,
    }

    def __init__(
        self,
        *,
        encoder: nn.Module | None = None,
        decoder: nn.Module | None = None,
        encoder_out_dim: int | None = None,
        latent_dim: int = 10,
        hidden_layer_sizes: tuple[int, ...] | str = "auto",
        conv_channels: tuple[int, ...] = (8, 16, 32, 64),
        linear_path: bool | str = "auto",
        beta: float = 1.0,
        n_train_draws: int | str = "auto",
        decoder_dist: str = "normal",
        decoder_scale: float | str = "learned",
        stochastic_transform: bool = False,
        lr: float = 1e-3,
        weight_decay: float = 0.0,
        batch_size: int | str = "auto",
        max_epochs: int | str = "auto",
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
        self.conv_channels = conv_channels
        self.linear_path = linear_path
        self.beta = beta
        self.n_train_draws = n_train_draws
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
        X : array-like of shape (n_samples, n_features), memory map or Dataset
            The training data.
        y : None
            Ignored.

        Returns
        -------
        self : VAE
            The fitted estimator.
        """
        return self._fit(X)

    def _training_rows(self, X, y) -> tuple[Rows, dict]:
        X = self._validate_X(X, reset=True)
        stats = training_statistics(X, self._scan(X), self.decoder_dist)
        self.encoder_reads_mask_ = stats["missing"] and self.encoder is None
        self.n_train_draws_ = train_draws(self.n_train_draws, stats["missing"])
        return Rows(X), stats

    def _build_model(self, rows, stats, generator) -> VAEModel:
        return build_vae_model(self, rows, stats, generator)
