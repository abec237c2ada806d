"""The users' regime: data on disk and as Datasets, memory bounds, several processes, and
convergence with default parameters on few subjects and many voxels."""

import threading
import time

import numpy as np
import pytest
import torch
from numpy.testing import assert_allclose, assert_array_equal
from sklearn.decomposition import PCA
from sklearn.linear_model import LinearRegression
from sklearn.model_selection import cross_val_score, train_test_split
from torch.utils.data import Dataset

from nidl_vae import CRMVAE, CVAE, VAE
from nidl_vae.datasets import make_cohort
from nidl_vae.run_context import KNOWN_WARNINGS

# a thread pool (scikit-learn's, Dask's) may put its own copy of the warning filters back while
# a fit runs and let one of Lightning's known warnings through (nidl_vae.run_context says so).
# Wrapped in a group: the package takes entries of exactly its own patterns out after a run
THREAD_POOL_LEAKS = tuple(f"ignore:({message})" for message in KNOWN_WARNINGS)

SMALL = dict(latent_dim=2, hidden_layer_sizes=(16,), max_epochs=3, random_state=0)


def _rss_anon() -> int:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("RssAnon:"):
                return int(line.split()[1]) * 1024
    pytest.skip("no RssAnon on this system")


def _peak_rise(fn) -> int:
    base, peak, done = _rss_anon(), [0], threading.Event()

    def sample():
        while not done.is_set():
            peak[0] = max(peak[0], _rss_anon() - base)
            time.sleep(0.002)

    sampler = threading.Thread(target=sample)
    sampler.start()
    try:
        fn()
    finally:
        done.set()
        sampler.join()
    return max(peak[0], _rss_anon() - base)


@pytest.fixture(scope="module")
def table():
    rng = np.random.default_rng(0)
    factors = rng.normal(size=(300, 2))
    X = factors @ rng.normal(size=(2, 40)) + 0.3 * rng.normal(size=(300, 40))
    return X.astype(np.float32)


@pytest.fixture
def memmap(table, tmp_path):
    path = tmp_path / "X.f32"
    out = np.memmap(path, dtype=np.float32, mode="w+", shape=table.shape)
    out[:] = table
    out.flush()
    return np.memmap(path, dtype=np.float32, mode="r", shape=table.shape)


class Rows(Dataset):
    """A Dataset whose items are single samples (as a loader of volumes would give)."""

    def __init__(self, X):
        self.X = X

    def __len__(self):
        return len(self.X)

    def __getitem__(self, i):
        return torch.from_numpy(self.X[i])


@pytest.mark.parametrize("source", ["memmap", "dataset"])
def test_data_on_disk_or_in_a_dataset_gives_the_in_memory_results(table, memmap, source):
    X = memmap if source == "memmap" else Rows(table)
    reference = VAE(**SMALL).fit(table)
    vae = VAE(**SMALL).fit(X)
    assert vae.n_features_in_ == 40 and vae.history_ == reference.history_
    for method in ("transform", "score_samples", "log_likelihood"):
        assert_array_equal(getattr(vae, method)(X), getattr(reference, method)(table))
    assert_array_equal(vae.transform(memmap), reference.transform(table))


def test_hdf5_datasets_are_read_where_they_lie(table, tmp_path):
    h5py = pytest.importorskip("h5py")
    with h5py.File(tmp_path / "cohort.h5", "w") as f:
        f["X"] = table
    with h5py.File(tmp_path / "cohort.h5", "r") as f:
        vae = VAE(**SMALL).fit(f["X"])
        assert_array_equal(vae.transform(f["X"]), VAE(**SMALL).fit(table).transform(table))


def test_cvae_and_crmvae_read_memory_maps(table, memmap):
    labels = np.arange(len(table)) % 3
    cvae = CVAE(**SMALL).fit(memmap, conditions=labels)
    assert_array_equal(
        cvae.transform(memmap, conditions=labels),
        CVAE(**SMALL).fit(table, conditions=labels).transform(table, conditions=labels),
    )
    crm = CRMVAE(modalities=[20, 20], **SMALL).fit(memmap)
    assert_array_equal(
        crm.impute(memmap), CRMVAE(modalities=[20, 20], **SMALL).fit(table).impute(table)
    )


