"""Normative modelling: conditions as a table of numeric and categorical columns, calibration
on reference subjects, per-feature deviations and subject scores."""

import numpy as np
import pandas as pd
import pytest
from numpy.testing import assert_allclose, assert_array_equal

from nidl_vae import CVAE, VAE
from nidl_vae.normative import tail_statistic
from nidl_vae.persistence import load

FAST = dict(latent_dim=2, hidden_layer_sizes=(16,), max_epochs=3, random_state=0)


@pytest.fixture
def table():
    rng = np.random.default_rng(0)
    n = 80
    covariates = pd.DataFrame(
        {
            "age": rng.uniform(20, 80, n),
            "sex": rng.choice(["F", "M"], n),
            "site": pd.Categorical(rng.choice(["A", "B", "C"], n)),
            "scanner_upgraded": rng.random(n) < 0.5,
        }
    )
    X = rng.normal(size=(n, 12)) + (covariates["sex"] == "M").to_numpy()[:, None]
    return X.astype(np.float32), covariates


def test_a_table_of_numeric_and_categorical_conditions(table, tmp_path):
    X, covariates = table
    cvae = CVAE(**FAST).fit(X, conditions=covariates)
    assert_array_equal(cvae.condition_names_, ["age", "sex", "site", "scanner_upgraded"])
    assert_array_equal(cvae.condition_categories_["site"], ["A", "B", "C"])
    assert_array_equal(cvae.condition_categories_["scanner_upgraded"], [False, True])
    assert_allclose(cvae.covariate_mean_, [covariates["age"].mean()])
    # one standardised age, then one indicator per category
    encoded = cvae._encode_conditions(covariates, len(X), "transform")
    assert encoded.shape == (len(X), 1 + 2 + 3 + 2)
    assert_allclose(
        encoded[:, 0],
        (covariates["age"] - covariates["age"].mean()) / covariates["age"].std(ddof=0),
        rtol=1e-5,
    )
    assert_array_equal(encoded[:, 1], covariates["sex"] == "F")
    Z = cvae.transform(X, conditions=covariates)
    # columns are matched by name
    assert_array_equal(cvae.transform(X, conditions=covariates.iloc[:, ::-1]), Z)
    # a NumPy structured array reads like a DataFrame
    records = covariates.astype({"site": str}).to_records(index=False)
    assert_array_equal(CVAE(**FAST).fit(X, conditions=records).transform(X, conditions=records), Z)
    cvae.save(tmp_path / "m.npz")
    assert_array_equal(load(tmp_path / "m.npz").transform(X, conditions=covariates), Z)


def test_a_numeric_table_encodes_as_the_array_of_its_columns(table):
    X, covariates = table
    numeric = pd.DataFrame({"age": covariates["age"], "iq": np.linspace(80, 120, len(X))})
    by_table = CVAE(**FAST).fit(X, conditions=numeric)
    by_array = CVAE(**FAST).fit(X, conditions=numeric.to_numpy())
    assert_array_equal(
        by_table.transform(X, conditions=numeric),
        by_array.transform(X, conditions=numeric.to_numpy()),
    )
    # pandas' nullable integers are numbers, not categories
    nullable = numeric.assign(age=numeric["age"].round().astype("Int64"))
    assert not CVAE(**FAST).fit(X, conditions=nullable).condition_categories_
    # fitted on a numeric table, an array of its columns works too
    assert_array_equal(
        by_table.transform(X, conditions=numeric.to_numpy()),
        by_table.transform(X, conditions=numeric),
    )


