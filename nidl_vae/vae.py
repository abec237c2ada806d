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

import math
from numbers import Integral

import numpy as np
import torch
from sklearn.base import _fit_context
from sklearn.utils._param_validation import Interval, StrOptions
from torch import Tensor, nn

from .base import (
    BaseVAEEstimator,
    check_layer_sizes,
    fill_shared_docs,
    private_copy,
)
from .data import Rows, n_rows
from .distributions import (
    DecoderLikelihood,
    LinearNormalReadout,
    check_data_fits,
    output_for_mean,
)
from .missing import FilledInput, missing_cells
from .module import BaseVAEModule
from .networks import (
    GaussianEncoder,
    conv_decoder,
    conv_encoder,
    mlp,
    mlp_with_linear_path,
    output_width,
)
from .objectives import (
    gaussian_kl,
    gaussian_log_density,
    reparameterize,
    standard_normal_log_density,
)


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
    lr, weight_decay, max_epochs, seed
        See :class:`~nidl_vae.module.BaseVAEModule`.
    prior : GaussianEncoder, optional
        Maps c to the conditional prior's mean and log-variance.
    encoder_reads_conditions : bool, default=False
        Whether the encoder's backbone reads ``[x, c]`` (the default MLP) or x alone (a user's
        module, e.g. a CNN); the heads always read c.
    encoder_input : FilledInput, optional
        What the encoder reads of rows with NaN cells (see :mod:`~nidl_vae.missing`); the
        likelihood always leaves them out.
    n_train_draws : int, default=1
        Number K of posterior draws per row in training; above 1 the loss is the
        importance-weighted bound (IWAE, Burda et al. 2016; MIWAE with missing cells):

        .. math:: -\\log \\frac1K \\sum_k p(x|z_k, c) \\left[\\frac{p(z_k|c)}{q(z_k|x, c)}
            \\right]^\\beta, \\quad z_k \\sim q(z|x, c)
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
        encoder_input: FilledInput | None = None,
        n_train_draws: int = 1,
        seed: int = 0,
    ):
        super().__init__(("loss", "reconstruction", "kl"), lr, weight_decay, max_epochs, seed)
        self.encoder_input = encoder_input
        self.n_train_draws = n_train_draws
        self.encoder = encoder
        self.decoder = decoder
        self.likelihood = likelihood
        self.beta = beta
        self.prior = prior
        self.encoder_reads_conditions = encoder_reads_conditions
        self._readout_cache = None

    def encode(self, x: Tensor, c: Tensor | None) -> tuple[Tensor, Tensor]:
        if self.encoder_input is not None:
            x = self.encoder_input(x)
        if c is None:
            return self.encoder(x)
        return self.encoder(torch.cat([x, c], 1) if self.encoder_reads_conditions else x, c)

    def decode(self, z: Tensor, c: Tensor | None = None) -> Tensor:
        return self.decoder(_with_conditions(z, c)).flatten(1)

    def prior_params(self, c: Tensor | None) -> tuple[Tensor | None, Tensor | None]:
        """Mean and log-variance of :math:`p(z|c)`; (None, None) for :math:`N(0, I)`."""
        return (None, None) if self.prior is None or c is None else self.prior(c)

    def loss_terms(self, batch: tuple[Tensor, ...]) -> Tensor:
        x, c = _split(batch)
        mu, logvar = self.encode(x, c)
        mu_p, logvar_p = self.prior_params(c)
        kl = gaussian_kl(mu, logvar, mu_p, logvar_p).mean()
        if self.n_train_draws > 1:
            return self._importance_weighted_loss(x, c, mu, logvar, mu_p, logvar_p, kl)
        z = reparameterize(mu, logvar, self.standard_normal(mu))
        reconstruction = -self.likelihood.log_prob(x.flatten(1), self.decode(z, c)).mean()
        return torch.stack([reconstruction + self.beta * kl, reconstruction, kl])

    def _importance_weighted_loss(self, x, c, mu, logvar, mu_p, logvar_p, kl) -> Tensor:
        """The IWAE loss over K draws per row, with the mean reconstruction term over the
        draws and the analytic KL beside it (for ``history_``)."""
        eps = self.standard_normal(mu, (self.n_train_draws, *mu.shape))
        z = reparameterize(mu, logvar, eps)
        log_w, log_lik, _ = self._weighted_draws(x, c, z, mu, logvar, mu_p, logvar_p, self.beta)
        bound = torch.logsumexp(log_w, 0) - math.log(self.n_train_draws)
        return torch.stack([-bound.mean(), -log_lik.mean(), kl])

    def _draw_inputs(self, z: Tensor, c: Tensor | None) -> Tensor:
        """The decoder's input rows for latent draws (k, B, D): each with its row's conditions."""
        return _with_conditions(z.flatten(0, 1), None if c is None else c.repeat(len(z), 1))

    def _weighted_draws(self, x, c, z, mu, logvar, mu_p, logvar_p, beta: float):
        """For latent draws z (k, B, D): the log weights
        :math:`\\log p(x|z, c) + \\beta [\\log p(z|c) - \\log q(z|x, c)]`, the log-likelihoods
        (both (k, B)) and the decoder outputs (k, B, p)."""
        out = self.decoder(self._draw_inputs(z, c)).flatten(1).unflatten(0, z.shape[:2])
        log_lik = self.likelihood.log_prob(x.flatten(1), out)
        log_ratio = _log_density(mu_p, logvar_p)(z) - gaussian_log_density(z, mu, logvar)
        return log_lik + beta * log_ratio, log_lik, out

    def _readout(self) -> LinearNormalReadout | None:
        """The last layer's quadratic form when it applies, computed once per state of the
        weights (inference runs it for every batch of rows)."""
        last = self.decoder[-1] if isinstance(self.decoder, nn.Sequential) else None
        if not LinearNormalReadout.applies(last, self.likelihood.dist):
            return None
        tensors = (*last.parameters(), *self.likelihood.parameters(), *self.likelihood.buffers())
        # in-place updates (an optimizer step) bump a tensor's version; moves make new tensors
        key = tuple((t.data_ptr(), t._version) for t in tensors)
        if self._readout_cache is None or self._readout_cache[0] != key:
            self._readout_cache = (key, LinearNormalReadout(last, self.likelihood.scale()))
        return self._readout_cache[1]

    def encode_step(self, batch: tuple[Tensor, ...]) -> tuple[Tensor, Tensor]:
        return self.encode(*_split(batch))

    def decode_step(self, batch: tuple[Tensor, ...]) -> Tensor:
        """The mean of :math:`p(x|z, c)` for each latent row (``batch`` is (z,) or (z, c))."""
        return self.likelihood.mean(self.decode(*_split(batch)))

    def log_weight_terms(self, batch: tuple[Tensor, ...]):
        x, c = _split(batch)
        mu, logvar = self.encode(x, c)
        mu_p, logvar_p = self.prior_params(c)

        readout = self._readout()
        if readout is not None and missing_cells(x) is None:
            readout = readout.rows(x.flatten(1))
        else:  # each row's quadratic form would run over its own observed cells
            readout = None
        log_prob = self.likelihood.log_prob_of(x.flatten(1))

        def log_lik(z: Tensor) -> Tensor:
            inputs = self._draw_inputs(z, c)
            if readout is not None:
                return readout(self.decoder[:-1](inputs).unflatten(0, z.shape[:2]))
            return log_prob(self.decoder(inputs).flatten(1).unflatten(0, z.shape[:2]))

        kl = gaussian_kl(mu, logvar, mu_p, logvar_p)
        return mu, logvar, kl, log_lik, _log_density(mu_p, logvar_p)

    def weights_and_means(self, batch: tuple[Tensor, ...]):
        """The posterior's mean and log-variance, and the function mapping latent draws
        (k, B, D) to their log importance weights (k, B) and decoded means (k, B, p)."""
        x, c = _split(batch)
        mu, logvar = self.encode(x, c)
        mu_p, logvar_p = self.prior_params(c)

        def terms(z: Tensor) -> tuple[Tensor, Tensor]:
            log_w, _, out = self._weighted_draws(x, c, z, mu, logvar, mu_p, logvar_p, 1.0)
            return log_w, self.likelihood.mean(out)

        return mu, logvar, terms

    def prior_step(self, batch: tuple[Tensor, ...]) -> tuple[Tensor, Tensor]:
        """Mean and log-variance of :math:`p(z|c)` for each row of conditions."""
        (c,) = batch
        mu, logvar = self.prior_params(c)
        if mu is None:
            zeros = c.new_zeros(len(c), self.encoder.mu.out_features)
            return zeros, zeros
        return mu, logvar


