"""Smoke run on the declared dependency floors (installed by .ci/run into .venv-floor): import,
fit, transform, sample, score, save and load, with every warning an error."""

import tempfile
import warnings

import numpy as np

warnings.simplefilter("error")

from nidl_vae import CRMVAE, CVAE, VAE, load  # noqa: E402

X = np.random.default_rng(0).normal(size=(80, 6))
labels = np.arange(80) % 2
with tempfile.TemporaryDirectory() as folder:
    for model, extra in ((VAE, {}), (CVAE, {"conditions": labels}), (CRMVAE, {})):
        params = {"modalities": [4, 2]} if model is CRMVAE else {}
        fitted = model(latent_dim=2, max_epochs=3, random_state=0, **params).fit(X, **extra)
        Z = fitted.transform(X, **extra)
        assert Z.shape == (80, 2) and np.isfinite(Z).all()
        assert np.isfinite(fitted.score_samples(X, **extra)).all()
        fitted.save(f"{folder}/model.npz")
        assert np.array_equal(load(f"{folder}/model.npz").transform(X, **extra), Z)
    VAE(latent_dim=2, max_epochs=2, random_state=0).fit(X).sample(3)
print("floor smoke: ok")
