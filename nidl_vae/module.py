"""The LightningModule side shared by every model: loss bookkeeping, history and optimizer.

A model's module subclasses :class:`BaseVAEModule` and writes its math: ``loss_terms`` (the
per-sample loss and its parts), ``transform_step`` (posterior parameters), and the inference
steps the estimator calls (``elbo_step``, ``log_likelihood_step``, ``decode_step``).

Per-epoch means of the loss terms are accumulated on the device without a host sync per step,
and kept in registered buffers: unlike Python lists, buffers come back from spawned
processes (``strategy='ddp_spawn'``) with the weights.
"""

import math
from collections.abc import Callable

import pytorch_lightning as pl
import torch
from torch import Tensor

# latent rows decoded at once when a step decodes many draws per data row
DECODE_CHUNK_ROWS = 65536


def over_draws(fn: Callable[[Tensor], Tensor], z: Tensor) -> Tensor:
    """Apply ``fn`` to latent draws ``z`` of shape (K, B, D) a chunk of draws at a time.

    ``fn`` maps a chunk (k, B, D) to a tensor, (k, B) or a per-chunk reduction; the results
    are concatenated. The chunks keep at most ``DECODE_CHUNK_ROWS`` decoded rows in memory,
    so K x B can be large.
    """
    step = max(1, DECODE_CHUNK_ROWS // z.shape[1])
    return torch.cat([fn(chunk) for chunk in z.split(step)])


class BaseVAEModule(pl.LightningModule):
    """Training plumbing for a VAE-family model.

    Parameters
    ----------
    loss_names : tuple of str
        Names of the terms ``loss_terms`` returns, the total loss first.
    lr, weight_decay : float
        Adam's learning rate and (L2) weight decay.
    max_epochs : int
        Rows of the history buffers.
    """

    def __init__(
        self, loss_names: tuple[str, ...], lr: float, weight_decay: float, max_epochs: int
    ):
        super().__init__()
        self.loss_names = tuple(loss_names)
        self.lr = lr
        self.weight_decay = weight_decay
        n_terms = len(self.loss_names)
        self.register_buffer("history_train", torch.full((max_epochs, n_terms), math.nan))
        self.register_buffer("history_val", torch.full((max_epochs, n_terms), math.nan))
        self.register_buffer("epochs_done", torch.zeros((), dtype=torch.long))
        # running sums of the terms over the epoch in progress, and its row counts
        self.register_buffer("_train_sums", torch.zeros(n_terms), persistent=False)
        self.register_buffer("_val_sums", torch.zeros(n_terms), persistent=False)
        self._counts = {"train": 0, "val": 0}

    # -- to be written by each model ------------------------------------------------------
    def loss_terms(self, batch: tuple[Tensor, ...]) -> Tensor:
        """Batch means of the loss terms, a tensor of shape ``(len(loss_names),)``."""
        raise NotImplementedError

    def transform_step(self, batch: tuple[Tensor, ...]) -> tuple[Tensor, Tensor]:
        """Posterior mean and log-variance of each row."""
        raise NotImplementedError

    # -- Lightning hooks --------------------------------------------------------------------
    def configure_optimizers(self):
        return torch.optim.Adam(self.parameters(), lr=self.lr, weight_decay=self.weight_decay)

    def training_step(self, batch: tuple[Tensor, ...], batch_idx: int) -> Tensor:
        terms = self.loss_terms(batch)
        self._accumulate("train", self._train_sums, terms, len(batch[0]))
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
                f"The training loss became {means[0].item()} in epoch {self.current_epoch}. "
                "Try a smaller lr, scaling the input (e.g. StandardScaler), a fixed decoder_scale, "
                "or precision='32-true'."
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