def _with_conditions(z: Tensor, c: Tensor | None) -> Tensor:
    """The decoder's input: the latents, with the conditions appended when there are some."""
    return z if c is None else torch.cat([z, c.expand(*z.shape[:-1], c.shape[-1])], -1)


def _log_density(mu: Tensor | None, logvar: Tensor | None):
    """The log-density of the prior: :math:`N(0, I)` when ``mu`` is None."""
    if mu is None:
        return standard_normal_log_density
    return lambda z: gaussian_log_density(z, mu, logvar)


def _split(batch: tuple[Tensor, ...]) -> tuple[Tensor, Tensor | None]:
    return batch[0], (batch[1] if len(batch) > 1 else None)


def training_statistics(estimator, X) -> dict:
    """What the VAE's (and CVAE's) module is built from: the data's unit and mean, and whether
    it has missing cells; sets ``encoder_reads_mask_``. A ValueError for a feature missing in
    every row, or values the likelihood cannot take."""
    stats = estimator._scan(X)
    empty = np.flatnonzero(stats.count == 0)
    if len(empty):
        raise ValueError(
            f"Feature {empty[0]} (and {len(empty) - 1} others) is NaN in every training row: "
            "there is nothing to learn of it. Drop it, or impute it first."
        )
    check_data_fits(stats.min.min(), stats.max.max(), estimator.decoder_dist)
    missing = bool((stats.count < n_rows(X)).any())
    estimator.encoder_reads_mask_ = missing and estimator.encoder is None
    return {"unit": stats.scale(), "mean": stats.mean, "missing": missing}


