"""The one scikit-learn estimator base of every model: parameters, ``fit`` written once,
and every inference method, each run through the Lightning Trainer.

The package has three parts. A model's **math** is a plain ``torch.nn.Module``
(:class:`~nidl_vae.latent_model.LatentModel`: ``VAEModel``, ``CRMVAEModel``); the
**Lightning side** is one LightningModule around it
(:class:`~nidl_vae.module.VAELightningModule`: training, validation, transform and predict
steps); the **estimator** (here, and each model's estimator class) validates input, builds the
model, and trains and predicts through a Trainer (:mod:`nidl_vae.training`).

A model's estimator writes two hooks: ``_training_rows`` validates the training input (setting
the fitted input attributes) and returns the rows to train on and the statistics the networks
are built from; ``_build_model`` builds its ``LatentModel`` from them. Inference methods wrap
validated input in :class:`~nidl_vae.data.Rows` and call ``_predict`` with a
:class:`~nidl_vae.module.Prediction`.
"""

import copy
from abc import ABC, abstractmethod
from collections.abc import Iterator
from contextlib import contextmanager
from numbers import Integral, Real

import numpy as np
import torch
from sklearn.base import BaseEstimator, ClassNamePrefixFeaturesOutMixin, TransformerMixin
from sklearn.utils._param_validation import Interval, StrOptions
from sklearn.utils.validation import check_is_fitted

from . import data
from .data import Rows
from .docstrings import fill_shared_docs  # noqa: F401  (the models' decorator)
from .latent_model import LatentModel
from .module import Prediction, VAELightningModule, draws_per_chunk
from .seeding import draw_seed, standard_normal
from .training import (
    TrainerOptions,
    check_trainer_params,
    fit_module,
    inference_batch_rows,
    predict,
)
from .validation import InputValidationMixin, output_dtype

# optimizer steps the default budget (max_epochs='auto') aims for, and its bounds in epochs;
# ``python benchmarks/bench_scale.py --defaults`` measures the choice on digits and on a wide
# cohort of few subjects
AUTO_STEPS = 1000
AUTO_EPOCHS = (100, 2000)
# the default MLPs' hidden widths (hidden_layer_sizes='auto') on wide data, where a sample
# has more features than there are training rows. A decoder's output layer reading h hidden
# units fits about h / n of each feature's noise over n training rows: with (256, 128) on
# 225-240 subjects of 4,096-8,735 voxels the VAE reconstructed its training subjects below
# the noise level and read held-out subjects' age at R^2 0.85-0.92 (PCA 0.93-0.94); with
# (64,) at 0.92-0.93 (``python benchmarks/bench_scale.py --only held-out``)
WIDE_DATA_HIDDEN = (64,)


def check_positive_int(value, name: str) -> None:
    """A ValueError unless ``value`` is a positive integer (booleans are not integers here)."""
    if isinstance(value, bool) or not isinstance(value, Integral) or value < 1:
        raise ValueError(f"{name} must be a positive integer; got {value!r}.")


def check_layer_sizes(sizes, name: str = "hidden_layer_sizes") -> tuple[int, ...]:
    sizes = tuple(sizes)
    for width in sizes:
        if isinstance(width, bool) or not isinstance(width, Integral) or width < 1:
            raise ValueError(
                f"{name} must hold positive integers (layer widths); got {sizes!r}. A layer of "
                "0 units would make the latents constant."
            )
    return sizes


