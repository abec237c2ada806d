"""Behaviour of VAE: learning, determinism, persistence, errors, silence, Lightning options."""

import io
import os
import pickle
import random
import subprocess
import sys

import joblib
import numpy as np
import pytest
import torch
from numpy.testing import assert_allclose, assert_array_equal
from pytorch_lightning.callbacks import Callback
from sklearn.base import clone
from sklearn.exceptions import NotFittedError
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import GridSearchCV
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler
from torch import nn

from nidl_vae import VAE
from nidl_vae.seeding import standard_normal

FAST = dict(max_epochs=5, random_state=0)


@pytest.fixture(scope="module")
def fitted(digits):
    X, _ = digits
    return VAE(max_epochs=30, random_state=0).fit(X)


# ---------------------------------------------------------------- learning
def test_learns_digits_without_posterior_collapse(digits, fitted):
    X, _ = digits
    untrained = VAE(max_epochs=1, random_state=0).fit(X[:10])
    assert fitted.score(X) > untrained.score(X) + 50  # nats per image
    loss = fitted.history_["loss"]
    assert len(loss) == fitted.n_iter_ == 30 and loss[-1] < loss[0] - 50
    # every latent dimension is used: the KL is far from zero and each has variance
    assert fitted.history_["kl"][-1] > 5
    assert (fitted.transform(X).var(axis=0) > 0.01).all()
    # reconstructions are close to the images (pixels in [0, 1])
    rec = fitted.inverse_transform(fitted.transform(X))
    mean_digit_error = np.mean((X - X.mean(0)) ** 2)
    assert np.mean((rec - X) ** 2) < 0.3 * mean_digit_error


def test_history_terms_add_up(fitted):
    h = fitted.history_
    # float32 epoch means of terms of about 50 nats that nearly cancel: absolute tolerance
    assert_allclose(h["loss"], np.add(h["reconstruction"], h["kl"]), rtol=1e-5, atol=1e-4)


def test_log_likelihood_is_a_tighter_bound_than_the_elbo(digits, fitted):
    X = digits[0][:200]
    elbo = fitted.score_samples(X, n_draws=100)
    ll = fitted.log_likelihood(X, n_importance=100)
    assert ll.shape == (200,)
    assert ll.mean() > elbo.mean()
    # more draws tighten the bound, by a little: the estimate is close to converged
    ll_1000 = fitted.log_likelihood(X, n_importance=1000).mean()
    assert ll.mean() < ll_1000 < ll.mean() + 3


def test_log_likelihood_equals_the_estimate_written_with_torch_distributions(digits, fitted):
    # the same K draws, weighted with textbook densities: log mean_k p(x|z_k) p(z_k) / q(z_k|x)
    X = digits[0][:20]
    K = 50
    # the estimator's draws: its seed's 'log_likelihood' stream
    eps = torch.from_numpy(standard_normal(fitted._seed, "log_likelihood", (K, fitted.latent_dim)))
    model = fitted.module_.model
    dist = torch.distributions
    with torch.no_grad():
        x = torch.as_tensor(X, dtype=torch.float32)
        mu, logvar = model.posterior({"x": x})
        posterior = dist.Normal(mu, torch.exp(0.5 * logvar))
        z = mu + torch.exp(0.5 * logvar) * eps[:, None, :]
        # the networks work in the model's units x / u: in X's units the Normal's location
        # is u * decoder(z) and its scale u * sigma
        unit, lik = model.likelihood.data_unit, model.likelihood
        assert abs(unit - 1) > 0.05  # X's own units differ from the model's
        p_x = dist.Normal(unit * model.decoder(z), unit * lik.scale())
        log_px = p_x.log_prob(x).sum(-1)
        log_w = log_px + dist.Normal(0.0, 1.0).log_prob(z).sum(-1) - posterior.log_prob(z).sum(-1)
        expected = torch.logsumexp(log_w.double(), 0) - np.log(K)
    assert_allclose(fitted.log_likelihood(X, n_importance=K), expected.numpy(), rtol=1e-5)


