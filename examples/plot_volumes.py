"""
Whole brain volumes: a convolutional VAE and a CVAE normative model
===================================================================

Volumes go in as they are, in PyTorch's layout ``(n_subjects, 1, D, H, W)``: no masker, no
flattening. The estimators build a convolutional encoder (strided 3-D convolutions) and its
mirrored decoder from the volumes' shape.

The cohort is synthetic, built from nilearn's bundled MNI152 template at 6 mm
(:func:`nidl_vae.datasets.make_mni_cohort`): tissue loss with age in two medial temporal
regions, smooth subject variation and noise. Forty more subjects carry a lesion.

1. ``VAE().fit(volumes)``: 4 latents per subject read age as well as 4 principal components,
   with about 200,000 parameters (the MLP on the masked voxels has 4.5 million); decoding the
   mean latent of 30- and of 70-year-olds draws the ageing effect.
2. ``CVAE().fit(volumes, conditions=age)`` is a normative model of whole volumes (1-D ages
   are one covariate): a subject's ``score_samples`` (the ELBO of its volume given its age)
   is low where the volume departs from the norm of its age, which flags the lesions.

Needs the ``[neuro]`` extra (nilearn, matplotlib).
"""

import os

import matplotlib.pyplot as plt
import nibabel as nib
import numpy as np
from nilearn import plotting
from sklearn.decomposition import PCA
from sklearn.linear_model import LinearRegression
from sklearn.metrics import roc_auc_score
from sklearn.model_selection import cross_val_score

from nidl_vae import CVAE, VAE
from nidl_vae.datasets import make_mni_cohort, planted_ageing

FAST = bool(os.environ.get("NIDL_VAE_FAST_EXAMPLES"))
EPOCHS = 3 if FAST else "auto"
n_subjects, n_lesioned = (60, 10) if FAST else (300, 40)

# %%
# The cohort, and forty lesioned subjects (a 60% intensity loss in an 8-mm blob)
X, age, mask, affine, ageing = make_mni_cohort(n_subjects, resolution=6.0, random_state=0)
X_lesioned, lesion_age, _, _, _ = make_mni_cohort(n_lesioned, resolution=6.0, random_state=1)
ijk = np.stack(np.meshgrid(*map(np.arange, mask.shape), indexing="ij"), -1)
mm = ijk @ affine[:3, :3].T + affine[:3, 3]
rng = np.random.default_rng(2)
for volume, center in zip(
    X_lesioned[:, 0], rng.uniform([-40, -60, 0], [40, 30, 40], (n_lesioned, 3)), strict=True
):
    volume *= 1 - 0.6 * np.exp(-((mm - center) ** 2).sum(-1) / (2 * 8.0**2))
print(f"volumes {X.shape[1:]}, {mask.sum():,} voxels in the brain mask")


def to_image(volume):
    return nib.Nifti1Image(np.asarray(volume, dtype=np.float32), affine)


# %%
# A VAE on the volumes: four latents per subject
vae = VAE(latent_dim=4, max_epochs=EPOCHS, random_state=0).fit(X)
Z = vae.transform(X)
r2 = cross_val_score(LinearRegression(), Z, age, cv=5).mean()
r2_pca = cross_val_score(
    LinearRegression(), PCA(4).fit_transform(X[:, 0][:, mask]), age, cv=5
).mean()
n_parameters = sum(p.numel() for p in vae.module_.parameters())
print(f"R^2 of age from 4 latents {r2:.3f}, from PCA(4) {r2_pca:.3f}; {n_parameters:,} parameters")

# %%
# What ageing looks like to the model: the mean latent of 30- and of 70-year-olds (the least
# squares fit of the latents on age) decoded; the difference of the two volumes beside the
# planted one
young, old = LinearRegression().fit(age[:, None], Z).predict([[30.0], [70.0]])
decoded = vae.inverse_transform(np.stack([young, old]))  # two volumes (1, D, H, W)
change = (decoded[1, 0] - decoded[0, 0]) * mask
planted = planted_ageing(X, age, ageing, ages=(30, 70)) * mask
print(
    f"correlation of the decoded ageing map with the planted one: "
    f"{np.corrcoef(change[mask], planted[mask])[0, 1]:.2f}; largest decoded change "
    f"{np.abs(change).max():.3f}, planted {np.abs(planted).max():.3f}"
)
template = to_image(X[:, 0].mean(0))
scale = np.abs(planted).max()  # one colour scale for both maps
for effect, title in [
    (change, "VAE: decoded(age 70) - decoded(age 30)"),
    (planted, "planted: intensity change from 30 to 70"),
]:
    plotting.plot_stat_map(
        to_image(effect),
        bg_img=template,
        display_mode="z",
        cut_coords=[-30, -20, -10, 0, 10],
        title=title,
        draw_cross=False,
        vmax=scale,
        threshold=0.05 * scale,
        symmetric_cbar=True,
    )

# %%
# A CVAE normative model of whole volumes, fitted on 60% of the healthy subjects. Its ELBO is
# higher on the subjects it was fitted on, so the threshold (the 5th percentile of healthy
# scores) comes from 20% held out for calibration; the last 20% and the lesioned subjects are
# scored by the ELBO of their volume given their age
part = np.arange(n_subjects) * 5 // n_subjects  # 0-2: fit, 3: calibration, 4: test
train, calibration, test = part < 3, part == 3, part == 4
normative = CVAE(latent_dim=4, max_epochs=EPOCHS, random_state=0)
normative.fit(X[train], conditions=age[train])
threshold = np.percentile(normative.score_samples(X[calibration], conditions=age[calibration]), 5)
healthy = normative.score_samples(X[test], conditions=age[test])
lesioned = normative.score_samples(X_lesioned, conditions=lesion_age)
# how well the score ranks lesioned below healthy subjects (1 = always, 0.5 = chance)
auc = roc_auc_score(
    np.r_[np.ones(len(lesioned)), np.zeros(len(healthy))], -np.r_[lesioned, healthy]
)
print(
    f"area under the ROC curve, lesioned vs held-out healthy: {auc:.2f}; flagged (score below "
    f"the calibration 5th percentile): {np.mean(lesioned < threshold):.0%} of lesioned "
    f"subjects, {np.mean(healthy < threshold):.0%} of held-out healthy ones"
)
fig, ax = plt.subplots(figsize=(6, 3.5))
ax.hist(healthy, bins=15, alpha=0.7, label="held-out healthy")
ax.hist(lesioned, bins=15, alpha=0.7, label="lesioned")
ax.axvline(threshold, color="k", ls="--", label="calibration 5th percentile")
ax.set(xlabel="score_samples (ELBO given age, nats)", ylabel="subjects")
ax.legend()

# %%
# Where the least typical lesioned subject departs from the norm of its age: its volume minus
# the decoded mean of its posterior
worst = int(np.argmin(lesioned))
given = lesion_age[worst : worst + 1]
expected = normative.inverse_transform(
    normative.transform(X_lesioned[worst : worst + 1], conditions=given), conditions=given
)
plotting.plot_stat_map(
    to_image((X_lesioned[worst, 0] - expected[0, 0]) * mask),
    bg_img=template,
    display_mode="z",
    cut_coords=5,
    title="lesioned subject: volume - normative reconstruction",
    draw_cross=False,
)
plt.show()
