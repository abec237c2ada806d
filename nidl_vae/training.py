"""The quiet Lightning Trainer every estimator trains with, and its callbacks.

Quiet without touching process-wide state: Lightning's info messages are dropped by a logging
filter only for records emitted by a thread that is running a quiet fit, so a fit in a
background thread neither silences nor is disturbed by other threads. The handful of Lightning
warnings that a scikit-learn user cannot act on (hints about DataLoader workers for in-memory
slicing, a deprecation inside Lightning itself) are filtered by message once, at import.
"""

import copy
import logging
import threading
import warnings
from contextlib import contextmanager

import pytorch_lightning as pl
import pytorch_lightning.trainer.trainer as _trainer_module
from lightning_fabric.utilities.exceptions import MisconfigurationException
from pytorch_lightning.callbacks import Callback, EarlyStopping

_LIGHTNING_LOGGERS = ("pytorch_lightning", "lightning.pytorch", "lightning_fabric", "lightning")

for _message in (
    # torch >= 2.13 deprecates a class Lightning 2.6 still builds per batch
    r".*isinstance\(treespec, LeafSpec\).*",
    # every module defines validation_step; only early stopping gives it data
    r".*`validation_step` but have no `val_dataloader`.*",
    # batches are sliced from memory or read by the estimator: workers are the user's choice
    r".*does not have many workers.*",
    r".*`IterableDataset` has `__len__` defined.*",
):
    warnings.filterwarnings("ignore", message=_message)


class _QuietThreads(logging.Filter):
    """Drops Lightning's records emitted by threads in a quiet fit (a set of thread ids)."""

    def __init__(self):
        super().__init__()
        self.threads: set[int] = set()
        self.lock = threading.Lock()

    def filter(self, record: logging.LogRecord) -> bool:
        return record.levelno >= logging.WARNING or record.thread not in self.threads


_QUIET = _QuietThreads()


def _install_filter() -> None:
    """Attach the filter to every Lightning logger and to the handlers their records reach."""
    names = [
        name
        for name in list(logging.root.manager.loggerDict)
        if name.split(".")[0] in _LIGHTNING_LOGGERS
    ]
    for name in names:
        logger = logging.getLogger(name)
        for target in (logger, *logger.handlers):
            if _QUIET not in target.filters:
                target.addFilter(_QUIET)
    for handler in logging.root.handlers:
        if _QUIET not in handler.filters:
            handler.addFilter(_QUIET)


_IN_OUR_FIT = threading.local()


def _isolate_rng_outside_our_fits(isolate_rng):
    """Lightning's ``isolate_rng`` (saving the global generators' states around the sanity
    check and restoring them after), skipped in threads running one of our fits: they draw
    from no global generator, and the restore would rewind the draws other threads made in
    between (a fit in a background thread then changed the main thread's random numbers)."""

    @contextmanager
    def isolated(*args, **kwargs):
        if getattr(_IN_OUR_FIT, "active", False):
            yield
            return
        with isolate_rng(*args, **kwargs):
            yield

    isolated.nidl_vae = True
    return isolated


if not getattr(_trainer_module.isolate_rng, "nidl_vae", False):
    _trainer_module.isolate_rng = _isolate_rng_outside_our_fits(_trainer_module.isolate_rng)


@contextmanager
def global_generators_untouched():
    """Mark this thread as running one of our fits (see ``_isolate_rng_outside_our_fits``)."""
    before = getattr(_IN_OUR_FIT, "active", False)
    _IN_OUR_FIT.active = True
    try:
        yield
    finally:
        _IN_OUR_FIT.active = before


@contextmanager
def quiet_lightning(verbose: bool):
    """Silence Lightning's info messages from this thread unless ``verbose``."""
    if verbose:
        yield
        return
    _install_filter()
    ident = threading.get_ident()
    with _QUIET.lock:
        _QUIET.threads.add(ident)
    try:
        yield
    finally:
        with _QUIET.lock:
            _QUIET.threads.discard(ident)


def interrupted(exc: BaseException) -> bool:
    """Whether ``exc`` is how Lightning ends a fit on Ctrl+C: ``sys.exit(1)`` in the main
    thread, a ValueError from ``signal.signal`` in another, both raised while handling the
    KeyboardInterrupt."""
    while exc is not None:
        if isinstance(exc, KeyboardInterrupt):
            return True
        exc = exc.__context__
    return False


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
                if not k.startswith(("history_", "epochs_done", "steps_done"))
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
    other Trainer argument. Its callbacks are deep-copied, so every fit starts them afresh,
    and run before the estimator's own. An impossible device setting is a ValueError.
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
    callbacks = copy.deepcopy(list(user_callbacks))
    if early_stopping_patience is not None:
        callbacks += [
            EarlyStopping(monitor="val_loss", patience=early_stopping_patience, mode="min"),
            RestoreBestWeights("val_loss"),
        ]
    try:
        return pl.Trainer(callbacks=callbacks, **options)
    except MisconfigurationException as exc:
        raise ValueError(
            f"accelerator={accelerator!r}, devices={devices!r} cannot be used here: {exc} "
            "Use accelerator='auto' (a GPU when there is one, else the CPU) and devices=1."
        ) from None