def test_data_on_disk_is_checked_before_training(table, tmp_path):
    bad = table.copy()
    bad[7, 3] = np.inf
    path = tmp_path / "bad.f32"
    np.asarray(bad).tofile(path)
    X = np.memmap(path, dtype=np.float32, mode="r", shape=bad.shape)
    with pytest.raises(ValueError, match="infinity"):
        VAE(**SMALL).fit(X)
    vae = VAE(**SMALL).fit(table)
    with pytest.raises(ValueError, match="infinity"):
        vae.transform(X)
    with pytest.raises(ValueError, match="n_samples, n_features"):
        VAE(**SMALL).fit(np.memmap(path, dtype=np.float32, mode="r", shape=(30, 10, 40)))


def test_float64_input_gives_the_float32_results(table):
    vae = VAE(**SMALL).fit(table.astype(np.float64))
    assert_allclose(vae.transform(table.astype(np.float64)), vae.transform(table), rtol=1e-6)
    assert vae.transform(table.astype(np.float64)).dtype == np.float64


def test_fit_memory_stays_near_a_batch_whatever_the_data_size():
    X = np.random.default_rng(0).normal(size=(4000, 25_000)).astype(np.float32)  # 400 MB
    params = dict(hidden_layer_sizes=(8,), latent_dim=2, max_epochs=1, random_state=0)
    VAE(**params).fit(X[:256])  # first-call costs (Lightning, allocator pools) paid here
    # the smaller of two fits: the allocator's retention adds up to 100 MB to one (measured
    # rises 23-123 MB for the same fit), never less
    rise = min(_peak_rise(lambda: VAE(**params).fit(X)) for _ in range(2))
    state = (25_000 * 8 * 2 + 25_000) * 4 * 4  # weights, gradients, two Adam moments
    assert rise < 0.3 * X.nbytes + state, f"{rise / 1e6:.0f} MB for {X.nbytes / 1e6:.0f} MB"


def test_gradients_live_only_from_backward_to_the_optimizer_step(table):
    # at 10^5 features the gradients weigh as much as the weights: held through the next
    # forward pass (Lightning zeroes them after it) they were the fit's peak; held after fit,
    # with the optimizer's moments, they tripled what a fitted estimator keeps
    import pytorch_lightning as pl

    seen = {}

    class Probe(pl.Callback):
        def on_train_batch_start(self, trainer, module, batch, batch_idx):
            held = [p.grad is not None for p in module.parameters()]
            seen["held at a forward pass"] = seen.get("held at a forward pass", 0) + any(held)

        def on_before_optimizer_step(self, trainer, module, optimizer):
            seen["steps with gradients"] = seen.get("steps with gradients", 0) + all(
                p.grad is not None for p in module.parameters()
            )

    vae = VAE(**SMALL, trainer_params={"callbacks": [Probe()]}).fit(table)
    steps = int(vae.module_.steps_done)
    assert seen == {"held at a forward pass": 0, "steps with gradients": steps}
    assert all(p.grad is None for p in vae.module_.parameters())


def test_log_likelihood_memory_is_flat_in_the_number_of_draws(digits):
    X = digits[0][:400]
    vae = VAE(max_epochs=2, random_state=0).fit(X)
    vae.log_likelihood(X, n_importance=500)
    small = _peak_rise(lambda: vae.log_likelihood(X, n_importance=500))
    large = _peak_rise(lambda: vae.log_likelihood(X, n_importance=20_000))
    assert large < small + 50e6  # K x 40 more draws, no more than a chunk more memory


