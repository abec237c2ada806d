"""Saving and loading fitted models without pickle: exact round trips, user networks handed
back, and files that are not saved models refused before anything in them runs."""

import json
import pathlib
import pickle

import numpy as np
import pandas as pd
import pytest
import torch
from numpy.testing import assert_array_equal
from pytorch_lightning.callbacks import Callback
from sklearn.datasets import load_digits

import nidl_vae
from nidl_vae import CRMVAE, CVAE, VAE, load

SMALL = dict(latent_dim=3, hidden_layer_sizes=(32,), max_epochs=3, random_state=0)


@pytest.fixture(scope="module")
def table(digits):
    X, y = digits
    return X[:150], y[:150]


def _round_trip(estimator, tmp_path, **networks):
    path = tmp_path / "model.npz"
    estimator.save(path)
    return load(path, **networks)


def _assert_same_results(a, b, X, **routed):
    assert_array_equal(a.transform(X, **routed), b.transform(X, **routed))
    assert a.score(X, **routed) == b.score(X, **routed)
    assert_array_equal(a.score_samples(X, **routed), b.score_samples(X, **routed))
    assert_array_equal(
        a.log_likelihood(X, n_importance=20, **routed),
        b.log_likelihood(X, n_importance=20, **routed),
    )


@pytest.mark.parametrize(
    "make",
    [
        lambda y: (VAE(**SMALL), {}),
        lambda y: (CVAE(**SMALL), {"conditions": np.array(["a", "b", "c"])[y % 3]}),
        lambda y: (CVAE(**SMALL), {"conditions": 20.0 + 6.0 * y}),  # one covariate (ages)
    ],
    ids=["VAE", "CVAE-labels", "CVAE-covariate"],
)
def test_round_trips_are_exact(make, table, tmp_path):
    X, y = table
    frame = pd.DataFrame(X, columns=[f"px{i}" for i in range(X.shape[1])])
    estimator, routed = make(y)
    estimator.fit(frame, **routed)
    loaded = _round_trip(estimator, tmp_path)
    assert type(loaded) is type(estimator)
    assert loaded.get_params() == estimator.get_params()
    assert loaded.history_ == estimator.history_ and loaded.n_iter_ == estimator.n_iter_
    assert_array_equal(loaded.feature_names_in_, estimator.feature_names_in_)
    assert loaded.feature_names_in_.dtype == object
    _assert_same_results(estimator, loaded, frame, **routed)
    assert_array_equal(
        loaded.inverse_transform(np.ones((2, 3)), **_at(routed, 2)),
        estimator.inverse_transform(np.ones((2, 3)), **_at(routed, 2)),
    )
    if isinstance(estimator, CVAE):
        assert_array_equal(
            loaded.sample(conditions=routed["conditions"][:4]),
            estimator.sample(conditions=routed["conditions"][:4]),
        )
    else:
        assert_array_equal(loaded.sample(4), estimator.sample(4))


def _at(routed, n):
    return {k: v[:n] for k, v in routed.items()}


def test_crmvae_round_trip_keeps_modalities_and_imputes_the_same(table, tmp_path):
    X, _ = table
    crmvae = CRMVAE(modalities={"left": 32, "right": 32}, **SMALL).fit(X)
    loaded = _round_trip(crmvae, tmp_path)
    assert loaded.modalities_ == crmvae.modalities_
    assert loaded.rescale_factors_ == crmvae.rescale_factors_
    _assert_same_results(crmvae, loaded, X)
    half = X.copy()
    half[:, 32:] = np.nan
    assert_array_equal(loaded.impute(half), crmvae.impute(half))
    assert_array_equal(
        loaded.transform(X, modalities="left"), crmvae.transform(X, modalities="left")
    )


def test_convolutional_model_on_images_round_trips(table, tmp_path):
    X, _ = table
    images = X.reshape(-1, 1, 8, 8)
    vae = VAE(**SMALL).fit(images)
    loaded = _round_trip(vae, tmp_path)
    assert loaded.input_shape_ == (1, 8, 8)
    _assert_same_results(vae, loaded, images)
    assert loaded.sample(2).shape == (2, 1, 8, 8)


def _encoder(width=16):
    return torch.nn.Sequential(torch.nn.Linear(64, width), torch.nn.ReLU())


def test_user_networks_are_handed_back_and_checked(table, tmp_path):
    X, _ = table
    vae = VAE(encoder=_encoder(), **SMALL).fit(X)
    path = tmp_path / "model.npz"
    vae.save(path)
    with pytest.raises(ValueError, match=r"user network for encoder: pass the same"):
        load(path)
    with pytest.raises(ValueError, match=r"saved \(16, 64\), network \(17, 64\)"):
        load(path, encoder=_encoder(17))
    with pytest.raises(ValueError, match="default networks there"):
        load(path, encoder=_encoder(), decoder=_encoder())
    fresh = _encoder()
    loaded = load(path, encoder=fresh)
    _assert_same_results(vae, loaded, X)
    # the weights come from the file, into a copy: the module handed back is not modified
    assert not torch.equal(fresh[0].weight, loaded.module_.model.encoder.backbone[0].weight)

    conditions = np.arange(len(X)) % 2
    prior = torch.nn.Sequential(torch.nn.Linear(2, 4), torch.nn.Tanh())
    cvae = CVAE(decoder=torch.nn.Linear(5, 64), prior_network=prior, **SMALL)
    cvae.fit(X, conditions=conditions).save(path)
    with pytest.raises(ValueError, match="user network for decoder"):
        load(path, prior_network=torch.nn.Sequential(torch.nn.Linear(2, 4), torch.nn.Tanh()))
    loaded = load(
        path,
        decoder=torch.nn.Linear(5, 64),
        prior_network=torch.nn.Sequential(torch.nn.Linear(2, 4), torch.nn.Tanh()),
    )
    _assert_same_results(cvae, loaded, X, conditions=conditions)
    assert_array_equal(loaded.sample(conditions=[0, 1]), cvae.sample(conditions=[0, 1]))

    left = torch.nn.Sequential(torch.nn.Linear(32, 8), torch.nn.ReLU())
    crmvae = CRMVAE(modalities={"left": 32, "right": 32}, encoders={"left": left}, **SMALL)
    crmvae.fit(X).save(path)
    with pytest.raises(ValueError, match=r"encoders\['left'\]"):
        load(path)
    loaded = load(
        path, encoders={"left": torch.nn.Sequential(torch.nn.Linear(32, 8), torch.nn.ReLU())}
    )
    _assert_same_results(crmvae, loaded, X)


