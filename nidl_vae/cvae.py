"""CVAE: the conditional variational autoencoder (Sohn et al. 2015) as a scikit-learn estimator.

Data x (the modelled, "main" modality) and conditions c (labels one-hot encoded, or covariates
standardised):

.. math::
    z \\sim p_\\psi(z \\mid c), \\qquad x \\mid z, c \\sim p_\\theta(x \\mid z, c), \\qquad
    q_\\phi(z \\mid x, c) = N(\\mu_\\phi(x, c), \\mathrm{diag}\\, s^2_\\phi(x, c))

.. math::
    \\mathcal{L}(x, c) = -\\mathbb{E}_{q_\\phi(z|x,c)} \\log p_\\theta(x \\mid z, c)
    + \\beta\\, KL(q_\\phi(z \\mid x, c) \\,\\|\\, p_\\psi(z \\mid c))

The prior :math:`p_\\psi(z|c) = N(\\mu_\\psi(c), \\mathrm{diag}\\, s^2_\\psi(c))` is learned
(``prior_network``) or :math:`N(0, I)`. The math lives in :class:`nidl_vae.vae.VAEModel`,
which a batch with conditions ``c`` makes conditional.
"""

import copy
from numbers import Integral

import numpy as np
import torch
from sklearn.base import _fit_context
from sklearn.utils._param_validation import Interval, StrOptions
from sklearn.utils.multiclass import type_of_target
from sklearn.utils.validation import check_array, check_is_fitted
from torch import nn

from .base import BaseVAEEstimator, check_positive_int
from .conditions import encode_table, fit_table, table_columns
from .data import Rows, n_rows
from .distributions import DECODER_DISTS
from .docstrings import fill_shared_docs
from .module import VAELightningModule
from .networks import GaussianEncoder, mlp, output_width
from .normative import AddedCategoryCodes, NormativeMixin, group_scales
from .seeding import draw_seed
from .training import fit_module
from .vae import VAEModel, build_vae_model, train_draws, training_statistics

_HOW_TO_ROUTE = (
    "{name}.{method} needs the conditions: call {method}(..., conditions=c), one label or "
    "covariate row per sample. In a Pipeline or a search, route them as metadata: "
    "sklearn.set_config(enable_metadata_routing=True), then "
    "{name}().set_fit_request(conditions=True).set_transform_request(conditions=True) and "
    "pipe.fit(X, y, conditions=c), pipe.predict(X, conditions=c)."
)


def _check_labels(labels: np.ndarray) -> None:
    """A ValueError for labels that cannot be compared and sorted: None, NaN, mixed types."""
    if labels.dtype.kind == "f" and np.isnan(labels).any():
        raise ValueError("conditions contain NaN: every sample needs a label.")
    if labels.dtype.kind != "O":
        return
    if any(v is None or (isinstance(v, float) and np.isnan(v)) for v in labels):
        raise ValueError("conditions contain None or NaN: every sample needs a label.")
    kinds = {"str" if isinstance(v, str) else "number" for v in labels}
    if len(kinds) > 1:
        raise ValueError(
            "conditions mix strings and numbers; give labels of one type (e.g. all strings)."
        )


def _is_continuous(c: np.ndarray) -> bool:
    """Whether 1-D conditions are values of a covariate (not integers or strings) rather than
    labels, as scikit-learn's ``type_of_target`` judges them."""
    return c.dtype.kind == "f" and bool(np.isfinite(c).all()) and type_of_target(c) == "continuous"


