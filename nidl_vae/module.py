"""The Lightning side, one LightningModule for every model: its steps, noise, history and
optimizer around a model's math (a :class:`~nidl_vae.latent_model.LatentModel`).

``training_step`` and ``validation_step`` train the model's loss; ``transform_step`` encodes
(the posterior mean, or a draw from it); ``predict_step`` serves every inference method of the
estimators through ``Trainer.predict``: it runs the :class:`Prediction` the estimator set
(encode, decode, a prior draw, the ELBO, the importance-weighted likelihood, imputation) and
returns each row's result with its position, so that rows predicted on several processes are
put back in order.

Training noise comes from a generator the module owns, seeded by the estimator, so fits
running in several threads neither disturb nor depend on one another. Per-epoch means of the
loss terms are accumulated on the device without a host sync per step, and kept in registered
buffers: unlike Python lists, buffers come back from spawned processes with the weights.
"""

import math
from dataclasses import dataclass

import pytorch_lightning as pl
import torch
from torch import Tensor

from .data import pad_rows
from .latent_model import Batch, Gaussian, LatentModel
from .objectives import LOG_2PI, log_mean_exp, standard_normal_log_density
from .optim import RowwiseAdam, optimizer_for

# Latent rows decoded at once by the inference steps: as many as keep the decoder's activations
# in cache (4,096 rows decode 1.4x faster than 65,536 on digits), fewer when the rows are so
# wide that a chunk would exceed ``DECODE_VALUES`` decoded values (64 MB in float32).
# ``python benchmarks/bench_scale.py --only inference`` sweeps it.
DECODE_ROWS = 4096
DECODE_VALUES = 2**24

PREDICTIONS = (
    "transform",
    "decode",
    "prior_draw",
    "elbo",
    "log_likelihood",
    "conditional_log_likelihood",
    "impute",
)