@pytest.mark.slow
@pytest.mark.parametrize("Estimator", [VAE, CVAE])
def test_wide_decoders_score_through_the_expanded_quadratic_form(Estimator, monkeypatch):
    # at p >= 4 x the last hidden width the log-likelihood and ELBO read the decoder's last
    # layer as a quadratic form in its input; the values match decoding every draw
    import nidl_vae.distributions as distributions

    rng = np.random.default_rng(0)
    X = (rng.normal(size=(40, 3)) @ rng.normal(size=(3, 300)) + 5.0).astype(np.float32)
    conditions = np.arange(40) % 2
    params = dict(SMALL, hidden_layer_sizes=(32,), max_epochs=10)
    vae = Estimator(**params).fit(X, **({"conditions": conditions} if Estimator is CVAE else {}))
    routed = {"conditions": conditions} if Estimator is CVAE else {}

    def scores():
        return (
            vae.log_likelihood(X, n_importance=50, **routed),
            vae.score_samples(X, **routed),
        )

    expanded = scores()
    cached = vae.module_.model._readout()
    assert vae.module_.model._readout() is cached  # W^T Lambda W once per state of the weights
    with torch.no_grad():
        vae.module_.model.decoder[-1].weight.mul_(1.0)  # an in-place update, as an optimizer step
    assert vae.module_.model._readout() is not cached
    monkeypatch.setattr(
        distributions.LinearNormalReadout, "applies", staticmethod(lambda layer, dist: False)
    )
    direct = scores()
    for fast, slow in zip(expanded, direct, strict=True):
        assert_allclose(fast, slow, rtol=1e-5, atol=1e-3)


@pytest.mark.slow
def test_defaults_converge_on_few_subjects_and_many_voxels():
    # 300 subjects of 16^3 voxels, masked as a NiftiMasker would (1,160 voxels): a small
    # cohort of the package's regime
    X, age, mask = make_cohort(300, (16, 16, 16), random_state=0)
    X = X[:, mask.ravel()]

    def r2(Z):
        return cross_val_score(LinearRegression(), Z, age, cv=5).mean()

    pca = r2(PCA(4).fit_transform(X))
    vae = r2(VAE(latent_dim=4, random_state=0).fit_transform(X))
    assert pca > 0.8  # the planted effect is there to find
    assert vae >= pca - 0.03


@pytest.mark.slow
def test_the_default_mlp_draws_the_age_effect_of_masked_brains():
    # 300 brains from the MNI template at 6 mm, masked (8,735 voxels). With a decoder started
    # at zero the latents read age (0.95) but the decoder stayed at the mean brain: the decoded
    # 30 -> 70 change peaked at 0.002 and correlated 0.12 with the planted one
    from nidl_vae.datasets import make_mni_cohort, planted_ageing

    volumes, age, mask, _, ageing = make_mni_cohort(300, 6.0)
    X = volumes[:, 0][:, mask]

    def r2(Z):
        return cross_val_score(LinearRegression(), Z, age, cv=5).mean()

    vae = VAE(latent_dim=4, random_state=0).fit(X)
    Z = vae.transform(X)
    assert r2(Z) >= r2(PCA(4).fit_transform(X)) - 0.03
    # the mean latent path from 30 to 70 years, decoded, against the planted change
    path = LinearRegression().fit(age[:, None], Z).predict([[30.0], [70.0]])
    change = np.diff(vae.inverse_transform(path), axis=0)[0]
    planted = planted_ageing(volumes, age, ageing)[mask]
    assert np.corrcoef(change, planted)[0, 1] > 0.95
    # its largest loss: 0.72x the planted one (0.96x when Adam trained every layer; the
    # row-wise first layer draws the change smaller, see the training guide)
    assert 0.6 < change.min() / planted.min() < 1.25


@pytest.mark.parametrize("linear_path", [True, False])
def test_the_linear_path_reads_the_latents(digits, linear_path):
    X, _ = digits
    vae = VAE(linear_path=linear_path, max_epochs=1, random_state=0).fit(X[:100])
    # the decoder's last hidden layer has 256 units; the linear path appends the 10 latents
    assert (vae.module_.model.decoder[-1].in_features == 256 + 10) is linear_path


