"""Where rows come from: in-memory arrays, arrays on disk, or a torch Dataset, read a batch of
rows at a time as float32 tensors.

Nothing here copies X whole: training and inference read one batch of rows at a time (sorted
indices, which memory maps and HDF5 files read faster), and statistics of the data are
accumulated in float64 over chunks of rows.
"""

import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from scipy import sparse
from torch import Tensor
from torch.utils.data import DataLoader, Dataset

# rows x features read or decoded at once by inference and statistics loops: 2^22 float32
# values are 16 MB
CHUNK_VALUES = 2**22
# inference batches are padded to a multiple of this many rows: CPU matrix kernels work on
# blocks of rows and round a row's result differently in a partial block, and a row's result
# must not depend on the rows beside it (measured bitwise-invariant with 16 here)
ROW_BLOCK = 16


def is_streamed(X) -> bool:
    """Whether X is read from where it lies (a memory map, an HDF5 or zarr dataset, a torch
    Dataset) rather than validated and held in memory."""
    if isinstance(X, Dataset):
        return True
    if isinstance(X, np.memmap):
        return True
    if isinstance(X, (np.ndarray, Tensor, list, tuple)) or hasattr(X, "columns"):
        return False
    if sparse.issparse(X):
        return False  # scikit-learn's validation refuses it with a clear message
    return all(hasattr(X, a) for a in ("shape", "dtype", "ndim", "__getitem__"))