def test_table_errors_name_the_column(table):
    X, covariates = table
    cvae = CVAE(**FAST).fit(X, conditions=covariates)
    with pytest.raises(
        ValueError,
        match=r"'site' has categories not seen in fit: \['D'\]; known categories are \['A', 'B'",
    ):
        cvae.transform(X, conditions=covariates.assign(site="D"))
    with pytest.raises(ValueError, match=r"lack the column\(s\) \['sex'\]"):
        cvae.transform(X, conditions=covariates.drop(columns="sex"))
    with pytest.raises(ValueError, match="categorical columns: give a DataFrame"):
        cvae.transform(X, conditions=covariates.to_numpy())
    with pytest.raises(ValueError, match="column 'age' has NaN"):
        CVAE(**FAST).fit(X, conditions=covariates.assign(age=np.nan))
    with pytest.raises(ValueError, match="column 'sex' has missing values"):
        CVAE(**FAST).fit(X, conditions=covariates.assign(sex=[None] + ["F"] * (len(X) - 1)))
    with pytest.raises(ValueError, match="column 'sex' mixes types"):
        CVAE(**FAST).fit(X, conditions=covariates.assign(sex=[1] + ["F"] * (len(X) - 1)))
    with pytest.raises(ValueError, match="conditions have 79 rows but X has 80"):
        CVAE(**FAST).fit(X, conditions=covariates.iloc[1:])
    # a failed fit leaves the fitted encoding as it was
    assert_array_equal(cvae.condition_categories_["site"], ["A", "B", "C"])


def test_deviations_are_the_calibrated_residuals(table, tmp_path):
    X, covariates = table
    train, reference, other = slice(0, 40), slice(40, 70), slice(70, 80)
    cvae = CVAE(**FAST).fit(X[train], conditions=covariates[train])
    with pytest.raises(ValueError, match="not calibrated: call calibrate"):
        cvae.deviations(X[other], conditions=covariates[other])
    with pytest.raises(ValueError, match="at least 20 reference subjects"):
        cvae.calibrate(X[other], conditions=covariates[other])
    assert cvae.calibrate(X[reference], conditions=covariates[reference]) is cvae

    def residual(rows):
        c = {"conditions": covariates[rows]}
        return X[rows] - cvae.inverse_transform(cvae.transform(X[rows], **c), **c)

    r = residual(reference).astype(np.float64)
    mean, scale = r.mean(0), r.std(0, ddof=1)
    assert_allclose(cvae.deviation_mean_, mean, rtol=1e-6)
    assert_allclose(cvae.deviation_scale_, scale, rtol=1e-6)
    d = cvae.deviations(X[other], conditions=covariates[other])
    assert_allclose(d, (residual(other) - mean) / scale, rtol=1e-4, atol=1e-5)
    # the subject statistic is standardised with the reference subjects', each of them
    # standardised by the others' residuals
    others = [np.delete(r, i, 0) for i in range(len(r))]
    left_out = np.array([(r[i] - o.mean(0)) / o.std(0, ddof=1) for i, o in enumerate(others)])
    statistic = tail_statistic(left_out)
    assert cvae.deviation_score_mean_ == pytest.approx(statistic.mean())
    assert cvae.deviation_score_scale_ == pytest.approx(statistic.std(ddof=1))
    # a subject with one feature far off scores higher than it did
    shifted = X[other].copy()
    shifted[:, 3] -= 10 * scale[3]
    before = cvae.deviation_scores(X[other], conditions=covariates[other])
    after = cvae.deviation_scores(shifted, conditions=covariates[other])
    assert (after > before).all()
    assert (cvae.deviations(shifted, conditions=covariates[other])[:, 3] < -5).all()
    cvae.save(tmp_path / "m.npz")
    loaded = load(tmp_path / "m.npz")
    assert_allclose(loaded.deviation_scores(shifted, conditions=covariates[other]), after)
    # fitting again drops the calibration of the former model
    cvae.fit(X[train], conditions=covariates[train])
    assert not hasattr(cvae, "deviation_mean_")


def test_vae_deviations_keep_the_shape_of_images():
    rng = np.random.default_rng(0)
    X = rng.normal(size=(60, 1, 6, 6)).astype(np.float32)
    vae = VAE(**FAST).fit(X[:30]).calibrate(X[30:55])
    assert vae.deviations(X[55:]).shape == (5, 1, 6, 6)
    with pytest.raises(ValueError, match="VAE has no conditions; use a CVAE"):
        vae.deviations(X[55:], conditions=np.zeros(5))