@pytest.mark.parametrize("dist", ["laplace", "bernoulli"])
def test_other_likelihoods_learn(digits, dist):
    X = digits[0]
    vae = VAE(decoder_dist=dist, max_epochs=30, random_state=0).fit(X)
    assert vae.history_["loss"][-1] < vae.history_["loss"][0]
    assert vae.history_["kl"][-1] > 1
    rec = vae.inverse_transform(vae.transform(X))
    if dist == "bernoulli":
        assert 0 <= rec.min() and rec.max() <= 1
    assert np.mean((rec - X) ** 2) < 0.6 * np.mean((X - X.mean(0)) ** 2)


def test_fixed_unit_scale_collapses_where_the_default_does_not(digits):
    # the reason for the default: N(x; mu, 1) on [0, 1] pixels barely rewards reconstruction
    X = digits[0]
    collapsed = VAE(decoder_scale=1.0, max_epochs=10, random_state=0).fit(X)
    default = VAE(max_epochs=10, random_state=0).fit(X)
    assert collapsed.history_["kl"][-1] < 1.0 < 5 < default.history_["kl"][-1]


# ---------------------------------------------------------------- methods
def test_transform_sample_and_inverse_shapes_and_dtypes(digits, fitted):
    X = digits[0]
    Z = fitted.transform(X.astype(np.float32))
    assert Z.shape == (len(X), 10) and Z.dtype == np.float32
    assert_allclose(Z, fitted.transform(X), atol=1e-4)
    assert fitted.inverse_transform(Z[:3]).shape == (3, 64)
    samples = fitted.sample(7)
    assert samples.shape == (7, 64)
    assert_array_equal(samples, fitted.sample(7))
    assert not np.allclose(samples, fitted.sample(7, random_state=1))
    assert_array_equal(fitted.sample(7, random_state=1), fitted.sample(7, random_state=1))
    # the mean image of many samples looks like the mean digit
    assert np.corrcoef(fitted.sample(500).mean(0), X.mean(0))[0, 1] > 0.9


def test_stochastic_transform_is_seeded(digits):
    X = digits[0][:300]
    vae = VAE(stochastic_transform=True, **FAST).fit(X)
    Z1, Z2 = vae.transform(X), vae.transform(X)
    assert_array_equal(Z1, Z2)
    mean = clone(vae).set_params(stochastic_transform=False).fit(X).transform(X)
    assert not np.allclose(Z1, mean)
    # a draw around the mean: distance of the order of the posterior scale
    assert np.abs(Z1 - mean).mean() < 1.0


def test_feature_names_and_pandas_output(digits):
    pd = pytest.importorskip("pandas")
    X = pd.DataFrame(digits[0][:200], columns=[f"px{i}" for i in range(64)])
    vae = VAE(latent_dim=3, **FAST).set_output(transform="pandas").fit(X)
    Z = vae.transform(X)
    assert list(Z.columns) == ["vae0", "vae1", "vae2"]
    assert_array_equal(vae.get_feature_names_out(), ["vae0", "vae1", "vae2"])
    assert vae.feature_names_in_[0] == "px0" and vae.n_features_in_ == 64


def test_pipeline_and_grid_search_over_beta_and_latent_dim(digits):
    X, y = digits[0][:400], digits[1][:400]
    pipe = make_pipeline(StandardScaler(), VAE(max_epochs=5, random_state=0), LogisticRegression())
    pipe.fit(X, y)
    assert pipe.score(X, y) > 0.5
    search = GridSearchCV(
        VAE(max_epochs=5, random_state=0), {"beta": [0.5, 4.0], "latent_dim": [2, 8]}, cv=2
    ).fit(X)
    scores = search.cv_results_["mean_test_score"]
    assert np.isfinite(scores).all() and len(set(np.round(scores, 3))) == 4
    assert search.best_estimator_.latent_dim == search.best_params_["latent_dim"]
    assert search.best_score_ == scores.max()


