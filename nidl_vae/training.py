"""The quiet Lightning Trainer every estimator fits and predicts with, and its callbacks.

``fit_module`` trains a module; ``predict`` runs one of its predictions (see
:class:`~nidl_vae.module.Prediction`) through ``Trainer.predict`` and returns every row, in
order, on every process: under a distributed strategy each process predicts a shard of the
rows, then the shards are gathered and put back in order.

Quiet without touching process-wide state: Lightning's info messages are dropped by a logging
filter only for records emitted by a thread that is running a quiet fit, so a fit in a
background thread neither silences nor is disturbed by other threads. The handful of Lightning
warnings that a scikit-learn user cannot act on (hints about DataLoader workers for in-memory
slicing, a deprecation inside Lightning itself) are filtered by message once, at import.
"""

import copy
import logging
import signal
import tempfile
import threading
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import numpy as np
import pytorch_lightning as pl
import pytorch_lightning.trainer.trainer as _trainer_module
import torch
from lightning_fabric.utilities.exceptions import MisconfigurationException
from pytorch_lightning.callbacks import Callback, EarlyStopping
from torch import Tensor

from .data import ROW_BLOCK, DeviceRows, Rows, is_streamed, make_loader, rows_in_chunk
from .module import Prediction, VAELightningModule, nan_message

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
_PATCH_LOCK = threading.Lock()
_PATCH_USERS = 0


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

    isolated.original = isolate_rng
    return isolated


@contextmanager
def global_generators_untouched():
    """Run one of our fits in this thread without Lightning rewinding the global generators.

    While at least one of our fits runs, the trainer module's ``isolate_rng`` is a version
    that skips the save-and-restore in threads marked here; Lightning is left as it was when
    the last one ends, so nothing is changed at import or outside our fits.
    """
    global _PATCH_USERS
    with _PATCH_LOCK:
        if _PATCH_USERS == 0:
            _trainer_module.isolate_rng = _isolate_rng_outside_our_fits(_trainer_module.isolate_rng)
        _PATCH_USERS += 1
    before = getattr(_IN_OUR_FIT, "active", False)
    _IN_OUR_FIT.active = True
    try:
        yield
    finally:
        _IN_OUR_FIT.active = before
        with _PATCH_LOCK:
            _PATCH_USERS -= 1
            if _PATCH_USERS == 0:
                _trainer_module.isolate_rng = _trainer_module.isolate_rng.original


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


@dataclass(frozen=True)
class TrainerOptions:
    """The estimator parameters every Trainer it builds reads (fit's and predict's)."""

    accelerator: object
    devices: object
    precision: object
    trainer_params: dict | None
    verbose: bool


def build_trainer(
    options: TrainerOptions,
    root_dir: str,
    *,
    max_epochs: int = 1,
    early_stopping_patience: int | None = None,
    predicting: bool = False,
) -> pl.Trainer:
    """A Trainer that writes nothing and prints nothing unless asked.

    Logger, checkpointing, model summary, sanity validation and the progress bar are off
    (the bar is on when ``verbose``); ``trainer_params`` overrides any of these and adds any
    other Trainer argument. For fitting, its callbacks are deep-copied, so every fit starts
    them afresh, and run before the estimator's own; for predicting, the user's callbacks
    themselves run (a prediction writer or a callback collecting batches is theirs to read).
    An impossible device setting is a ValueError.
    """
    settings = dict(
        max_epochs=max_epochs,
        accelerator=options.accelerator,
        devices=options.devices,
        precision=options.precision,
        logger=False,
        enable_checkpointing=False,
        enable_model_summary=False,
        enable_progress_bar=bool(options.verbose),
        num_sanity_val_steps=0,
        default_root_dir=root_dir,
    )
    user = dict(options.trainer_params or {})
    user_callbacks = user.pop("callbacks", None) or []
    if isinstance(user_callbacks, Callback):
        user_callbacks = [user_callbacks]
    settings.update(user)
    callbacks = list(user_callbacks) if predicting else copy.deepcopy(list(user_callbacks))
    if early_stopping_patience is not None:
        callbacks += [
            EarlyStopping(monitor="val_loss", patience=early_stopping_patience, mode="min"),
            RestoreBestWeights("val_loss"),
        ]
    try:
        return pl.Trainer(callbacks=callbacks, **settings)
    except MisconfigurationException as exc:
        raise ValueError(
            f"accelerator={options.accelerator!r}, devices={options.devices!r} cannot be used "
            f"here: {exc} Use accelerator='auto' (a GPU when there is one, else the CPU) and "
            "devices=1."
        ) from None


@contextmanager
def _lightning_run(verbose: bool) -> Iterator[str]:
    """Around a Trainer's run: a temporary root directory (removed after), Lightning quiet
    unless ``verbose``, the global generators untouched, and Ctrl+C a KeyboardInterrupt with
    the caller's SIGINT handler back."""
    with (
        tempfile.TemporaryDirectory(prefix="nidl_vae_") as root,
        quiet_lightning(verbose),
        _sigint_restored(),
        global_generators_untouched(),
    ):
        try:
            yield root
        except (SystemExit, ValueError) as exc:
            if interrupted(exc):
                raise KeyboardInterrupt from None
            raise


def _cuda_free_bytes(device: torch.device) -> int:
    free, _ = torch.cuda.mem_get_info(device)
    return free


