"""CVAE inside Pipelines and searches (conditions routed as metadata), harmonisation, and the
properties that scikit-learn's checks guard but cannot test without conditions."""

import pickle

import numpy as np
import pytest
import sklearn
from numpy.testing import assert_allclose, assert_array_equal
from sklearn.base import clone
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import GridSearchCV, KFold, cross_val_score, cross_validate
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from nidl_vae import CVAE, VAE

SMALL = dict(latent_dim=2, hidden_layer_sizes=(32,), max_epochs=5, random_state=0)


@pytest.fixture(autouse=True)
def routing():
    with sklearn.config_context(enable_metadata_routing=True):
        yield


def _sites_cohort(n=600, seed=0):
    """Two latent factors seen through 20 features, plus an additive offset per site (3
    sites) that is larger than the factors' own effect; the diagnosis is the first factor's
    sign."""
    rng = np.random.default_rng(seed)
    factors = rng.normal(size=(n, 2))
    site = rng.integers(0, 3, n)
    offsets = rng.normal(scale=2.0, size=(3, 20))
    X = factors @ rng.normal(size=(2, 20)) + offsets[site] + 0.3 * rng.normal(size=(n, 20))
    return X, (factors[:, 0] > 0).astype(int), site


def _routed_cvae(**params):
    return CVAE(**params).set_fit_request(conditions=True).set_transform_request(conditions=True)


def test_pipeline_fits_and_predicts_with_routed_conditions():
    X, diagnosis, site = _sites_cohort(200)
    pipe = make_pipeline(StandardScaler(), _routed_cvae(**SMALL), LogisticRegression())
    pipe.fit(X, diagnosis, conditions=site)
    cvae = pipe[1]
    # the conditions, not the diagnosis, were the CVAE's conditions
    assert_array_equal(cvae.classes_, [0, 1, 2])
    Z = cvae.transform(pipe[0].transform(X), conditions=site)
    assert_array_equal(pipe.predict(X, conditions=site), pipe[2].predict(Z))
    # fit_transform passes them to both halves: the same as fit, then transform
    both = clone(cvae).fit_transform(pipe[0].transform(X), conditions=site)
    assert_array_equal(both, Z)


def test_cross_validation_and_search_slice_the_conditions_per_fold():
    X, diagnosis, site = _sites_cohort(200)
    pipe = make_pipeline(_routed_cvae(**SMALL), LogisticRegression())
    folds = KFold(3, shuffle=True, random_state=0)
    scores = cross_val_score(pipe, X, diagnosis, cv=folds, params={"conditions": site})
    by_hand = [
        clone(pipe)
        .fit(X[train], diagnosis[train], conditions=site[train])
        .score(X[test], diagnosis[test], conditions=site[test])
        for train, test in folds.split(X)
    ]
    assert_allclose(scores, by_hand)
    result = cross_validate(pipe, X, diagnosis, cv=folds, params={"conditions": site})
    assert_allclose(result["test_score"], by_hand)
    search = GridSearchCV(pipe, {"cvae__beta": [0.5, 2.0]}, cv=folds)
    search.fit(X, diagnosis, conditions=site)
    assert search.best_params_["cvae__beta"] in (0.5, 2.0)
    assert np.isfinite(search.cv_results_["mean_test_score"]).all()


def test_a_cvae_scored_in_a_search_uses_its_conditions():
    X, _, site = _sites_cohort(200)
    cvae = CVAE(**SMALL).set_fit_request(conditions=True).set_score_request(conditions=True)
    search = GridSearchCV(cvae, {"latent_dim": [1, 2]}, cv=2).fit(X, conditions=site)
    assert np.isfinite(search.cv_results_["mean_test_score"]).all()


@pytest.mark.slow
def test_harmonisation_removes_the_site_and_keeps_the_diagnosis():
    X, diagnosis, site = _sites_cohort()
    train, test = np.arange(400), np.arange(400, 600)
    params = dict(latent_dim=2, random_state=0)
    vae = make_pipeline(StandardScaler(), VAE(**params)).fit(X[train])
    cvae = make_pipeline(StandardScaler(), _routed_cvae(**params))
    cvae.fit(X[train], conditions=site[train])

    def accuracy(Z, target):
        classifier = LogisticRegression().fit(Z[train], target[train])
        return classifier.score(Z[test], target[test])

    Z_vae, Z_cvae = vae.transform(X), cvae.transform(X, conditions=site)
    site_vae, site_cvae = accuracy(Z_vae, site), accuracy(Z_cvae, site)
    assert site_vae > 0.9  # a VAE's latents carry the site
    assert site_cvae < 0.45  # chance is about 1/3
    assert accuracy(Z_cvae, diagnosis) >= max(0.85, accuracy(Z_vae, diagnosis) - 0.03)


