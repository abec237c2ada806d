"""Validation of what the estimators read: X in its four kinds (arrays in memory, images and
volumes, arrays on disk, torch Datasets), and latent rows Z.

A mixin of the estimator base: it sets the fitted input attributes (``n_features_in_``,
``feature_names_in_``, ``input_shape_``) in ``fit`` and checks them afterwards.
"""

import math
import os

import numpy as np
from sklearn.utils.validation import (
    _check_feature_names,
    check_array,
    check_is_fitted,
    validate_data,
)

from . import data
from .data import Moments, Rows, is_streamed, moments

FLOAT_DTYPES = (np.float64, np.float32)
# a 4-D X is images (n, C, H, W) up to this many channels; with more, its second axis is more
# likely a volume's depth (n, D, H, W), which must get a channel axis
MAX_IMAGE_CHANNELS = 16
NIFTI_SUFFIXES = (".nii", ".nii.gz", ".img", ".hdr", ".mgz")
_NIFTI_HELP = (
    "the estimators take arrays: put nilearn's NiftiMasker in front, "
    "make_pipeline(NiftiMasker(mask_img=mask), VAE()).fit(paths), or give the volumes as an "
    "array of shape (n_subjects, 1, D, H, W)"
)


def refuse_what_cannot_be_read(X) -> None:
    """A ValueError that says what to do for input the estimators cannot read as numbers:
    NIfTI images or their paths, a DataFrame with non-numeric columns."""
    if hasattr(X, "get_fdata"):
        raise ValueError(f"X is a NIfTI image (nibabel); {_NIFTI_HELP}.")
    if isinstance(X, (list, tuple)) and len(X):
        first = X[0]
        if hasattr(first, "get_fdata"):
            raise ValueError(f"X is a list of NIfTI images (nibabel); {_NIFTI_HELP}.")
        if isinstance(first, (str, os.PathLike)):
            what = "NIfTI files" if str(first).endswith(NIFTI_SUFFIXES) else "file names"
            raise ValueError(f"X is a list of {what} ({str(first)!r}, ...); {_NIFTI_HELP}.")
    dtypes = getattr(X, "dtypes", None)
    if dtypes is not None and hasattr(dtypes, "items") and hasattr(X, "columns"):
        from pandas.api.types import is_bool_dtype, is_numeric_dtype

        text = [c for c, t in dtypes.items() if not (is_numeric_dtype(t) or is_bool_dtype(t))]
        if text:
            raise ValueError(
                f"Column {text[0]!r} of X (and {len(text) - 1} others) is not numeric "
                f"({dtypes[text[0]]}). Encode it first, e.g. with a ColumnTransformer in front: "
                f"make_pipeline(make_column_transformer((OneHotEncoder(), {text[:3]!r}), "
                "remainder='passthrough'), VAE())."
            )


def output_dtype(X):
    """The float type of the estimators' outputs for input X: float32 for float32 input (and
    for a Dataset, whose samples are read as float32), float64 otherwise, as scikit-learn's
    transformers give for float64, integer and boolean input."""
    dtype = getattr(X, "dtype", None)
    if dtype is None and hasattr(X, "dtypes"):  # a DataFrame
        return np.float32 if {str(t) for t in X.dtypes} == {"float32"} else np.float64
    if dtype is None:
        return np.float32 if data.is_streamed(X) else np.float64
    return np.float32 if str(dtype) in ("float32", "torch.float32") else np.float64


