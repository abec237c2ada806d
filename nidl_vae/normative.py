"""Normative modelling: how far each subject, and each of its features, lies from what a
model of reference (healthy) subjects expects of it.

A VAE or CVAE fitted on reference subjects expects of a row x (given its conditions c) its
reconstruction :math:`\\hat x = \\mathbb{E}[x \\mid z = \\mu(x, c), c]`, the decoder's mean at
the posterior mean. :meth:`NormativeMixin.calibrate` measures, on reference subjects held out
of fit, each feature's residual mean :math:`m_j` and standard deviation :math:`s_j`; the
deviation of feature j is then the z-score

.. math:: d_j = (x_j - \\hat x_j - m_j) / (s_j f_g),

about standard normal on reference subjects, negative where a subject lies below its
expectation; :math:`f_g` is 1, or with ``scale_by`` the root-mean-square deviation of the
row's category (a site) over its reference subjects. A subject's score summarises its
deviations by the mean of its k largest squared deviations (k = ``DEVIATION_TAIL`` of the
features, at least one), which a focal abnormality of a few voxels moves where the mean over
all features hardly does; its
logarithm is standardised with the reference subjects' mean and standard deviation, so that
reference subjects score about N(0, 1) and atypical ones higher.
"""

import numpy as np
import torch
from sklearn.utils.validation import check_is_fitted
from torch import nn

from .conditions import table_columns
from .latent_model import Batch, LatentModel

# the fraction of features whose squared deviations a subject's score averages
DEVIATION_TAIL = 0.01
_CALIBRATION = (
    "deviation_mean_",
    "deviation_scale_",
    "deviation_score_mean_",
    "deviation_score_scale_",
    "n_calibration_samples_",
    "deviation_scale_by_",
    "deviation_group_scales_",
)
# reference subjects per group that scale_by needs
MIN_GROUP_SIZE = 5


def tail_statistic(d: np.ndarray) -> np.ndarray:
    """log of the mean of each row's k largest squared deviations (NaN cells left out)."""
    squares = np.nan_to_num(d, nan=0.0) ** 2
    k = max(1, int(round(DEVIATION_TAIL * d.shape[1])))
    tail = -np.partition(-squares, k - 1, axis=1)[:, :k]
    return np.log(tail.mean(1))


def _left_out_deviations(residual: np.ndarray, floor: float) -> np.ndarray:
    """Each reference subject's deviations from the mean and SD of the others. Standardised
    with its own residual inside, a subject's largest deviation is bounded (by
    :math:`\\sqrt{n - 1}`) and its score understated: 50 reference subjects scored new
    reference subjects 0.5-0.9 SD higher than themselves."""
    n = np.sum(np.isfinite(residual), 0)
    total = np.nansum(residual, 0)
    squares = np.nansum(residual**2, 0)
    others_mean = (total - residual) / (n - 1)
    others_var = (squares - residual**2 - (n - 1) * others_mean**2) / (n - 2)
    others_scale = np.sqrt(np.clip(others_var, 0, None))
    return (residual - others_mean) / np.maximum(others_scale, floor)


def group_scales(d: np.ndarray, groups: np.ndarray, among) -> dict:
    """Each group's factor: the root-mean-square of its rows' deviations ``d``."""
    return {g: float(np.sqrt(np.nanmean(d[groups == g] ** 2))) for g in among}


