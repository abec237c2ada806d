"""Lightning as its users have it: both namespaces, metrics that callbacks monitor, no
warnings, readable verbose output, Trainer options checked before training."""

import subprocess
import sys
import textwrap

import numpy as np
import pytest
import pytorch_lightning
import torch
from numpy.testing import assert_allclose, assert_array_equal
from torch.utils.data import TensorDataset

from nidl_vae import CVAE, VAE

lightning = pytest.importorskip("lightning.pytorch")

FAST = dict(latent_dim=2, hidden_layer_sizes=(16,), random_state=0)
NAMESPACES = {"pytorch_lightning": pytorch_lightning, "lightning.pytorch": lightning}


@pytest.fixture(scope="module")
def X():
    rng = np.random.default_rng(0)
    return (rng.normal(size=(120, 2)) @ rng.normal(size=(2, 6))).astype(np.float32)


@pytest.mark.parametrize("namespace", NAMESPACES)
def test_callbacks_loggers_and_profilers_of_either_namespace_work_in_fit_and_inference(
    X, namespace, tmp_path
):
    L = NAMESPACES[namespace]

    class Count(L.Callback):
        epochs = rows = 0

        def on_train_epoch_end(self, trainer, module):
            type(self).epochs += 1

        def on_predict_batch_end(self, trainer, module, outputs, batch, i, dl=0):
            type(self).rows += len(outputs["values"])

    logger = L.loggers.CSVLogger(tmp_path, name="run")
    params = {"callbacks": [Count(), L.callbacks.EarlyStopping("train_loss", patience=50)]}
    params |= {"logger": logger, "profiler": L.profilers.PassThroughProfiler()}
    vae = VAE(**FAST, max_epochs=4, trainer_params=params).fit(X)
    Z = vae.transform(X)
    assert Count.epochs == 4 and Count.rows == 120
    assert type(vae.module_).__module__ == "nidl_vae.module"  # pickles as it always did
    # the logger received the metrics, one row per epoch
    lines = (tmp_path / "run" / "version_0" / "metrics.csv").read_text().splitlines()
    assert "train_loss" in lines[0] and len(lines) == 1 + 4
    # the same model as with no Lightning objects at all
    plain = VAE(**FAST, max_epochs=4).fit(X)
    assert_allclose(Z, plain.transform(X), rtol=1e-5, atol=1e-6)


def test_a_mix_of_namespaces_is_refused_before_training(X):
    mixed = [pytorch_lightning.Callback(), lightning.Callback()]
    vae = VAE(**FAST, max_epochs=2).fit(X)
    with pytest.raises(ValueError, match="mixes objects of Lightning's two namespaces"):
        vae.set_params(trainer_params={"callbacks": mixed}).fit(X)
    assert vae.n_iter_ == 2  # the fitted estimator is unchanged


@pytest.mark.parametrize("namespace", NAMESPACES)
def test_early_stopping_monitors_the_logged_epoch_means(X, namespace):
    L = NAMESPACES[namespace]
    # without a validation split: the training loss
    stop = L.callbacks.EarlyStopping("train_loss", patience=1, min_delta=1e9)
    vae = VAE(**FAST, max_epochs=50, trainer_params={"callbacks": [stop]}).fit(X)
    assert vae.n_iter_ == 2  # no epoch improves by 1e9: stopped after the patience
    assert set(vae.history_) == {"loss", "reconstruction", "kl"}  # history_ keeps its columns
    # with one (the estimator's early_stopping holds out validation_fraction of the rows)
    stop = L.callbacks.EarlyStopping("val_loss", patience=1, min_delta=1e9)
    vae = VAE(**FAST, max_epochs=50, early_stopping=True, trainer_params={"callbacks": [stop]})
    vae.fit(X)
    assert vae.n_iter_ == 2 and "val_kl" in vae.history_


def test_a_model_checkpoint_loads_into_a_fresh_estimator(X, tmp_path):
    checkpoint = pytorch_lightning.callbacks.ModelCheckpoint(
        dirpath=tmp_path, monitor="train_loss", filename="best"
    )
    params = dict(FAST, max_epochs=6)
    vae = VAE(**params, trainer_params={"callbacks": [checkpoint]}).fit(X)
    saved = torch.load(tmp_path / "best.ckpt", weights_only=True)["state_dict"]
    # as the training guide says: a fresh estimator of the same parameters, then the weights
    fresh = VAE(**params).fit(X)
    fresh.module_.load_state_dict(saved)
    assert_array_equal(fresh.transform(X), vae.transform(X))  # the last epoch was the best


_STRICT = """
import warnings
import numpy as np
from nidl_vae import VAE

X = np.random.default_rng(0).normal(size=(60, 5))
vae = VAE(latent_dim=2, max_epochs=3, random_state=0).fit(X)
vae.transform(X), vae.sample(4), vae.score_samples(X), vae.log_likelihood(X, n_importance=5)
print("done")
"""


def test_no_warning_reaches_a_strict_user(tmp_path):
    script = tmp_path / "strict.py"
    script.write_text(textwrap.dedent(_STRICT))
    done = subprocess.run(
        [sys.executable, "-W", "error", str(script)],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout == "done\n" and done.stderr == ""
    assert list(tmp_path.iterdir()) == [script]  # nothing written in the working directory


def test_no_warning_under_pytests_own_filters(X, recwarn):
    VAE(**FAST, max_epochs=2).fit(X).transform(X)
    assert [str(w.message) for w in recwarn] == []


def test_verbose_writes_readable_lines_without_lightnings_chatter(X, capfd):
    VAE(**FAST, max_epochs=40, verbose=True).fit(X).transform(X)
    out, err = capfd.readouterr()
    lines = out.splitlines()
    # 40 epochs, a line every 2: no carriage returns, no "GPU available", no tips
    assert len(lines) == 20 and lines[-1].startswith("epoch 40/40  train_loss ")
    assert "\r" not in out + err and "GPU" not in out + err and "Tip" not in out + err


@pytest.mark.parametrize(
    "params, match",
    [
        ({"devices": "x"}, "devices='x'"),
        ({"trainer_params": {"max_epoch": 3}}, r"\['max_epoch'\], which"),
        ({"trainer_params": {"callbacks": ["early"]}}, "Callback instances"),
        ({"precision": "12-true"}, "precision='12-true'"),
    ],
)
def test_trainer_options_are_checked_before_training(X, params, match):
    vae = VAE(**FAST, max_epochs=2).fit(X)
    with pytest.raises(ValueError, match=match):
        vae.set_params(**params).fit(X)
    assert vae.n_iter_ == 2


def test_a_tensor_dataset_of_tuples_gives_its_first_tensor(X):
    labels = torch.arange(len(X)) % 2
    dataset = TensorDataset(torch.from_numpy(X), labels)
    vae = VAE(**FAST, max_epochs=2).fit(dataset)
    assert vae.n_features_in_ == 6
    assert_allclose(vae.transform(dataset), vae.transform(X), rtol=1e-6)
    cvae = CVAE(**FAST, max_epochs=2).fit(TensorDataset(torch.from_numpy(X)), labels.numpy())
    assert cvae.transform(X, conditions=labels.numpy()).shape == (120, 2)
