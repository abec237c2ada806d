"""The LightningModule side shared by every model: the steps a model writes, its own noise
generator, loss bookkeeping, history and optimizer.

A model's module subclasses :class:`BaseVAEModule` and writes its math in the abstract
methods: ``loss_terms`` (the batch means of the loss and its parts), ``encode_step``
(posterior parameters), ``decode_step`` (decoded means), and the per-draw log-weights that
``elbo_step`` and ``log_likelihood_step`` reduce over latent draws.

Training noise comes from a generator the module owns, seeded by the estimator, so fits
running in several threads neither disturb nor depend on one another. Per-epoch means of the
loss terms are accumulated on the device without a host sync per step, and kept in registered
buffers: unlike Python lists, buffers come back from spawned processes with the weights.
"""

import math
from abc import ABC, abstractmethod
from collections.abc import Callable

import pytorch_lightning as pl
import torch
from torch import Tensor

from .objectives import LOG_2PI
from .optim import RowwiseAdam, optimizer_for

LatentTerms = Callable[[Tensor], Tensor]

# Latent rows decoded at once by the inference steps: as many as keep the decoder's activations
# in cache (4,096 rows decode 1.4x faster than 65,536 on digits), fewer when the rows are so
# wide that a chunk would exceed ``DECODE_VALUES`` decoded values (64 MB in float32).
# ``python benchmarks/bench_scale.py --only inference`` sweeps it.
DECODE_ROWS = 4096
DECODE_VALUES = 2**24


