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


def _cropped(img, box) -> np.ndarray:
    """The affine of ``img`` cropped to the voxel slices ``box``."""
    affine = img.affine.copy()
    affine[:3, 3] += affine[:3, :3] @ [b.start for b in box]
    return affine


def make_mni_cohort(
    n_subjects: int = 300,
    resolution: float = 4.0,
    *,
    noise: float = 0.02,
    random_state: int | None = 0,
    dtype=np.float32,
):
    """Whole-brain volumes built from nilearn's bundled MNI152 template, with a planted age
    effect, smooth subject variation and noise (needs nilearn; nothing is downloaded).

    The template (2 mm, resampled to ``resolution`` mm) scaled to [0, 1] is the mean brain
    :math:`b`; each subject's volume loses up to 50% of its intensity with age in two medial
    temporal regions :math:`r` (Gaussian blobs of 12 mm), times a smooth random field of four
    25-mm blobs (about 5%), plus independent Gaussian noise:

    .. math:: v_s = b \\odot (1 - 0.5\\, a(s)\\, r + u_s) + \\sigma \\epsilon_s,
        \\qquad a(s) = (\\mathrm{age}_s - 20) / 60

    Parameters
    ----------
    n_subjects : int, default=300
        Number of subjects.
    resolution : float, default=4.0
        Voxel size in mm. The volumes are cropped to the brain's bounding box: 4 mm gives
        38 x 47 x 40 voxels (29,398 in the brain mask), 2 mm 75 x 92 x 79 (235,375).
    noise : float, default=0.02
        Standard deviation :math:`\\sigma` of the voxel noise.
    random_state : int or None, default=0
        Seed of the cohort.
    dtype : dtype, default=np.float32
        Float type of the volumes.

    Returns
    -------
    X : ndarray of shape (n_subjects, 1, D, H, W)
        The volumes, in PyTorch's layout (one channel).
    age : ndarray of shape (n_subjects,)
        Ages, uniform in [20, 80].
    mask : ndarray of bool of shape (D, H, W)
        The template's brain mask at that resolution.
    affine : ndarray of shape (4, 4)
        Voxel-to-MNI affine of the volumes (``nibabel.Nifti1Image(X[s, 0], affine)``).
    ageing : ndarray of shape (D, H, W)
        The planted effect :math:`r` (the fraction of intensity lost at age 80 is
        ``0.5 * ageing``).
    """
    from nilearn import datasets, image

    target = np.diag([resolution] * 3 + [1.0])
    template = datasets.load_mni152_template(resolution=2)
    target[:3, 3] = template.affine[:3, 3]
    template = image.resample_img(
        template,
        target_affine=target[:3, :3],
        interpolation="continuous",
        force_resample=True,
        copy_header=True,
    )
    mask = image.resample_to_img(
        datasets.load_mni152_brain_mask(resolution=2),
        template,
        interpolation="nearest",
        force_resample=True,
        copy_header=True,
    )
    # crop to the brain's bounding box (one voxel of margin), as nilearn's crop_img would
    box = tuple(
        slice(max(0, int(np.min(i)) - 1), int(np.max(i)) + 2) for i in np.nonzero(mask.get_fdata())
    )
    template = image.new_img_like(template, template.get_fdata()[box], _cropped(template, box))
    mask = image.new_img_like(mask, mask.get_fdata()[box], template.affine)
    brain = np.clip(template.get_fdata(), 0, None)
    brain = brain / brain.max()
    affine = template.affine
    ijk = np.stack(np.meshgrid(*map(np.arange, brain.shape), indexing="ij"), -1)
    mm = ijk @ affine[:3, :3].T + affine[:3, 3]

    def blob(center, width):
        return _blob(mm, np.asarray(center, dtype=float), width)

    ageing = blob([-25, -20, -15], 12) + blob([25, -20, -15], 12)
    rng = np.random.default_rng(random_state)
    age = rng.uniform(20, 80, n_subjects)
    X = np.empty((n_subjects, 1, *brain.shape), dtype=dtype)
    for s in range(n_subjects):
        smooth = sum(rng.normal(0, 0.05) * blob(rng.uniform(-60, 60, 3), 25) for _ in range(4))
        volume = brain * (1 - 0.5 * ageing * (age[s] - 20) / 60 + smooth)
        X[s, 0] = volume + rng.normal(0, noise, brain.shape)
    return X, age, mask.get_fdata() > 0, affine, ageing


def planted_ageing(
    volumes: np.ndarray, age: np.ndarray, ageing: np.ndarray, ages: tuple[float, float] = (30, 70)
) -> np.ndarray:
    """The intensity change that :func:`make_mni_cohort` planted between two ages, to compare
    with what a model learned.

    The change is :math:`-0.5\\, r\\, b\\, (a_2 - a_1) / 60`; the template b is recovered from
    the cohort's mean volume, :math:`b (1 - 0.5\\, r\\, \\bar a)` with
    :math:`a = (\\mathrm{age} - 20) / 60` (the subject variation averages out).

    Parameters
    ----------
    volumes : ndarray of shape (n_subjects, 1, D, H, W)
        The cohort's volumes.
    age : ndarray of shape (n_subjects,)
        Their ages.
    ageing : ndarray of shape (D, H, W)
        The planted effect r, as :func:`make_mni_cohort` returns it.
    ages : tuple of 2 float, default=(30, 70)
        The two ages, in years.

    Returns
    -------
    change : ndarray of shape (D, H, W)
        The planted intensity at the second age minus that at the first.
    """
    brain = volumes[:, 0].mean(0) / (1 - 0.5 * ageing * np.mean((age - 20) / 60))
    return -0.5 * ageing * brain * (ages[1] - ages[0]) / 60
