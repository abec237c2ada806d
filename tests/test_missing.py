"""Missing cells (NaN anywhere): a likelihood over the observed cells, an encoder that reads
the mask, imputation that leaves observed values alone, for the three estimators."""

import math

import numpy as np
import pandas as pd
import pytest
import torch
from numpy.testing import assert_allclose, assert_array_equal

from nidl_vae import CRMVAE, CVAE, VAE, load
from nidl_vae.distributions import DecoderLikelihood
from nidl_vae.seeding import standard_normal

SMALL = dict(latent_dim=3, hidden_layer_sizes=(32,), max_epochs=3, random_state=0)


@pytest.fixture(scope="module")
def holes(digits):
    """300 digits with 30% of the cells missing at random, and the complete rows."""
    X, y = digits
    X, y = X[:300], y[:300]
    blanked = X.copy()
    blanked[np.random.default_rng(0).random(X.shape) < 0.3] = np.nan
    return blanked, X, y


@pytest.mark.parametrize("dist", ["normal", "laplace", "bernoulli"])
def test_likelihood_runs_over_the_observed_cells(dist):
    rng = np.random.default_rng(0)
    x = rng.uniform(0, 1, (4, 6))
    x[rng.random(x.shape) < 0.4] = np.nan
    out = rng.normal(0.5, 0.3, (4, 6))
    likelihood = DecoderLikelihood(dist, "learned", 6, spread=0.5).double()
    if dist != "bernoulli":
        with torch.no_grad():
            likelihood.raw_scale.copy_(torch.from_numpy(rng.normal(0, 0.3, 6)))
        scale = likelihood.scale().detach().numpy()
    if dist == "normal":
        cells = -0.5 * np.log(2 * math.pi) - np.log(scale) - 0.5 * ((x - out) / scale) ** 2
    elif dist == "laplace":
        cells = -np.log(2 * scale) - np.abs(x - out) / scale
    else:
        p = 1 / (1 + np.exp(-out))
        cells = x * np.log(p) + (1 - x) * np.log(1 - p)
    expected = np.where(np.isnan(x), 0.0, cells).sum(1)
    loc = torch.from_numpy(out).requires_grad_()
    value = likelihood.log_prob(torch.from_numpy(x), loc)
    assert_allclose(value.detach().numpy(), expected, rtol=1e-12)
    value.sum().backward()
    # a missing cell has no say in the gradient, and no NaN leaks from it
    assert torch.isfinite(loc.grad).all()
    assert (loc.grad.numpy()[np.isnan(x)] == 0).all()
    if dist != "bernoulli":
        assert torch.isfinite(likelihood.raw_scale.grad).all()


def test_vae_trains_on_holes_and_its_elbo_is_of_the_observed_cells(holes):
    X, _, _ = holes
    vae = VAE(**SMALL).fit(X)
    assert vae.encoder_reads_mask_
    # the default encoder reads the values and the mask: twice the features
    assert vae.module_.model.encoder.backbone[0].in_features == 2 * X.shape[1]
    assert np.isfinite(vae.transform(X)).all()
    # the ELBO by hand, over each row's observed cells
    rows = X[:5]
    module, n_draws = vae.module_.model, 4
    with torch.no_grad():
        x = torch.from_numpy(rows.astype(np.float32))
        mu, logvar = module.posterior({"x": x})
        # the estimator's draws: its seed's 'score' stream
        eps = torch.from_numpy(standard_normal(vae._seed, "score", (n_draws, vae.latent_dim)))
        z = mu + torch.exp(0.5 * logvar) * eps[:, None]
        # in X's units: the default decoder's location and scale times the model's unit u
        lik = module.likelihood
        out = module.decoder(z.flatten(0, 1)).unflatten(0, z.shape[:2])
        loc = (out * lik.data_unit).double().numpy()
        scale = (lik.scale() * lik.data_unit).double().numpy()
    cells = -0.5 * np.log(2 * math.pi) - np.log(scale) - 0.5 * ((rows - loc) / scale) ** 2
    log_lik = np.where(np.isnan(rows), 0.0, cells).sum(-1).mean(0)
    mu, logvar = mu.double().numpy(), logvar.double().numpy()
    kl = 0.5 * (np.exp(logvar) + mu**2 - 1 - logvar).sum(1)
    assert_allclose(vae.score_samples(rows, n_draws=n_draws), log_lik - kl, rtol=1e-5)