def test_objects_among_the_parameters_are_not_saved(table, tmp_path):
    X, _ = table
    vae = VAE(trainer_params={"callbacks": [Callback()]}, **SMALL).fit(X)
    loaded = _round_trip(vae, tmp_path)
    assert loaded.trainer_params is None
    _assert_same_results(vae, loaded, X)


def test_loading_unpickles_nothing(table, tmp_path, monkeypatch):
    X, _ = table
    vae = VAE(**SMALL).fit(X)
    path = tmp_path / "model.npz"
    vae.save(path)

    def refuse(*args, **kwargs):
        raise AssertionError("pickle was used")

    for name in ("load", "loads", "Unpickler"):
        monkeypatch.setattr(pickle, name, refuse)
    monkeypatch.setattr(torch, "load", refuse)
    _assert_same_results(vae, load(path), X)


class _Payload:
    """Unpickling this object creates a file: what a malicious model could do instead."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (pathlib.Path.touch, (pathlib.Path(self.marker),))


def test_a_disguised_pickle_is_refused_and_runs_nothing(tmp_path):
    marker = tmp_path / "ran"
    path = tmp_path / "model.npz"
    path.write_bytes(pickle.dumps(_Payload(str(marker))))
    with pytest.raises(
        ValueError, match="not a model saved by nidl_vae.*pickles and object arrays are refused"
    ):
        load(path)
    assert not marker.exists()
    # the same pickle inside an npz archive (an object array): refused as well
    np.savez(path, **{"__nidl_vae__": np.array([_Payload(str(marker))], dtype=object)})
    with pytest.raises(ValueError, match="not a model saved by nidl_vae"):
        load(path)
    assert not marker.exists()


def test_other_files_and_newer_formats_are_clear_errors(table, tmp_path):
    X, _ = table
    other = tmp_path / "other.npz"
    np.savez(other, weights=np.zeros(3))
    with pytest.raises(ValueError, match="not a model saved by nidl_vae"):
        load(other)
    path = tmp_path / "model.npz"
    VAE(**SMALL).fit(X).save(path)
    with np.load(path) as archive:
        arrays = {k: archive[k] for k in archive.files}
    header = json.loads(str(arrays["__nidl_vae__"][()]))
    header["format_version"] = 99
    arrays["__nidl_vae__"] = np.array(json.dumps(header))
    np.savez(path, **arrays)
    with pytest.raises(ValueError, match="format 99 .*Upgrade nidl_vae"):
        load(path)


def test_saving_an_unfitted_estimator_is_a_not_fitted_error(tmp_path):
    from sklearn.exceptions import NotFittedError

    with pytest.raises(NotFittedError):
        VAE().save(tmp_path / "model.npz")
    assert not (tmp_path / "model.npz").exists()


def test_load_is_exported():
    assert nidl_vae.load is load


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_a_model_fitted_on_a_gpu_loads_on_the_cpu(table, tmp_path):
    X, _ = table
    vae = VAE(accelerator="gpu", **SMALL).fit(X)
    loaded = _round_trip(vae, tmp_path)
    assert next(loaded.module_.parameters()).device.type == "cpu"
    np.testing.assert_allclose(loaded.transform(X), vae.transform(X), rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("version", [1, 2, 3])
def test_files_of_older_formats_load_with_the_same_results(tmp_path, version):
    # format 1, before a model's math was a module of its own inside the LightningModule,
    # kept its weights without the "model." prefix (files written by that code were checked
    # to load and transform identically); formats 1 and 2, before the default networks
    # worked in the model's units, kept no unit: their networks read X as it is; formats 1
    # to 3, before the default encoders centred X, kept no origin
    X = load_digits().data[:200] / 16
    vae = VAE(latent_dim=3, max_epochs=2, random_state=0).fit(X)
    # a model as the older formats' were: uncentred, and before format 3 in X's own units
    dropped = ("origin",) if version == 3 else ("origin", "data_unit")
    for name, buffer in vae.module_.named_buffers():
        if name.endswith("origin"):
            buffer.zero_()
        if name.endswith("data_unit") and version < 3:
            buffer.fill_(1.0)
    vae.save(tmp_path / "now.npz")
    with np.load(tmp_path / "now.npz") as archive:
        arrays = {k: archive[k] for k in archive.files}
    header = json.loads(str(arrays["__nidl_vae__"][()]))
    assert header["format_version"] == 4
    arrays["__nidl_vae__"] = np.array(json.dumps({**header, "format_version": version}))
    old = {k: v for k, v in arrays.items() if not k.endswith(dropped)}
    # the encoder's input's origin; the encoder's input's and the likelihood's unit
    assert len(old) == len(arrays) - (1 if version == 3 else 3)
    if version == 1:
        old = {k.replace("weight/model.", "weight/"): v for k, v in old.items()}
    np.savez(tmp_path / "old.npz", **old)
    assert_array_equal(load(tmp_path / "old.npz").transform(X), vae.transform(X))
