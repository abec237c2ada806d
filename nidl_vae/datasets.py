"""Synthetic data in the package's target regime: few subjects, many voxels.

Nothing is downloaded: the cohort is generated from a seed, so tests, benchmarks and examples
can measure what a model recovers against a known, planted effect.
"""

import numpy as np


def _blob(grid: np.ndarray, center: np.ndarray, width: float) -> np.ndarray:
    return np.exp(-((grid - center) ** 2).sum(-1) / (2 * width**2))


def make_cohort(
    n_subjects: int = 500,
    shape: tuple[int, int, int] = (24, 24, 24),
    *,
    noise: float = 0.05,
    random_state: int | None = 0,
    dtype=np.float32,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Brain-like volumes with a planted age effect, smooth subject variation and noise.

    Each subject's volume is a smooth ellipsoidal "brain" whose intensity falls with age in
    two symmetric regions (up to 40% between 20 and 80 years), times a smooth random field of
    four blobs (subject variation, about 5%), plus independent Gaussian noise:

    .. math:: v_s = b \\odot (1 - 0.4\\, a(s)\\, r + u_s) + \\sigma \\epsilon_s,
        \\qquad a(s) = (\\mathrm{age}_s - 20) / 60

    Parameters
    ----------
    n_subjects : int, default=500
        Number of subjects.
    shape : tuple of 3 int, default=(24, 24, 24)
        Volume shape in voxels.
    noise : float, default=0.05
        Standard deviation :math:`\\sigma` of the voxel noise.
    random_state : int or None, default=0
        Seed of the cohort.
    dtype : dtype, default=np.float32
        Float type of the volumes.

    Returns
    -------
    X : ndarray of shape (n_subjects, prod(shape))
        Each volume, flattened in C order (outside the brain: noise only).
    age : ndarray of shape (n_subjects,)
        Ages, uniform in [20, 80].
    mask : ndarray of bool of shape ``shape``
        The brain's voxels (``X[:, mask.ravel()]`` are the in-brain columns).
    """
    rng = np.random.default_rng(random_state)
    axes = [np.linspace(-1, 1, n) for n in shape]
    grid = np.stack(np.meshgrid(*axes, indexing="ij"), -1)
    radius = ((grid / [0.85, 0.95, 0.8]) ** 2).sum(-1)
    mask = radius < 1
    brain = np.where(mask, np.clip(1.2 - radius, 0, 1), 0.0).ravel()
    points = grid.reshape(-1, 3)
    ageing = _blob(points, np.array([-0.35, -0.1, -0.2]), 0.25)
    ageing = ageing + _blob(points, np.array([0.35, -0.1, -0.2]), 0.25)
    age = rng.uniform(20, 80, n_subjects)
    X = np.empty((n_subjects, len(points)), dtype=dtype)
    for s in range(n_subjects):
        variation = sum(
            rng.normal(0, 0.05) * _blob(points, rng.uniform(-0.8, 0.8, 3), 0.4) for _ in range(4)
        )
        volume = brain * (1 - 0.4 * (age[s] - 20) / 60 * ageing + variation)
        X[s] = volume + noise * rng.normal(size=len(points))
    return X, age, mask