def test_complete_data_reads_no_mask(digits):
    vae = VAE(**SMALL).fit(digits[0][:100])
    assert not vae.encoder_reads_mask_
    assert vae.module_.model.encoder.backbone[0].in_features == 64
    # a model fitted on complete rows still encodes and imputes incomplete ones
    X = digits[0][:20].copy()
    X[:, :8] = np.nan
    assert np.isfinite(vae.impute(X)).all()


def test_impute_fills_only_the_holes(holes):
    X, _, _ = holes
    frame = pd.DataFrame(X.astype(np.float32), columns=[f"px{i}" for i in range(64)])
    frame.index = frame.index + 1000
    vae = VAE(**SMALL).fit(frame)
    imputed = vae.impute(frame)
    assert isinstance(imputed, pd.DataFrame)
    assert imputed.columns.equals(frame.columns) and imputed.index.equals(frame.index)
    values = imputed.to_numpy()
    assert values.dtype == np.float32 and not np.isnan(values).any()
    observed = ~np.isnan(X)
    assert_array_equal(values[observed], frame.to_numpy()[observed])
    assert_array_equal(vae.impute(frame), imputed)  # seeded draws: the same at every call
    # a row's imputation does not depend on the rows beside it
    assert_array_equal(vae.impute(frame[5:9]), imputed[5:9])
    # the conditional mean (K draws) differs from the posterior mean decoded
    assert not np.array_equal(vae.impute(frame, n_draws=None), imputed)


def test_impute_beats_the_column_means(holes):
    """Filling from the model beats the observed column means on the cells it fills."""
    X, complete, _ = holes
    vae = VAE(max_epochs=60, random_state=0).fit(X)
    missing = np.isnan(X)
    means = np.where(missing, np.nanmean(X, 0), X)
    model = np.mean((vae.impute(X)[missing] - complete[missing]) ** 2)
    assert model < 0.6 * np.mean((means[missing] - complete[missing]) ** 2)


def test_cvae_imputes_given_the_conditions(holes):
    X, _, y = holes
    cvae = CVAE(**SMALL).fit(X, conditions=y)
    imputed = cvae.impute(X, conditions=y)
    observed = ~np.isnan(X)
    assert not np.isnan(imputed).any()
    assert_array_equal(imputed[observed], X[observed])
    assert np.isfinite(cvae.score_samples(X, conditions=y)).all()
    with pytest.raises(ValueError, match="conditions"):
        cvae.impute(X)


def test_crmvae_takes_holes_inside_a_modality_and_missing_modalities(holes):
    X, _, _ = holes
    X = X.copy()
    X[:50, 32:] = np.nan  # the bottom half of 50 digits is missing altogether
    crm = CRMVAE(modalities={"top": 32, "bottom": 32}, **SMALL).fit(X)
    assert crm.encoder_reads_mask_ == {"top": True, "bottom": True}
    imputed = crm.impute(X)
    observed = ~np.isnan(X)
    assert not np.isnan(imputed).any()
    assert_array_equal(imputed[observed], X[observed])
    assert np.isfinite(crm.score_samples(X)).all()
    assert np.isfinite(crm.transform(X, modalities="top")).all()


def test_images_with_holes(digits):
    images = digits[0][:120].reshape(-1, 1, 8, 8).copy()
    images[np.random.default_rng(1).random(images.shape) < 0.2] = np.nan
    vae = VAE(latent_dim=3, conv_channels=(4, 8), max_epochs=2, random_state=0).fit(images)
    # the mask is a second channel of the image
    assert vae.module_.model.encoder.backbone[1].in_channels == 2
    imputed = vae.impute(images)
    assert imputed.shape == images.shape and not np.isnan(imputed).any()


def test_a_saved_model_imputes_the_same(holes, tmp_path):
    X, _, _ = holes
    vae = VAE(**SMALL).fit(X)
    vae.save(tmp_path / "model.npz")
    loaded = load(tmp_path / "model.npz")
    assert loaded.encoder_reads_mask_
    assert_array_equal(loaded.impute(X), vae.impute(X))
