"""The one scikit-learn estimator base of every model: parameters, validation, seeding,
training with a quiet Lightning Trainer, history, batched inference and pickling.

Nothing here knows a model's math: a model supplies ``_build_module`` (its LightningModule) and
its public methods, and calls ``_train`` and ``_infer``.
"""

import copy
import tempfile
from numbers import Integral, Real

import numpy as np
import pytorch_lightning as pl
import torch
from sklearn.base import BaseEstimator, ClassNamePrefixFeaturesOutMixin, TransformerMixin
from sklearn.utils._param_validation import Interval, StrOptions
from sklearn.utils.validation import check_is_fitted, check_random_state, validate_data
from torch import nn

from .data import iter_batches, make_loader
from .module import BaseVAEModule
from .training import RESERVED_TRAINER_ARGS, build_trainer, quiet_lightning

FLOAT_DTYPES = (np.float64, np.float32)


def draw_seed(random_state) -> int:
    """An integer seed from ``random_state``, leaving every global generator untouched.

    An int is used as it is; a ``RandomState`` gives one draw; None draws fresh entropy from
    the operating system (not from numpy's global generator).
    """
    if random_state is None:
        return int(np.random.SeedSequence().generate_state(1)[0] >> 1)
    if isinstance(random_state, Integral):
        return int(random_state)
    return int(check_random_state(random_state).randint(np.iinfo(np.int32).max))


def _concat(outputs: list):
    """Concatenate per-batch outputs (tensors, or tuples of tensors) on the CPU."""
    if isinstance(outputs[0], tuple):
        return tuple(torch.cat(parts).cpu() for parts in zip(*outputs, strict=True))
    return torch.cat(outputs).cpu()


def _as_float_tensor(array, dtype: torch.dtype) -> torch.Tensor:
    if isinstance(array, torch.Tensor):
        return array.to(dtype)
    if not array.flags.writeable:  # torch warns on read-only (e.g. memory-mapped) arrays
        array = array.copy()
    return torch.from_numpy(array).to(dtype)


def _cuda_devices() -> list[int]:
    return list(range(torch.cuda.device_count())) if torch.cuda.is_available() else []