def test_custom_convolutional_encoder_and_decoder(digits):
    X = digits[0][:300]
    encoder = nn.Sequential(nn.Unflatten(1, (1, 8, 8)), nn.Conv2d(1, 4, 3), nn.ReLU())
    decoder = nn.Sequential(
        nn.Linear(2, 4 * 6 * 6), nn.Unflatten(1, (4, 6, 6)), nn.ConvTranspose2d(4, 1, 3)
    )
    before = [p.detach().clone() for p in encoder.parameters()]
    vae = VAE(encoder=encoder, decoder=decoder, latent_dim=2, **FAST).fit(X)
    assert vae.module_.model.encoder.mu.in_features == 4 * 6 * 6  # inferred encoder_out_dim
    assert vae.transform(X).shape == (300, 2)
    assert vae.history_["loss"][-1] < vae.history_["loss"][0]
    # the user's modules are copied, never trained in place
    assert all(torch.equal(a, b) for a, b in zip(before, encoder.parameters(), strict=True))


# ---------------------------------------------------------------- reproducibility
def test_same_random_state_same_results_and_global_rngs_untouched(small_X):
    np.random.seed(123)
    random.seed(123)
    torch.manual_seed(123)
    states = np.random.get_state()[1].copy(), random.getstate(), torch.get_rng_state().clone()
    a = VAE(**FAST).fit(small_X)
    b = VAE(**FAST).fit(small_X)
    for method in ("transform", "score_samples", "log_likelihood"):
        assert_array_equal(getattr(a, method)(small_X), getattr(b, method)(small_X))
    assert_array_equal(a.sample(5), b.sample(5))
    assert a.history_ == b.history_
    c = VAE(max_epochs=5, random_state=1).fit(small_X)
    assert not np.allclose(a.transform(small_X), c.transform(small_X))
    VAE(max_epochs=2).fit(small_X)  # random_state=None neither
    assert_array_equal(np.random.get_state()[1], states[0])
    assert random.getstate() == states[1]
    assert torch.equal(torch.get_rng_state(), states[2])


def test_clone_pickle_and_joblib_round_trips(small_X, tmp_path):
    vae = VAE(**FAST).fit(small_X)
    expected = vae.transform(small_X), vae.score_samples(small_X), vae.sample(3)
    for restored in (
        pickle.loads(pickle.dumps(vae)),
        joblib.load(joblib.dump(vae, tmp_path / "vae.joblib")[0]),
    ):
        got = restored.transform(small_X), restored.score_samples(small_X), restored.sample(3)
        for e, g in zip(expected, got, strict=True):
            assert_array_equal(e, g)
    unfitted = clone(vae)
    assert unfitted.get_params() == vae.get_params() and not hasattr(unfitted, "module_")


# ---------------------------------------------------------------- errors
@pytest.mark.parametrize(
    "params, match",
    [
        ({"latent_dim": 0}, "latent_dim"),
        ({"beta": -1.0}, "beta"),
        ({"decoder_dist": "poisson"}, "decoder_dist"),
        ({"decoder_scale": "big"}, "decoder_scale"),
        ({"decoder_scale": 0.0}, "decoder_scale"),
        ({"lr": 0}, "lr"),
        ({"validation_fraction": 1.0}, "validation_fraction"),
        ({"trainer_params": {"max_epochs": 3}}, r"VAE\(max_epochs=...\)"),
        ({"decoder": nn.Linear(10, 3)}, "decoder outputs 3 values"),
    ],
)
def test_invalid_parameters_raise_before_training(small_X, params, match):
    with pytest.raises(ValueError, match=match):
        VAE(**params).fit(small_X)


@pytest.mark.parametrize(
    "X, match",
    [
        (np.array([[0.0, np.nan], [1.0, np.nan]]), "NaN in every training row"),
        (np.array([[0.0, np.inf], [1.0, 2.0]]), "infinity"),
        (np.ones((1, 3)), "minimum of 2"),
    ],
)
def test_invalid_data_raises(X, match):
    with pytest.raises(ValueError, match=match):
        VAE().fit(X)


