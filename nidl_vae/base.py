"""The one scikit-learn estimator base of every model: parameters, fitting, seeding,
training with a quiet Lightning Trainer, history, batched inference and pickling.

Nothing here knows a model's math. A model (``VAE``, ``CVAE``, ``CRMVAE``, siblings that never
subclass one another) writes three hooks: ``_training_rows`` validates the input and returns
the rows to train on, ``_build_module`` builds its LightningModule from them, and
``_inference_rows`` validates input at prediction time. ``fit`` is written once, here.
"""

import copy
import math
import signal
import tempfile
import threading
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from numbers import Integral, Real

import numpy as np
import pytorch_lightning as pl
import torch
from sklearn.base import BaseEstimator, ClassNamePrefixFeaturesOutMixin, TransformerMixin
from sklearn.utils._param_validation import Interval, StrOptions
from sklearn.utils.validation import (
    _check_feature_names,
    check_array,
    check_is_fitted,
    check_random_state,
    validate_data,
)

from . import data
from .data import Moments, Rows, is_streamed, make_loader, moments, pad_rows
from .module import draws_per_chunk, nan_message
from .training import build_trainer, global_generators_untouched, interrupted, quiet_lightning

FLOAT_DTYPES = (np.float64, np.float32)
# optimizer steps the default budget (max_epochs='auto') aims for, and its bounds in epochs;
# ``python benchmarks/bench_scale.py --defaults`` measures the choice on digits and on a wide
# cohort of few subjects
AUTO_STEPS = 1000
AUTO_EPOCHS = (100, 2000)

