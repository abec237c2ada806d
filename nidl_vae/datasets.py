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


def _voxel_mm(shape: tuple[int, ...], affine: np.ndarray) -> np.ndarray:
    """The MNI coordinates (mm) of every voxel of a volume, of shape (*shape, 3)."""
    ijk = np.stack(np.meshgrid(*map(np.arange, shape), indexing="ij"), -1)
    return ijk @ affine[:3, :3].T + affine[:3, 3]


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
    mm = _voxel_mm(brain.shape, affine)

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


def make_lesion_cohort(
    n_healthy: int = 300,
    n_patients: int = 40,
    resolution: float = 6.0,
    *,
    site_gains: dict | None = None,
    lesion_radius: float = 12.0,
    lesion_depth: float = 0.3,
    noise: float = 0.02,
    random_state: int | None = 0,
):
    """Healthy brains and patients with one lesion each, from several sites: a normative
    modelling benchmark built on :func:`make_mni_cohort` (needs nilearn and pandas).

    Every subject is a :func:`make_mni_cohort` volume (age effect, smooth variation, noise);
    males have 4% more intensity in a frontal region (a Gaussian blob of 20 mm); each site
    multiplies the whole volume by its gain. A patient's volume loses ``lesion_depth`` of its
    intensity in a ball of ``lesion_radius`` mm around a centre drawn among the brain's voxels
    at least that far from the mask's edge.

    Parameters
    ----------
    n_healthy, n_patients : int, default=300, 40
        Numbers of healthy subjects and patients (the patients come last).
    resolution : float, default=6.0
        Voxel size in mm.
    site_gains : dict, optional
        Site name to intensity gain; default ``{"A": 1.0, "B": 1.15, "C": 0.85}``. Sites are
        drawn uniformly.
    lesion_radius : float, default=12.0
        The lesions' radius in mm (2 voxels at 6 mm).
    lesion_depth : float, default=0.3
        The fraction of intensity a lesion removes.
    noise : float, default=0.02
        Standard deviation of the voxel noise.
    random_state : int or None, default=0
        Seed of the cohort.

    Returns
    -------
    cohort : sklearn.utils.Bunch
        ``volumes`` (n, 1, D, H, W) float32; ``covariates``, a DataFrame of ``age`` (float),
        ``sex`` ('F' or 'M') and ``site``; ``patient`` (bool, per subject);
        ``lesion_center`` (n, 3) in MNI mm (NaN for healthy subjects); ``lesion``, each
        patient's lesion as a boolean mask of shape (D, H, W) (all False for healthy
        subjects); ``mask`` and ``affine`` as :func:`make_mni_cohort` returns them.
    """
    import pandas as pd
    from scipy.ndimage import binary_erosion
    from sklearn.utils import Bunch

    gains = {"A": 1.0, "B": 1.15, "C": 0.85} if site_gains is None else dict(site_gains)
    n = n_healthy + n_patients
    volumes, age, mask, affine, _ = make_mni_cohort(
        n, resolution, noise=noise, random_state=random_state
    )
    rng = np.random.default_rng(None if random_state is None else random_state + 7919)
    mm = _voxel_mm(mask.shape, affine)
    sex = rng.choice(np.array(["F", "M"], dtype=object), n)
    site = rng.choice(np.array(list(gains), dtype=object), n)
    frontal = _blob(mm, np.array([0.0, 40.0, 10.0]), 20.0)
    steps = int(np.ceil(lesion_radius / resolution))
    inner = np.argwhere(binary_erosion(mask, iterations=steps))
    center = np.full((n, 3), np.nan)
    lesion = np.zeros((n, *mask.shape), dtype=bool)
    for s in range(n):
        factor = gains[site[s]] * (1 + 0.04 * frontal * (sex[s] == "M"))
        if s >= n_healthy:
            center[s] = mm[tuple(inner[rng.integers(len(inner))])]
            lesion[s] = ((mm - center[s]) ** 2).sum(-1) <= lesion_radius**2
            factor = factor * (1 - lesion_depth * lesion[s])
        volumes[s, 0] *= factor.astype(volumes.dtype)
    covariates = pd.DataFrame({"age": age, "sex": sex, "site": site})
    return Bunch(
        volumes=volumes,
        covariates=covariates,
        patient=np.arange(n) >= n_healthy,
        lesion_center=center,
        lesion=lesion,
        mask=mask,
        affine=affine,
    )


def make_imaging_clinical_cohort(
    n_subjects: int = 300,
    n_scores: int = 12,
    resolution: float = 6.0,
    *,
    missing: float = 0.3,
    noise: float = 0.5,
    random_state: int | None = 0,
):
    """Brain images and clinical scores of the same subjects, some missing the scores: a
    multimodal benchmark built on :func:`make_mni_cohort` (needs nilearn).

    Each score mixes a nonlinear function of age (decline that accelerates with age, as
    cognitive scores do), a hidden severity factor s that the image does not show, and
    noise:

    .. math:: y_{k} = a_k\\, g(\\mathrm{age}) + b_k\\, s + \\sigma \\epsilon_k, \\qquad
        g(\\mathrm{age}) = \\exp((\\mathrm{age} - 80) / 15) \\text{ standardised},
        \\quad s \\sim N(0, 1)

    with loadings :math:`a_k \\sim U(0.5, 1.5)` and :math:`b_k \\sim U(-1, 1)`. The best any
    predictor can do from the image alone is the age part: its mean squared error is the
    variance of :math:`b_k s + \\sigma \\epsilon_k`, returned as ``best_mse``.

    Parameters
    ----------
    n_subjects : int, default=300
    n_scores : int, default=12
    resolution : float, default=6.0
        Voxel size in mm (6 mm: 8,735 voxels in the mask).
    missing : float, default=0.3
        Fraction of subjects whose scores are all missing (NaN in ``X``).
    noise : float, default=0.5
        :math:`\\sigma`.
    random_state : int or None, default=0

    Returns
    -------
    cohort : sklearn.utils.Bunch
        ``X`` (n_subjects, n_voxels + n_scores): the masked voxels, then the scores (NaN
        where missing); ``scores`` without missing values; ``n_voxels``; ``age``;
        ``severity``; ``missing`` (bool per subject); ``best_mse`` (per score); the scores'
        distribution given the exact age, :math:`N(` ``age_part`` :math:`,`
        ``covariance_given_age`` :math:`)`; ``mask`` and ``affine``.
    """
    from sklearn.utils import Bunch

    volumes, age, mask, affine, _ = make_mni_cohort(
        n_subjects, resolution, random_state=random_state
    )
    rng = np.random.default_rng(None if random_state is None else random_state + 104729)
    decline = np.exp((age - 80) / 15)
    decline = (decline - decline.mean()) / decline.std()
    severity = rng.normal(size=n_subjects)
    a = rng.uniform(0.5, 1.5, n_scores)
    b = rng.uniform(-1, 1, n_scores)
    scores = (
        np.outer(decline, a)
        + np.outer(severity, b)
        + noise * rng.normal(size=(n_subjects, n_scores))
    )
    images = volumes[:, 0][:, mask]
    without = rng.random(n_subjects) < missing
    X = np.concatenate([images, scores.astype(images.dtype)], 1)
    X[without, images.shape[1] :] = np.nan
    return Bunch(
        X=X,
        scores=scores,
        n_voxels=images.shape[1],
        age=age,
        severity=severity,
        missing=without,
        best_mse=b**2 + noise**2,
        age_part=np.outer(decline, a),
        covariance_given_age=np.outer(b, b) + noise**2 * np.eye(n_scores),
        mask=mask,
        affine=affine,
    )