# ---------------------------------------------------------------- what the y-less checks guard
@pytest.fixture(scope="module")
def labelled():
    rng = np.random.default_rng(0)
    return 3 * rng.uniform(size=(40, 3)), rng.integers(0, 2, 40)


@pytest.fixture(scope="module")
def fitted(labelled):
    X, c = labelled
    return CVAE(**SMALL).fit(X, conditions=c)


def test_pickle_round_trip_with_conditions(labelled, fitted):
    X, c = labelled
    restored = pickle.loads(pickle.dumps(fitted))
    for method in ("transform", "score_samples", "log_likelihood"):
        assert_array_equal(
            getattr(restored, method)(X, conditions=c), getattr(fitted, method)(X, conditions=c)
        )


def test_dtypes_and_layouts_with_conditions(labelled, fitted):
    X, c = labelled
    Z = fitted.transform(X, conditions=c)
    for variant in (X.astype(np.float32), np.asfortranarray(X), X.tolist()):
        got = fitted.transform(variant, conditions=c)
        assert_allclose(got, Z, rtol=1e-5, atol=1e-6)
    assert fitted.transform(X.astype(np.float32), conditions=c).dtype == np.float32
    assert Z.dtype == np.float64
    with pytest.raises(ValueError, match="could not convert|dtype"):
        fitted.transform(np.array([["a", "b", "c"]] * 2, dtype=object), conditions=c[:2])


def test_subset_and_order_invariance_with_conditions(labelled, fitted):
    X, c = labelled
    for method in ("transform", "score_samples", "log_likelihood"):
        full = getattr(fitted, method)(X, conditions=c)
        one_by_one = np.concatenate(
            [getattr(fitted, method)(X[i : i + 1], conditions=c[i : i + 1]) for i in range(len(X))]
        )
        assert_allclose(one_by_one, full, atol=1e-7)
        order = np.random.default_rng(1).permutation(len(X))
        # the network runs in float32, and a matrix kernel may round a row differently in the
        # last bit depending on its place within a block of rows: equal to float32 precision
        assert_allclose(
            getattr(fitted, method)(X[order], conditions=c[order]),
            full[order],
            rtol=1e-6,
            atol=1e-7,
        )


def test_fit_is_idempotent_and_leaves_the_dict_unchanged(labelled, fitted):
    X, c = labelled
    again = clone(fitted).fit(X, conditions=c).fit(X, conditions=c)
    assert_array_equal(again.transform(X, conditions=c), fitted.transform(X, conditions=c))
    before = dict(fitted.__dict__)
    fitted.transform(X, conditions=c), fitted.score(X, conditions=c)
    assert fitted.__dict__.keys() == before.keys()
    assert all(fitted.__dict__[k] is before[k] for k in before)


def test_nan_inf_and_shape_errors_with_conditions(labelled, fitted):
    X, c = labelled
    X_bad = X.copy()
    X_bad[0, 0] = np.inf  # NaN is a missing value (tests/test_missing.py)
    with pytest.raises(ValueError, match="infinity"):
        CVAE(**SMALL).fit(X_bad, conditions=c)
    with pytest.raises(ValueError, match="infinity"):
        fitted.transform(X_bad, conditions=c)
    with pytest.raises(ValueError, match="Expected 2D array"):
        fitted.transform(X[0], conditions=c[:1])
    with pytest.raises(ValueError, match="X has 2 features, but CVAE is expecting 3"):
        fitted.transform(X[:, :2], conditions=c)
    assert fitted.n_features_in_ == 3


def test_feature_names_with_conditions(labelled):
    pd = pytest.importorskip("pandas")
    X, c = labelled
    frame = pd.DataFrame(X, columns=["a", "b", "c"])
    cvae = CVAE(**SMALL).set_output(transform="pandas").fit(frame, conditions=c)
    assert_array_equal(cvae.feature_names_in_, ["a", "b", "c"])
    assert list(cvae.transform(frame, conditions=c).columns) == ["cvae0", "cvae1"]
    with pytest.warns(UserWarning, match="feature names"):
        cvae.transform(X, conditions=c)
