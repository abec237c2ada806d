"""The quiet Lightning Trainer every estimator trains with, and its callbacks."""

import logging
import warnings
from contextlib import contextmanager

import pytorch_lightning as pl
from pytorch_lightning.callbacks import Callback, EarlyStopping
from pytorch_lightning.utilities.warnings import PossibleUserWarning

# Trainer arguments that are estimator parameters: set them there, so clone and GridSearchCV
# see them.
RESERVED_TRAINER_ARGS = ("max_epochs", "accelerator", "devices", "precision")
_LIGHTNING_LOGGERS = ("pytorch_lightning", "lightning.pytorch", "lightning_fabric", "lightning")


@contextmanager
def quiet_lightning(verbose: bool):
    """Silence Lightning's info messages and performance hints unless ``verbose``.

    Logger levels and warning filters are restored on exit.
    """
    with warnings.catch_warnings():
        # torch >= 2.13 deprecates a class Lightning 2.6 still builds per batch: nothing a user
        # can act on
        warnings.filterwarnings("ignore", message=r".*isinstance\(treespec, LeafSpec\).*")
        # every module defines validation_step; only early stopping gives it data
        warnings.filterwarnings(
            "ignore", message=".*`validation_step` but have no `val_dataloader`.*"
        )
        if verbose:
            yield
            return
        with _silenced():
            yield


@contextmanager
def _silenced():
    loggers = [logging.getLogger(name) for name in _LIGHTNING_LOGGERS]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.WARNING)
    try:
        with warnings.catch_warnings():
            # hints about DataLoader workers, logging intervals and the like: in-memory data
            # sliced per batch needs no workers
            warnings.simplefilter("ignore", PossibleUserWarning)
            warnings.filterwarnings("ignore", message=".*does not have many workers.*")
            yield
    finally:
        for lg, level in zip(loggers, levels, strict=True):
            lg.setLevel(level)


class RestoreBestWeights(Callback):
    """Keep the weights of the epoch with the lowest ``monitor`` and load them when fit ends.

    History buffers are left out, so the whole training history survives the restore.
    """

    def __init__(self, monitor: str = "val_loss"):
        self.monitor = monitor
        self.best_score = float("inf")
        self.best_state: dict | None = None

    def on_validation_end(self, trainer: pl.Trainer, module: pl.LightningModule) -> None:
        if trainer.sanity_checking or self.monitor not in trainer.callback_metrics:
            return
        score = float(trainer.callback_metrics[self.monitor])
        if score < self.best_score:
            self.best_score = score
            self.best_state = {
                k: v.detach().clone()
                for k, v in module.state_dict().items()
                if not k.startswith(("history_", "epochs_done"))
            }

    def on_fit_end(self, trainer: pl.Trainer, module: pl.LightningModule) -> None:
        if self.best_state is not None:
            module.load_state_dict(self.best_state, strict=False)


def build_trainer(
    *,
    max_epochs: int,
    accelerator,
    devices,
    precision,
    verbose: bool,
    trainer_params: dict | None,
    root_dir: str,
    early_stopping_patience: int | None = None,
) -> pl.Trainer:
    """A Trainer that writes nothing and prints nothing unless asked.

    Logger, checkpointing, model summary, sanity validation and the progress bar are off
    (the bar is on when ``verbose``); ``trainer_params`` overrides any of these and adds any
    other Trainer argument; its callbacks run before the estimator's own.
    """
    options = dict(
        max_epochs=max_epochs,
        accelerator=accelerator,
        devices=devices,
        precision=precision,
        logger=False,
        enable_checkpointing=False,
        enable_model_summary=False,
        enable_progress_bar=bool(verbose),
        num_sanity_val_steps=0,
        default_root_dir=root_dir,
    )
    user = dict(trainer_params or {})
    user_callbacks = user.pop("callbacks", None) or []
    if isinstance(user_callbacks, Callback):
        user_callbacks = [user_callbacks]
    options.update(user)
    callbacks = list(user_callbacks)
    if early_stopping_patience is not None:
        callbacks += [
            EarlyStopping(monitor="val_loss", patience=early_stopping_patience, mode="min"),
            RestoreBestWeights("val_loss"),
        ]
    return pl.Trainer(callbacks=callbacks, **options)
