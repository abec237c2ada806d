"""Quality with default parameters, measured the way users measure it."""

import pytest
from sklearn.decomposition import PCA
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import cross_val_score
from sklearn.pipeline import make_pipeline

from nidl_vae import VAE


@pytest.mark.slow
def test_vae_latents_classify_digits_at_least_as_well_as_pca(digits):
    X, y = digits
    classifier = LogisticRegression(max_iter=1000)
    pca = cross_val_score(make_pipeline(PCA(10), classifier), X, y, cv=5).mean()
    vae = cross_val_score(make_pipeline(VAE(random_state=0), classifier), X, y, cv=5).mean()
    assert pca == pytest.approx(0.891, abs=0.005)  # the baseline the claim is about
    assert vae >= pca