def build_vae_module(
    estimator, rows: Rows, stats: dict, generator: torch.Generator, seed: int, prior=None
) -> VAEModule:
    """The VAE's (or, with conditions in ``rows``, the CVAE's) module with default networks
    for whatever the user did not give."""
    example = rows.read(slice(0, 2))
    X = example[0]
    C = example[1] if len(example) > 1 else X.new_zeros(len(X), 0)
    n_features, n_cond = X[0].numel(), C.shape[1]
    images = X.dim() > 2
    hidden = check_layer_sizes(estimator.hidden_layer_sizes)
    channels = check_layer_sizes(estimator.conv_channels, "conv_channels")
    mean = torch.as_tensor(stats["mean"], dtype=torch.float32).reshape(X.shape[1:])
    # the default encoder reads the mask of missing cells beside the values (as extra
    # features, or extra channels of an image) when the training data had NaN cells
    with_mask = stats["missing"] and estimator.encoder is None
    encoder_input = FilledInput(mean, with_mask)
    seen = encoder_input(X)
    if estimator.encoder is None and images:
        backbone = conv_encoder(seen.shape[1:], channels, generator=generator)
        out_dim = output_width(backbone, seen, "default encoder")
    elif estimator.encoder is None:
        backbone = mlp(seen.shape[1] + n_cond, hidden, generator=generator, n_conditions=n_cond)
        out_dim = output_width(backbone, torch.cat([seen, C], 1), "default encoder")
    else:
        backbone = private_copy(estimator.encoder)
        out_dim = output_width(backbone, seen, "encoder")
        if estimator.encoder_out_dim is not None and estimator.encoder_out_dim != out_dim:
            raise ValueError(
                f"encoder_out_dim={estimator.encoder_out_dim}, but the encoder outputs "
                f"{out_dim} values per row: set encoder_out_dim={out_dim} or leave it None."
            )
    in_dim = estimator.latent_dim + n_cond
    # the decoder's output for the mean sample, where every default decoder starts (see
    # networks.mlp; through transposed convolutions the mean image alone took 100 epochs)
    start = output_for_mean(estimator.decoder_dist, mean)
    # 'auto': the path on the convolutional decoder only (see the parameter's documentation)
    linear_path = images if estimator.linear_path == "auto" else estimator.linear_path
    if estimator.decoder is None and images:
        decoder = conv_decoder(
            X.shape[1:], channels, in_dim, generator=generator, start=start, linear_path=linear_path
        )
    elif estimator.decoder is None and linear_path:
        decoder = mlp_with_linear_path(
            in_dim, hidden[::-1], n_features, start=start, generator=generator
        )
    elif estimator.decoder is None:
        decoder = mlp(in_dim, hidden[::-1], n_features, generator=generator, start=start)
    else:
        decoder = private_copy(estimator.decoder)
        width = output_width(decoder, torch.zeros(2, in_dim), "decoder")
        if width != n_features:
            raise ValueError(
                f"The decoder outputs {width} values per latent row but a sample of X has "
                f"{n_features} values: its output (flattened) must match one sample of X."
            )
    return VAEModule(
        encoder=GaussianEncoder(
            backbone, out_dim, estimator.latent_dim, n_cond, generator=generator
        ),
        decoder=decoder,
        likelihood=DecoderLikelihood(
            estimator.decoder_dist, estimator.decoder_scale, n_features, stats["unit"]
        ),
        beta=estimator.beta,
        lr=estimator.lr,
        weight_decay=estimator.weight_decay,
        max_epochs=stats["max_epochs"],
        prior=prior,
        encoder_reads_conditions=bool(n_cond) and estimator.encoder is None and not images,
        encoder_input=encoder_input,
        n_train_draws=estimator.n_train_draws,
        seed=seed,
    )


@fill_shared_docs
class VAE(BaseVAEEstimator):
    """Variational autoencoder, a scikit-learn transformer trained with Lightning.

    .. math::
        \\mathcal{L}(x) = -\\mathbb{E}_{q(z|x)} \\log p(x|z) + \\beta\\, KL(q(z|x) \\| N(0, I)),
        \\qquad q(z|x) = N(\\mu(x), \\mathrm{diag}\\, s^2(x))

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
    hidden_layer_sizes : tuple of int, default=(256, 128)
        Widths of the default encoder's hidden layers (the decoder mirrors them).
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
        "n_train_draws": [Interval(Integral, 1, None, closed="left")],
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
        hidden_layer_sizes: tuple[int, ...] = (256, 128),
        conv_channels: tuple[int, ...] = (8, 16, 32, 64),
        linear_path: bool | str = "auto",
        beta: float = 1.0,
        n_train_draws: int = 1,
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
        return Rows(X), training_statistics(self, X)

    def _build_module(self, rows, stats, generator, seed) -> VAEModule:
        return build_vae_module(self, rows, stats, generator, seed)
