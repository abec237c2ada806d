"""
Neuroimaging: a VAE behind a NiftiMasker, and a CVAE normative model of age
===========================================================================

A synthetic cohort built from nilearn's bundled MNI152 template (downsampled to 6 mm): each
subject's image is the template with an age effect (tissue loss around two medial temporal
regions that grows with age), smooth subject-specific variation and noise. Forty extra subjects
carry a simulated lesion.

1. ``NiftiMasker -> VAE`` is an ordinary scikit-learn Pipeline: fitted on images, it gives a few
   latent coordinates per subject, from which age is read as well as from as many principal
   components; decoding along the latent direction that predicts age draws the ageing effect.
2. A ``CVAE`` conditioned on age is a normative model: fitted on healthy subjects, its
   per-subject ``score_samples`` (the ELBO of the image given the subject's age) is low for
   images that do not fit the norm of their age, which flags the lesions.

Needs the ``[neuro]`` extra (nilearn, matplotlib).
"""

import os

import matplotlib.pyplot as plt
import numpy as np
from nilearn import datasets, image, plotting
from nilearn.maskers import NiftiMasker
from sklearn.decomposition import PCA
from sklearn.linear_model import LinearRegression
from sklearn.model_selection import cross_val_score
from sklearn.pipeline import make_pipeline

from nidl_vae import CVAE, VAE

FAST = bool(os.environ.get("NIDL_VAE_FAST_EXAMPLES"))
# the defaults train for about 2,000 optimizer steps, whatever the number of subjects
EPOCHS = 3 if FAST else "auto"
rng = np.random.default_rng(0)

# %%
# The synthetic cohort
template = image.resample_img(
    datasets.load_mni152_template(resolution=2),
    target_affine=np.diag([6.0, 6.0, 6.0]),
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
brain = template.get_fdata() / template.get_fdata().max()
ijk = np.stack(np.meshgrid(*map(np.arange, brain.shape), indexing="ij"), -1)
mm = ijk @ template.affine[:3, :3].T + template.affine[:3, 3]


def blob(center_mm, width_mm):
    return np.exp(-((mm - center_mm) ** 2).sum(-1) / (2 * width_mm**2))


ageing = blob([-25, -20, -15], 12) + blob([25, -20, -15], 12)
n_subjects = 60 if FAST else 300
age = rng.uniform(20, 80, n_subjects)


def subject(age_years, lesion_center=None):
    smooth = sum(rng.normal(0, 0.05) * blob(rng.uniform(-60, 60, 3), 25) for _ in range(4))
    volume = brain * (1 - 0.5 * ageing * (age_years - 20) / 60 + smooth)
    if lesion_center is not None:
        volume *= 1 - 0.6 * blob(lesion_center, 8)
    return volume + rng.normal(0, 0.02, brain.shape)


cohort = image.new_img_like(template, np.stack([subject(a) for a in age], -1))
n_lesioned = 10 if FAST else 40
lesion_age = rng.uniform(20, 80, n_lesioned)
lesion_centers = rng.uniform([-40, -60, 0], [40, 30, 40], (n_lesioned, 3))
lesioned = image.new_img_like(
    template, np.stack([subject(a, c) for a, c in zip(lesion_age, lesion_centers, strict=True)], -1)
)

# %%
# NiftiMasker -> VAE: four latent coordinates per subject
pipeline = make_pipeline(
    NiftiMasker(mask_img=mask, standardize=None),
    VAE(latent_dim=4, max_epochs=EPOCHS, random_state=0),
)
Z = pipeline.fit_transform(cohort)
masker, vae = pipeline[0], pipeline[1]
age_model = LinearRegression().fit(Z, age)
r2 = cross_val_score(LinearRegression(), Z, age, cv=5).mean()
r2_pca = cross_val_score(
    LinearRegression(), PCA(4).fit_transform(masker.transform(cohort)), age, cv=5
)
print(
    f"{masker.n_elements_} voxels; R^2 of age from 4 latents {r2:.2f}, PCA(4) {r2_pca.mean():.2f}"
)

# %%
# What ageing looks like to the model: decode the mean latent moved along the direction of
# latent space that predicts age, from 30 to 70 years, and map the difference. The planted
# effect is tissue loss around two medial temporal regions.
direction = age_model.coef_ / np.sum(age_model.coef_**2)  # latent change per year
young, old = Z.mean(0) + np.outer([30 - age.mean(), 70 - age.mean()], direction)
decoded = vae.inverse_transform(np.stack([young, old]))
planted = np.ravel(masker.transform(image.new_img_like(template, ageing)))
match = np.corrcoef(decoded[1] - decoded[0], -planted)[0, 1]
print(f"correlation of the decoded ageing map with the planted one: {match:.2f}")
for effect, title in [
    (decoded[1] - decoded[0], "VAE: decoded(age 70) - decoded(age 30)"),
    (-planted * 0.5 * 40 / 60, "planted: fraction of intensity change, 30 to 70"),
]:
    plotting.plot_stat_map(
        masker.inverse_transform(effect),
        bg_img=template,
        display_mode="z",
        cut_coords=[-30, -20, -10, 0, 10],
        title=title,
    )

# %%
# A subject's image and its VAE reconstruction
reconstruction = masker.inverse_transform(vae.inverse_transform(Z[:1])[0])
for img, title in [(image.index_img(cohort, 0), "subject 0"), (reconstruction, "decoded")]:
    plotting.plot_anat(img, display_mode="z", cut_coords=5, title=title, dim=0)

# %%
# A CVAE normative model of age, fitted on the healthy subjects; held-out healthy subjects and
# the lesioned ones are scored by the ELBO of their image given their age
X = masker.transform(cohort)
X_lesioned = masker.transform(lesioned)
train, held_out = (
    np.arange(n_subjects) < 0.8 * n_subjects,
    np.arange(n_subjects) >= 0.8 * n_subjects,
)
normative = CVAE(latent_dim=4, max_epochs=EPOCHS, random_state=0)
normative.fit(X[train], conditions=age[train, None])
threshold = np.percentile(normative.score_samples(X[train], conditions=age[train, None]), 5)
healthy_scores = normative.score_samples(X[held_out], conditions=age[held_out, None])
lesion_scores = normative.score_samples(X_lesioned, conditions=lesion_age[:, None])
print(
    f"flagged (score below the training 5th percentile): {np.mean(lesion_scores < threshold):.0%}"
    f" of lesioned subjects, {np.mean(healthy_scores < threshold):.0%} of held-out healthy ones"
)

fig, ax = plt.subplots(figsize=(6, 3.5))
ax.hist(healthy_scores, bins=15, alpha=0.7, label="held-out healthy")
ax.hist(lesion_scores, bins=15, alpha=0.7, label="lesioned")
ax.axvline(threshold, color="k", ls="--", label="training 5th percentile")
ax.set(xlabel="score_samples (ELBO given age, nats)", ylabel="subjects")
ax.legend()

# %%
# Where a lesioned subject departs from the norm of its age: image minus its decoded mean
worst = int(np.argmin(lesion_scores))
worst_age = lesion_age[worst : worst + 1, None]
Z_worst = normative.transform(X_lesioned[worst : worst + 1], conditions=worst_age)
expected = normative.inverse_transform(Z_worst, conditions=worst_age)
plotting.plot_stat_map(
    masker.inverse_transform(X_lesioned[worst] - expected[0]),
    bg_img=template,
    display_mode="z",
    cut_coords=5,
    title="lesioned subject: image - normative reconstruction",
)
plt.show()