class BaseVAEEstimator(ClassNamePrefixFeaturesOutMixin, TransformerMixin, BaseEstimator):
    """Base class of the VAE-family estimators. Not to be used directly.

    Fitted attributes set here: ``module_`` (the trained LightningModule, in eval mode, with
    no Trainer attached), ``history_`` (per-epoch means of the loss terms), ``n_iter_`` (epochs
    run), ``n_features_in_`` and ``feature_names_in_``.
    """

    _parameter_constraints: dict = {
        "latent_dim": [Interval(Integral, 1, None, closed="left")],
        "beta": [Interval(Real, 0, None, closed="left")],
        "lr": [Interval(Real, 0, None, closed="neither")],
        "weight_decay": [Interval(Real, 0, None, closed="left")],
        "batch_size": [Interval(Integral, 1, None, closed="left")],
        "max_epochs": [Interval(Integral, 1, None, closed="left")],
        "early_stopping": ["boolean"],
        "validation_fraction": [Interval(Real, 0, 1, closed="neither")],
        "n_iter_no_change": [Interval(Integral, 1, None, closed="left")],
        "accelerator": [str, pl.accelerators.Accelerator],
        "devices": [Interval(Integral, -1, None, closed="left"), str, list],
        "precision": [str, Integral, None],
        "trainer_params": [dict, None],
        "verbose": ["verbose"],
        "random_state": ["random_state"],
    }
    _scale_constraint = [Interval(Real, 0, None, closed="neither"), StrOptions({"learned"})]
    # batch size of transform, score and sampling: larger than training's, memory permitting
    _inference_batch_size = 1024

    # ------------------------------------------------------------------ fitting
    def _check_trainer_params(self) -> None:
        reserved = sorted(set(self.trainer_params or {}) & set(RESERVED_TRAINER_ARGS))
        if reserved:
            raise ValueError(
                f"trainer_params may not set {reserved}: they are estimator parameters, "
                f"e.g. {type(self).__name__}({reserved[0]}=...)."
            )

    def _validate_X(self, X, reset: bool, **kwargs) -> np.ndarray:
        if not reset:
            check_is_fitted(self)
        return validate_data(
            self, X, reset=reset, dtype=FLOAT_DTYPES, ensure_min_samples=2 if reset else 1, **kwargs
        )

    def _build_module(self, tensors: tuple[torch.Tensor, ...]) -> BaseVAEModule:
        raise NotImplementedError

    def _train(self, tensors: tuple[torch.Tensor, ...], seed: int) -> BaseVAEModule:
        """Build the model's module from the training tensors and train it.

        Weight initialisation, shuffling, the validation split and the training noise are all
        drawn from ``seed`` inside a forked RNG scope, so the user's global generators are left
        as they were.
        """
        n = len(tensors[0])
        with torch.random.fork_rng(devices=_cuda_devices()):
            torch.manual_seed(seed)
            module = self._build_module(tensors)
            if self.early_stopping:
                n_val = max(1, int(round(self.validation_fraction * n)))
                if n - n_val < 1:
                    raise ValueError(
                        f"early_stopping needs at least 2 samples; got {n}. "
                        "Set early_stopping=False."
                    )
                perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
                val_idx, train_idx = perm[:n_val], perm[n_val:]
                train = make_loader([t[train_idx] for t in tensors], self.batch_size, True, seed)
                val = make_loader([t[val_idx] for t in tensors], self._inference_batch_size, False)
            else:
                train, val = make_loader(tensors, self.batch_size, True, seed), None
            with (
                tempfile.TemporaryDirectory(prefix="nidl_vae_") as root,
                quiet_lightning(self.verbose),
            ):
                trainer = build_trainer(
                    max_epochs=self.max_epochs,
                    accelerator=self.accelerator,
                    devices=self.devices,
                    precision=self.precision,
                    verbose=self.verbose,
                    trainer_params=self.trainer_params,
                    root_dir=root,
                    early_stopping_patience=self.n_iter_no_change if self.early_stopping else None,
                )
                trainer.fit(module, train_dataloaders=train, val_dataloaders=val)
                self._n_devices = trainer.num_devices
        module.eval()
        module.trainer = None  # the Trainer would keep the training data alive
        return module

    def _set_fitted(self, module: BaseVAEModule, seed: int) -> None:
        self.module_ = module
        self.history_ = module.history()
        self.n_iter_ = int(module.epochs_done)
        self._seed = seed
        self._twins: dict = {}  # module copies in other float precisions, for CPU inference

    def _fit_transactional(self, fit_body):
        """Run ``fit_body``; if it raises, restore the estimator as it was before ``fit``."""
        before = self.__dict__.copy()
        try:
            return fit_body()
        except BaseException:
            self.__dict__.clear()
            self.__dict__.update(before)
            raise

    # ------------------------------------------------------------------ inference
    @property
    def _device(self) -> torch.device:
        return next(self.module_.parameters()).device

    def _inference_module(self, dtype: np.dtype) -> BaseVAEModule:
        """The fitted module, or on the CPU its twin in the input's float precision.

        A float32 network's outputs for a row vary with the batch around it by about 1e-7
        relative; float64 input is computed in float64 so a row's result does not depend on
        the rows beside it, as scikit-learn expects. The twin is built once per fit.
        """
        module = self.module_
        want = torch.float64 if dtype == np.float64 else torch.float32
        if self._device.type != "cpu" or next(module.parameters()).dtype == want:
            return module
        if want not in self._twins:
            self._twins[want] = copy.deepcopy(module).to(want)
        return self._twins[want]

    def _generator(self, offset: int) -> torch.Generator:
        """A CPU generator seeded from the fit's seed: inference draws are the same at every
        call and touch no global generator."""
        return torch.Generator().manual_seed(self._seed + offset)

    def _standard_normal(self, shape: tuple[int, ...], offset: int) -> torch.Tensor:
        return torch.randn(shape, generator=self._generator(offset), dtype=torch.float64)

    def _infer(self, step: str, arrays, *args, dtype=np.float32):
        """Apply the module step named ``step`` to aligned arrays, batch by batch.

        ``step(batch, *args)`` gets a tuple of tensors on the module's device, in ``dtype``
        on the CPU; tensor ``args`` are moved there too. Outputs (tensors or tuples of
        tensors) are concatenated along their first dimension and returned on the CPU. With
        several training devices the batches go through ``Trainer.predict``; otherwise through
        a plain loop under inference mode, which avoids a Trainer's start-up cost (tens of ms)
        at every call.
        """
        module = self._inference_module(dtype)
        device = self._device
        dtype = next(module.parameters()).dtype
        tensors = [_as_float_tensor(a, dtype) for a in arrays]
        args = [a.to(device, dtype) if isinstance(a, torch.Tensor) else a for a in args]
        fn = getattr(module, step)
        if getattr(self, "_n_devices", 1) > 1:
            outputs = self._predict_with_trainer(module, fn, tensors, args)
            if outputs:
                return _concat(outputs)
        outputs = []
        with torch.inference_mode():
            for batch in iter_batches(tensors, self._inference_batch_size):
                outputs.append(fn(tuple(t.to(device, non_blocking=True) for t in batch), *args))
        return _concat(outputs)

    def _predict_with_trainer(self, module, fn, tensors, args) -> list | None:
        """Run ``fn`` over batches with ``Trainer.predict`` on the training devices.

        Every device runs all rows in order (no distributed sampler), so rank zero returns the
        whole result. A spawned strategy returns nothing: the caller then loops by itself.
        """
        module.predict_step = lambda batch, batch_idx: fn(batch, *args)
        loader = make_loader(tensors, self._inference_batch_size, shuffle=False)
        try:
            with (
                tempfile.TemporaryDirectory(prefix="nidl_vae_") as root,
                quiet_lightning(self.verbose),
            ):
                trainer = build_trainer(
                    max_epochs=1,
                    accelerator=self.accelerator,
                    devices=self.devices,
                    precision=self.precision,
                    verbose=False,
                    trainer_params={
                        **(self.trainer_params or {}),
                        "use_distributed_sampler": False,
                    },
                    root_dir=root,
                )
                return trainer.predict(module, loader)
        finally:
            del module.predict_step
            module.trainer = None
            module.eval()

    @staticmethod
    def _to_numpy(tensor: torch.Tensor, dtype) -> np.ndarray:
        return tensor.detach().to(torch.float64).numpy().astype(dtype, copy=False)

    # ------------------------------------------------------------------ sklearn API
    @property
    def _n_features_out(self) -> int:
        return self.latent_dim

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.transformer_tags.preserves_dtype = ["float64", "float32"]
        return tags

    def __getstate__(self):
        state = dict(super().__getstate__())  # object's own is the live __dict__
        state.pop("_twins", None)
        module = state.get("module_")
        if module is not None and next(module.parameters()).device.type != "cpu":
            # a model fitted on a GPU must load on a CPU-only machine
            state["module_"] = copy.deepcopy(module).cpu()
        return state

    def __setstate__(self, state):
        super().__setstate__(state)
        if "module_" in state:
            self._twins = {}


def private_copy(module: nn.Module | None) -> nn.Module | None:
    """A private copy of a user's module, so fitting never trains the parameter itself."""
    return None if module is None else copy.deepcopy(module)