class InputValidationMixin:
    """Validation of X and Z for the estimator base."""

    # whether X may hold images (n, C, H, W) or volumes (n, C, D, H, W) besides rows
    _accepts_images = True

    def _validate_X(self, X, reset: bool):
        """Validated X: an in-memory float array, or a streamed source checked batch by batch.

        In-memory input goes through scikit-learn's validation (no copy of a float32 or
        float64 array); a memory map, an array-like on disk or a Dataset keeps its place, its
        shape checked here and its values finite-checked as they are read. Samples are rows of
        features, or (for models that take them) images (C, H, W) or volumes (C, D, H, W).
        """
        if not reset:
            check_is_fitted(self)
        refuse_what_cannot_be_read(X)
        finite = "allow-nan"  # NaN cells are missing values; infinity is an error
        if is_streamed(X):
            n = data.n_rows(X)
            if reset and n < 2:
                raise ValueError(
                    f"Found array with {n} sample(s) while a minimum of 2 is required."
                )
            first = data.read_rows(X, slice(0, 1))
            _check_feature_names(self, first, reset=reset)
            self._check_sample_shape(first.shape[1:], reset)
            return X
        if getattr(X, "ndim", 2) > 2:
            X = check_array(
                X,
                allow_nd=True,
                dtype=FLOAT_DTYPES,
                ensure_min_samples=2 if reset else 1,
                ensure_all_finite=finite,
                estimator=self,
            )
            _check_feature_names(self, X, reset=reset)
            self._check_sample_shape(X.shape[1:], reset)
            return X
        if not reset and len(getattr(self, "input_shape_", ())) > 1:
            self._check_sample_shape(np.shape(X)[1:], reset)
        X = validate_data(
            self,
            X,
            reset=reset,
            dtype=FLOAT_DTYPES,
            ensure_min_samples=2 if reset else 1,
            ensure_all_finite=finite,
        )
        if reset:
            self.input_shape_ = (self.n_features_in_,)
        return X

    def _check_sample_shape(self, shape: tuple[int, ...], reset: bool) -> None:
        """Set (``reset``) or check ``input_shape_``, the shape of one sample, and
        ``n_features_in_``, its number of values."""
        shape = tuple(int(n) for n in shape)
        if not reset:
            self._check_fitted_shape(shape)
            return
        name = type(self).__name__
        if len(shape) not in (1, 3, 4):
            raise ValueError(
                f"Expected X of shape (n_samples, n_features), images (n_samples, C, H, W) or "
                f"volumes (n_samples, C, D, H, W); got samples of shape {shape}."
            )
        if len(shape) == 3 and shape[0] > MAX_IMAGE_CHANNELS and self._accepts_images:
            raise ValueError(
                f"X of shape (n_samples, {', '.join(map(str, shape))}) would be images of "
                f"{shape[0]} channels; volumes (n_samples, D, H, W), as stacked get_fdata() "
                "arrays are, need a channel axis: give X[:, None] (n_samples, 1, D, H, W). "
                f"Images have at most {MAX_IMAGE_CHANNELS} channels here."
            )
        if len(shape) > 1 and not self._accepts_images:
            raise ValueError(
                f"{name} takes X of shape (n_samples, n_features); got samples of shape "
                f"{shape}. Flatten them (X.reshape(len(X), -1)) or use VAE or CVAE."
            )
        self.input_shape_ = shape
        self.n_features_in_ = math.prod(shape)

    def _check_fitted_shape(self, shape: tuple[int, ...]) -> None:
        """A ValueError naming the expected shape unless samples have the fitted shape."""
        fitted = tuple(self.input_shape_)
        if shape == fitted:
            return
        name = type(self).__name__
        if len(shape) == len(fitted) == 1:  # scikit-learn's own words for rows
            raise ValueError(
                f"X has {shape[0]} features, but {name} is expecting {fitted[0]} features as input."
            )
        expected = ", ".join(str(n) for n in ("n_samples", *fitted))
        raise ValueError(
            f"X has samples of shape {shape}, but {name} was fitted on samples of shape "
            f"{fitted}: give X of shape ({expected})."
        )

    def _inference_rows(self, X) -> Rows:
        """Validated rows of X to predict on; data on disk is checked as it is read."""
        X = self._validate_X(X, reset=False)
        if is_streamed(X):  # checked a batch at a time as it is read
            return Rows(X, check=type(self).__name__)
        data.check_float32_range(X)  # once per call; fit's rows were checked by the scan
        return Rows(X)

    def _scan(self, X, rows=None) -> Moments:
        """Per-feature moments of X's rows in float64 (NaN cells left out), a chunk at a time;
        a ValueError on infinite values, as scikit-learn's validation gives, and on values
        beyond float32's range."""
        name = type(self).__name__
        chunks = (data.check_finite(c, name) for c in data.iter_chunks(X, rows))
        stats = moments(chunks, nan_aware=True)
        data.check_float32_range(np.array([stats.min.min(initial=0.0), stats.max.max(initial=0.0)]))
        return stats

    def _validate_Z(self, Z) -> np.ndarray:
        check_is_fitted(self)
        Z = check_array(Z, dtype=FLOAT_DTYPES)
        if Z.shape[1] != self.latent_dim:
            raise ValueError(
                f"Z has {Z.shape[1]} columns, but {type(self).__name__} has latent_dim="
                f"{self.latent_dim}."
            )
        return Z