def test_bernoulli_needs_data_in_unit_interval(small_X):
    with pytest.raises(ValueError, match=r"needs X in \[0, 1\].*MinMaxScaler"):
        VAE(decoder_dist="bernoulli").fit(small_X)


def test_wrong_width_and_unfitted_use(small_X):
    with pytest.raises(NotFittedError):
        VAE().transform(small_X)
    with pytest.raises(NotFittedError):
        VAE().sample(2)
    vae = VAE(**FAST).fit(small_X)
    with pytest.raises(ValueError, match="X has 4 features, but VAE is expecting 5"):
        vae.transform(small_X[:, :4])
    with pytest.raises(ValueError, match="latent_dim=10"):
        vae.inverse_transform(np.zeros((2, 3)))
    for call in (
        lambda: vae.sample(0),
        lambda: vae.score_samples(small_X, n_draws=0),
        lambda: vae.log_likelihood(small_X, n_importance=2.5),
    ):
        with pytest.raises(ValueError, match="must be a positive integer"):
            call()


def test_nan_loss_stops_with_advice_and_keeps_the_fitted_model(small_X):
    vae = VAE(**FAST).fit(small_X)
    before = vae.transform(small_X), dict(vae.__dict__)
    # steps of 1e30 overflow float32 weights in the first step
    with pytest.raises(FloatingPointError, match="Try a smaller lr") as raised:
        vae.set_params(lr=1e30).fit(small_X)
    assert "precision" not in str(raised.value)  # 32-true already: no advice that cannot help
    assert vae.__dict__.keys() == before[1].keys() and vae.module_ is before[1]["module_"]
    assert_array_equal(vae.transform(small_X), before[0])


def test_failed_fit_on_bad_data_keeps_the_fitted_model(small_X):
    vae = VAE(**FAST).fit(small_X)
    with pytest.raises(ValueError):
        vae.fit(np.full((3, 2), np.nan))
    assert vae.n_features_in_ == 5
    vae.transform(small_X)


# ---------------------------------------------------------------- Lightning side
def test_silent_and_writes_nothing(small_X, tmp_path, capfd, monkeypatch):
    monkeypatch.chdir(tmp_path)
    vae = VAE(early_stopping=True, **FAST).fit(small_X)
    vae.transform(small_X)
    vae.score(small_X)
    out, err = capfd.readouterr()
    assert out == "" and err == ""
    assert os.listdir(tmp_path) == []