# Documentation of the parameters every estimator shares, written once and filled into the
# three class docstrings (where ``<shared:name>`` stands).
SHARED_DOCS = {
    "budget": """batch_size : int or 'auto', default='auto'
        Rows per training step. 'auto' is ``n_samples // 16`` between 16 and 128: about 16
        steps per epoch on a few hundred subjects, 128 rows on larger data.
    max_epochs : int or 'auto', default='auto'
        Passes over the data. 'auto' gives training about 1,000 optimizer steps, at least 100
        and at most 2,000 epochs: 100 epochs of 112 rows on scikit-learn's digits, 100 of 31
        rows (1,700 steps) on 500 subjects, 143 of 16 rows on 100. A fixed number of epochs
        stops short on few subjects (100 epochs of 500 subjects at 128 rows are 400 steps).""",
    "conv": """conv_channels : tuple of int, default=(8, 16, 32, 64)
        Output channels of the default convolutional encoder's layers, used when X holds
        images (n_samples, C, H, W) or volumes (n_samples, C, D, H, W): each layer is a 3-wide
        convolution of stride 2 (halving every side), group normalisation and a ReLU; layers
        stop before a side would fall below 2 voxels. The input is zero-padded to a multiple
        of :math:`2^L` per side for L layers (91 x 109 x 91 to 96 x 112 x 96) and the mirrored
        decoder of transposed convolutions crops its output back. On 300 brains built from
        the MNI152 template (``benchmarks/bench_volumes.py``) a VAE's 4 latents read age at
        R^2 0.886-0.931 over three seeds at 6 mm (PCA 0.932, the MLP on the masked voxels
        0.942-0.950) and 0.926 at 4 mm (PCA 0.929, seed 0), with 1/40 and 1/50 of the MLP's
        parameters;
        (16, 32, 64, 128) costs about twice the time per epoch.""",
    "train_draws": """n_train_draws : int, default=1
        Number K of posterior draws per row in training. 1 trains on the ELBO; above 1, on the
        importance-weighted bound (IWAE; MIWAE for data with missing cells), tighter than the
        ELBO and the better imputer (on digits with 20% or 50% of the cells missing, K = 20
        lowers the imputation error by 14-16%; ``benchmarks/bench_missing.py``), for K times
        the decoder's work per step:

        .. math:: -\\log \\frac1K \\sum_{k=1}^K p(x|z_k)
            \\left[\\frac{p(z_k)}{q(z_k|x)}\\right]^\\beta, \\quad z_k \\sim q(z|x)

        ``history_``'s 'loss' is then this bound, 'reconstruction' the mean over the draws
        and 'kl' the analytic KL.""",
    "linear_path": """linear_path : bool or 'auto', default='auto'
        Give the default decoder a linear map from its input (latents, and conditions) to
        its output besides its hidden layers, :math:`f(z) = g(z) + W_z z`, with
        :math:`W_z` started at zero (``latent_dim`` times ``n_features_in_`` weights, plus a
        column per condition). 'auto' gives it to the convolutional decoder of images and
        volumes and not to the MLP. Measured with 4 latents: on 300 brains built from the
        MNI152 template at 6 mm as volumes (``benchmarks/bench_volumes.py``), the
        convolutional VAE's latents read age at R^2 0.928-0.961 with it (median 0.946)
        and 0.787-0.935 without (median 0.905) over seeds 0-4 (PCA 0.932), and the decoded
        change from 30 to 70 years correlates 0.989-0.990 with the planted one (without:
        0.721-0.981): transposed convolutions draw shapes anywhere in the volume and spent the
        latents on the subjects' smooth variation, while the path draws a fixed pattern per
        latent, as the planted effect is. With the MLP (``bench_scale.py --only defaults``), on
        the same brains masked (8,735 voxels) 0.940 with it and 0.938 without; on 500
        synthetic volumes of 13,824 voxels (``make_cohort``, unmasked) 0.940 with it and
        0.947 without (PCA 0.939).""",
    "training": """stochastic_transform : bool, default=False
        If True, ``transform`` returns one draw from the posterior (seeded, the same at every
        call) instead of its mean.
    early_stopping : bool, default=False
        Hold out ``validation_fraction`` of the rows, stop when their loss has not improved for
        ``n_iter_no_change`` epochs, and keep the weights of the best epoch.
    validation_fraction : float, default=0.1
        Fraction of the rows held out for early stopping.
    n_iter_no_change : int, default=10
        Epochs without improvement of the held-out loss before early stopping.
    accelerator : str or Accelerator, default='auto'
        Lightning accelerator: 'auto' uses a GPU when there is one.
    devices : int, str or list, default=1
        Lightning devices. Several devices start a distributed strategy.
    precision : str or int, default='32-true'
        Lightning precision, e.g. 'bf16-mixed' on GPUs.
    trainer_params : dict, default=None
        Any other ``pytorch_lightning.Trainer`` argument (logger, callbacks, strategy,
        gradient_clip_val, default_root_dir, ...). Without ``default_root_dir``, the Trainer's
        root is a temporary directory removed after fit. Callbacks are copied at every fit, so
        a refit starts them afresh.
    verbose : bool, default=False
        Show a progress bar with the loss, and Lightning's messages. Otherwise nothing is
        printed.
    random_state : int, RandomState instance or None, default=None
        Seeds weight initialisation, shuffling, the validation split, training noise and the
        draws of ``score``, ``log_likelihood``, ``sample`` and a stochastic ``transform``, all
        from generators the estimator owns: global generators are never touched and fits in
        parallel threads give the results of serial fits. None draws fresh entropy.""",
    "input": """X may be an array or DataFrame held in memory, an array that slices rows where it
    lies (``np.memmap``, an h5py or zarr dataset) or a ``torch.utils.data.Dataset`` whose items
    are single samples: data on disk is read a batch of rows at a time, never copied whole.""",
    "images": """A sample is a row of features, or an image (C, H, W) or volume (C, D, H, W) in
    PyTorch's layout: X of shape (n_samples, C, H, W) or (n_samples, C, D, H, W) gets default
    convolutional networks (``conv_channels``), and ``inverse_transform`` and ``sample`` return
    samples of that shape.""",
    "attributes": """module_ : LightningModule
        The trained module (eval mode, on the training device).
    history_ : dict of list of float
        Per-epoch means of 'loss', 'reconstruction' and 'kl' (nats), and 'val_*' with early
        stopping.
    n_iter_ : int
        Epochs run.
    encoder_reads_mask_ : bool, or dict of bool per modality for a CRMVAE
        Whether the default encoder (a CRMVAE's default expert) reads the mask of missing
        cells beside the values: the training data had NaN cells (in the rows that have the
        modality).
    n_features_in_ : int
        Number of features seen in fit.
    feature_names_in_ : ndarray of str
        Only when X has string column names.""",
}


def fill_shared_docs(cls):
    """Put the shared parameter documentation in a class's docstring."""
    for name, text in SHARED_DOCS.items():
        cls.__doc__ = cls.__doc__.replace(f"<shared:{name}>", text)
    return cls


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


def check_positive_int(value, name: str) -> None:
    """A ValueError unless ``value`` is a positive integer (booleans are not integers here)."""
    if isinstance(value, bool) or not isinstance(value, Integral) or value < 1:
        raise ValueError(f"{name} must be a positive integer; got {value!r}.")