class BaseVAEEstimator(
    InputValidationMixin, ClassNamePrefixFeaturesOutMixin, TransformerMixin, BaseEstimator, ABC
):
    """Base class of the VAE-family estimators. Not to be used directly.

    Fitted attributes set here: ``module_`` (the trained LightningModule, in eval mode, with
    no Trainer attached), ``history_`` (per-epoch means of the loss terms), ``n_iter_`` (epochs
    run), ``n_features_in_`` and ``feature_names_in_``.
    """

    _parameter_constraints: dict = {
        "latent_dim": [Interval(Integral, 1, None, closed="left")],
        "hidden_layer_sizes": [tuple, list, StrOptions({"auto"})],
        "beta": [Interval(Real, 0, None, closed="left")],
        "stochastic_transform": ["boolean"],
        "lr": [Interval(Real, 0, None, closed="neither")],
        "weight_decay": [Interval(Real, 0, None, closed="left")],
        "batch_size": [Interval(Integral, 1, None, closed="left"), StrOptions({"auto"})],
        "max_epochs": [Interval(Integral, 1, None, closed="left"), StrOptions({"auto"})],
        "early_stopping": ["boolean"],
        "validation_fraction": [Interval(Real, 0, 1, closed="neither")],
        "n_iter_no_change": [Interval(Integral, 1, None, closed="left")],
        # a name or an Accelerator of either Lightning namespace, checked by the Trainer
        "accelerator": "no_validation",
        "devices": [Interval(Integral, -1, None, closed="left"), str, list],
        "precision": [str, Integral, None],
        "trainer_params": [dict, None],
        "verbose": ["verbose"],
        "random_state": ["random_state"],
    }
    _scale_constraint = [Interval(Real, 0, None, closed="neither"), StrOptions({"learned"})]
    _integer_params = (
        "latent_dim",
        "n_train_draws",
        "batch_size",
        "max_epochs",
        "n_iter_no_change",
    )
    # private fitted attributes that ``load`` recomputes from the parameters instead of reading
    _derived_at_load: tuple[str, ...] = ()
    # hidden_layer_sizes='auto' on data of fewer features than training rows
    _default_hidden: tuple[int, ...] = (256, 128)

    # ------------------------------------------------------------------ model hooks
    @abstractmethod
    def _training_rows(self, X, y, **metadata) -> tuple[Rows, dict]:
        """Validate the training input (setting ``n_features_in_`` and the model's own fitted
        input attributes) and return the rows to train on and the statistics the model is
        built from."""

    @abstractmethod
    def _build_model(self, rows: Rows, stats: dict, generator: torch.Generator) -> LatentModel:
        """The model's math, its layers initialised from ``generator``."""

    def _placeholder_training(self) -> tuple[Rows, dict]:
        """Rows and statistics of the fitted shapes, for rebuilding the model at load (its
        weights and buffers then come from the file)."""
        X = np.zeros((2, *self.input_shape_), dtype=np.float32)
        missing = getattr(self, "encoder_reads_mask_", False)
        return Rows(X), {"mean": np.zeros(self.n_features_in_), "spread": 1.0, "missing": missing}

    def _restore_derived(self) -> None:
        """Recompute the ``_derived_at_load`` attributes after load set the parameters."""

    def _module_for_load(self, max_epochs: int) -> VAELightningModule:
        rows, stats = self._placeholder_training()
        model = self._build_model(rows, stats, torch.Generator().manual_seed(0))
        return self._lightning_module(model, max_epochs, self._seed, None)

    def _lightning_module(self, model, max_epochs: int, seed: int, n_train_rows):
        return VAELightningModule(
            model, self.lr, self.weight_decay, max_epochs, seed=seed, n_train_rows=n_train_rows
        )

    def save(self, path) -> None:
        """Save the fitted model to ``path`` without pickle: parameters and fitted attributes as
        JSON, weights as arrays, in one ``.npz`` file that :func:`nidl_vae.load` reads
        without running any code from it.

        Parameters
        ----------
        path : str or path-like
            The file to write (conventionally ``*.npz``).

        Notes
        -----
        User networks are saved as weights only: pass the same architectures to
        :func:`~nidl_vae.load`. Parameters that are objects rather than data (callbacks or
        loggers in ``trainer_params``, a ``RandomState`` instance) are not saved; the loaded
        estimator has their defaults.
        """
        from .persistence import save

        save(self, path)

    # ------------------------------------------------------------------ fitting
    def _fit(self, X, y=None, **metadata):
        """The one fit of every model: validate, seed, build, train, store.

        Every check runs before training starts; if anything fails the estimator is left as it
        was before the call.
        """
        with self._restored_on_failure():
            self._check_params()
            rows, stats = self._training_rows(X, y, **metadata)
            seed = draw_seed(self.random_state)
            batch_size = self._batch_size(len(rows))
            train, val = self._split(rows, seed)
            max_epochs = self._max_epochs(len(train), batch_size)
            self.hidden_layer_sizes_ = self._hidden_layer_sizes(len(train))
            model = self._build_model(rows, stats, torch.Generator().manual_seed(seed))
            module = fit_module(
                self._lightning_module(model, max_epochs, seed, len(train)),
                train,
                val,
                self._trainer_options(),
                batch_size=batch_size,
                max_epochs=max_epochs,
                seed=seed,
                early_stopping_patience=self.n_iter_no_change if self.early_stopping else None,
            )
            self.module_ = module
            self.history_ = module.history()
            self.n_iter_ = int(module.epochs_done)
            self._seed = seed
        return self

    def _trainer_options(self) -> TrainerOptions:
        return TrainerOptions(
            self.accelerator, self.devices, self.precision, self.trainer_params, self.verbose
        )

    def _check_params(self) -> None:
        for name in self._integer_params:
            if isinstance(getattr(self, name, None), bool):
                raise ValueError(f"{name} must be an integer, not a boolean; got {name}=True.")
        if self.hidden_layer_sizes != "auto":
            check_layer_sizes(self.hidden_layer_sizes)
        check_trainer_params(self._trainer_options(), type(self).__name__)

    def _hidden_for(self, n_features: int, n_train: int) -> tuple[int, ...]:
        """The default MLP's hidden widths for samples of ``n_features``: ``hidden_layer_sizes``,
        or for 'auto' ``_default_hidden`` unless a sample has more features than there are
        training rows (``WIDE_DATA_HIDDEN``)."""
        if self.hidden_layer_sizes != "auto":
            return check_layer_sizes(self.hidden_layer_sizes)
        return WIDE_DATA_HIDDEN if n_features > n_train else self._default_hidden

    def _hidden_layer_sizes(self, n_train: int) -> tuple[int, ...]:
        """``hidden_layer_sizes_``: the widths the fit builds its networks with."""
        return self._hidden_for(self.n_features_in_, n_train)

    def _batch_size(self, n: int) -> int:
        if self.batch_size == "auto":
            return min(128, max(16, n // 16))
        return int(self.batch_size)

    def _max_epochs(self, n_train: int, batch_size: int) -> int:
        if self.max_epochs != "auto":
            return int(self.max_epochs)
        steps_per_epoch = -(-n_train // batch_size)
        return int(np.clip(-(-AUTO_STEPS // steps_per_epoch), *AUTO_EPOCHS))

    def _split(self, rows: Rows, seed: int) -> tuple[Rows, Rows | None]:
        """The training rows and, with early stopping, the held-out validation rows."""
        if not self.early_stopping:
            return rows, None
        n = len(rows)
        n_val = int(round(self.validation_fraction * n))
        if n_val < 1 or n - n_val < 1:
            raise ValueError(
                f"validation_fraction={self.validation_fraction} of {n} samples leaves "
                f"{n_val} for validation and {n - n_val} for training; both need at least one. "
                "Change validation_fraction, or set early_stopping=False."
            )
        perm = np.random.default_rng(seed).permutation(n)
        return rows.subset(np.sort(perm[n_val:])), rows.subset(np.sort(perm[:n_val]))

    @contextmanager
    def _restored_on_failure(self) -> Iterator[None]:
        """Restore the estimator as it was if the block raises (a failed fit changes nothing)."""
        before = self.__dict__.copy()
        try:
            yield
        except BaseException:
            self.__dict__.clear()
            self.__dict__.update(before)
            raise

    # ------------------------------------------------------------------ inference
    def _predict(
        self, rows: Rows, kind: str, n_draws: int | None = None, stream: str = ""
    ) -> torch.Tensor:
        """Run the module's ``predict_step`` on every row through ``Trainer.predict``.

        ``n_draws`` latent draws, shared by every row, come from the named seed ``stream``.
        Batches are sized by a sample of X's values, whatever the rows hold (X, or latents
        whose decoded rows are that wide).
        """
        batch_rows = inference_batch_rows(self.n_features_in_)
        prediction = Prediction(kind)
        if n_draws is not None:
            draws = standard_normal(self._seed, stream, (n_draws, self.latent_dim))
            prediction.draws = torch.from_numpy(draws)
            prediction.draws_per_chunk = draws_per_chunk(batch_rows, self.n_features_in_)
        return predict(self.module_, rows, prediction, self._trainer_options(), batch_rows)

    @staticmethod
    def _to_numpy(tensor: torch.Tensor, dtype) -> np.ndarray:
        return tensor.detach().cpu().numpy().astype(dtype, copy=False)

    def _output_dtype(self, X):
        return output_dtype(X)

    def _encode(self, rows: Rows, dtype) -> np.ndarray:
        """Posterior means (or a seeded draw if ``stochastic_transform``) of the rows."""
        if self.stochastic_transform:
            noise = standard_normal(self._seed, "transform", (len(rows), self.latent_dim))
            rows = rows.with_aligned(eps=noise)
        return self._to_numpy(self._predict(rows, "transform"), dtype)

    def _elbo(self, rows: Rows, n_draws: int) -> np.ndarray:
        check_positive_int(n_draws, "n_draws")
        return self._to_numpy(self._predict(rows, "elbo", n_draws, "score"), np.float64)

    def _importance_weighted(self, rows: Rows, n_importance: int) -> np.ndarray:
        check_positive_int(n_importance, "n_importance")
        scores = self._predict(rows, "log_likelihood", n_importance, "log_likelihood")
        return self._to_numpy(scores, np.float64)

    def _decode(self, Z: np.ndarray, dtype, **aligned: np.ndarray) -> np.ndarray:
        """Decoded means of the latent rows Z (with aligned conditions ``c``), each in the
        shape of one sample of X."""
        flat = self._predict(Rows(Z, aligned, name="z"), "decode")
        return self._to_numpy(flat.reshape(len(flat), *self.input_shape_), dtype)

    def _prior_draws(self, n: int, random_state, conditions=None) -> np.ndarray:
        """``n`` latent draws from the prior (one per row of encoded ``conditions``), the
        noise from ``random_state`` or, for None, from the estimator's own 'sample' stream."""
        shape = (n, self.latent_dim)
        if random_state is None:
            eps = standard_normal(self._seed, "sample", shape)
        else:
            eps = standard_normal(draw_seed(random_state), None, shape)
        if conditions is None:
            return eps
        return self._predict(Rows(conditions, {"eps": eps}, name="c"), "prior_draw").numpy()

    # ------------------------------------------------------------------ public inference
    def transform(self, X) -> np.ndarray:
        """Encode X: the posterior mean (or a seeded draw if ``stochastic_transform``); for a
        CRMVAE, the joint posterior of each row's observed modalities.

        Parameters
        ----------
        X : array-like of shape (n_samples, n_features), memory map or Dataset
            The rows to encode.

        Returns
        -------
        Z : ndarray of shape (n_samples, latent_dim)
            Float32 for float32 X (and a Dataset), float64 otherwise (float64, integer or
            boolean X, a DataFrame or tensor of them).
        """
        return self._encode(self._prediction_rows(X), self._output_dtype(X))

    def inverse_transform(self, Z) -> np.ndarray:
        """Decode latents: the mean of :math:`p(x|z)` for each row of Z.

        Parameters
        ----------
        Z : array-like of shape (n_samples, latent_dim)
            Latent coordinates.

        Returns
        -------
        X : ndarray of shape (n_samples, n_features)
            In Z's float dtype.
        """
        Z = self._validate_Z(Z)
        return self._decode(Z, Z.dtype)

    def sample(self, n_samples: int = 1, random_state=None) -> np.ndarray:
        """Generate rows: decoder means for :math:`z \\sim N(0, I)`.

        Parameters
        ----------
        n_samples : int, default=1
            Number of rows to generate.
        random_state : int, RandomState instance or None, default=None
            None uses the estimator's own seed: the same rows at every call.

        Returns
        -------
        X : ndarray of shape (n_samples, n_features)
            Generated rows, float32.
        """
        check_is_fitted(self)
        check_positive_int(n_samples, "n_samples")
        return self._decode(self._prior_draws(n_samples, random_state), np.float32)

    def score_samples(self, X, n_draws: int = 10) -> np.ndarray:
        """Per-sample evidence lower bound (ELBO) at beta = 1, in nats.

        .. math:: \\mathrm{ELBO}(x) = \\frac1K \\sum_k \\log p(x|z_k) - KL(q(z|x) \\| N(0, I)),
            \\quad z_k = \\mu(x) + s(x) \\odot \\epsilon_k

        The K noise draws are seeded and shared by every row, so a row's score does not depend
        on the other rows or on the call. For a CRMVAE, the ELBO of the observed modalities'
        joint likelihood with their joint posterior :math:`q_J` (rows with fewer modalities
        have fewer terms: compare rows with the same modalities).

        Parameters
        ----------
        X : array-like of shape (n_samples, n_features), memory map or Dataset
            The rows to score.
        n_draws : int, default=10
            Number K of latent draws per row.

        Returns
        -------
        ndarray of shape (n_samples,)
            The ELBO of each row, float64.
        """
        return self._elbo(self._prediction_rows(X), n_draws)

    def score(self, X, y=None) -> float:
        """Mean per-sample ELBO at beta = 1 (nats; higher is better).

        Parameters
        ----------
        X : array-like of shape (n_samples, n_features), memory map or Dataset
            The rows to score.
        y : None
            Ignored.

        Returns
        -------
        float
            The mean of :meth:`score_samples`.
        """
        return float(np.mean(self.score_samples(X)))

    def log_likelihood(self, X, n_importance: int = 100) -> np.ndarray:
        """Importance-weighted estimate of :math:`\\log p(x)` per sample, in nats.

        .. math:: \\log p(x) \\approx \\log \\frac1K \\sum_{k=1}^K
            \\frac{p(x|z_k)\\, p(z_k)}{q(z_k|x)}, \\quad z_k \\sim q(z|x)

        A lower bound in expectation, tighter than the ELBO, tight as K grows; for a CRMVAE, of
        the observed modalities' joint likelihood. The K draws
        are seeded and shared by every row; they are decoded a chunk at a time, so memory does
        not grow with K.

        Parameters
        ----------
        X : array-like of shape (n_samples, n_features), memory map or Dataset
            The rows to score.
        n_importance : int, default=100
            Number K of importance draws.

        Returns
        -------
        ndarray of shape (n_samples,)
            The estimate for each row, float64.
        """
        return self._importance_weighted(self._prediction_rows(X), n_importance)

    def _prediction_rows(self, X) -> Rows:
        """The validated rows a model's inference steps take for X."""
        return self._inference_rows(X)

    def impute(self, X, n_draws: int | None = 1000):
        """Fill the missing (NaN) cells of X with their conditional mean given the observed ones.

        .. math:: \\hat x_j = \\sum_k w_k\\, \\mathbb{E}[x_j | z_k], \\quad
            w_k \\propto \\frac{p(x_{\\mathrm{obs}}|z_k)\\, p(z_k)}{q(z_k|x_{\\mathrm{obs}})},
            \\quad z_k \\sim q(z|x_{\\mathrm{obs}})

        (self-normalised importance sampling with K seeded draws, as MIWAE imputes). A
        CRMVAE averages :math:`\\mathbb{E}[x | z_k]` over draws of the joint posterior of the
        modalities a row has, with equal weights (which measured better for it), so a whole
        missing modality is filled from the others. Observed cells are returned unchanged.

        Parameters
        ----------
        X : array-like or DataFrame of shape (n_samples, n_features), memory map or Dataset
            Rows with NaN where a value is missing (images may be given as images).
        n_draws : int or None, default=1000
            Number K of posterior draws (on digits with 20% or 50% of the cells missing,
            1,000 draws err 9% less than 100, and 5,000 another 2-3% less;
            ``benchmarks/bench_missing.py``). The cost is K decoder passes per row with a
            missing cell (complete rows are returned as they are): lower it for very wide
            rows. None decodes the posterior mean alone (cheaper, not the conditional mean).

        Returns
        -------
        X_imputed : ndarray of X's shape (a DataFrame with X's index and columns for a
            DataFrame input)
            Float32 for float32 X (and a Dataset), float64 otherwise.
        """
        return self._impute(X, self._prediction_rows(X), n_draws)

    def _impute(self, X, rows: Rows, n_draws: int | None):
        if n_draws is not None:
            check_positive_int(n_draws, "n_draws")
        values = data.read_rows(rows.X, slice(None))
        missing = np.isnan(values)
        imputed = values.astype(self._output_dtype(X), copy=True)
        holed = np.flatnonzero(missing.reshape(len(values), -1).any(1))
        if len(holed):  # complete rows cost nothing
            subset = rows.subset(holed)
            if n_draws is None:
                mu = self._predict(subset, "transform").numpy()
                aligned = {k: a[holed] for k, a in rows.aligned.items() if k == "c"}
                decoded = self._predict(Rows(mu, aligned, name="z"), "decode")
            else:
                decoded = self._predict(subset, "impute", n_draws, "impute")
            observed = imputed[holed]
            decoded = self._to_numpy(decoded, imputed.dtype).reshape(observed.shape)
            imputed[holed] = np.where(missing[holed], decoded, observed)
        if hasattr(X, "columns") and hasattr(X, "index"):
            import pandas as pd

            return pd.DataFrame(imputed, index=X.index, columns=X.columns)
        return imputed

    # ------------------------------------------------------------------ sklearn API
    @property
    def _n_features_out(self) -> int:
        return self.latent_dim

    def get_feature_names_out(self, input_features=None) -> np.ndarray:
        """Output feature names: the class name in lower case and the latent index.

        Parameters
        ----------
        input_features : array-like of str or None, default=None
            Ignored except for a check against ``feature_names_in_``.

        Returns
        -------
        ndarray of str
        """
        check_is_fitted(self)
        return super().get_feature_names_out(input_features)

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.transformer_tags.preserves_dtype = ["float64", "float32"]
        tags.input_tags.allow_nan = True  # missing cells, see nidl_vae.missing
        return tags

    def __getstate__(self):
        state = dict(super().__getstate__())  # object's own is the live __dict__
        module = state.get("module_")
        if module is not None and next(module.parameters()).device.type != "cpu":
            # a model fitted on a GPU must load on a CPU-only machine
            state["module_"] = copy.deepcopy(module).cpu()
        return state