def test_tail_statistic_is_the_log_mean_of_the_largest_squares():
    d = np.zeros((2, 300))
    d[0, :3] = [4.0, -2.0, 1.0]
    d[1] = 0.5
    d[1, 5] = np.nan
    # 1% of 300 features: the three largest squares
    assert_allclose(np.exp(tail_statistic(d)), [(16 + 4 + 1) / 3, 0.25])


@pytest.mark.slow
def test_lesions_are_found_and_patients_flagged():
    # benchmarks/bench_normative.py's protocol for one seed: fit on 200 healthy brains with
    # age, sex and site, calibrate on 50 more, score 50 held-out healthy brains and 40 patients
    from sklearn.metrics import roc_auc_score

    from nidl_vae.datasets import make_lesion_cohort

    cohort = make_lesion_cohort(n_healthy=300, n_patients=40, random_state=0)
    X, covariates = cohort.volumes[:, 0][:, cohort.mask], cohort.covariates
    healthy = np.random.default_rng(0).permutation(np.flatnonzero(~cohort.patient))
    train, reference, held_out = healthy[:200], healthy[200:250], healthy[250:]
    patients = np.flatnonzero(cohort.patient)
    cvae = CVAE(random_state=0).fit(X[train], conditions=covariates.iloc[train])
    cvae.calibrate(X[reference], conditions=covariates.iloc[reference], scale_by="site")
    d_healthy = cvae.deviations(X[held_out], conditions=covariates.iloc[held_out])
    assert 0.03 <= np.mean(np.abs(d_healthy) > 1.96) <= 0.07
    d_patients = cvae.deviations(X[patients], conditions=covariates.iloc[patients])
    mm = np.argwhere(cohort.mask) @ cohort.affine[:3, :3].T + cohort.affine[:3, 3]
    distance = np.linalg.norm(mm[d_patients.argmin(1)] - cohort.lesion_center[patients], axis=1)
    assert np.mean(distance <= 12) >= 0.9
    s_healthy = cvae.deviation_scores(X[held_out], conditions=covariates.iloc[held_out])
    s_patients = cvae.deviation_scores(X[patients], conditions=covariates.iloc[patients])
    labels = np.r_[np.zeros(len(held_out)), np.ones(len(patients))]
    assert roc_auc_score(labels, np.r_[s_healthy, s_patients]) >= 0.95
    assert np.mean(s_patients > 1.645) >= 0.6
    assert np.mean(s_healthy > 1.645) <= 0.1
    assert abs(s_healthy.mean()) < 0.5


def _two_sites(n, rng, sites=("A", "B"), shift=None, noise=None):
    site = rng.choice(np.array(sites, dtype=object), n)
    shift = shift or {"A": 0.0, "B": 3.0, "C": 6.0}
    noise = noise or {"A": 1.0, "B": 1.0, "C": 1.0}
    loadings = np.linspace(-1, 1, 12)
    age = rng.uniform(20, 80, n)
    X = np.outer((age - 50) / 30, loadings) + np.array([shift[s] for s in site])[:, None]
    X += rng.normal(size=X.shape) * np.array([noise[s] for s in site])[:, None]
    return X.astype(np.float32), pd.DataFrame({"age": age, "site": site})