@pytest.mark.parametrize("Estimator", [VAE, CVAE, CRMVAE])
def test_default_mlp_decoders_start_at_the_data_mean(digits, Estimator):
    X = digits[0][:64] * 8 + 5  # far from zero, where a decoder's drawn bias starts
    params = dict(hidden_layer_sizes=(16,), lr=1e-12, max_epochs=1, random_state=0)
    if Estimator is CRMVAE:
        model = CRMVAE(modalities=[40, 24], **params).fit(X).module_.model
        blocks = zip(model.decoders, model.likelihoods, [X[:, :40], X[:, 40:]], strict=True)
    else:
        extra = {"conditions": np.arange(64.0)} if Estimator is CVAE else {}
        model = Estimator(**params).fit(X, **extra).module_.model
        blocks = [(model.decoder, model.likelihood, X)]
    # the decoders work in the model's units x / u: a bias drawn within 1/sqrt(16) of the
    # mean is an output within u / 4 of it in X's units
    for decoder, likelihood, block in blocks:
        start = likelihood.mean(decoder[-1].bias).detach().numpy()
        unit = float(likelihood.data_unit)
        assert unit > 1  # X's units are not the decoder's
        assert np.abs(start - block.mean(0)).max() <= unit * 16**-0.5


def test_the_linear_path_starts_at_zero_and_the_mean():
    from nidl_vae.networks import mlp_with_linear_path

    start = torch.arange(50.0)
    decoder = mlp_with_linear_path(2, (8,), 50, start=start, generator=torch.Generator())
    last = decoder[-1]
    assert last.in_features == 8 + 2
    assert torch.equal(last.weight[:, 8:], torch.zeros(50, 2))  # W_z starts at zero
    # the bias is the drawn output bias (within 1/sqrt(8)) plus the start
    assert (last.bias - start).abs().max() <= 8**-0.5
    z = torch.randn(3, 2)
    hidden = decoder[0].body(z)
    expected = hidden @ last.weight[:, :8].T + last.bias
    assert torch.allclose(decoder(z), expected)


@pytest.mark.slow
@pytest.mark.filterwarnings(*THREAD_POOL_LEAKS)
def test_a_search_spread_over_a_local_dask_cluster_matches_a_serial_one(digits):
    distributed = pytest.importorskip("distributed")
    import joblib
    from sklearn.model_selection import GridSearchCV

    X = digits[0][:200]
    grid = dict(param_grid={"beta": [0.5, 1.0]}, cv=2)
    serial = GridSearchCV(VAE(**SMALL), **grid).fit(X)
    with distributed.Client(processes=False, n_workers=1, threads_per_worker=2) as client:
        assert client.status == "running"
        with joblib.parallel_backend("dask"):
            spread = GridSearchCV(VAE(**SMALL), n_jobs=2, **grid).fit(X)
    assert_array_equal(spread.cv_results_["mean_test_score"], serial.cv_results_["mean_test_score"])


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
@pytest.mark.parametrize("source", ["array", "memmap"])
def test_gpu_training_from_device_or_pinned_rows(table, memmap, source):
    # in-memory rows go to the device once; a memory map is read into pinned host memory
    X = table if source == "array" else memmap
    vae = VAE(accelerator="gpu", **SMALL).fit(X)
    assert vae.module_.device.type == "cuda"
    cpu = VAE(accelerator="cpu", **SMALL).fit(table)
    assert len(vae.history_["loss"]) == len(cpu.history_["loss"])
    assert np.isfinite(vae.transform(X)).all()
    assert vae.history_["loss"][-1] < vae.history_["loss"][0]  # it learned
    assert abs(vae.score(X) - cpu.score(table)) < 0.1 * abs(cpu.score(table)) + 1.0


@pytest.mark.slow
def test_latents_of_held_out_subjects_read_age_from_unmasked_volumes():
    # 16^3 volumes unmasked: 2,936 of the 4,096 voxels are background noise, 225 training
    # subjects. Trained with Adam's per-weight step on its first layer, the encoder read its
    # training subjects through the noise: R^2 0.54 (seed 0) on the held-out subjects
    X, age, _ = make_cohort(300, (16, 16, 16), random_state=0)
    X_train, X_test, age_train, age_test = train_test_split(X, age, random_state=0)

    def held_out_r2(model):
        regression = LinearRegression().fit(model.transform(X_train), age_train)
        return regression.score(model.transform(X_test), age_test)

    pca = held_out_r2(PCA(4).fit(X_train))
    vae = held_out_r2(VAE(latent_dim=4, random_state=0).fit(X_train))
    assert pca > 0.9
    assert vae >= pca - 0.03