def test_a_user_script_prints_no_warning(tmp_path):
    # pytest shows every warning inside a test; a user's script shows Python's defaults
    script = (
        "import numpy as np; from nidl_vae import VAE\n"
        "X = np.random.default_rng(0).normal(size=(60, 5))\n"
        "vae = VAE(max_epochs=2, early_stopping=True, random_state=0).fit(X)\n"
        "vae.transform(X); vae.score(X); VAE(max_epochs=2, random_state=0).fit(X)\n"
    )
    done = subprocess.run(
        [sys.executable, "-W", "default", "-c", script],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout == "" and done.stderr == ""
    assert os.listdir(tmp_path) == []


def test_verbose_shows_a_progress_bar_with_the_loss(small_X, tmp_path, capfd, monkeypatch):
    monkeypatch.chdir(tmp_path)
    VAE(verbose=True, max_epochs=2, random_state=0).fit(small_X)
    out, err = capfd.readouterr()
    # no terminal here: a line per epoch
    assert out.splitlines()[-1].startswith("epoch 2/2  train_loss ") and err == ""
    monkeypatch.setattr(sys.stderr, "isatty", lambda: True, raising=False)
    VAE(verbose=True, max_epochs=2, random_state=0).fit(small_X)
    out, err = capfd.readouterr()
    assert "Epoch 1" in out + err and "train_loss" in out + err  # Lightning's progress bar


def test_user_loggers_and_callbacks_are_used(small_X, tmp_path):
    from pytorch_lightning.loggers import CSVLogger

    class CountEpochs(Callback):
        epochs = 0

        def on_train_epoch_end(self, trainer, module):
            CountEpochs.epochs += 1

    VAE(trainer_params={"logger": CSVLogger(tmp_path), "callbacks": [CountEpochs()]}, **FAST).fit(
        small_X
    )
    assert CountEpochs.epochs == 5
    metrics = next(tmp_path.rglob("metrics.csv")).read_text()
    assert "reconstruction" in metrics and "kl" in metrics


def test_early_stopping_keeps_the_best_epoch(digits):
    X = digits[0][:300]
    vae = VAE(early_stopping=True, n_iter_no_change=2, max_epochs=300, random_state=0).fit(X)
    val = vae.history_["val_loss"]
    assert vae.n_iter_ < 300 and len(val) == vae.n_iter_
    assert np.argmin(val) == vae.n_iter_ - 3  # stopped 2 epochs after the best
    # the weights kept are the best epoch's: its held-out loss is within noise of the minimum
    assert len(vae.history_["loss"]) == vae.n_iter_


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_gpu_fit_and_cpu_load(small_X):
    vae = VAE(accelerator="gpu", **FAST).fit(small_X)
    assert vae.module_.device.type == "cuda"
    buffer = io.BytesIO()
    pickle.dump(vae, buffer)
    restored = pickle.loads(buffer.getvalue())
    assert next(restored.module_.parameters()).device.type == "cpu"
    assert_allclose(restored.transform(small_X), vae.transform(small_X), atol=1e-4)


def test_bernoulli_scores_decode_many_draws_per_row():
    # regression: the Bernoulli log-likelihood did not broadcast over the K latent draws, so
    # score_samples and log_likelihood raised for decoder_dist='bernoulli'
    X = np.random.default_rng(0).uniform(size=(50, 6))
    vae = VAE(decoder_dist="bernoulli", max_epochs=20, random_state=0).fit(X)
    elbo = vae.score_samples(X, n_draws=20)
    iw = vae.log_likelihood(X, n_importance=200)
    assert np.isfinite(elbo).all() and elbo.shape == (50,)
    # uniform noise has nothing to encode: the posterior stays near the prior and the two
    # estimates nearly coincide
    assert iw.mean() > elbo.mean() - 0.01


def test_auto_hidden_widths_narrow_on_more_features_than_training_rows(tmp_path):
    from nidl_vae import CRMVAE, load

    rng = np.random.default_rng(0)
    tall, wide = rng.normal(size=(100, 20)), rng.normal(size=(40, 60))
    fast = dict(latent_dim=2, max_epochs=1, random_state=0)
    assert VAE(**fast).fit(tall).hidden_layer_sizes_ == (256, 128)
    narrow = VAE(**fast).fit(wide)
    assert narrow.hidden_layer_sizes_ == (64,)
    assert narrow.module_.model.decoder[-1].in_features == 64
    # the encoder's first layer, and the decoder's last reading 64 hidden units
    assert narrow.module_.model.encoder.backbone[0].out_features == 64
    # explicit widths are kept; early stopping counts the training rows left
    assert VAE(hidden_layer_sizes=(32, 16), **fast).fit(wide).hidden_layer_sizes_ == (32, 16)
    held_out = VAE(early_stopping=True, validation_fraction=0.5, **fast).fit(wide[:, :30])
    assert held_out.hidden_layer_sizes_ == (64,)  # 30 features, 20 training rows
    assert VAE(**fast).fit(wide[:, :30]).hidden_layer_sizes_ == (256, 128)  # 40 rows
    # the CRMVAE per modality: 60 voxel-like columns and 5 scores on 40 rows
    both = np.concatenate([wide, rng.normal(size=(40, 5))], 1)
    crm = CRMVAE(modalities={"image": 60, "scores": 5}, **fast).fit(both)
    assert crm.hidden_layer_sizes_ == {"image": (64,), "scores": (512, 256)}
    crm.save(tmp_path / "crm.npz")
    assert load(tmp_path / "crm.npz").hidden_layer_sizes_ == crm.hidden_layer_sizes_
    with pytest.raises(ValueError, match="hidden_layer_sizes"):
        VAE(hidden_layer_sizes="wide").fit(tall)
