"""The Trainer every estimator fits and predicts with: quiet, in the Lightning namespace of
the user's objects, and for inference gathered across processes.

``fit_module`` trains a module; ``predict`` runs one of its predictions (see
:class:`~nidl_vae.module.Prediction`) through ``Trainer.predict`` and returns every row, in
order, on every process: under a distributed strategy each process predicts a shard of the
rows, then the shards are gathered and put back in order. What surrounds every run (quiet
logs, known warnings, random generators, Ctrl+C) is :mod:`nidl_vae.run_context`.
"""

import copy
import inspect
import math
import sys
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from .data import ROW_BLOCK, DeviceRows, Rows, is_streamed, make_loader, rows_in_chunk
from .module import Prediction, VAELightningModule, nan_message
from .namespaces import in_namespace, lightning, namespace_for, view_in
from .run_context import lightning_run

# estimator parameters: trainer_params may not set them
RESERVED = ("max_epochs", "accelerator", "devices", "precision")


class _RestoreBestWeights:
    """Keep the weights of the epoch with the lowest ``monitor`` and load them when fit ends.

    History buffers are left out, so the whole training history survives the restore.
    """

    def __init__(self, monitor: str = "val_loss"):
        self.monitor = monitor
        self.best_score = float("inf")
        self.best_state: dict | None = None

    def on_validation_end(self, trainer, module) -> None:
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

    def on_fit_end(self, trainer, module) -> None:
        if self.best_state is not None:
            module.load_state_dict(self.best_state, strict=False)


class _EpochLines:
    """``verbose`` where no terminal shows a progress bar (a log file, a notebook): one line
    per epoch, or per few epochs for long budgets (about 20 lines in all, the last epoch's
    always), with the epoch's training means."""

    def __init__(self, max_epochs: int):
        self.every = max(1, math.ceil(max_epochs / 20))
        self.max_epochs = max_epochs

    def on_train_epoch_end(self, trainer, module) -> None:
        epoch = trainer.current_epoch + 1
        if trainer.global_rank or (epoch % self.every and epoch != self.max_epochs):
            return
        metrics = trainer.callback_metrics
        shown = "  ".join(
            f"{name} {float(value):.4g}"
            for name, value in metrics.items()
            if name.startswith(("train_", "val_"))
        )
        print(f"epoch {epoch}/{self.max_epochs}  {shown}", flush=True)


class _EstimatorsEarlyStopping:
    """``early_stopping=True``'s EarlyStopping, under a state key of its own: Lightning
    refuses two EarlyStopping callbacks with one key, and a user may add theirs on
    ``val_loss``."""

    @property
    def state_key(self) -> str:
        return f"nidl_vae_{super().state_key}"


def _pytorch_lightning_callbacks() -> dict:
    from pytorch_lightning.callbacks import Callback, EarlyStopping

    bases = {
        _RestoreBestWeights: Callback,
        _EpochLines: Callback,
        _EstimatorsEarlyStopping: EarlyStopping,
    }
    return {
        mixin: type(mixin.__name__.lstrip("_"), (mixin, base), {"__module__": __name__})
        for mixin, base in bases.items()
    }


_CALLBACKS = _pytorch_lightning_callbacks()


def _callback(mixin: type, namespace: str) -> type:
    """The callback class of ``mixin``'s code on ``namespace``'s Callback."""
    return in_namespace(_CALLBACKS[mixin], namespace)


@dataclass(frozen=True)
class TrainerOptions:
    """The estimator parameters every Trainer it builds reads (fit's and predict's)."""

    accelerator: object
    devices: object
    precision: object
    trainer_params: dict | None
    verbose: bool

    @property
    def namespace(self) -> str:
        """The Lightning namespace of the objects in ``trainer_params``."""
        return namespace_for(self.trainer_params)


def check_trainer_params(options: TrainerOptions, estimator: str) -> None:
    """A ValueError, before any training, for ``trainer_params`` that no Trainer takes: a
    reserved name, an unknown argument, callbacks that are not Lightning Callbacks, or a mix
    of Lightning's namespaces."""
    user = dict(options.trainer_params or {})
    reserved = sorted(set(user) & set(RESERVED))
    if reserved:
        raise ValueError(
            f"trainer_params may not set {reserved}: they are estimator parameters, "
            f"e.g. {estimator}({reserved[0]}=...)."
        )
    namespace = options.namespace
    known = inspect.signature(lightning(namespace).Trainer.__init__).parameters
    unknown = sorted(set(user) - set(known))
    if unknown:
        raise ValueError(
            f"trainer_params has {unknown}, which {namespace}.Trainer does not take; its "
            "arguments are listed in Lightning's Trainer documentation."
        )
    callbacks = user.get("callbacks") or []
    Callback = lightning(namespace).Callback
    callbacks = [callbacks] if isinstance(callbacks, Callback) else callbacks
    if not isinstance(callbacks, (list, tuple)) or not all(
        isinstance(c, Callback) for c in callbacks
    ):
        raise ValueError(
            "trainer_params['callbacks'] must be a list of Lightning Callback instances "
            f"(pytorch_lightning or lightning.pytorch); got {callbacks!r}."
        )