def check_layer_sizes(sizes, name: str = "hidden_layer_sizes") -> tuple[int, ...]:
    sizes = tuple(sizes)
    for width in sizes:
        if isinstance(width, bool) or not isinstance(width, Integral) or width < 1:
            raise ValueError(
                f"{name} must hold positive integers (layer widths); got {sizes!r}. A layer of "
                "0 units would make the latents constant."
            )
    return sizes


def private_copy(module):
    """A private copy of a user's module, so fitting never trains the parameter itself."""
    return None if module is None else copy.deepcopy(module)


def _cuda_free_bytes(device: torch.device) -> int:
    free, _ = torch.cuda.mem_get_info(device)
    return free


class BaseVAEEstimator(ClassNamePrefixFeaturesOutMixin, TransformerMixin, BaseEstimator, ABC):
    """Base class of the VAE-family estimators. Not to be used directly.

    Fitted attributes set here: ``module_`` (the trained LightningModule, in eval mode, with
    no Trainer attached), ``history_`` (per-epoch means of the loss terms), ``n_iter_`` (epochs
    run), ``n_features_in_`` and ``feature_names_in_``.
    """

    _parameter_constraints: dict = {
        "latent_dim": [Interval(Integral, 1, None, closed="left")],
        "hidden_layer_sizes": [tuple, list],
        "beta": [Interval(Real, 0, None, closed="left")],
        "stochastic_transform": ["boolean"],
        "lr": [Interval(Real, 0, None, closed="neither")],
        "weight_decay": [Interval(Real, 0, None, closed="left")],
        "batch_size": [Interval(Integral, 1, None, closed="left"), StrOptions({"auto"})],
        "max_epochs": [Interval(Integral, 1, None, closed="left"), StrOptions({"auto"})],
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
    # whether X may hold images (n, C, H, W) or volumes (n, C, D, H, W) besides rows
    _accepts_images = True
    _integer_params = (
        "latent_dim",
        "n_train_draws",
        "batch_size",
        "max_epochs",
        "n_iter_no_change",
    )
    # private fitted attributes that ``load`` recomputes from the parameters instead of reading
    _derived_at_load: tuple[str, ...] = ()

    # ------------------------------------------------------------------ model hooks
    @abstractmethod
    def _training_rows(self, X, y, **metadata) -> tuple[Rows, dict]:
        """Validate the training input (setting ``n_features_in_`` and the model's own fitted
        input attributes) and return the rows to train on and the statistics the module is
        built from."""

    @abstractmethod
    def _build_module(self, rows: Rows, stats: dict, generator: torch.Generator, seed: int):
        """The model's LightningModule, its layers initialised from ``generator``."""

    def _placeholder_training(self) -> tuple[Rows, dict]:
        """Rows and statistics of the fitted shapes, for rebuilding the module at load (its
        weights and buffers then come from the file)."""
        X = np.zeros((2, *self.input_shape_), dtype=np.float32)
        missing = getattr(self, "encoder_reads_mask_", False)
        return Rows(X), {"mean": np.zeros(self.n_features_in_), "unit": 1.0, "missing": missing}

    def _restore_derived(self) -> None:
        """Recompute the ``_derived_at_load`` attributes after load set the parameters."""

    def _module_for_load(self, max_epochs: int):
        rows, stats = self._placeholder_training()
        generator = torch.Generator().manual_seed(0)
        return self._build_module(rows, {**stats, "max_epochs": max_epochs}, generator, self._seed)

    def save(self, path) -> None:
        """Save the fitted model to ``path`` without pickle: parameters and fitted attributes as
        JSON, weights as arrays, in one ``.npz`` file that :func:`nidl_vae.load` reads
        without running any code from it.

        Parameters
        ----------
        path : str or path-like
            The file to write (conventionally ``*.npz``).

        Notes
        -----
        User networks are saved as weights only: pass the same architectures to
        :func:`~nidl_vae.load`. Parameters that are objects rather than data (callbacks or
        loggers in ``trainer_params``, a ``RandomState`` instance) are not saved; the loaded
        estimator has their defaults.
        """
        from .persistence import save

        save(self, path)

    # ------------------------------------------------------------------ fitting
    def _fit(self, X, y=None, **metadata):
        """The one fit of every model: validate, seed, build, train, store.

        Every check runs before training starts; if anything fails the estimator is left as it
        was before the call.
        """
        with self._restored_on_failure():
            self._check_params()
            rows, stats = self._training_rows(X, y, **metadata)
            seed = draw_seed(self.random_state)
            generator = torch.Generator().manual_seed(seed)
            n = len(rows)
            batch_size = self._batch_size(n)
            train, val = self._split(rows, seed)
            max_epochs = self._max_epochs(len(train), batch_size)
            module = self._build_module(rows, {**stats, "max_epochs": max_epochs}, generator, seed)
            module.n_train_rows = len(train)
            module = self._train(module, train, val, batch_size, max_epochs, seed)
            self.module_ = module
            self.history_ = module.history()
            self.n_iter_ = int(module.epochs_done)
            self._seed = seed
        return self

    def _check_params(self) -> None:
        for name in self._integer_params:
            if isinstance(getattr(self, name, None), bool):
                raise ValueError(f"{name} must be an integer, not a boolean; got {name}=True.")
        check_layer_sizes(self.hidden_layer_sizes)
        reserved = sorted(
            set(self.trainer_params or {}) & {"max_epochs", "accelerator", "devices", "precision"}
        )
        if reserved:
            raise ValueError(
                f"trainer_params may not set {reserved}: they are estimator parameters, "
                f"e.g. {type(self).__name__}({reserved[0]}=...)."
            )
        callbacks = (self.trainer_params or {}).get("callbacks") or []
        callbacks = [callbacks] if isinstance(callbacks, pl.Callback) else callbacks
        if not isinstance(callbacks, (list, tuple)) or not all(
            isinstance(c, pl.Callback) for c in callbacks
        ):
            raise ValueError(
                "trainer_params['callbacks'] must be a list of pytorch_lightning Callback "
                f"instances; got {callbacks!r}."
            )

    def _batch_size(self, n: int) -> int:
        if self.batch_size == "auto":
            return min(128, max(16, n // 16))
        return int(self.batch_size)

    def _max_epochs(self, n_train: int, batch_size: int) -> int:
        if self.max_epochs != "auto":
            return int(self.max_epochs)
        steps_per_epoch = -(-n_train // batch_size)
        return int(np.clip(-(-AUTO_STEPS // steps_per_epoch), *AUTO_EPOCHS))

    def _split(self, rows: Rows, seed: int) -> tuple[Rows, Rows | None]:
        """The training rows and, with early stopping, the held-out validation rows."""
        if not self.early_stopping:
            return rows, None
        n = len(rows)
        n_val = int(round(self.validation_fraction * n))
        if n_val < 1 or n - n_val < 1:
            raise ValueError(
                f"validation_fraction={self.validation_fraction} of {n} samples leaves "
                f"{n_val} for validation and {n - n_val} for training; both need at least one. "
                "Change validation_fraction, or set early_stopping=False."
            )
        perm = np.random.default_rng(seed).permutation(n)
        return rows.subset(np.sort(perm[n_val:])), rows.subset(np.sort(perm[:n_val]))

    def _train(self, module, train: Rows, val: Rows | None, batch_size, max_epochs, seed):
        """Train ``module`` with a quiet Trainer in a temporary root directory."""
        with tempfile.TemporaryDirectory(prefix="nidl_vae_") as root, quiet_lightning(self.verbose):
            trainer = build_trainer(
                max_epochs=max_epochs,
                accelerator=self.accelerator,
                devices=self.devices,
                precision=self.precision,
                verbose=self.verbose,
                trainer_params=self.trainer_params,
                root_dir=root,
                early_stopping_patience=self.n_iter_no_change if self.early_stopping else None,
            )
            device = trainer.strategy.root_device
            train_loader = self._loader(train, device, batch_size, True, seed)
            val_loader = (
                None
                if val is None
                else self._loader(
                    val, device, self._inference_rows_per_batch(val.n_features), False, seed
                )
            )
            with _sigint_restored(), global_generators_untouched():
                try:
                    trainer.fit(module, train_dataloaders=train_loader, val_dataloaders=val_loader)
                except (SystemExit, ValueError) as exc:
                    if interrupted(exc):
                        raise KeyboardInterrupt from None
                    raise
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
        if not self._finite_after_training(module, train):
            raise FloatingPointError(nan_message("is not finite for the trained model"))
        return module

    @staticmethod
    def _finite_after_training(module, train: Rows) -> bool:
        """Whether the trained weights, and the loss of one batch under them, are finite: the
        epoch means are taken before the last update, which can blow the weights up."""
        if not all(torch.isfinite(p).all() for p in module.parameters()):
            return False
        batch = train.read(
            np.arange(min(len(train), data.ROW_BLOCK))
            if train.indices is None
            else train.indices[: data.ROW_BLOCK]
        )
        device = next(module.parameters()).device
        with torch.inference_mode():
            terms = module.loss_terms(tuple(t.to(device) for t in batch))
        module._noise = None  # the check's draw must not shift a later call's noise
        return bool(torch.isfinite(terms).all())

    @staticmethod
    def _loader(rows: Rows, device: torch.device, batch_size: int, shuffle: bool, seed: int):
        """A loader of the rows for training on ``device``.

        On a GPU, in-memory rows that take less than half its free memory (as float32) go to
        the device once and are sliced there; other rows are read on the host into pinned
        memory, which Lightning copies to the device without blocking.
        """
        if device.type != "cuda":
            return make_loader(rows, batch_size, shuffle, seed)
        in_memory = not is_streamed(rows.X) and rows.prepare is None
        if in_memory and len(rows) * rows.n_features * 4 < _cuda_free_bytes(device) // 2:
            return make_loader(data.DeviceRows(rows, device), batch_size, shuffle, seed)
        return make_loader(rows, batch_size, shuffle, seed, pin_memory=True)

    @contextmanager
    def _restored_on_failure(self) -> Iterator[None]:
        """Restore the estimator as it was if the block raises (a failed fit changes nothing)."""
        before = self.__dict__.copy()
        try:
            yield
        except BaseException:
            self.__dict__.clear()
            self.__dict__.update(before)
            raise

    # ------------------------------------------------------------------ input validation
    def _validate_X(self, X, reset: bool):
        """Validated X: an in-memory float array, or a streamed source checked batch by batch.

        In-memory input goes through scikit-learn's validation (no copy of a float32 or
        float64 array); a memory map, an array-like on disk or a Dataset keeps its place, its
        shape checked here and its values finite-checked as they are read. Samples are rows of
        features, or (for models that take them) images (C, H, W) or volumes (C, D, H, W).
        """
        if not reset:
            check_is_fitted(self)
        finite = "allow-nan"  # NaN cells are missing values; infinity is an error
        if is_streamed(X):
            n = data.n_rows(X)
            if reset and n < 2:
                raise ValueError(
                    f"Found array with {n} sample(s) while a minimum of 2 is required."
                )
            first = data.read_rows(X, slice(0, 1))
            _check_feature_names(self, first, reset=reset)
            self._check_sample_shape(first.shape[1:], reset)
            return X
        if getattr(X, "ndim", 2) > 2:
            X = check_array(
                X,
                allow_nd=True,
                dtype=FLOAT_DTYPES,
                ensure_min_samples=2 if reset else 1,
                ensure_all_finite=finite,
                estimator=self,
            )
            _check_feature_names(self, X, reset=reset)
            self._check_sample_shape(X.shape[1:], reset)
            return X
        if not reset and len(getattr(self, "input_shape_", ())) > 1:
            self._check_sample_shape(np.shape(X)[1:], reset)
        X = validate_data(
            self,
            X,
            reset=reset,
            dtype=FLOAT_DTYPES,
            ensure_min_samples=2 if reset else 1,
            ensure_all_finite=finite,
        )
        if reset:
            self.input_shape_ = (self.n_features_in_,)
        return X

    def _check_sample_shape(self, shape: tuple[int, ...], reset: bool) -> None:
        """Set (``reset``) or check ``input_shape_``, the shape of one sample, and
        ``n_features_in_``, its number of values."""
        shape = tuple(int(n) for n in shape)
        if not reset:
            self._check_fitted_shape(shape)
            return
        name = type(self).__name__
        if len(shape) not in (1, 3, 4):
            raise ValueError(
                f"Expected X of shape (n_samples, n_features), images (n_samples, C, H, W) or "
                f"volumes (n_samples, C, D, H, W); got samples of shape {shape}."
            )
        if len(shape) > 1 and not self._accepts_images:
            raise ValueError(
                f"{name} takes X of shape (n_samples, n_features); got samples of shape "
                f"{shape}. Flatten them (X.reshape(len(X), -1)) or use VAE or CVAE."
            )
        self.input_shape_ = shape
        self.n_features_in_ = math.prod(shape)

    def _check_fitted_shape(self, shape: tuple[int, ...]) -> None:
        """A ValueError naming the expected shape unless samples have the fitted shape."""
        fitted = tuple(self.input_shape_)
        if shape == fitted:
            return
        name = type(self).__name__
        if len(shape) == len(fitted) == 1:  # scikit-learn's own words for rows
            raise ValueError(
                f"X has {shape[0]} features, but {name} is expecting {fitted[0]} features as input."
            )
        expected = ", ".join(str(n) for n in ("n_samples", *fitted))
        raise ValueError(
            f"X has samples of shape {shape}, but {name} was fitted on samples of shape "
            f"{fitted}: give X of shape ({expected})."
        )

    def _inference_rows(self, X, aligned=(), prepare=None) -> Rows:
        """Validated rows of X to predict on; data on disk is checked as it is read."""
        X = self._validate_X(X, reset=False)
        check = type(self).__name__ if is_streamed(X) else None
        return Rows(X, aligned, prepare=prepare, check=check)

    def _scan(self, X, rows=None) -> Moments:
        """Per-feature moments of X's rows in float64 (NaN cells left out), a chunk at a time;
        a ValueError on infinite values, as scikit-learn's validation gives."""
        name = type(self).__name__
        chunks = (data.check_finite(c, name) for c in data.iter_chunks(X, rows))
        return moments(chunks, nan_aware=True)

    # ------------------------------------------------------------------ inference
    @property
    def _device(self) -> torch.device:
        return next(self.module_.parameters()).device

    def _inference_rows_per_batch(self, n_features: int) -> int:
        # about CHUNK_VALUES input values per batch, whole blocks of rows, at most 1024
        rows = int(np.clip(data.rows_in_chunk(n_features), data.ROW_BLOCK, 1024))
        return rows - rows % data.ROW_BLOCK

    def _infer(self, step: Callable, rows: Rows, *args, draws: int | None = None):
        """Apply a module step to ``rows`` batch by batch, under inference mode.

        ``step(batch, *args)`` gets a tuple of float32 tensors on the module's device (tensor
        ``args`` are moved there too); with ``draws``, it also gets the number of latent draws
        to decode at once (see :func:`~nidl_vae.module.draws_per_chunk`).
        Batches are padded to whole blocks of ``ROW_BLOCK`` rows so that a row's result does
        not depend on the rows beside it. Outputs (tensors or tuples of tensors) are
        concatenated on the CPU.
        """
        device = self._device
        args = [a.to(device, torch.float32) if isinstance(a, torch.Tensor) else a for a in args]
        batch_rows = self._inference_rows_per_batch(self.n_features_in_)
        if draws is not None:
            args.append(draws_per_chunk(batch_rows, self.n_features_in_))
        outputs = []
        with torch.inference_mode():
            for batch in rows.batches(batch_rows):
                batch, n = pad_rows(tuple(t.to(device, non_blocking=True) for t in batch))
                out = step(batch, *args)
                outputs.append(tuple(o[:n] for o in out) if isinstance(out, tuple) else out[:n])
        if isinstance(outputs[0], tuple):
            return tuple(torch.cat(parts).cpu() for parts in zip(*outputs, strict=True))
        return torch.cat(outputs).cpu()

    def _generator(self, offset: int) -> torch.Generator:
        """A CPU generator seeded from the fit's seed: inference draws are the same at every
        call and touch no global generator."""
        return torch.Generator().manual_seed(self._seed + offset)

    def _standard_normal(self, shape: tuple[int, ...], offset: int) -> torch.Tensor:
        return torch.randn(shape, generator=self._generator(offset))

    @staticmethod
    def _to_numpy(tensor: torch.Tensor, dtype) -> np.ndarray:
        return tensor.detach().cpu().numpy().astype(dtype, copy=False)

    def _output_dtype(self, X):
        dtype = getattr(X, "dtype", np.float32)
        return dtype if dtype in FLOAT_DTYPES else np.float32

    def _encode(self, rows: Rows, dtype) -> np.ndarray:
        """Posterior means (or a seeded draw if ``stochastic_transform``) of the rows."""
        mu, logvar = self._infer(self.module_.encode_step, rows)
        if self.stochastic_transform:
            mu = mu + torch.exp(0.5 * logvar) * self._standard_normal(mu.shape, offset=1)
        return self._to_numpy(mu, dtype)

    def _elbo(self, rows: Rows, n_draws: int) -> np.ndarray:
        check_positive_int(n_draws, "n_draws")
        eps = self._standard_normal((n_draws, self.latent_dim), offset=2)
        return self._to_numpy(
            self._infer(self.module_.elbo_step, rows, eps, draws=True), np.float64
        )

    def _importance_weighted(self, rows: Rows, n_importance: int) -> np.ndarray:
        check_positive_int(n_importance, "n_importance")
        eps = self._standard_normal((n_importance, self.latent_dim), offset=3)
        scores = self._infer(self.module_.log_likelihood_step, rows, eps, draws=True)
        return self._to_numpy(scores, np.float64)

    def _decode(self, arrays: list[np.ndarray], dtype) -> np.ndarray:
        """Decoded means of the latent rows ``arrays[0]`` (conditions after), each in the
        shape of one sample of X."""
        flat = self._infer(self.module_.decode_step, Rows(*arrays[:1], aligned=arrays[1:]))
        return self._to_numpy(flat.reshape(len(flat), *self.input_shape_), dtype)

    def _validate_Z(self, Z) -> np.ndarray:
        check_is_fitted(self)
        Z = check_array(Z, dtype=FLOAT_DTYPES)
        if Z.shape[1] != self.latent_dim:
            raise ValueError(
                f"Z has {Z.shape[1]} columns, but {type(self).__name__} has latent_dim="
                f"{self.latent_dim}."
            )
        return Z

    def _sample_seed(self, random_state) -> int:
        return self._seed + 4 if random_state is None else draw_seed(random_state)

    # ------------------------------------------------------------------ public inference
    def transform(self, X) -> np.ndarray:
        """Encode X: the posterior mean (or a seeded draw if ``stochastic_transform``); for a
        CRMVAE, the joint posterior of each row's observed modalities.

        Parameters
        ----------
        X : array-like of shape (n_samples, n_features), memory map or Dataset
            The rows to encode.

        Returns
        -------
        Z : ndarray of shape (n_samples, latent_dim)
            In X's float dtype (float32 for data on disk of another type).
        """
        return self._encode(self._prediction_rows(X), self._output_dtype(X))

    def inverse_transform(self, Z) -> np.ndarray:
        """Decode latents: the mean of :math:`p(x|z)` for each row of Z.

        Parameters
        ----------
        Z : array-like of shape (n_samples, latent_dim)
            Latent coordinates.

        Returns
        -------
        X : ndarray of shape (n_samples, n_features)
            In Z's float dtype.
        """
        Z = self._validate_Z(Z)
        return self._decode([Z], Z.dtype)

    def sample(self, n_samples: int = 1, random_state=None) -> np.ndarray:
        """Generate rows: decoder means for :math:`z \\sim N(0, I)`.

        Parameters
        ----------
        n_samples : int, default=1
            Number of rows to generate.
        random_state : int, RandomState instance or None, default=None
            None uses the estimator's own seed: the same rows at every call.

        Returns
        -------
        X : ndarray of shape (n_samples, n_features)
            Generated rows, float32.
        """
        check_is_fitted(self)
        check_positive_int(n_samples, "n_samples")
        generator = torch.Generator().manual_seed(self._sample_seed(random_state))
        z = torch.randn((n_samples, self.latent_dim), generator=generator)
        return self._decode([z.numpy()], np.float32)

    def score_samples(self, X, n_draws: int = 10) -> np.ndarray:
        """Per-sample evidence lower bound (ELBO) at beta = 1, in nats.

        .. math:: \\mathrm{ELBO}(x) = \\frac1K \\sum_k \\log p(x|z_k) - KL(q(z|x) \\| N(0, I)),
            \\quad z_k = \\mu(x) + s(x) \\odot \\epsilon_k

        The K noise draws are seeded and shared by every row, so a row's score does not depend
        on the other rows or on the call. For a CRMVAE, the ELBO of the observed modalities'
        joint likelihood with their joint posterior :math:`q_J` (rows with fewer modalities
        have fewer terms: compare rows with the same modalities).

        Parameters
        ----------
        X : array-like of shape (n_samples, n_features), memory map or Dataset
            The rows to score.
        n_draws : int, default=10
            Number K of latent draws per row.

        Returns
        -------
        ndarray of shape (n_samples,)
            The ELBO of each row, float64.
        """
        return self._elbo(self._prediction_rows(X), n_draws)

    def score(self, X, y=None) -> float:
        """Mean per-sample ELBO at beta = 1 (nats; higher is better).

        Parameters
        ----------
        X : array-like of shape (n_samples, n_features), memory map or Dataset
            The rows to score.
        y : None
            Ignored.

        Returns
        -------
        float
            The mean of :meth:`score_samples`.
        """
        return float(np.mean(self.score_samples(X)))

    def log_likelihood(self, X, n_importance: int = 100) -> np.ndarray:
        """Importance-weighted estimate of :math:`\\log p(x)` per sample, in nats.

        .. math:: \\log p(x) \\approx \\log \\frac1K \\sum_{k=1}^K
            \\frac{p(x|z_k)\\, p(z_k)}{q(z_k|x)}, \\quad z_k \\sim q(z|x)

        A lower bound in expectation, tighter than the ELBO, tight as K grows; for a CRMVAE, of
        the observed modalities' joint likelihood. The K draws
        are seeded and shared by every row; they are decoded a chunk at a time, so memory does
        not grow with K.

        Parameters
        ----------
        X : array-like of shape (n_samples, n_features), memory map or Dataset
            The rows to score.
        n_importance : int, default=100
            Number K of importance draws.

        Returns
        -------
        ndarray of shape (n_samples,)
            The estimate for each row, float64.
        """
        return self._importance_weighted(self._prediction_rows(X), n_importance)

    def _prediction_rows(self, X) -> Rows:
        """The validated rows a model's inference steps take for X."""
        return self._inference_rows(X)

    def impute(self, X, n_draws: int | None = 1000):
        """Fill the missing (NaN) cells of X with their conditional mean given the observed ones.

        .. math:: \\hat x_j = \\sum_k w_k\\, \\mathbb{E}[x_j | z_k], \\quad
            w_k \\propto \\frac{p(x_{\\mathrm{obs}}|z_k)\\, p(z_k)}{q(z_k|x_{\\mathrm{obs}})},
            \\quad z_k \\sim q(z|x_{\\mathrm{obs}})

        (self-normalised importance sampling with K seeded draws, as MIWAE imputes). A
        CRMVAE averages :math:`\\mathbb{E}[x | z_k]` over draws of the joint posterior of the
        modalities a row has, with equal weights (which measured better for it), so a whole
        missing modality is filled from the others. Observed cells are returned unchanged.

        Parameters
        ----------
        X : array-like or DataFrame of shape (n_samples, n_features), memory map or Dataset
            Rows with NaN where a value is missing (images may be given as images).
        n_draws : int or None, default=1000
            Number K of posterior draws (on digits with 20% or 50% of the cells missing,
            1,000 draws err 7-8% less than 100, and 5,000 another 3-4% less;
            ``benchmarks/bench_missing.py``). The cost is K decoder passes per row with a
            missing cell (complete rows are returned as they are): lower it for very wide
            rows. None decodes the posterior mean alone (cheaper, not the conditional mean).

        Returns
        -------
        X_imputed : ndarray of X's shape (a DataFrame with X's index and columns for a
            DataFrame input)
            In X's float dtype.
        """
        return self._impute(X, self._prediction_rows(X), n_draws)

    def _impute(self, X, rows: Rows, n_draws: int | None):
        if n_draws is not None:
            check_positive_int(n_draws, "n_draws")
        values = data.read_rows(rows.X, slice(None))
        missing = np.isnan(values)
        imputed = values.astype(self._output_dtype(X), copy=True)
        holed = np.flatnonzero(missing.reshape(len(values), -1).any(1))
        if len(holed):  # complete rows cost nothing
            subset = rows.subset(holed)
            if n_draws is None:
                mu, _ = self._infer(self.module_.encode_step, subset)
                aligned = [a[holed] for a in rows.aligned]
                decoded = self._infer(self.module_.decode_step, Rows(mu.numpy(), aligned))
            else:
                eps = self._standard_normal((n_draws, self.latent_dim), offset=5)
                decoded = self._infer(self.module_.impute_step, subset, eps, draws=True)
            observed = imputed[holed]
            decoded = self._to_numpy(decoded, imputed.dtype).reshape(observed.shape)
            imputed[holed] = np.where(missing[holed], decoded, observed)
        if hasattr(X, "columns") and hasattr(X, "index"):
            import pandas as pd

            return pd.DataFrame(imputed, index=X.index, columns=X.columns)
        return imputed

    # ------------------------------------------------------------------ sklearn API
    @property
    def _n_features_out(self) -> int:
        return self.latent_dim

    def get_feature_names_out(self, input_features=None) -> np.ndarray:
        """Output feature names: the class name in lower case and the latent index.

        Parameters
        ----------
        input_features : array-like of str or None, default=None
            Ignored except for a check against ``feature_names_in_``.

        Returns
        -------
        ndarray of str
        """
        check_is_fitted(self)
        return super().get_feature_names_out(input_features)

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.transformer_tags.preserves_dtype = ["float64", "float32"]
        tags.input_tags.allow_nan = True  # missing cells, see nidl_vae.missing
        return tags

    def __getstate__(self):
        state = dict(super().__getstate__())  # object's own is the live __dict__
        module = state.get("module_")
        if module is not None and next(module.parameters()).device.type != "cpu":
            # a model fitted on a GPU must load on a CPU-only machine
            state["module_"] = copy.deepcopy(module).cpu()
        return state


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
