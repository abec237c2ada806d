"""Inference through the Lightning Trainer: every method runs ``Trainer.predict`` with the
estimator's options (callbacks, precision, strategy), and returns every row in order."""

import json
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch
from numpy.testing import assert_allclose, assert_array_equal
from pytorch_lightning.callbacks import BasePredictionWriter, Callback

from nidl_vae import CRMVAE, CVAE, VAE
from nidl_vae.module import VAELightningModule

FAST = dict(latent_dim=3, hidden_layer_sizes=(32,), max_epochs=5, random_state=0)


@pytest.fixture(scope="module")
def X():
    return np.random.default_rng(0).normal(size=(150, 8)).astype(np.float32)


class CountPredictBatches(Callback):
    def __init__(self):
        self.batches = 0
        self.rows = 0

    def on_predict_batch_end(self, trainer, module, outputs, batch, batch_idx, dataloader_idx=0):
        self.batches += 1
        self.rows += len(outputs["values"])


def test_the_module_has_the_cards_steps(X):
    vae = VAE(**FAST).fit(X)
    module = vae.module_
    assert isinstance(module, VAELightningModule)
    for step in ("training_step", "validation_step", "transform_step", "predict_step"):
        assert callable(getattr(module, step))
    batch = {"x": torch.from_numpy(X[:4])}
    with torch.no_grad():
        assert_allclose(module.transform_step(batch).numpy(), vae.transform(X[:4]), atol=1e-6)


@pytest.mark.parametrize(
    "method",
    ["transform", "inverse_transform", "sample", "score_samples", "log_likelihood", "impute"],
)
def test_every_inference_method_runs_through_the_trainer_with_the_users_callback(X, method):
    counter = CountPredictBatches()
    vae = VAE(**FAST, trainer_params={"callbacks": [counter]}).fit(X)
    holed = X.copy()
    holed[:, 0] = np.nan
    calls = {
        "transform": lambda: vae.transform(X),
        "inverse_transform": lambda: vae.inverse_transform(np.zeros((150, 3))),
        "sample": lambda: vae.sample(150),
        "score_samples": lambda: vae.score_samples(X),
        "log_likelihood": lambda: vae.log_likelihood(X, n_importance=20),
        "impute": lambda: vae.impute(holed, n_draws=20),
    }
    assert counter.batches == 0  # fit trains with a copy of the callback
    out = calls[method]()
    # the user's own callback object saw every predicted row
    assert counter.batches >= 1 and counter.rows == 150
    assert len(out) == 150


def test_a_prediction_writer_receives_the_latents_of_transform(X, tmp_path):
    class SaveLatents(BasePredictionWriter):
        def write_on_batch_end(self, trainer, module, prediction, indices, batch, i, dl=0):
            torch.save(prediction, tmp_path / f"batch{i}.pt")

    vae = VAE(**FAST).fit(X)
    Z = vae.transform(X)
    vae.set_params(trainer_params={"callbacks": [SaveLatents("batch")]})
    assert_array_equal(vae.transform(X), Z)
    parts = [torch.load(f) for f in sorted(tmp_path.glob("batch*.pt"))]
    index = torch.cat([p["index"] for p in parts]).numpy()
    written = torch.cat([p["values"] for p in parts]).numpy()
    assert_array_equal(written[np.argsort(index)], Z)


def test_a_cvae_and_a_crmvae_predict_through_the_trainer(X):
    counter = CountPredictBatches()
    labels = np.arange(150) % 3
    cvae = CVAE(**FAST, trainer_params={"callbacks": [counter]}).fit(X, conditions=labels)
    cvae.sample(2, conditions=[0, 1, 2])  # the prior's draws, then their decoding
    assert counter.rows == 6 + 6
    crm = CRMVAE(modalities=[5, 3], **FAST, trainer_params={"callbacks": [counter]}).fit(X)
    crm.conditional_log_likelihood(X, target=1, n_importance=10)  # one pass over 150 rows
    assert counter.rows == 12 + 150


@pytest.mark.parametrize("precision", ["32-true", "64-true", "bf16-mixed"])
def test_every_cpu_precision_fits_and_predicts(X, precision):
    vae = VAE(**{**FAST, "max_epochs": 20}, accelerator="cpu", precision=precision).fit(X)
    assert vae.history_["loss"][-1] < vae.history_["loss"][0]
    for data in (X, X.astype(np.float64)):
        Z = vae.transform(data)
        assert Z.dtype == data.dtype and np.isfinite(Z).all()
        assert vae.inverse_transform(Z).dtype == data.dtype
    assert np.isfinite(vae.score_samples(X)).all() and np.isfinite(vae.log_likelihood(X)).all()
    holed = X.copy()
    holed[:3, 0] = np.nan
    assert np.isfinite(vae.impute(holed, n_draws=10)).all()


