"""Scale-free training: X and a * X + b give the same model, outputs in X's units and
densities with the Jacobian of the change of units."""

import math

import numpy as np
import pytest
from numpy.testing import assert_allclose
from sklearn.datasets import load_digits
from sklearn.decomposition import PCA
from sklearn.linear_model import LinearRegression
from sklearn.model_selection import cross_val_score

from nidl_vae import CRMVAE, CVAE, VAE
from nidl_vae.datasets import make_cohort

A = 1600.0  # scanner-like units: intensities in the hundreds to thousands
B = 100.0  # and an offset
# in float64, the two fits stay the same up to rounding (float32's rounding, amplified by
# Adam's normalised steps, moved latents by 0.005 in 20 steps)
FAST = dict(
    hidden_layer_sizes=(32,), latent_dim=3, max_epochs=4, precision="64-true", random_state=0
)


@pytest.fixture(scope="module")
def rows():
    return load_digits().data[:300] / 16


def _rescaled(X):
    return (X * A + B).astype(np.int16)  # exact: the digits are multiples of 1/16


def _close(a, b, scale=1.0):
    assert_allclose(a, b, rtol=1e-6, atol=1e-6 * scale)


@pytest.mark.parametrize("Estimator", [VAE, CVAE])
def test_a_rescaled_X_learns_the_same_model(rows, Estimator):
    extra = {"conditions": np.arange(len(rows)) % 3} if Estimator is CVAE else {}
    c = {"conditions": extra["conditions"][:20]} if extra else {}
    plain = Estimator(**FAST).fit(rows, **extra)
    scaled = Estimator(**FAST).fit(_rescaled(rows), **extra)
    # the training losses differ by the Jacobian alone: p log a nats per row
    p = rows.shape[1]
    loss = np.asarray(plain.history_["loss"])
    _close(scaled.history_["loss"], loss + p * math.log(A), scale=p)
    Z = plain.transform(rows[:20], **c)
    _close(scaled.transform(_rescaled(rows[:20]), **c), Z)
    # outputs in the user's units
    _close(scaled.inverse_transform(Z, **c), A * plain.inverse_transform(Z, **c) + B, scale=A)
    assert scaled.inverse_transform(Z, **c).dtype == np.float64
    # densities in the user's units: log p(a x) = log p(x) - p log a
    for method in ("score_samples", "log_likelihood"):
        expected = getattr(plain, method)(rows[:20], **c) - p * math.log(A)
        _close(getattr(scaled, method)(_rescaled(rows[:20]), **c), expected, scale=p)


def test_missing_cells_take_the_jacobian_of_their_observed_cells(rows):
    X = rows.copy()
    X[np.random.default_rng(0).random(X.shape) < 0.2] = np.nan
    plain = VAE(**FAST).fit(X)
    scaled = VAE(**FAST).fit(X * A + B)
    observed = (~np.isnan(X[:20])).sum(1)
    expected = plain.score_samples(X[:20]) - observed * math.log(A)
    _close(scaled.score_samples(X[:20] * A + B), expected, scale=64)
    _close(scaled.impute(X[:20] * A + B), A * plain.impute(X[:20]) + B, scale=A)


def test_crmvae_modalities_in_their_own_units(rows):
    # one modality in scanner units, the other as it is
    X = rows.copy()
    X[:40, 32:] = np.nan  # some rows miss the second modality
    params = dict(modalities={"scan": 32, "scores": 32}, **FAST)
    plain = CRMVAE(**params).fit(X)
    mixed = X.copy()
    mixed[:, :32] = X[:, :32] * A + B
    scaled = CRMVAE(**params).fit(mixed)
    _close(scaled.transform(mixed[:60]), plain.transform(X[:60]))
    expected = plain.impute(X[:60])
    expected[:, :32] = A * expected[:, :32] + B
    _close(scaled.impute(mixed[:60]), expected, scale=A)
    # the conditional density of the scores given the scan does not depend on the scan's units
    given = plain.conditional_log_likelihood(X[40:60], target="scores", n_importance=50)
    _close(scaled.conditional_log_likelihood(mixed[40:60], "scores", n_importance=50), given, 32)
    # that of the scan carries its Jacobian, 32 log a
    scan = plain.conditional_log_likelihood(X[40:60], target="scan", n_importance=50)
    scan_scaled = scaled.conditional_log_likelihood(mixed[40:60], "scan", n_importance=50)
    _close(scan_scaled, scan - 32 * math.log(A), scale=32)


@pytest.mark.slow
def test_latents_read_age_alike_from_scanner_units():
    # 300 brains of 1,160 voxels as float and as int16 scanner units 1000 x + 100: read as
    # it was, the int16 cohort stopped with a NaN loss in epoch 0. The two fits differ by
    # float32 rounding only
    X, age, mask = make_cohort(300, (16, 16, 16), random_state=0)
    X = X[:, mask.ravel()]
    raw = (X * 1000 + 100).astype(np.int16)

    def r2(data):
        Z = VAE(latent_dim=4, random_state=0).fit_transform(data)
        return cross_val_score(LinearRegression(), Z, age, cv=5).mean()

    pca = cross_val_score(LinearRegression(), PCA(4).fit_transform(X), age, cv=5).mean()
    plain = r2(X)
    assert plain >= pca - 0.03
    assert abs(r2(raw) - plain) < 0.02