def _loader(rows: Rows, device: torch.device, batch_size: int, shuffle: bool, seed: int):
    """A loader of the rows for ``device``.

    On a GPU, in-memory rows that take less than half its free memory (as float32) go to
    the device once and are sliced there; other rows are read on the host into pinned
    memory, which Lightning copies to the device without blocking.
    """
    if device.type != "cuda":
        return make_loader(rows, batch_size, shuffle, seed)
    if not is_streamed(rows.X) and len(rows) * rows.n_features * 4 < _cuda_free_bytes(device) // 2:
        return make_loader(DeviceRows(rows, device), batch_size, shuffle, seed)
    return make_loader(rows, batch_size, shuffle, seed, pin_memory=True)


def fit_module(
    module: VAELightningModule,
    train: Rows,
    val: Rows | None,
    options: TrainerOptions,
    *,
    batch_size: int,
    max_epochs: int,
    seed: int,
    early_stopping_patience: int | None,
) -> VAELightningModule:
    """Train ``module`` with a quiet Trainer; return it in eval mode with no Trainer, no
    optimizer state and no gradients attached. A ValueError when no step ran, a
    FloatingPointError when the trained model's loss is not finite."""
    with _lightning_run(options.verbose) as root:
        trainer = build_trainer(
            options, root, max_epochs=max_epochs, early_stopping_patience=early_stopping_patience
        )
        device = trainer.strategy.root_device
        train_loader = _loader(train, device, batch_size, True, seed)
        val_loader = None
        if val is not None:
            val_loader = _loader(val, device, inference_batch_rows(val.n_features), False, seed)
        trainer.fit(module, train_dataloaders=train_loader, val_dataloaders=val_loader)
        # the optimizer's moments and the last gradients are as large as the weights: a
        # fitted estimator keeps the weights only
        trainer.strategy.optimizers = []
        module.zero_grad(set_to_none=True)
    module.eval()
    module.trainer = None  # the Trainer would keep the training data alive
    if int(module.steps_done) == 0:
        raise ValueError(
            "No training step ran: the training data loader gave no batch. Check "
            "trainer_params (e.g. limit_train_batches) and the number of samples."
        )
    if not _finite_after_training(module, train):
        raise FloatingPointError(nan_message("is not finite for the trained model"))
    return module


def _finite_after_training(module: VAELightningModule, train: Rows) -> bool:
    """Whether the trained weights, and the loss of one batch under them, are finite: the
    epoch means are taken before the last update, which can blow the weights up."""
    if not all(torch.isfinite(p).all() for p in module.parameters()):
        return False
    batch = train.first(ROW_BLOCK)
    parameter = next(module.parameters())
    batch = {k: t.to(parameter.device, parameter.dtype) for k, t in batch.items()}
    # the check draws from a generator of its own: it must not shift a later call's noise
    noise = torch.Generator(device=parameter.device).manual_seed(module.seed)

    def standard_normal(shape, like):
        return torch.randn(shape, generator=noise, device=like.device, dtype=like.dtype)

    with torch.inference_mode():
        terms = module.model.loss_terms(batch, standard_normal)
    return all(bool(torch.isfinite(t).all()) for t in terms.values())


def inference_batch_rows(n_features: int) -> int:
    """Rows per inference batch: about ``CHUNK_VALUES`` input values, whole blocks of
    ``ROW_BLOCK`` rows, at most 1,024."""
    rows = int(np.clip(rows_in_chunk(n_features), ROW_BLOCK, 1024))
    return rows - rows % ROW_BLOCK


def predict(
    module: VAELightningModule, rows: Rows, prediction: Prediction, options: TrainerOptions
) -> Tensor:
    """Run ``prediction`` on every row through ``Trainer.predict``; the results in the rows'
    order, on the CPU, on every process.

    Under a distributed strategy, Lightning gives each process a shard of the rows; the
    shards are gathered (``all_gather_object``) and put back in order by position. The
    Trainer is built anew for each call (about 10 ms on a CPU).
    """
    module.prediction = prediction
    dtype = next(module.parameters()).dtype
    if dtype != torch.float32 and not str(options.precision).startswith("64"):
        # 32-bit and mixed precisions read float32 weights; the others convert them
        module.float()
    try:
        with _lightning_run(options.verbose) as root:
            trainer = build_trainer(options, root, predicting=True)
            loader = make_loader(rows, inference_batch_rows(rows.n_features), False, 0)
            outputs = trainer.predict(module, loader) or []
            world_size = trainer.world_size
    finally:
        module.prediction = None
        module.trainer = None
        module.to(dtype).eval()  # as fitted, whatever precision this call ran in
    index = (
        torch.cat([o["index"] for o in outputs]) if outputs else torch.zeros(0, dtype=torch.long)
    )
    values = torch.cat([o["values"] for o in outputs]) if outputs else None
    if world_size > 1 and torch.distributed.is_available() and torch.distributed.is_initialized():
        shards = [None] * torch.distributed.get_world_size()
        torch.distributed.all_gather_object(shards, (index, values))
        index = torch.cat([i for i, _ in shards])
        values = torch.cat([v for _, v in shards if v is not None])
    # a distributed sampler may repeat rows to even the shards: keep the first of each
    positions, first = np.unique(index.numpy(), return_index=True)
    if len(positions) != len(rows) or (len(positions) and positions[-1] != len(rows) - 1):
        raise RuntimeError(
            f"Trainer.predict returned {len(positions)} of {len(rows)} rows: trainer_params "
            "that skip batches (limit_predict_batches, ...) cannot be used for inference."
        )
    values = values[torch.from_numpy(first)]
    # half-precision results (bf16-mixed) are returned in float32, as the estimators' outputs
    return values.float() if values.dtype in (torch.bfloat16, torch.float16) else values


@contextmanager
def _sigint_restored() -> Iterator[None]:
    """Lightning ignores Ctrl+C after catching one; put the caller's handler back."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    handler = signal.getsignal(signal.SIGINT)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, handler)