@fill_shared_docs
class CVAE(NormativeMixin, BaseVAEEstimator):
    """Conditional variational autoencoder, a scikit-learn estimator trained with Lightning.

    .. math::
        \\mathcal{L}(x, c) = -\\mathbb{E}_{q(z|x,c)} \\log p(x|z, c)
        + \\beta\\, KL(q(z|x, c) \\| p(z|c))

    The conditions c are given to every method that needs them as the keyword ``conditions``:
    1-D labels of any dtype (one-hot inside, ``classes_`` kept) or 2-D numeric covariates
    (standardised inside, so ages in years work as well as z-scores). 1-D floats that are
    not all integers (what ``sklearn.utils.multiclass.type_of_target`` calls 'continuous',
    such as ages) are one covariate. A pandas DataFrame (or NumPy structured array) may mix
    both, as a normative model's age, sex and site: numeric columns are standardised,
    categorical ones (strings, categories, booleans) one-hot encoded, and later calls match
    the columns by name (:mod:`~nidl_vae.conditions`). ``fit`` and ``score``
    also take them as ``y`` when ``conditions`` is not given, a stand-alone shorthand:
    ``CVAE().fit(X, site)``. In a Pipeline, where ``y`` is the target, route them as
    metadata (see the user guide)::

        sklearn.set_config(enable_metadata_routing=True)
        cvae = CVAE().set_fit_request(conditions=True).set_transform_request(conditions=True)
        pipe = make_pipeline(StandardScaler(), cvae, LogisticRegression())
        pipe.fit(X, diagnosis, conditions=site).predict(X, conditions=site)

    ``sample(conditions=c)`` generates rows from the prior :math:`p(z|c)`;
    ``inverse_transform(Z, conditions=c)`` decodes latents under any conditions
    (counterfactuals, harmonisation).

    <shared:input>

    <shared:images>

    Parameters
    ----------
    encoder : nn.Module, default=None
        Reads X alone (an image CNN works); its flattened output and the conditions feed the
        posterior heads. None builds an MLP over ``[X, conditions]`` whose first layer reads X
        as the VAE's does (one Adam second moment per unit) and the conditions with Adam.
    decoder : nn.Module, default=None
        Reads ``[z, conditions]`` (width ``latent_dim`` + number of encoded conditions).
    prior_network : 'mlp', nn.Module or None, default=None
        The conditional prior :math:`p(z|c)`. None uses :math:`N(0, I)`; 'mlp' learns one
        with a hidden layer of ``hidden_layer_sizes[-1]`` units; a module maps the (encoded)
        conditions to features, followed by mean and log-variance heads. A learned prior
        generates digits recognised as their label more often but lets the latent carry the
        label, which spoils counterfactuals, hence the default (the CVAE guide's "Generation"
        gives the figures, ``benchmarks/bench_cvae_generation.py``).
    encoder_out_dim : int, default=None
        Width of the encoder's flattened output; None infers it from one forward pass.
    latent_dim : int, default=10
        Dimension of z.
    <shared:hidden>
    <shared:conv>
    <shared:linear_path>
    beta : float, default=1.0
        Weight of the KL term.
    <shared:train_draws>
    decoder_dist : {'normal', 'laplace', 'bernoulli', 'categorical'}, default='normal'
        'bernoulli' and 'categorical' read the decoder output as logits; 'categorical' needs
        rows of X that are one-hot (or probabilities).
    decoder_scale : float or 'learned', default='learned'
        Scale of 'normal' and 'laplace', as for :class:`~nidl_vae.VAE`.
    lr : float, default=1e-3
        Adam's learning rate.
    weight_decay : float, default=0.0
        Adam's L2 penalty on every weight.
    <shared:budget>
    <shared:training>

    Attributes
    ----------
    classes_ : ndarray
        The labels, when the conditions are 1-D.
    covariate_mean_, covariate_scale_ : ndarray
        Standardisation of 2-D covariates (of a table's numeric columns).
    condition_names_ : ndarray of str
        The columns of a table of conditions, when fitted on one.
    condition_categories_ : dict
        The categories of each categorical column of a table of conditions (an unseen one
        later is a ValueError that names the column).
    n_train_draws_ : int
        The posterior draws per row training used (``n_train_draws``, resolved).
    <shared:attributes>

    Examples
    --------
    >>> from sklearn.datasets import load_digits
    >>> from nidl_vae import CVAE
    >>> X, y = load_digits(return_X_y=True)
    >>> cvae = CVAE(latent_dim=4, max_epochs=5, random_state=0).fit(X / 16, conditions=y)
    >>> cvae.classes_
    array([0, 1, 2, 3, 4, 5, 6, 7, 8, 9])
    >>> sevens = cvae.sample(conditions=[7, 7, 7], random_state=0)  # one row per condition
    >>> sevens.shape
    (3, 64)
    """

    _takes_conditions = True

    _parameter_constraints: dict = {
        **BaseVAEEstimator._parameter_constraints,
        "encoder": [nn.Module, None],
        "decoder": [nn.Module, None],
        "prior_network": [StrOptions({"mlp"}), nn.Module, None],
        "encoder_out_dim": [Interval(Integral, 1, None, closed="left"), None],
        "conv_channels": [tuple, list],
        "linear_path": ["boolean", StrOptions({"auto"})],
        "n_train_draws": [Interval(Integral, 1, None, closed="left"), StrOptions({"auto"})],
        "decoder_dist": [StrOptions(set(DECODER_DISTS))],
        "decoder_scale": BaseVAEEstimator._scale_constraint,
    }

    def __init__(
        self,
        *,
        encoder: nn.Module | None = None,
        decoder: nn.Module | None = None,
        prior_network: str | nn.Module | None = None,
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
        self.prior_network = prior_network
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

    # ------------------------------------------------------------------ conditions
    def _encode_conditions(self, conditions, n_rows: int | None, method: str) -> np.ndarray:
        """Labels to one-hot rows, covariates to z-scores; errors name the problem.

        ``method`` 'fit' learns the encoding (``classes_`` or the covariates' standardisation).
        """
        name = type(self).__name__
        if conditions is None:
            if method != "fit":
                check_is_fitted(self)
            raise ValueError(_HOW_TO_ROUTE.format(name=name, method=method))
        reset = method == "fit"
        columns = table_columns(conditions)
        if reset:
            for name in ("condition_names_", "condition_categories_", "condition_codes_"):
                self.__dict__.pop(name, None)
        if columns is not None or (not reset and hasattr(self, "condition_names_")):
            return self._encode_table(columns, conditions, n_rows, reset)
        c = np.asarray(conditions)
        if c.ndim not in (1, 2):
            raise ValueError(
                f"conditions must be 1-D labels or 2-D covariates; got {c.ndim} dimensions."
            )
        if len(c) == 0:
            raise ValueError("conditions are empty: give one label or covariate row per sample.")
        if n_rows is not None and len(c) != n_rows:
            raise ValueError(
                f"conditions have {len(c)} rows but X has {n_rows}: give one per sample."
            )
        if c.ndim == 1 and (_is_continuous(c) if reset else not self._conditions_are_labels):
            c = c[:, None]  # one covariate, e.g. ages given as a 1-D array
        if reset:
            self._conditions_are_labels = c.ndim == 1
        if self._conditions_are_labels:
            if c.ndim != 1:
                raise ValueError(f"This {name} was fitted on 1-D labels: give 1-D conditions.")
            _check_labels(c)
            if reset:
                self.classes_ = np.unique(c)
            unseen = np.setdiff1d(c, self.classes_)
            if len(unseen):
                raise ValueError(
                    f"conditions have labels not seen in fit: {unseen[:5].tolist()}; known "
                    f"labels are {self.classes_[:10].tolist()}."
                )
            return (c[:, None] == self.classes_[None, :]).astype(np.float32)
        c = check_array(c, dtype=np.float64, input_name="conditions")
        if reset:
            self.covariate_mean_ = c.mean(0)
            scale = c.std(0)
            self.covariate_scale_ = np.where(scale > 0, scale, 1.0)
        elif c.shape[1] != len(self.covariate_mean_):
            raise ValueError(
                f"conditions have {c.shape[1]} covariates, but this {name} was fitted with "
                f"{len(self.covariate_mean_)}."
            )
        return ((c - self.covariate_mean_) / self.covariate_scale_).astype(np.float32)

    def _encode_table(self, columns, conditions, n_rows: int | None, reset: bool) -> np.ndarray:
        """A table of conditions (numeric and categorical columns, see
        :mod:`~nidl_vae.conditions`) to encoded rows; ``reset`` learns the encoding."""
        if columns is None:  # fitted on a table, given an array
            if self.condition_categories_:
                raise ValueError(
                    f"This {type(self).__name__} was fitted on a table of conditions with "
                    f"categorical columns: give a DataFrame with the columns "
                    f"{self.condition_names_.tolist()}."
                )
            c = check_array(conditions, dtype=np.float64, ensure_2d=False, input_name="conditions")
            c = c[:, None] if c.ndim == 1 else c
            if c.shape[1] != len(self.condition_names_):
                raise ValueError(
                    f"conditions have {c.shape[1]} covariates, but this {type(self).__name__} "
                    f"was fitted with {self.condition_names_.tolist()}."
                )
            columns = dict(zip(self.condition_names_, c.T, strict=True))
        lengths = {len(column) for column in columns.values()}
        if not columns or lengths == {0}:
            raise ValueError("conditions are empty: give one row of covariates per sample.")
        if n_rows is not None and lengths != {n_rows}:
            raise ValueError(
                f"conditions have {lengths.pop()} rows but X has {n_rows}: give one per sample."
            )
        if reset:
            fitted = fit_table(columns)
            self._conditions_are_labels = False
            self.condition_names_ = fitted["names"]
            self.condition_categories_ = fitted["categories"]
            self.covariate_mean_, self.covariate_scale_ = fitted["mean"], fitted["scale"]
        return encode_table(
            columns,
            self.condition_names_,
            self.condition_categories_,
            self.covariate_mean_,
            self.covariate_scale_,
            getattr(self, "condition_codes_", None),
        )

    def adapt(self, X, conditions, *, max_epochs: int = 300, lr: float = 0.01) -> "CVAE":
        """Add the categories of a categorical condition that fit did not see (a new
        acquisition site) from a few of their subjects.

        Each added category gets a code over the indicators of its column's fitted categories
        (it starts at their average, a site between the known ones) that maximises the ELBO
        of ``X`` given ``conditions``; every network weight stays as fitted, so the model of
        the known categories, and its calibration, are unchanged. Later calls read the added
        category like the others.

        Parameters
        ----------
        X : array-like of shape (n_samples, n_features) or (n_samples, \\*sample_shape)
            Reference subjects with the added categories (e.g. 20 healthy subjects of the
            new site).
        conditions : DataFrame
            Their conditions, with the columns the CVAE was fitted with.
        max_epochs : int, default=300
            Passes over X.
        lr : float, default=0.01
            Adam's learning rate for the codes.

        Returns
        -------
        self : CVAE
            With the added categories at the end of ``condition_categories_`` and their
            codes in ``condition_codes_``.
        """
        check_is_fitted(self)
        check_positive_int(max_epochs, "max_epochs")
        columns = table_columns(conditions)
        if columns is None or not getattr(self, "condition_categories_", None):
            raise ValueError(
                "adapt adds categories of a categorical condition: fit the CVAE with a "
                "DataFrame of conditions (e.g. age, sex and site columns) and pass the new "
                "subjects' conditions as a DataFrame with the same columns."
            )
        known = self.condition_categories_
        added = {
            name: np.unique(columns[name][~np.isin(columns[name], categories)])
            for name, categories in known.items()
            if name in columns
        }
        added = {name: new for name, new in added.items() if len(new)}
        if not added:
            raise ValueError(
                "adapt found no category that the CVAE does not know; to fine-tune on known "
                "categories, fit again with every subject."
            )
        with self._restored_on_failure():
            fitted = self._fitted_categories()
            codes = dict(getattr(self, "condition_codes_", {}))
            categories = dict(known)
            places, start, indicators, column = [], [], [], 0
            for name in self.condition_names_:
                if name not in fitted:
                    column += 1
                    continue
                width = len(fitted[name])
                for category in added.get(name, ()):
                    places.append(np.arange(column, column + width))
                    start.append(np.full(width, 1.0 / width))
                    indicators.append(columns[name] == category)
                column += width
            for name, new in added.items():
                zeros = np.zeros((len(new), len(fitted[name])))
                codes[name] = np.vstack([codes[name], zeros]) if name in codes else zeros
                categories[name] = np.concatenate([known[name], new])
            self.condition_categories_, self.condition_codes_ = categories, codes
            # the rows' encoding without the added categories, then their indicators
            rows = self._conditioned_rows(X, conditions, "transform")
            c = np.concatenate([rows.aligned["c"], np.stack(indicators, 1)], 1)
            rows = rows.with_aligned(c=c.astype(np.float32))
            model = self.module_.model
            coded = AddedCategoryCodes(model, column, places, start)
            seed = draw_seed(self.random_state)
            trainable = [p.requires_grad for p in model.parameters()]
            model.requires_grad_(False)
            try:
                # the fitted model is in eval mode; its layers hold no dropout or batch norm
                module = VAELightningModule(coded, lr, 0.0, max_epochs, seed=seed).train()
                fit_module(
                    module,
                    rows,
                    None,
                    self._trainer_options(),
                    batch_size=self._batch_size(len(rows)),
                    max_epochs=max_epochs,
                    seed=seed,
                    early_stopping_patience=None,
                )
            finally:
                for parameter, flag in zip(model.parameters(), trainable, strict=True):
                    parameter.requires_grad_(flag)
            trained = iter(coded.code_values())
            for name in self.condition_names_:
                for k in range(len(added.get(name, ()))):
                    codes[name][len(known[name]) - len(fitted[name]) + k] = next(trained)
            by = getattr(self, "deviation_scale_by_", None)
            if by in added:
                # the added categories' noise, from their subjects (a handful of codes were
                # fitted to them: their residuals are almost those of new subjects)
                d, _ = self._pooled_deviations(X, conditions)
                new = group_scales(d, np.asarray(columns[by]), added[by])
                self.deviation_group_scales_ = {**self.deviation_group_scales_, **new}
        return self

    def _fitted_categories(self) -> dict:
        """The categories of each categorical column the networks were fitted with (those
        :meth:`adapt` added read codes over these)."""
        codes = getattr(self, "condition_codes_", {})
        return {
            name: known[: len(known) - len(codes.get(name, ()))]
            for name, known in getattr(self, "condition_categories_", {}).items()
        }

    def _conditioned_rows(self, X, conditions, method: str) -> Rows:
        if conditions is None:
            self._encode_conditions(None, None, method)
        rows = self._inference_rows(X)
        return rows.with_aligned(c=self._encode_conditions(conditions, len(rows), method))

    # ------------------------------------------------------------------ fit
    @_fit_context(prefer_skip_nested_validation=True)
    def fit(self, X, y=None, *, conditions=None) -> "CVAE":
        """Train the CVAE on X given the conditions.

        Parameters
        ----------
        X : array-like of shape (n_samples, n_features), memory map or Dataset
            The modelled data.
        y : array-like of shape (n_samples,) or (n_samples, n_covariates), default=None
            The conditions, when ``conditions`` is not given (stand-alone shorthand);
            otherwise ignored (in a Pipeline it is the downstream target).
        conditions : array-like of shape (n_samples,) or (n_samples, n_covariates)
            Labels (any dtype), numeric covariates, or a DataFrame of numeric and categorical
            columns: metadata that a Pipeline routes.

        Returns
        -------
        self : CVAE
            The fitted estimator.
        """
        return self._fit(X, y, conditions=conditions)

    def _training_rows(self, X, y, conditions=None) -> tuple[Rows, dict]:
        conditions = y if conditions is None else conditions
        if conditions is None:
            # the first words are what scikit-learn's checks look for
            raise ValueError(
                "CVAE requires y to be passed, but the target y is None, and so are the "
                "conditions. " + _HOW_TO_ROUTE.format(name=type(self).__name__, method="fit")
            )
        X = self._validate_X(X, reset=True)
        C = self._encode_conditions(conditions, n_rows(X), "fit")
        stats = training_statistics(X, self._scan(X), self.decoder_dist)
        self.encoder_reads_mask_ = stats["missing"] and self.encoder is None
        self.n_train_draws_ = train_draws(self.n_train_draws, stats["missing"])
        return Rows(X, {"c": C}), stats

    def _placeholder_training(self) -> tuple[Rows, dict]:
        rows, stats = super()._placeholder_training()
        if self._conditions_are_labels:
            width = len(self.classes_)
        else:
            width = len(self.covariate_mean_) + sum(map(len, self._fitted_categories().values()))
        return rows.with_aligned(c=np.zeros((len(rows), width), dtype=np.float32)), stats

    def _build_model(self, rows, stats, generator) -> VAEModel:
        n_cond = rows.aligned["c"].shape[1]
        prior = None
        if self.prior_network == "mlp":
            width = tuple(self.hidden_layer_sizes_)[-1:] or (n_cond,)
            prior = GaussianEncoder(
                mlp(n_cond, width, generator=generator),
                width[0],
                self.latent_dim,
                generator=generator,
            )
        elif self.prior_network is not None:
            backbone = copy.deepcopy(self.prior_network)
            example = torch.from_numpy(rows.aligned["c"][:2])
            width = output_width(backbone, example, "prior_network")
            prior = GaussianEncoder(backbone, width, self.latent_dim, generator=generator)
        return build_vae_model(self, rows, stats, generator, prior=prior)

    def fit_transform(self, X, y=None, *, conditions=None) -> np.ndarray:
        """Fit, then encode X given the same conditions (both halves get them).

        Parameters
        ----------
        X : array-like of shape (n_samples, n_features), memory map or Dataset
            The modelled data.
        y : array-like, default=None
            The conditions when ``conditions`` is not given; otherwise ignored.
        conditions : array-like of shape (n_samples,) or (n_samples, n_covariates)
            Labels or covariates.

        Returns
        -------
        Z : ndarray of shape (n_samples, latent_dim)
            Posterior means.
        """
        conditions = y if conditions is None else conditions
        return self.fit(X, conditions=conditions).transform(X, conditions=conditions)

    # ------------------------------------------------------------------ inference
    def transform(self, X, *, conditions=None) -> np.ndarray:
        """Encode X given its conditions: the posterior mean of :math:`q(z|x, c)`.

        Parameters
        ----------
        X : array-like of shape (n_samples, n_features), memory map or Dataset
            The rows to encode.
        conditions : array-like of shape (n_samples,) or (n_samples, n_covariates)
            Required: labels or covariates, one per row.

        Returns
        -------
        Z : ndarray of shape (n_samples, latent_dim)
            Float32 for float32 X (and a Dataset), float64 otherwise.
        """
        rows = self._conditioned_rows(X, conditions, "transform")
        return self._encode(rows, self._output_dtype(X))

    def inverse_transform(self, Z, *, conditions=None) -> np.ndarray:
        """Decode latents under the given conditions: the mean of :math:`p(x|z, c)`.

        Any conditions work: decoding a row's latent under another label or covariate value is
        a counterfactual (e.g. site harmonisation: encode with the true site, decode with a
        reference site).

        Parameters
        ----------
        Z : array-like of shape (n_samples, latent_dim)
            Latent coordinates.
        conditions : array-like of shape (n_samples,) or (n_samples, n_covariates)
            Required: the conditions to decode under, one per row.

        Returns
        -------
        X : ndarray of shape (n_samples, n_features)
            In Z's float dtype.
        """
        Z = self._validate_Z(Z)
        C = self._encode_conditions(conditions, len(Z), "inverse_transform")
        return self._decode(Z, Z.dtype, c=C)

    def sample(self, n_samples: int = 1, *, conditions=None, random_state=None) -> np.ndarray:
        """Generate ``n_samples`` rows per row of conditions: :math:`z \\sim p(z|c)`, then the
        mean of :math:`p(x|z, c)`.

        Parameters
        ----------
        n_samples : int, default=1
            Rows generated for each row of ``conditions``.
        conditions : array-like of shape (n_conditions,) or (n_conditions, n_covariates)
            Required: the conditions to generate under.
        random_state : int, RandomState instance or None, default=None
            None uses the estimator's own seed: the same rows at every call.

        Returns
        -------
        X : ndarray of shape (n_conditions * n_samples, n_features)
            Float32; the ``n_samples`` rows of each condition are consecutive.
        """
        check_is_fitted(self)
        check_positive_int(n_samples, "n_samples")
        C = np.repeat(self._encode_conditions(conditions, None, "sample"), n_samples, axis=0)
        z = self._prior_draws(len(C), random_state, conditions=C)
        return self._decode(z, np.float32, c=C)

    def score_samples(self, X, *, conditions=None, n_draws: int = 10) -> np.ndarray:
        """Per-sample ELBO of :math:`\\log p(x|c)` at beta = 1, in nats.

        .. math:: \\frac1K \\sum_k \\log p(x|z_k, c) - KL(q(z|x, c) \\| p(z|c))

        Parameters
        ----------
        X : array-like of shape (n_samples, n_features), memory map or Dataset
            The rows to score.
        conditions : array-like of shape (n_samples,) or (n_samples, n_covariates)
            Required: labels or covariates, one per row.
        n_draws : int, default=10
            Number K of seeded latent draws, shared by every row.

        Returns
        -------
        ndarray of shape (n_samples,)
            The ELBO of each row, float64.
        """
        return self._elbo(self._conditioned_rows(X, conditions, "score_samples"), n_draws)

    def score(self, X, y=None, *, conditions=None) -> float:
        """Mean per-sample ELBO at beta = 1 given the conditions (nats; higher is better).

        Parameters
        ----------
        X : array-like of shape (n_samples, n_features), memory map or Dataset
            The rows to score.
        y : array-like, default=None
            The conditions when ``conditions`` is not given; otherwise ignored.
        conditions : array-like of shape (n_samples,) or (n_samples, n_covariates)
            Labels or covariates, one per row.

        Returns
        -------
        float
            The mean of :meth:`score_samples`.
        """
        conditions = y if conditions is None else conditions
        return float(np.mean(self.score_samples(X, conditions=conditions)))

    def log_likelihood(self, X, *, conditions=None, n_importance: int = 100) -> np.ndarray:
        """Importance-weighted estimate of :math:`\\log p(x|c)` per sample, in nats.

        .. math:: \\log \\frac1K \\sum_k \\frac{p(x|z_k, c)\\, p(z_k|c)}{q(z_k|x, c)},
            \\quad z_k \\sim q(z|x, c)

        Parameters
        ----------
        X : array-like of shape (n_samples, n_features), memory map or Dataset
            The rows to score.
        conditions : array-like of shape (n_samples,) or (n_samples, n_covariates)
            Required: labels or covariates, one per row.
        n_importance : int, default=100
            Number K of importance draws.

        Returns
        -------
        ndarray of shape (n_samples,)
            The estimate for each row, float64.
        """
        rows = self._conditioned_rows(X, conditions, "log_likelihood")
        return self._importance_weighted(rows, n_importance)

    def impute(self, X, *, conditions=None, n_draws: int | None = 1000) -> np.ndarray:
        """Fill the missing (NaN) cells of X with their conditional mean given the observed
        ones and the conditions, :math:`\\sum_k w_k \\mathbb{E}[x | z_k, c]` with
        :math:`w_k \\propto p(x_{\\mathrm{obs}}|z_k, c)\\, p(z_k|c) / q(z_k|x_{\\mathrm{obs}}, c)`
        (see :meth:`VAE.impute <nidl_vae.VAE.impute>`). Observed cells are returned unchanged.

        Parameters
        ----------
        X : array-like or DataFrame of shape (n_samples, n_features), memory map or Dataset
            Rows with NaN where a value is missing.
        conditions : array-like of shape (n_samples,) or (n_samples, n_covariates)
            Required: labels or covariates, one per row.
        n_draws : int or None, default=1000
            Number K of posterior draws; None decodes the posterior mean alone.

        Returns
        -------
        X_imputed : ndarray of X's shape (a DataFrame for a DataFrame input)
            Float32 for float32 X (and a Dataset), float64 otherwise.
        """
        return self._impute(X, self._conditioned_rows(X, conditions, "impute"), n_draws)

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        # the checks then pass y to fit, which takes it as the conditions
        tags.target_tags.required = True
        return tags