class NormativeMixin:
    """``calibrate``, ``deviations`` and ``deviation_scores`` for the VAE and the CVAE."""

    def _fit(self, X, y=None, **metadata):
        fitted = super()._fit(X, y, **metadata)
        # a calibration measured another model's residuals
        for name in _CALIBRATION:
            self.__dict__.pop(name, None)
        return fitted

    def _conditions_kwargs(self, conditions) -> dict:
        if getattr(self, "_takes_conditions", False):
            return {"conditions": conditions}
        if conditions is not None:
            raise ValueError(
                f"{type(self).__name__} has no conditions; use a CVAE to condition the "
                "normative model on covariates."
            )
        return {}

    def _residuals(self, X, conditions) -> tuple[np.ndarray, tuple]:
        """x - x_hat, as rows of features in float64, and X's shape."""
        kwargs = self._conditions_kwargs(conditions)
        expected = self.inverse_transform(self.transform(X, **kwargs), **kwargs)
        x = np.asarray(X, dtype=np.float64)
        return x.reshape(len(x), -1) - expected.reshape(len(x), -1), x.shape

    def calibrate(self, X, conditions=None, *, scale_by: str | None = None):
        """Measure, on reference subjects held out of fit, what the deviations are relative to.

        Parameters
        ----------
        X : array-like of shape (n_samples, n_features) or (n_samples, \\*sample_shape)
            Reference (healthy) subjects not used in fit: at least 20.
        conditions : array-like or DataFrame, optional
            Their conditions (a CVAE's; a VAE takes none).
        scale_by : str, optional
            A categorical column of a CVAE's conditions (e.g. ``'site'``) whose categories
            differ in noise: each category's deviations are divided by their root-mean-square
            over its reference subjects (at least ``MIN_GROUP_SIZE`` of each), so that every
            site's are about N(0, 1), not only the pooled ones.

        Returns
        -------
        self
            With ``deviation_mean_`` and ``deviation_scale_`` (each feature's residual mean
            and standard deviation), ``deviation_score_mean_`` and ``deviation_score_scale_``
            (the subject statistic's), ``deviation_scale_by_`` and ``deviation_group_scales_``
            (each category's factor, empty without ``scale_by``) and
            ``n_calibration_samples_``.
        """
        check_is_fitted(self)
        residual, _ = self._residuals(X, conditions)
        if len(residual) < 20:
            raise ValueError(
                f"calibrate got {len(residual)} subjects; give at least 20 reference subjects "
                "held out of fit (the z-scores divide by their standard deviations)."
            )
        mean = np.nanmean(residual, 0)
        scale = np.nanstd(residual, 0, ddof=1)
        # a feature that never varies would divide by zero: floored at a small fraction of
        # the typical feature's spread
        floor = 1e-3 * np.sqrt(np.nanmean(scale**2)) if np.isfinite(scale).any() else 1.0
        floor = max(floor, 1e-12)
        scale = np.where(np.isfinite(scale) & (scale > floor), scale, floor)
        left_out = _left_out_deviations(residual, floor)
        factors = {}
        if scale_by is not None:
            groups = self._groups(conditions, scale_by)
            categories, counts = np.unique(groups, return_counts=True)
            if counts.min() < MIN_GROUP_SIZE:
                raise ValueError(
                    f"calibrate got {counts.min()} reference subjects of {scale_by}="
                    f"{categories[counts.argmin()]!r}; scale_by needs at least "
                    f"{MIN_GROUP_SIZE} of each."
                )
            factors = group_scales((residual - mean) / scale, groups, categories)
            left_out = left_out / np.array([factors[g] for g in groups])[:, None]
        statistic = tail_statistic(left_out)
        self.deviation_scale_by_, self.deviation_group_scales_ = scale_by, factors
        self.deviation_mean_, self.deviation_scale_ = mean, scale
        self.deviation_score_mean_ = float(statistic.mean())
        self.deviation_score_scale_ = float(statistic.std(ddof=1))
        self.n_calibration_samples_ = len(residual)
        return self

    def _pooled_deviations(self, X, conditions) -> tuple[np.ndarray, tuple]:
        """The deviations before any scale_by factor, as rows of features, and X's shape."""
        residual, shape = self._residuals(X, conditions)
        return (residual - self.deviation_mean_) / self.deviation_scale_, shape

    def _groups(self, conditions, column: str) -> np.ndarray:
        """The categories of ``column`` in each row of a table of conditions."""
        categories = getattr(self, "condition_categories_", {})
        if column not in categories:
            raise ValueError(
                f"scale_by={column!r} must name a categorical column of the conditions this "
                f"{type(self).__name__} was fitted with; its categorical columns: "
                f"{list(categories)}."
            )
        return np.asarray(table_columns(conditions)[column])

    def _group_factors(self, conditions) -> np.ndarray:
        """Each row's factor of its scale_by category (1 without scale_by)."""
        column = self.deviation_scale_by_
        groups = self._groups(conditions, column)
        unknown = np.unique(groups[~np.isin(groups, list(self.deviation_group_scales_))])
        if len(unknown):
            raise ValueError(
                f"No reference subject of {column}={unknown[0]!r} was calibrated: calibrate "
                f"with some of its subjects, or adapt the model to it (CVAE.adapt)."
            )
        return np.array([self.deviation_group_scales_[g] for g in groups])

    def _check_calibrated(self) -> None:
        check_is_fitted(self)
        if not hasattr(self, "deviation_mean_"):
            raise ValueError(
                f"This {type(self).__name__} is not calibrated: call calibrate(X_reference"
                f"{', conditions=...' if getattr(self, '_takes_conditions', False) else ''}) "
                "with reference subjects held out of fit first."
            )

    def deviations(self, X, conditions=None) -> np.ndarray:
        """Each feature's z-score from its normative expectation, in X's shape.

        Parameters
        ----------
        X : array-like of shape (n_samples, n_features) or (n_samples, \\*sample_shape)
            The subjects.
        conditions : array-like or DataFrame, optional
            Their conditions (a CVAE's).

        Returns
        -------
        deviations : ndarray of X's shape
            :math:`(x_j - \\hat x_j - m_j) / (s_j f_g)`, :math:`f_g` the factor of the row's
            ``scale_by`` category (1 without): about N(0, 1) on reference subjects, negative
            below the expectation; NaN where X is.
        """
        self._check_calibrated()
        d, shape = self._pooled_deviations(X, conditions)
        if getattr(self, "deviation_scale_by_", None) is not None:
            d /= self._group_factors(conditions)[:, None]
        return d.reshape(shape)

    def deviation_scores(self, X, conditions=None) -> np.ndarray:
        """One z-score per subject: how atypical its deviations are.

        Parameters
        ----------
        X : array-like of shape (n_samples, n_features) or (n_samples, \\*sample_shape)
            The subjects.
        conditions : array-like or DataFrame, optional
            Their conditions (a CVAE's).

        Returns
        -------
        scores : ndarray of shape (n_samples,)
            The log of the mean of a subject's largest squared deviations, standardised with
            the calibration subjects' (see :mod:`~nidl_vae.normative`): about N(0, 1) on
            reference subjects, higher for atypical ones.
        """
        d = self.deviations(X, conditions)
        statistic = tail_statistic(d.reshape(len(d), -1))
        return (statistic - self.deviation_score_mean_) / self.deviation_score_scale_


