"""
Neuroimaging: a VAE behind a NiftiMasker
========================================

A synthetic cohort built from nilearn's bundled MNI152 template at 6 mm
(:func:`nidl_vae.datasets.make_mni_cohort`), handed over as NIfTI images: each subject's image
is the template with an age effect (tissue loss around two medial temporal regions that grows
with age), smooth subject-specific variation and noise.

``NiftiMasker -> VAE`` is an ordinary scikit-learn Pipeline: fitted on images, it gives a few
latent coordinates per subject, from which age is read as well as from as many principal
components. Decoding the mean latent of 30- and of 70-year-olds draws the ageing effect: the
decoded change from 30 to 70 years lies where the planted one does and
has its size (both printed below).

The VAE trains with its defaults. The whole-volume example (convolutional networks, no
masker) adds a CVAE normative model.

Needs the ``[neuro]`` extra (nilearn, matplotlib).
"""

import os

import matplotlib.pyplot as plt
import nibabel as nib
import numpy as np
from nilearn import image, plotting
from nilearn.maskers import NiftiMasker
from sklearn.decomposition import PCA
from sklearn.linear_model import LinearRegression
from sklearn.model_selection import cross_val_score
from sklearn.pipeline import make_pipeline

from nidl_vae import VAE
from nidl_vae.datasets import make_mni_cohort, planted_ageing

FAST = bool(os.environ.get("NIDL_VAE_FAST_EXAMPLES"))
EPOCHS = 3 if FAST else "auto"
n_subjects = 60 if FAST else 300

# %%
# The synthetic cohort, as a 4-D NIfTI image (one volume per subject)
volumes, age, brain_mask, affine, ageing = make_mni_cohort(n_subjects, resolution=6.0)
cohort = nib.Nifti1Image(np.moveaxis(volumes[:, 0], 0, -1), affine)
mask = nib.Nifti1Image(brain_mask.astype(np.uint8), affine)
template = image.mean_img(cohort, copy_header=True)

# %%
# NiftiMasker -> VAE: four latent coordinates per subject
pipeline = make_pipeline(
    NiftiMasker(mask_img=mask, standardize=None),
    VAE(latent_dim=4, max_epochs=EPOCHS, random_state=0),
)
Z = pipeline.fit_transform(cohort)
masker, vae = pipeline[0], pipeline[1]
r2 = cross_val_score(LinearRegression(), Z, age, cv=5).mean()
r2_pca = cross_val_score(
    LinearRegression(), PCA(4).fit_transform(masker.transform(cohort)), age, cv=5
)
print(
    f"{masker.n_elements_} voxels; R^2 of age from 4 latents {r2:.2f}, PCA(4) {r2_pca.mean():.2f}"
)

# %%
# What ageing looks like to the model: the mean latent of 30- and of 70-year-olds (the least
# squares fit of the latents on age) decoded, and the difference mapped beside the planted
# effect (tissue loss around two medial temporal regions), on one colour scale.
young, old = LinearRegression().fit(age[:, None], Z).predict([[30.0], [70.0]])
decoded = vae.inverse_transform(np.stack([young, old]))
# the planted intensity change from 30 to 70 years
planted_map = planted_ageing(volumes, age, ageing, ages=(30, 70))
planted = np.ravel(masker.transform(nib.Nifti1Image(planted_map, affine)))
match = np.corrcoef(decoded[1] - decoded[0], planted)[0, 1]
print(f"correlation of the decoded ageing map with the planted one: {match:.2f}")
change = decoded[1] - decoded[0]
print(f"largest decoded change {np.abs(change).max():.3f}, planted {np.abs(planted).max():.3f}")
scale = np.abs(planted).max()
for effect, title in [
    (change, "VAE: decoded(age 70) - decoded(age 30)"),
    (planted, "planted: intensity change from 30 to 70"),
]:
    plotting.plot_stat_map(
        masker.inverse_transform(effect),
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
# A subject's image and its VAE reconstruction
reconstruction = masker.inverse_transform(vae.inverse_transform(Z[:1])[0])
for img, title in [(image.index_img(cohort, 0), "subject 0"), (reconstruction, "decoded")]:
    plotting.plot_anat(img, display_mode="z", cut_coords=5, title=title, dim=0)
plt.show()
