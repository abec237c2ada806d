"""Normative modelling: how far each subject, and each of its features, lies from what a
model of reference (healthy) subjects expects of it.

A VAE or CVAE fitted on reference subjects expects of a row x (given its conditions c) its
reconstruction :math:`\\hat x = \\mathbb{E}[x \\mid z = \\mu(x, c), c]`, the decoder's mean at
the posterior mean. :meth:`NormativeMixin.calibrate` measures, on reference subjects held out
of fit, each feature's residual mean :math:`m_j` and standard deviation :math:`s_j`; the
deviation of feature j is then the z-score

.. math:: d_j = (x_j - \\hat x_j - m_j) / s_j,

about standard normal on reference subjects, negative where a subject lies below its
expectation. A subject's score summarises its deviations by the mean of its k largest
squared deviations (k = ``DEVIATION_TAIL`` of the features, at least one), which a focal
abnormality of a few voxels moves where the mean over all features hardly does; its
logarithm is standardised with the reference subjects' mean and standard deviation, so that
reference subjects score about N(0, 1) and atypical ones higher.
"""

import numpy as np
from sklearn.utils.validation import check_is_fitted

# the fraction of features whose squared deviations a subject's score averages
DEVIATION_TAIL = 0.01
_CALIBRATION = (
    "deviation_mean_",
    "deviation_scale_",
    "deviation_score_mean_",
    "deviation_score_scale_",
    "n_calibration_samples_",
)


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

    def calibrate(self, X, conditions=None):
        """Measure, on reference subjects held out of fit, what the deviations are relative to.

        Parameters
        ----------
        X : array-like of shape (n_samples, n_features) or (n_samples, \\*sample_shape)
            Reference (healthy) subjects not used in fit: at least 20.
        conditions : array-like or DataFrame, optional
            Their conditions (a CVAE's; a VAE takes none).

        Returns
        -------
        self
            With ``deviation_mean_`` and ``deviation_scale_`` (each feature's residual mean
            and standard deviation), ``deviation_score_mean_`` and ``deviation_score_scale_``
            (the subject statistic's) and ``n_calibration_samples_``.
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
        statistic = tail_statistic(_left_out_deviations(residual, floor))
        self.deviation_mean_, self.deviation_scale_ = mean, scale
        self.deviation_score_mean_ = float(statistic.mean())
        self.deviation_score_scale_ = float(statistic.std(ddof=1))
        self.n_calibration_samples_ = len(residual)
        return self

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
            :math:`(x_j - \\hat x_j - m_j) / s_j`: about N(0, 1) on reference subjects,
            negative below the expectation; NaN where X is.
        """
        self._check_calibrated()
        residual, shape = self._residuals(X, conditions)
        return ((residual - self.deviation_mean_) / self.deviation_scale_).reshape(shape)

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
