"""
Normative modelling: deviation maps of patients from a model of healthy brains
==============================================================================

A normative model learns the healthy range of brains given age, sex and acquisition site, then
says how far each patient lies outside it, voxel by voxel and as one score per subject. The
synthetic cohort (:func:`nidl_vae.datasets.make_lesion_cohort`) holds MNI-based brains at 6 mm
from three sites with different intensity gains, and patients with one lesion each (a ball of
12 mm losing 30% of its intensity).

A ``CVAE`` is fitted behind a ``NiftiMasker`` on healthy subjects, its conditions a DataFrame
of age (a number), sex and site (categories). ``calibrate`` on other healthy subjects measures
each voxel's residual spread (``scale_by='site'``: each site's own noise); ``deviations`` are
then per-voxel z-scores, negative where a brain lies below its expectation, and
``deviation_scores`` one z-score per subject. The masker turns a patient's deviations back
into a NIfTI image.

Needs the ``[neuro]`` extra (nilearn, matplotlib).
"""

import os

import matplotlib.pyplot as plt
import nibabel as nib
import numpy as np
import pandas as pd
from nilearn import image, plotting
from nilearn.maskers import NiftiMasker
from sklearn.metrics import roc_auc_score

from nidl_vae import CVAE
from nidl_vae.datasets import make_lesion_cohort

FAST = bool(os.environ.get("NIDL_VAE_FAST_EXAMPLES"))
EPOCHS = 3 if FAST else "auto"

# %%
# The cohort as NIfTI images, through a masker: one row of voxels per subject
cohort = make_lesion_cohort(n_healthy=150 if FAST else 300, n_patients=40, random_state=0)
images = [nib.Nifti1Image(volume, cohort.affine) for volume in cohort.volumes[:, 0]]
masker = NiftiMasker(
    mask_img=nib.Nifti1Image(cohort.mask.astype(np.uint8), cohort.affine), standardize=None
)
X = masker.fit_transform(images)
covariates = cohort.covariates
print(covariates.head())

healthy = np.random.default_rng(0).permutation(np.flatnonzero(~cohort.patient))
n_train = len(healthy) * 2 // 3
train, reference, held_out = np.split(healthy, [n_train, n_train + (len(healthy) - n_train) // 2])
patients = np.flatnonzero(cohort.patient)

# %%
# The normative model: fitted on healthy subjects, calibrated on others
cvae = CVAE(prior_network="mlp", max_epochs=EPOCHS, random_state=0)
cvae.fit(X[train], conditions=covariates.iloc[train])
cvae.calibrate(X[reference], conditions=covariates.iloc[reference], scale_by="site")
print("categories:", cvae.condition_categories_)

# %%
# Subject scores: held-out healthy subjects score about N(0, 1), patients higher
s_healthy = cvae.deviation_scores(X[held_out], conditions=covariates.iloc[held_out])
s_patients = cvae.deviation_scores(X[patients], conditions=covariates.iloc[patients])
labels = np.r_[np.zeros(len(held_out)), np.ones(len(patients))]
auc = roc_auc_score(labels, np.r_[s_healthy, s_patients])
print(
    f"AUC {auc:.3f}; above 1.645: {np.mean(s_patients > 1.645):.0%} of patients, "
    f"{np.mean(s_healthy > 1.645):.0%} of held-out healthy subjects"
)
fig, ax = plt.subplots(figsize=(6, 3.2), layout="constrained")
bins = np.linspace(min(s_healthy.min(), -3), max(s_patients.max(), 4), 30)
ax.hist(s_healthy, bins, alpha=0.6, label="held-out healthy")
ax.hist(s_patients, bins, alpha=0.6, label="patients")
ax.axvline(1.645, color="k", ls="--", lw=1, label="z = 1.645")
ax.set(xlabel="deviation score (z)", ylabel="subjects", title=f"Subject scores (AUC {auc:.2f})")
ax.legend()

# %%
# One patient's deviations as a NIfTI image, through the masker; the cross marks the lesion
patient = patients[0]
d = cvae.deviations(X[[patient]], conditions=covariates.iloc[[patient]])
deviation_img = masker.inverse_transform(d[0])
center = cohort.lesion_center[patient]
display = plotting.plot_stat_map(
    deviation_img,
    bg_img=image.mean_img(images[: len(train)], copy_header=True),
    cut_coords=center,
    threshold=3.0,
    vmax=10,
    cmap="cold_hot",
    title=f"patient {patient}: voxel deviations (|z| > 3)",
)
display.add_markers(
    [center], marker_color="none", marker_size=300, edgecolors="lime", linewidths=1.5
)

# %%
# A centile plot of one region against age: the mean intensity of a 12-mm ball in the left
# medial temporal lobe, where brains lose tissue with age, for the healthy women of site A.
# The model's expectation at each age (its prior's draws, decoded) plus what it leaves to
# noise there (the reference subjects' regional residuals, on site A's scale) give the
# centiles. The prior is learned (``prior_network='mlp'``): with N(0, I), part of the age
# effect stays in the latents and the expectation of the young fell 0.015 below theirs.
mm = np.argwhere(cohort.mask) @ cohort.affine[:3, :3].T + cohort.affine[:3, 3]
region = np.linalg.norm(mm - [-25, -20, -15], axis=1) <= 12
ages = np.linspace(20, 80, 13)
grid = pd.DataFrame({"age": ages, "sex": "F", "site": "A"})
expected = cvae.sample(100, conditions=grid, random_state=0)[:, region].mean(1)
c_reference = covariates.iloc[reference]
reconstructed = cvae.inverse_transform(
    cvae.transform(X[reference], conditions=c_reference), conditions=c_reference
)
residual = (X[reference] - reconstructed)[:, region].mean(1)
factors = cvae.deviation_group_scales_
residual *= factors["A"] / c_reference["site"].map(factors).to_numpy()
predictive = expected.reshape(len(ages), -1, 1) + residual
centiles = np.percentile(predictive.reshape(len(ages), -1), [5, 25, 50, 75, 95], axis=1)
women_a = healthy[
    (covariates["sex"].iloc[healthy] == "F").to_numpy()
    & (covariates["site"].iloc[healthy] == "A").to_numpy()
]
fig, ax = plt.subplots(figsize=(6, 3.5), layout="constrained")
ax.fill_between(ages, centiles[0], centiles[4], alpha=0.2, color="C0", label="5th-95th centile")
ax.fill_between(ages, centiles[1], centiles[3], alpha=0.3, color="C0", label="25th-75th centile")
ax.plot(ages, centiles[2], color="C0", label="median")
ax.scatter(
    covariates["age"].iloc[women_a],
    X[women_a][:, region].mean(1),
    s=10,
    color="k",
    label="healthy women, site A",
)
ax.set(
    xlabel="age (years)",
    ylabel="regional mean intensity",
    title="Normative centiles of a medial temporal region",
)
ax.legend(fontsize="small")
plt.show()