def test_inference_precision_is_the_estimators_current_one(X):
    vae = VAE(**FAST).fit(X)
    Z, elbo = vae.transform(X), vae.score_samples(X)
    vae.set_params(precision="64-true")
    assert_allclose(vae.transform(X), Z, rtol=1e-4, atol=1e-5)
    assert_allclose(vae.score_samples(X), elbo, rtol=1e-5)
    vae.set_params(precision="bf16-mixed")  # bf16 keeps 8 bits of mantissa
    assert_allclose(vae.transform(X), Z, rtol=0.1, atol=0.05)
    # the module is back in float32 for a 32-bit call
    vae.set_params(precision="32-true")
    assert_array_equal(vae.transform(X), Z)


def test_inference_options_that_drop_rows_are_refused(X):
    vae = VAE(**FAST).fit(X)
    vae.set_params(trainer_params={"limit_predict_batches": 0})
    with pytest.raises(RuntimeError, match="limit_predict_batches"):
        vae.transform(X)


def test_each_kind_of_draw_has_its_own_stream(X):
    vae = VAE(**FAST, stochastic_transform=True).fit(X)
    draws = vae.transform(X) - VAE(**FAST).fit(X).transform(X)
    assert_array_equal(vae.transform(X), vae.transform(X))  # seeded: the same at every call
    # a row's draw does not depend on the rows after it
    assert_array_equal(vae.transform(X[:10]), vae.transform(X)[:10])
    assert np.abs(draws).mean() > 0


_DDP_PREDICT = """
import json, os
import numpy as np
from nidl_vae import VAE

X = np.random.default_rng(0).normal(size=(203, 6)).astype(np.float32)
holed = X.copy()
holed[::7, 0] = np.nan
vae = VAE(latent_dim=2, hidden_layer_sizes=(16,), max_epochs=3, random_state=0,
          accelerator="cpu", devices=2, trainer_params={"strategy": "ddp"}).fit(X)
out = {"n_iter": vae.n_iter_, "loss": vae.history_["loss"],
       "Z": vae.transform(X).tolist(), "elbo": vae.score_samples(X).tolist(),
       "imputed": vae.impute(holed, n_draws=30).tolist()}
# the same fitted model, predicting in this process alone
vae.set_params(devices=1, trainer_params=None)
out["Z_1"] = vae.transform(X).tolist()
out["elbo_1"] = vae.score_samples(X).tolist()
rank = int(os.environ.get("LOCAL_RANK", 0))
with open(f"rank{rank}.json", "w") as f:
    json.dump(out, f)
"""


def test_two_processes_fit_and_return_every_row_in_order_on_every_rank(tmp_path):
    script = tmp_path / "predict_ddp.py"
    script.write_text(textwrap.dedent(_DDP_PREDICT))
    done = subprocess.run(
        [sys.executable, str(script)], cwd=tmp_path, capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stderr[-3000:]
    ranks = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1)]
    assert ranks[0]["n_iter"] == 3 and np.isfinite(ranks[0]["loss"]).all()
    assert ranks[0]["loss"] == ranks[1]["loss"]  # the epoch means are reduced over processes
    for out in ranks:
        # 203 rows over 2 processes: uneven shards, gathered and put back in order
        assert np.shape(out["Z"]) == (203, 2)
        assert_allclose(out["Z"], out["Z_1"], rtol=1e-6)
        assert_allclose(out["elbo"], out["elbo_1"], rtol=1e-6)
    assert ranks[0]["Z"] == ranks[1]["Z"] and ranks[0]["imputed"] == ranks[1]["imputed"]
    assert not np.isnan(ranks[0]["imputed"]).any()


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
@pytest.mark.parametrize("precision", ["16-mixed", "bf16-mixed", "bf16-true", "64-true"])
def test_every_gpu_precision_fits_and_predicts(X, precision):
    vae = VAE(**{**FAST, "max_epochs": 20}, accelerator="gpu", precision=precision).fit(X)
    assert vae.history_["loss"][-1] < vae.history_["loss"][0]
    Z = vae.transform(X)
    assert Z.dtype == np.float32 and np.isfinite(Z).all()
    assert np.isfinite(vae.score_samples(X)).all()
    assert vae.module_.device.type == "cuda"