class AddedCategoryCodes(LatentModel):
    """A fitted CVAE's model whose conditions give categories added after fit (a new site)
    learned codes: :math:`c = c_0 + \\sum_k 1[\\mathrm{row\\ in\\ } k]\\, P_k v_k`, with
    :math:`c_0` the row's encoding without them, :math:`v_k` category k's code over the
    indicators of its column's fitted categories and :math:`P_k` their place in c. Training
    moves the codes only; the model's weights stay as fitted.

    Parameters
    ----------
    model : LatentModel
        The fitted model (its parameters are frozen while this one trains).
    width : int
        Width of the fitted model's conditions.
    places : list of ndarray
        For each added category, the columns of c its code fills.
    start : list of ndarray
        Each code's first value.
    """

    def __init__(self, model: LatentModel, width: int, places: list, start: list):
        super().__init__()
        self.model, self.width = model, width
        self.loss_names = model.loss_names
        self.latent_dim = model.latent_dim
        owner = np.concatenate([np.full(len(p), k) for k, p in enumerate(places)])
        self.register_buffer("owner", torch.as_tensor(owner, dtype=torch.long))
        self.register_buffer("place", torch.as_tensor(np.concatenate(places), dtype=torch.long))
        self.codes = nn.Parameter(torch.as_tensor(np.concatenate(start), dtype=torch.float32))

    def _coded(self, batch: Batch) -> Batch:
        c = batch["c"]
        added = c[:, self.width :][:, self.owner] * self.codes
        return {**batch, "c": c[:, : self.width].index_add(1, self.place, added)}

    def loss_terms(self, batch: Batch, noise) -> dict:
        return self.model.loss_terms(self._coded(batch), noise)

    def posterior(self, batch: Batch):
        return self.model.posterior(self._coded(batch))

    def prior_distribution(self, batch: Batch):
        return self.model.prior_distribution(self._coded(batch))

    def draw_likelihood(self, batch: Batch):
        return self.model.draw_likelihood(self._coded(batch))

    def decode(self, batch: Batch):
        return self.model.decode(self._coded(batch))

    def code_values(self) -> list[np.ndarray]:
        """Each added category's code, trained."""
        values = self.codes.detach().double().cpu().numpy()
        owner = self.owner.cpu().numpy()
        return [values[owner == k] for k in range(owner.max() + 1)]