def draws_per_chunk(batch_rows: int, n_features: int) -> int:
    """Latent draws per row decoded at once, so that a chunk decodes about ``DECODE_ROWS``
    rows (at least 64 and at most ``DECODE_VALUES`` values); at least one."""
    rows = min(DECODE_ROWS, max(64, DECODE_VALUES // max(1, n_features)))
    return max(1, rows // batch_rows)


@dataclass
class Prediction:
    """What ``predict_step`` computes for each row.

    Parameters
    ----------
    kind : str
        One of ``PREDICTIONS``: 'transform' (``transform_step``), 'decode' (the decoded means
        of latent rows), 'prior_draw' (a draw from the prior, for generation), 'elbo',
        'log_likelihood' (importance-weighted) or 'impute' (conditional means of every cell).
    draws : Tensor of shape (K, latent_dim), optional
        Standard normal noise shared by every row: the K latent draws of 'elbo',
        'log_likelihood' and 'impute'.
    draws_per_chunk : int, default=1
        Draws per row decoded at once (memory does not grow with K).
    """

    kind: str
    draws: Tensor | None = None
    draws_per_chunk: int = 1


class VAELightningSteps:
    """Training and inference of a latent variable model with Lightning: the code of
    :class:`VAELightningModule`, written once for both of Lightning's namespaces.

    Logged metrics (epoch means, reduced over processes): ``train_<term>`` and, with a
    validation split, ``val_<term>`` for each of the model's ``loss_names`` (``train_loss``,
    ``train_reconstruction``, ``train_kl``, ``val_loss``, ...), at the end of each epoch's
    training and validation, where Lightning's monitoring callbacks (``EarlyStopping``,
    ``ModelCheckpoint``) and loggers read them.

    Parameters
    ----------
    model : LatentModel
        The math.
    lr, weight_decay : float
        Adam's learning rate and (L2) weight decay.
    max_epochs : int
        Rows of the history buffers.
    seed : int, default=0
        Seed of the module's own training noise generator (one stream per process rank).
    n_train_rows : int, optional
        Training rows: whether the default encoders' feature layers are trained row-wise
        depends on it (see :func:`nidl_vae.optim.optimizer_for`).
    """

    def __init__(
        self,
        model: LatentModel,
        lr: float,
        weight_decay: float,
        max_epochs: int,
        seed: int = 0,
        n_train_rows: int | None = None,
    ):
        super().__init__()
        self.model = model
        self.loss_names = tuple(model.loss_names)
        self.lr = lr
        self.weight_decay = weight_decay
        self.seed = seed
        self.n_train_rows = n_train_rows
        self.prediction: Prediction | None = None
        self._noise: torch.Generator | None = None
        n_terms = len(self.loss_names)
        self.register_buffer("history_train", torch.full((max_epochs, n_terms), math.nan))
        self.register_buffer("history_val", torch.full((max_epochs, n_terms), math.nan))
        self.register_buffer("epochs_done", torch.zeros((), dtype=torch.long))
        self.register_buffer("steps_done", torch.zeros((), dtype=torch.long))
        # running sums of the terms over the epoch in progress, and its row counts
        self.register_buffer("_train_sums", torch.zeros(n_terms), persistent=False)
        self.register_buffer("_val_sums", torch.zeros(n_terms), persistent=False)
        self._counts = {"train": 0, "val": 0}

    # -- noise -------------------------------------------------------------------------------
    def standard_normal(self, shape: tuple[int, ...], like: Tensor) -> Tensor:
        """Standard normal noise from the module's own generator, on ``like``'s device and in
        its dtype."""
        if self._noise is None or self._noise.device != like.device:
            self._noise = torch.Generator(device=like.device).manual_seed(self.seed)
        return torch.randn(shape, generator=self._noise, device=like.device, dtype=like.dtype)

    # -- training ----------------------------------------------------------------------------
    def loss_terms(self, batch: Batch) -> Tensor:
        """The model's loss terms on a batch, stacked in ``loss_names`` order."""
        terms = self.model.loss_terms(batch, self.standard_normal)
        return torch.stack([terms[name] for name in self.loss_names])

    def training_step(self, batch: Batch, batch_idx: int) -> Tensor:
        terms = self.loss_terms(batch)
        self._accumulate("train", self._train_sums, terms, len(batch["x"]))
        self.steps_done.add_(1)
        return terms[0]

    def validation_step(self, batch: Batch, batch_idx: int) -> None:
        self._accumulate("val", self._val_sums, self.loss_terms(batch), len(batch["x"]))

    def configure_optimizers(self) -> RowwiseAdam:
        return optimizer_for(self, self.lr, self.weight_decay, self.n_train_rows)

    def optimizer_step(self, epoch, batch_idx, optimizer, optimizer_closure=None) -> None:
        optimizer.step(closure=optimizer_closure)
        # Lightning zeroes the gradients after the next training_step's forward pass: freed
        # here, the forward pass does not hold a second copy of the weights (at 10^5 features
        # the gradients are most of the fit's memory beyond the data)
        optimizer.zero_grad(set_to_none=True)

    def on_fit_start(self) -> None:
        # one noise stream per process: ranks of a distributed fit see different data
        self._noise = torch.Generator(device=self.device).manual_seed(self.seed + self.global_rank)

    def on_fit_end(self) -> None:
        self._noise = None

    def on_train_epoch_start(self) -> None:
        self._train_sums.zero_()
        self._counts["train"] = 0

    def on_validation_epoch_start(self) -> None:
        self._val_sums.zero_()
        self._counts["val"] = 0

    def on_validation_epoch_end(self) -> None:
        if self.trainer.sanity_checking:
            return
        means = self._epoch_means(self._val_sums, "val")
        self.history_val[self.current_epoch] = means
        self._log_means("val", means)

    def on_train_epoch_end(self) -> None:
        means = self._epoch_means(self._train_sums, "train")
        self.history_train[self.current_epoch] = means
        self.epochs_done.fill_(self.current_epoch + 1)
        if not torch.isfinite(means[0]):
            raise FloatingPointError(
                nan_message(
                    f"became {means[0].item()} in epoch {self.current_epoch}",
                    self.trainer.precision,
                )
            )
        self._log_means("train", means)

    def _log_means(self, stage: str, means: Tensor) -> None:
        # the means are reduced over processes already; sync_dist says so to Lightning (an
        # all-reduce of identical values per epoch) instead of a warning under DDP
        metrics = {f"{stage}_{k}": v for k, v in zip(self.loss_names, means, strict=True)}
        self.log_dict(metrics, prog_bar=stage == "train", sync_dist=True)

    def _accumulate(self, stage: str, sums: Tensor, terms: Tensor, n: int) -> None:
        # one in-place op and no host sync per step: this runs at every batch
        sums.add_(terms.detach().to(sums.dtype), alpha=n)
        self._counts[stage] += n

    def _epoch_means(self, sums: Tensor, stage: str) -> Tensor:
        count = torch.tensor([self._counts[stage]], dtype=sums.dtype, device=sums.device)
        totals = self.trainer.strategy.reduce(torch.cat([sums, count]), reduce_op="sum")
        return totals[:-1] / totals[-1]

    def history(self) -> dict[str, list[float]]:
        """Per-epoch means of the loss terms: ``name`` for training, ``val_name`` for validation."""
        n = int(self.epochs_done)
        out = {k: self.history_train[:n, i].tolist() for i, k in enumerate(self.loss_names)}
        val = self.history_val[:n]
        if n and not torch.isnan(val).all():
            out.update({f"val_{k}": val[:, i].tolist() for i, k in enumerate(self.loss_names)})
        return out

    # -- inference ---------------------------------------------------------------------------
    def transform_step(self, batch: Batch) -> Tensor:
        """The latent coordinates of each row: the posterior mean, or the draw
        :math:`\\mu + s \\odot \\epsilon` for the noise ``batch["eps"]`` when it is given
        (``stochastic_transform``)."""
        posterior = self.model.posterior(batch)
        return posterior.mu if "eps" not in batch else posterior.sample(batch["eps"])

    def predict_step(self, batch: Batch, batch_idx: int = 0) -> dict[str, Tensor]:
        """Run :attr:`prediction` on the batch: ``{"index": positions, "values": results}``.

        Batches are padded to whole blocks of rows, so that a row's result does not depend on
        the rows beside it (CPU matrix kernels round a partial block differently).
        """
        if self.prediction is None or self.prediction.kind not in PREDICTIONS:
            raise RuntimeError(
                "predict_step runs the Prediction an estimator sets; call the estimator's "
                "methods (transform, score_samples, ...) rather than Trainer.predict."
            )
        padded, n = pad_rows(batch)
        values = getattr(self, f"_predict_{self.prediction.kind}")(padded)
        return {"index": batch["index"], "values": values[:n]}

    def _predict_transform(self, batch: Batch) -> Tensor:
        return self.transform_step(batch)

    def _predict_decode(self, batch: Batch) -> Tensor:
        return self.model.decode(batch)

    def _predict_prior_draw(self, batch: Batch) -> Tensor:
        """A draw from :math:`p(z)` (a CVAE's :math:`p(z|c)`) for each row's noise."""
        prior = self.model.prior_distribution(batch)
        return batch["eps"] if prior is None else prior.sample(batch["eps"])

    def _shared_draws(self, like: Tensor) -> tuple[Tensor, ...]:
        draws = self.prediction.draws.to(like.device, like.dtype)
        return draws.split(self.prediction.draws_per_chunk)

    def _predict_elbo(self, batch: Batch) -> Tensor:
        """:math:`\\frac1K \\sum_k \\log p(x|z_k) - KL(q(z|x) \\| p(z))` at beta = 1, over
        the K shared noise draws."""
        posterior = self.model.posterior(batch)
        likelihood = self.model.draw_likelihood(batch)
        # summed in place in float64: a float32 reduction's rounding depends on the batch's
        # size, and a tensor kept per chunk would pin the heap between the chunks' temporaries
        total = posterior.mu.new_zeros(len(posterior.mu), dtype=torch.float64)
        for eps in self._shared_draws(posterior.mu):
            total += likelihood.log_prob(_draws(posterior, eps)).double().sum(0)
        prior = self.model.prior_distribution(batch)
        return total / len(self.prediction.draws) - posterior.kl(prior)

    def _log_weights(self, posterior: Gaussian, prior: Gaussian | None, z: Tensor, eps: Tensor):
        """:math:`\\log p(z) - \\log q(z|x)` of draws ``z = mu + s * eps`` (k, B, D)."""
        # the posterior's log-density at its own draws depends on eps and s alone
        log_q = -0.5 * (
            LOG_2PI * z.shape[-1]
            + posterior.logvar.sum(-1)
            + torch.linalg.vecdot(eps, eps)[:, None]
        )
        log_p = standard_normal_log_density(z) if prior is None else prior.log_density(z)
        return log_p - log_q

    def _predict_log_likelihood(self, batch: Batch) -> Tensor:
        """Importance-weighted :math:`\\log p(x)` with the posterior as proposal:
        :math:`\\log \\frac1K \\sum_k p(x|z_k) p(z_k) / q(z_k|x)`."""
        posterior, prior = self.model.posterior(batch), self.model.prior_distribution(batch)
        likelihood = self.model.draw_likelihood(batch)
        # a running log-sum-exp over the chunks, updated in place: a tensor kept per chunk
        # would pin the heap between the chunks' temporaries (1.4 GB for 20,000 draws)
        running = posterior.mu.new_full((len(posterior.mu),), -math.inf, dtype=torch.float64)
        part = torch.empty_like(running)
        for eps in self._shared_draws(posterior.mu):
            z = _draws(posterior, eps)
            log_w = likelihood.log_prob(z) + self._log_weights(posterior, prior, z, eps)
            torch.logsumexp(log_w.double(), 0, out=part)
            torch.logaddexp(running, part, out=running)
        return log_mean_exp(running[None], len(self.prediction.draws))

    def _predict_conditional_log_likelihood(self, batch: Batch) -> Tensor:
        """:math:`\\log p(x_T | x_G) \\approx \\log \\sum_k w_k p(x_T|z_k) - \\log \\sum_k w_k`,
        :math:`w_k = \\tilde p(x_G|z_k) p(z_k) / m(z_k)` (:math:`\\tilde p` the likelihood
        the posterior is fitted to, ``posterior_likelihood``), with draws from each of the given
        modalities' posterior :math:`q(z|x_G)` and the joint one :math:`q(z|x_T, x_G)`, and
        :math:`m` their even mixture: the given modalities are ``batch["observed"]``, the
        target ones ``batch["target"]`` (a model whose ``draw_likelihood`` reads its
        modalities from ``observed``)."""
        given_posterior = self.model.posterior(batch)
        both = {**batch, "observed": torch.maximum(batch["observed"], batch["target"])}
        proposals = (given_posterior, self.model.posterior(both))
        prior = self.model.prior_distribution(batch)
        given = self.model.posterior_likelihood(batch)
        target = self.model.draw_likelihood({**batch, "observed": batch["target"]})
        # running log-sum-exps of the two sums, in place (see _predict_log_likelihood)
        numerator = given_posterior.mu.new_full(
            (len(given_posterior.mu),), -math.inf, dtype=torch.float64
        )
        denominator, part = torch.full_like(numerator, -math.inf), torch.empty_like(numerator)
        for eps in self._shared_draws(given_posterior.mu):
            for proposal in proposals:
                z = _draws(proposal, eps)
                log_m = torch.logaddexp(*(q.log_density(z) for q in proposals)) - math.log(2)
                log_p = standard_normal_log_density(z) if prior is None else prior.log_density(z)
                log_w = (given.log_prob(z) + log_p - log_m).double()
                torch.logsumexp(log_w, 0, out=part)
                torch.logaddexp(denominator, part, out=denominator)
                torch.logsumexp(log_w + target.log_prob(z).double(), 0, out=part)
                torch.logaddexp(numerator, part, out=numerator)
        return numerator - denominator

    def _predict_impute(self, batch: Batch) -> Tensor:
        """The conditional mean :math:`\\mathbb{E}[x | x_{\\mathrm{obs}}]` of every cell,
        self-normalised importance sampling over the K shared draws (equal weights for a
        model that does not impute by importance):

        .. math:: \\sum_k w_k\\, \\mathbb{E}[x | z_k], \\quad
            w_k \\propto \\frac{p(x_{\\mathrm{obs}}|z_k)\\, p(z_k)}{q(z_k|x_{\\mathrm{obs}})},
            \\quad z_k \\sim q(z|x_{\\mathrm{obs}})
        """
        posterior, prior = self.model.posterior(batch), self.model.prior_distribution(batch)
        likelihood = self.model.draw_likelihood(batch)
        weighted_by_importance = self.model.imputes_by_importance
        # running sums under the running maximum of the log weights, updated in place (see
        # _predict_log_likelihood)
        top = weighted = total = None
        for eps in self._shared_draws(posterior.mu):
            z = _draws(posterior, eps)
            log_w, means = likelihood.log_prob_and_means(z)
            if weighted_by_importance:
                log_w = (log_w + self._log_weights(posterior, prior, z, eps)).double()
            else:
                log_w = torch.zeros_like(log_w, dtype=torch.float64)
            if top is None:
                top = torch.full_like(log_w[0], -math.inf)
                weighted = log_w.new_zeros(means.shape[1:])
                total = torch.zeros_like(top)
            new_top = torch.maximum(top, log_w.max(0).values)
            shrink = torch.exp(top - new_top)  # rescales what was summed under the old maximum
            w = torch.exp(log_w - new_top)
            weighted.mul_(shrink[:, None]).add_(torch.einsum("kb,kbp->bp", w, means.double()))
            total.mul_(shrink).add_(w.sum(0))
            top.copy_(new_top)
        return weighted / total[:, None]

    def __getstate__(self):
        state = super().__getstate__()
        state["_noise"] = None  # a generator is rebuilt from the seed when needed
        state["prediction"] = None
        return state


class VAELightningModule(VAELightningSteps, pl.LightningModule):
    """The LightningModule of every model (see :class:`VAELightningSteps` for its steps and
    parameters). A run whose Trainer options come from ``lightning.pytorch`` trains and
    predicts through the same class rebuilt on that namespace's LightningModule
    (:func:`nidl_vae.namespaces.view_in`), sharing this module's state."""


def _draws(posterior: Gaussian, eps: Tensor) -> Tensor:
    """Latent draws (k, B, D) for noise (k, D) shared by every row."""
    return posterior.sample(eps[:, None, :])


def nan_message(what: str, precision: str = "32-true") -> str:
    """The advice of a FloatingPointError for a loss that is not finite; a lower precision
    than 32 bits is named only when it is the one used."""
    lower = (
        ""
        if str(precision).startswith(("32", "64"))
        else f", precision='32-true' ({precision} now)"
    )
    return (
        f"The training loss {what}. Try a smaller lr, a fixed decoder_scale{lower}, or look "
        f"for outlying values in X (the networks read X in units of its features' typical "
        f"standard deviation, so a few extreme cells dwarf the rest: clip them or use a "
        f"QuantileTransformer in front)."
    )