def test_scale_by_calibrates_each_site_to_its_own_noise():
    rng = np.random.default_rng(0)
    noise = {"A": 0.5, "B": 1.5}
    X, covariates = _two_sites(400, rng, noise=noise)
    cvae = CVAE(latent_dim=2, hidden_layer_sizes=(32,), max_epochs=20, random_state=0)
    cvae.fit(X[:200], conditions=covariates[:200])
    reference, held_out = slice(200, 300), slice(300, 400)
    pooled = cvae.calibrate(X[reference], conditions=covariates[reference])
    d = pooled.deviations(X[held_out], conditions=covariates[held_out])
    site = covariates["site"][held_out].to_numpy()
    # pooled over both sites, the quiet site's deviations are too small, the noisy one's too large
    assert d[site == "A"].std() < 0.6 < 1.3 < d[site == "B"].std()
    cvae.calibrate(X[reference], conditions=covariates[reference], scale_by="site")
    factors = cvae.deviation_group_scales_
    assert factors["B"] / factors["A"] == pytest.approx(3, rel=0.2)
    d = cvae.deviations(X[held_out], conditions=covariates[held_out])
    for name in ("A", "B"):
        assert d[site == name].std() == pytest.approx(1, abs=0.15)
    only_a = np.flatnonzero(covariates["site"][200:300] == "A") + 200
    cvae.calibrate(X[only_a], conditions=covariates.iloc[only_a], scale_by="site")
    with pytest.raises(ValueError, match="No reference subject of site='B' was calibrated"):
        cvae.deviations(X[held_out], conditions=covariates[held_out])
    with pytest.raises(ValueError, match="scale_by='age' must name a categorical column"):
        cvae.calibrate(X[reference], conditions=covariates[reference], scale_by="age")
    with pytest.raises(ValueError, match="at least 5 of each"):
        cvae.calibrate(
            X[200:224],
            conditions=covariates[200:224].assign(site=["A"] * 21 + ["B"] * 3),
            scale_by="site",
        )


def test_adapt_learns_a_new_site_and_leaves_the_model_as_fitted(tmp_path):
    rng = np.random.default_rng(0)
    X, covariates = _two_sites(300, rng)
    X_new, new = _two_sites(60, rng, sites=("C",), noise={"C": 2.0})
    cvae = CVAE(latent_dim=2, hidden_layer_sizes=(32,), max_epochs=30, random_state=0)
    cvae.fit(X[:200], conditions=covariates[:200])
    cvae.calibrate(X[200:], conditions=covariates[200:], scale_by="site")
    with pytest.raises(ValueError, match="site' has categories not seen in fit"):
        cvae.transform(X_new, conditions=new)
    weights = {k: v.clone() for k, v in cvae.module_.state_dict().items()}
    as_b = cvae.score_samples(X_new[20:], conditions=new[20:].assign(site="B"))
    assert cvae.adapt(X_new[:20], conditions=new[:20], max_epochs=200) is cvae
    for key, value in cvae.module_.state_dict().items():
        assert_array_equal(value.numpy(), weights[key].numpy(), err_msg=key)
    assert all(p.requires_grad for p in cvae.module_.parameters())  # trainable again
    assert_array_equal(cvae.condition_categories_["site"], ["A", "B", "C"])
    assert cvae.condition_codes_["site"].shape == (1, 2)
    # C lies twice as far from A as B does: its held-out subjects are likelier as C than as B
    assert cvae.score_samples(X_new[20:], conditions=new[20:]).mean() > as_b.mean() + 1
    # the new site's noise, twice the others', is calibrated from its subjects
    assert cvae.deviation_group_scales_["C"] / cvae.deviation_group_scales_["A"] == pytest.approx(
        2, rel=0.25
    )
    assert cvae.deviations(X_new[20:], conditions=new[20:]).std() == pytest.approx(1, abs=0.2)
    with pytest.raises(ValueError, match="no category that the CVAE does not know"):
        cvae.adapt(X_new[:20], conditions=new[:20])
    assert cvae.condition_codes_["site"].shape == (1, 2)
    # saved and loaded with its added site
    cvae.save(tmp_path / "adapted.npz")
    loaded = load(tmp_path / "adapted.npz")
    assert_array_equal(
        loaded.deviations(X_new[20:], conditions=new[20:]),
        cvae.deviations(X_new[20:], conditions=new[20:]),
    )