def build_trainer(
    options: TrainerOptions,
    root_dir: str,
    *,
    max_epochs: int = 1,
    early_stopping_patience: int | None = None,
    predicting: bool = False,
):
    """A Trainer that writes nothing and prints nothing unless asked.

    Logger, checkpointing, model summary, sanity validation and the progress bar are off;
    ``verbose`` shows the bar in a terminal, and elsewhere (a log file, a notebook) a line
    per epoch of a fit. ``trainer_params`` overrides any of these and adds any other Trainer
    argument. For fitting, its callbacks are deep-copied, so every fit starts them afresh,
    and run before the estimator's own; for predicting, the user's callbacks themselves run
    (a prediction writer or a callback collecting batches is theirs to read). The Trainer,
    and the estimator's callbacks, are of the namespace of the user's objects. Options the
    Trainer refuses (an impossible device, a wrong type) are a ValueError.
    """
    namespace = options.namespace
    L = lightning(namespace)
    terminal = bool(options.verbose) and sys.stderr.isatty()
    settings = dict(
        max_epochs=max_epochs,
        accelerator=options.accelerator,
        devices=options.devices,
        precision=options.precision,
        logger=False,
        enable_checkpointing=False,
        enable_model_summary=False,
        enable_progress_bar=terminal,
        num_sanity_val_steps=0,
        default_root_dir=root_dir,
    )
    user = dict(options.trainer_params or {})
    user_callbacks = user.pop("callbacks", None) or []
    if isinstance(user_callbacks, L.Callback):
        user_callbacks = [user_callbacks]
    # a user's ModelCheckpoint needs checkpointing on (it writes where they say)
    checkpoints = [c for c in user_callbacks if isinstance(c, L.callbacks.ModelCheckpoint)]
    settings["enable_checkpointing"] = bool(checkpoints)
    settings.update(user)
    callbacks = list(user_callbacks) if predicting else copy.deepcopy(list(user_callbacks))
    if options.verbose and not terminal and not predicting:
        callbacks.append(_callback(_EpochLines, namespace)(max_epochs))
    if early_stopping_patience is not None:
        callbacks += [
            _callback(_EstimatorsEarlyStopping, namespace)(
                monitor="val_loss", patience=early_stopping_patience, mode="min"
            ),
            _callback(_RestoreBestWeights, namespace)("val_loss"),
        ]
    try:
        return L.Trainer(callbacks=callbacks, **settings)
    except (L.utilities.exceptions.MisconfigurationException, TypeError, ValueError) as exc:
        raise ValueError(
            f"The Trainer options cannot be used here (accelerator={options.accelerator!r}, "
            f"devices={options.devices!r}, precision={options.precision!r}, trainer_params="
            f"{sorted(options.trainer_params or {})}): {exc} Use accelerator='auto' (a GPU "
            "when there is one, else the CPU) and devices=1, or fix the option named."
        ) from None


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
    with lightning_run(options.namespace) as root:
        trainer = build_trainer(
            options, root, max_epochs=max_epochs, early_stopping_patience=early_stopping_patience
        )
        device = trainer.strategy.root_device
        train_loader = _loader(train, device, batch_size, True, seed)
        val_loader = None
        if val is not None:
            val_loader = _loader(val, device, inference_batch_rows(val.n_features), False, seed)
        run = view_in(module, options.namespace)
        trainer.fit(run, train_dataloaders=train_loader, val_dataloaders=val_loader)
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
        message = nan_message("is not finite for the trained model", options.precision)
        raise FloatingPointError(message)
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
    module: VAELightningModule,
    rows: Rows,
    prediction: Prediction,
    options: TrainerOptions,
    batch_rows: int,
) -> Tensor:
    """Run ``prediction`` on every row, ``batch_rows`` at a time, through ``Trainer.predict``;
    the results in the rows' order, on the CPU, on every process.

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
        with lightning_run(options.namespace) as root:
            trainer = build_trainer(options, root, predicting=True)
            loader = make_loader(rows, batch_rows, False, 0)
            outputs = trainer.predict(view_in(module, options.namespace), loader) or []
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