def rows_in_chunk(n_features: int) -> int:
    return max(1, CHUNK_VALUES // max(1, n_features))


def _sample(item) -> np.ndarray:
    """One sample of a Dataset's item, in its own shape (a row of features, an image
    (C, H, W) or a volume (C, D, H, W)); of a tuple, as a ``TensorDataset`` gives ``(x,)`` or
    ``(x, y)``, the first element."""
    return np.asarray(item[0] if isinstance(item, tuple) else item, dtype=np.float32)


def _read_dataset_rows(dataset: Dataset, index: np.ndarray) -> np.ndarray:
    return np.stack([_sample(dataset[int(i)]) for i in index])


def read_rows(X, index: np.ndarray | slice) -> np.ndarray:
    """Rows of X (array-like or Dataset of samples) as a NumPy array in X's own float type,
    each sample in its own shape.

    ``index`` is a slice or sorted integer indices: both are what memory maps, h5py and zarr
    read fastest.
    """
    if isinstance(X, Dataset) and not hasattr(X, "shape"):
        if isinstance(index, slice):
            index = np.arange(*index.indices(len(X)))
        return _read_dataset_rows(X, index)
    if isinstance(index, np.ndarray) and len(index) and index[-1] - index[0] + 1 == len(index):
        index = slice(int(index[0]), int(index[-1]) + 1)  # consecutive rows: one read
    rows = np.asarray(X[index])
    return rows if rows.dtype in (np.float32, np.float64) else rows.astype(np.float64)


def check_finite(rows: np.ndarray, name: str) -> np.ndarray:
    """``rows``, or a ValueError if they hold infinite values (NaN cells are missing values)."""
    if np.isinf(rows).any():
        raise ValueError(
            f"Input X contains infinity; {name} needs finite values (NaN marks a missing one)."
        )
    return rows


FLOAT32_MAX = float(np.finfo(np.float32).max)


def check_float32_range(rows: np.ndarray) -> None:
    """A ValueError for float64 values beyond float32's range, in which the networks compute
    (they would turn into infinities, and the latents into NaN)."""
    if rows.dtype == np.float64 and rows.size:
        # no temporary of the rows' size: their extremes, NaN cells left out
        largest = max(-np.nanmin(rows, initial=np.inf), np.nanmax(rows, initial=-np.inf), 0.0)
        if largest > FLOAT32_MAX:
            raise ValueError(
                f"X has values up to {largest:.3g}, beyond float32's range ({FLOAT32_MAX:.3g}) "
                "in which the networks compute: rescale X (e.g. divide it by a power of ten)."
            )


def n_rows(X) -> int:
    return len(X) if isinstance(X, Dataset) and not hasattr(X, "shape") else int(X.shape[0])


def sample_shape(X) -> tuple[int, ...]:
    """The shape of one sample of X: ``(n_features,)`` for rows, (C, H, W) for images."""
    if hasattr(X, "shape"):
        return tuple(int(n) for n in X.shape[1:])
    return tuple(read_rows(X, slice(0, 1)).shape[1:])


@dataclass
class Moments:
    """Per-feature statistics of the rows, accumulated in float64 (NaN cells left out)."""

    count: np.ndarray
    mean: np.ndarray
    var: np.ndarray
    min: np.ndarray
    max: np.ndarray

    def block(self, start: int, stop: int) -> "Moments":
        """The statistics of columns ``start:stop``."""
        cols = slice(start, stop)
        return Moments(
            self.count[cols], self.mean[cols], self.var[cols], self.min[cols], self.max[cols]
        )

    def scale(self) -> float:
        """Root-mean-square of the features' standard deviations (1 if all are constant)."""
        rms = float(np.sqrt(np.mean(self.var))) if self.var.size else 0.0
        return rms if rms > 0 and np.isfinite(rms) else 1.0


def moments(chunks: Iterator[np.ndarray], nan_aware: bool = False) -> Moments:
    """Per-feature mean and variance of the rows of ``chunks``, computed chunk by chunk in
    float64 (Chan et al.'s pairwise update): no float64 copy of X is ever made. With
    ``nan_aware``, NaN cells are left out of each feature's statistics."""
    count = total_mean = m2 = lo = hi = None
    for chunk in chunks:
        sums = chunk.sum(0, dtype=np.float64)
        if nan_aware and np.isnan(sums).any():
            seen = ~np.isnan(chunk)
            n = seen.sum(0)
            mean = np.where(seen, chunk, 0).sum(0, dtype=np.float64) / np.maximum(n, 1)
            dev = np.where(seen, chunk - mean.astype(chunk.dtype), 0)
            # fmin/fmax skip NaN; an all-NaN column stays NaN
            chunk_lo, chunk_hi = np.fmin.reduce(chunk, 0), np.fmax.reduce(chunk, 0)
        else:
            n = np.full(chunk.shape[1], len(chunk))
            mean = sums / len(chunk)
            dev = chunk - mean.astype(chunk.dtype)
            chunk_lo, chunk_hi = chunk.min(0), chunk.max(0)
        chunk_m2 = np.einsum("ij,ij->j", dev, dev, dtype=np.float64)
        if count is None:
            count, total_mean, m2, lo, hi = n, mean, chunk_m2, chunk_lo, chunk_hi
            continue
        lo, hi = np.fmin(lo, chunk_lo), np.fmax(hi, chunk_hi)
        both = np.maximum(count + n, 1)
        delta = mean - total_mean
        total_mean = total_mean + delta * n / both
        m2 = m2 + chunk_m2 + delta**2 * count * n / both
        count = count + n
    var = np.where(count > 1, m2 / np.maximum(count - 1, 1), 0.0)  # unbiased
    return Moments(count, total_mean, var, lo.astype(np.float64), hi.astype(np.float64))


def iter_chunks(X, rows: Sequence[int] | None = None) -> Iterator[np.ndarray]:
    """Consecutive chunks of X's rows (all rows, or the sorted ``rows``), about
    ``CHUNK_VALUES`` values each, every sample flattened to a row of features."""
    step = rows_in_chunk(math.prod(sample_shape(X)))
    rows = None if rows is None else np.asarray(rows)
    for start in range(0, n_rows(X) if rows is None else len(rows), step):
        index = slice(start, start + step) if rows is None else rows[start : start + step]
        chunk = read_rows(X, index)
        yield chunk.reshape(len(chunk), -1)


class Rows(Dataset):
    """Rows of X with aligned in-memory arrays (conditions, masks, noise), as a batch: a dict
    of float32 tensors named by what they hold (see :mod:`nidl_vae.latent_model`), with each
    row's position under ``"index"``.

    A DataLoader calls ``__getitems__`` with a batch of positions: X is read once per batch
    (sorted indices; order within a batch does not matter to a gradient step, and ``"index"``
    says where each row goes at inference).

    Parameters
    ----------
    X : ndarray, array-like that slices rows (memory map, h5py, zarr), or Dataset of samples
    aligned : dict of str to ndarray
        Arrays with one row per row of X, kept in memory, under their batch names.
    name : str, default='x'
        The batch name of X's rows ('z' for latent rows to decode, 'c' for conditions alone).
    indices : ndarray, optional
        The rows of X this dataset holds (a training or validation subset); all by default.
    check : str, optional
        Check each batch read for infinite values, naming this estimator in the error: for
        streamed X at inference, whose values nothing else has checked.
    """

    def __init__(
        self,
        X,
        aligned: dict[str, np.ndarray] | None = None,
        name: str = "x",
        indices: np.ndarray | None = None,
        check: str | None = None,
    ):
        self.X = X
        self.aligned = dict(aligned or {})
        self.name = name
        self.indices = indices
        self.check = check

    def __len__(self) -> int:
        return n_rows(self.X) if self.indices is None else len(self.indices)

    def subset(self, positions: np.ndarray) -> "Rows":
        """The rows at these (sorted) positions."""
        held = positions if self.indices is None else self.indices[positions]
        return Rows(self.X, self.aligned, self.name, held, self.check)

    def with_aligned(self, **arrays: np.ndarray) -> "Rows":
        """These rows with more aligned arrays (one row per row of X), or some replaced."""
        return Rows(self.X, {**self.aligned, **arrays}, self.name, self.indices, self.check)

    def __getitem__(self, position):
        return self.__getitems__([position])

    def __getitems__(self, positions) -> dict[str, Tensor]:
        positions = np.sort(np.asarray(positions, dtype=np.int64))
        index = positions if self.indices is None else self.indices[positions]
        batch = self.read(index)
        batch["index"] = torch.from_numpy(positions)
        return batch

    def read(self, index: np.ndarray | slice) -> dict[str, Tensor]:
        """The tensors of the rows ``index`` of X (sorted indices or a slice), without
        positions."""
        raw = read_rows(self.X, index)
        if self.check is not None:  # streamed at inference: nothing has read these values
            check_finite(raw, self.check)
            check_float32_range(raw)
        arrays = {self.name: raw, **{k: a[index] for k, a in self.aligned.items()}}
        return {k: torch.from_numpy(_own_float32(a)) for k, a in arrays.items()}

    def first(self, n: int = 2) -> dict[str, Tensor]:
        """The first ``n`` rows (for sizing networks)."""
        return self.read(slice(0, n) if self.indices is None else self.indices[:n])

    @property
    def n_features(self) -> int:
        """Values per sample of X (the product of an image's shape)."""
        return int(self.first(1)[self.name][0].numel())


def _own_float32(a: np.ndarray) -> np.ndarray:
    """A contiguous, writable float32 array of ``a``'s values: a view of a read-only memory map
    is copied (one batch), as torch needs writable memory."""
    a = np.ascontiguousarray(a, dtype=np.float32)
    return a if a.flags.writeable else a.copy()


class DeviceRows(Dataset):
    """In-memory rows moved to a GPU once, as float32, and sliced there per batch."""

    def __init__(self, rows: Rows, device: torch.device):
        whole = rows.read(slice(None) if rows.indices is None else rows.indices)
        self.tensors = {k: t.to(device) for k, t in whole.items()}

    def __len__(self) -> int:
        return len(next(iter(self.tensors.values())))

    def __getitems__(self, positions) -> dict[str, Tensor]:
        device = next(iter(self.tensors.values())).device
        index = torch.as_tensor(positions, device=device)
        return {**{k: t[index] for k, t in self.tensors.items()}, "index": index}


def _keep_batch(batch):
    # module-level (not a lambda) so the loader pickles under spawn-based strategies
    return batch


def make_loader(
    rows: Dataset, batch_size: int, shuffle: bool, seed: int, pin_memory: bool = False
) -> DataLoader:
    """A DataLoader over ``rows``, its shuffling drawn from its own generator (never from
    torch's global one)."""
    return DataLoader(
        rows,
        batch_size=batch_size,
        shuffle=shuffle,
        generator=torch.Generator().manual_seed(seed),
        collate_fn=_keep_batch,
        pin_memory=pin_memory,
    )


def pad_rows(batch: dict[str, Tensor], block: int = ROW_BLOCK) -> tuple[dict[str, Tensor], int]:
    """Zero rows appended to fill the batch's last block of ``block`` rows, and the true
    number of rows."""
    n = len(next(iter(batch.values())))
    missing = -n % block
    if not missing:
        return batch, n
    return {k: torch.cat([t, t.new_zeros(missing, *t.shape[1:])]) for k, t in batch.items()}, n