def draws_per_chunk(batch_rows: int, n_features: int) -> int:
    """Latent draws per row decoded at once, so that a chunk decodes about ``DECODE_ROWS``
    rows (at least 64 and at most ``DECODE_VALUES`` values); at least one."""
    rows = min(DECODE_ROWS, max(64, DECODE_VALUES // max(1, n_features)))
    return max(1, rows // batch_rows)


def mean_over_draws(fn: LatentTerms, eps: Tensor, per_chunk: int) -> Tensor:
    """:math:`\\frac1K \\sum_k f(\\epsilon_k)` for ``fn`` mapping a chunk of noise draws
    (k, D) to per-draw values (k, B, ...), a chunk at a time: memory does not grow with K.

    Sums run in float64: a float32 reduction's rounding depends on the batch's size, and a
    row's result must not depend on the rows beside it.
    """
    total = sum(fn(chunk).double().sum(0) for chunk in eps.split(per_chunk))
    return total / len(eps)


def logmeanexp_over_draws(fn: LatentTerms, eps: Tensor, per_chunk: int) -> Tensor:
    """:math:`\\log \\frac1K \\sum_k \\exp f(\\epsilon_k)`, a chunk of draws at a time."""
    running = None
    for chunk in eps.split(per_chunk):
        part = torch.logsumexp(fn(chunk).double(), dim=0)
        running = part if running is None else torch.logaddexp(running, part)
    return running - math.log(len(eps))


class BaseVAEModule(pl.LightningModule, ABC):
    """Training plumbing for a VAE-family model.

    Parameters
    ----------
    loss_names : tuple of str
        Names of the terms ``loss_terms`` returns, the total loss first.
    lr, weight_decay : float
        Adam's learning rate and (L2) weight decay.
    max_epochs : int
        Rows of the history buffers.
    seed : int, default=0
        Seed of the module's own noise generator (one per device and process rank).
    """

    def __init__(
        self,
        loss_names: tuple[str, ...],
        lr: float,
        weight_decay: float,
        max_epochs: int,
        seed: int = 0,
    ):
        super().__init__()
        self.loss_names = tuple(loss_names)
        self.lr = lr
        self.weight_decay = weight_decay
        self.seed = seed
        # training rows, set by the estimator before it trains: whether the feature layers are
        # row-wise depends on it (see nidl_vae.optim.optimizer_for)
        self.n_train_rows: int | None = None
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

    # -- written by each model -------------------------------------------------------------
    @abstractmethod
    def loss_terms(self, batch: tuple[Tensor, ...]) -> Tensor:
        """Batch means of the loss terms, a tensor of shape ``(len(loss_names),)``."""

    @abstractmethod
    def encode_step(self, batch: tuple[Tensor, ...]) -> tuple[Tensor, Tensor]:
        """Posterior mean and log-variance of each row."""

    @abstractmethod
    def decode_step(self, batch: tuple[Tensor, ...]) -> Tensor:
        """Decoded means for each latent row; the batch is the latents first."""

    @abstractmethod
    def log_weight_terms(
        self, batch: tuple[Tensor, ...]
    ) -> tuple[Tensor, Tensor, Tensor, LatentTerms, LatentTerms]:
        """What the ELBO and the importance weights of a batch need: the posterior's mean and
        log-variance, the KL to the prior per row, a function mapping latent draws (k, B, D)
        to :math:`\\log p(x|z)` (k, B), and one mapping them to :math:`\\log p(z)` (k, B)."""

    @abstractmethod
    def weights_and_means(self, batch: tuple[Tensor, ...]) -> tuple[Tensor, Tensor, Callable]:
        """What imputation needs: the posterior's mean and log-variance, and a function mapping
        latent draws (k, B, D) to their log importance weights (k, B) and the decoded means
        of every cell (k, B, p)."""

    # -- inference shared by every model ------------------------------------------------------
    def standard_normal(self, like: Tensor, shape: tuple[int, ...] | None = None) -> Tensor:
        """Standard normal noise from the module's own generator, on ``like``'s device."""
        if self._noise is None or self._noise.device != like.device:
            self._noise = torch.Generator(device=like.device).manual_seed(self.seed)
        shape = like.shape if shape is None else shape
        return torch.randn(shape, generator=self._noise, device=like.device, dtype=like.dtype)

    def _draws(self, mu: Tensor, logvar: Tensor, eps: Tensor) -> Tensor:
        return mu + torch.exp(0.5 * logvar) * eps[:, None, :]

    def elbo_step(self, batch: tuple[Tensor, ...], eps: Tensor, per_chunk: int) -> Tensor:
        """Per-row ELBO at beta = 1 over the K shared noise draws ``eps`` (K, D):
        :math:`\\frac1K \\sum_k \\log p(x|z_k) - KL(q(z|x) \\| p(z))`."""
        mu, logvar, kl, log_lik, _ = self.log_weight_terms(batch)
        return mean_over_draws(lambda e: log_lik(self._draws(mu, logvar, e)), eps, per_chunk) - kl

    def log_likelihood_step(self, batch: tuple[Tensor, ...], eps: Tensor, per_chunk: int) -> Tensor:
        """Importance-weighted :math:`\\log p(x)` with the posterior as proposal:
        :math:`\\log \\frac1K \\sum_k p(x|z_k) p(z_k) / q(z_k|x)`."""
        mu, logvar, _, log_lik, log_prior = self.log_weight_terms(batch)
        # the posterior's log-density at its own draws mu + s * e depends on e and s alone:
        # -sum(log 2 pi + log s^2 + e^2) / 2, a (k,) term plus a (B,) term
        log_q_rows = -0.5 * (LOG_2PI * logvar.shape[-1] + logvar.sum(-1))

        def log_weights(e: Tensor) -> Tensor:
            z = self._draws(mu, logvar, e)
            log_q = log_q_rows - 0.5 * torch.linalg.vecdot(e, e)[:, None]
            return log_lik(z) + log_prior(z) - log_q

        return logmeanexp_over_draws(log_weights, eps, per_chunk)

    def impute_step(self, batch: tuple[Tensor, ...], eps: Tensor, per_chunk: int) -> Tensor:
        """The conditional mean :math:`\\mathbb{E}[x | x_{\\mathrm{obs}}]` of every cell,
        self-normalised importance sampling over the K shared noise draws ``eps``:

        .. math:: \\sum_k w_k\\, \\mathbb{E}[x | z_k], \\quad
            w_k \\propto \\frac{p(x_{\\mathrm{obs}}|z_k)\\, p(z_k)}{q(z_k|x_{\\mathrm{obs}})},
            \\quad z_k \\sim q(z|x_{\\mathrm{obs}})
        """
        mu, logvar, terms = self.weights_and_means(batch)
        top = weighted = total = None
        for chunk in eps.split(per_chunk):
            log_w, means = terms(self._draws(mu, logvar, chunk))
            log_w, means = log_w.double(), means.double()
            chunk_top = log_w.max(0).values
            new_top = chunk_top if top is None else torch.maximum(top, chunk_top)
            w = torch.exp(log_w - new_top)
            part, mass = torch.einsum("kb,kbp->bp", w, means), w.sum(0)
            if top is None:
                weighted, total = part, mass
            else:  # rescale what was summed under the previous maximum
                shrink = torch.exp(top - new_top)
                weighted = weighted * shrink[:, None] + part
                total = total * shrink + mass
            top = new_top
        return weighted / total[:, None]

    # -- Lightning hooks --------------------------------------------------------------------
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

    def training_step(self, batch: tuple[Tensor, ...], batch_idx: int) -> Tensor:
        terms = self.loss_terms(batch)
        self._accumulate("train", self._train_sums, terms, len(batch[0]))
        self.steps_done.add_(1)
        return terms[0]

    def validation_step(self, batch: tuple[Tensor, ...], batch_idx: int) -> None:
        self._accumulate("val", self._val_sums, self.loss_terms(batch), len(batch[0]))

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
        self.log_dict(
            {f"val_{k}": v for k, v in zip(self.loss_names, means, strict=True)}, prog_bar=True
        )

    def on_train_epoch_end(self) -> None:
        means = self._epoch_means(self._train_sums, "train")
        self.history_train[self.current_epoch] = means
        self.epochs_done.fill_(self.current_epoch + 1)
        if not torch.isfinite(means[0]):
            raise FloatingPointError(
                nan_message(f"became {means[0].item()} in epoch {self.current_epoch}")
            )
        self.log_dict({k: v for k, v in zip(self.loss_names, means, strict=True)}, prog_bar=True)

    # -- helpers --------------------------------------------------------------------------------
    def _accumulate(self, stage: str, sums: Tensor, terms: Tensor, n: int) -> None:
        # one in-place op and no host sync per step: this runs at every batch
        sums.add_(terms.detach(), alpha=n)
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

    def __getstate__(self):
        state = super().__getstate__()
        state["_noise"] = None  # a generator is rebuilt from the seed when needed
        return state


def nan_message(what: str) -> str:
    return (
        f"The training loss {what}. Try a smaller lr, scaling the input (e.g. "
        "StandardScaler), a fixed decoder_scale, or precision='32-true'."
    )
