"""
Neuroimaging: a VAE behind a NiftiMasker
========================================

A synthetic cohort built from nilearn's bundled MNI152 template at 6 mm
(:func:`nidl_vae.datasets.make_mni_cohort`), written as one NIfTI file per subject, as a study
keeps them: each subject's image is the template with an age effect (tissue loss around two
medial temporal regions that grows with age), smooth subject-specific variation and noise.

``NiftiMasker -> VAE`` is an ordinary scikit-learn Pipeline, both ways: fitted on the list of
files, it gives a few latent coordinates per subject, from which age is read as well as from
as many principal components; and its own ``inverse_transform`` turns latent coordinates into
NIfTI images in one call. Decoding the mean latent of 30- and of 70-year-olds draws the
ageing effect: the decoded change from 30 to 70 years lies where the planted one does and has
its size (both printed below).

The VAE trains with its defaults. The whole-volume example (convolutional networks, no
masker) adds a CVAE normative model.

Needs the ``[neuro]`` extra (nilearn, matplotlib).
"""

import os
import tempfile

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
# The synthetic cohort, one NIfTI file per subject in a temporary folder
volumes, age, brain_mask, affine, ageing = make_mni_cohort(n_subjects, resolution=6.0)
folder = tempfile.TemporaryDirectory()
paths = [os.path.join(folder.name, f"sub-{i:03d}.nii.gz") for i in range(n_subjects)]
for path, volume in zip(paths, volumes[:, 0], strict=True):
    nib.save(nib.Nifti1Image(volume, affine), path)
mask = nib.Nifti1Image(brain_mask.astype(np.uint8), affine)
template = image.mean_img(paths, copy_header=True)

# %%
# NiftiMasker -> VAE, fitted on the files: four latent coordinates per subject
pipeline = make_pipeline(
    NiftiMasker(mask_img=mask, standardize=None),
    VAE(latent_dim=4, max_epochs=EPOCHS, random_state=0),
)
Z = pipeline.fit_transform(paths)
masker, vae = pipeline[0], pipeline[1]
r2 = cross_val_score(LinearRegression(), Z, age, cv=5).mean()
r2_pca = cross_val_score(
    LinearRegression(), PCA(4).fit_transform(masker.transform(paths)), age, cv=5
)
print(
    f"{masker.n_elements_} voxels; R^2 of age from 4 latents {r2:.2f}, PCA(4) {r2_pca.mean():.2f}"
)

# %%
# What ageing looks like to the model: the mean latent of 30- and of 70-year-olds (the least
# squares fit of the latents on age) decoded, and the difference mapped beside the planted
# effect (tissue loss around two medial temporal regions), on one colour scale.
young, old = LinearRegression().fit(age[:, None], Z).predict([[30.0], [70.0]])
# the pipeline's own inverse_transform: latents -> NIfTI images, in one call
young_img, old_img = image.iter_img(pipeline.inverse_transform(np.stack([young, old])))
change_img = image.math_img("old - young", old=old_img, young=young_img)
# the planted intensity change from 30 to 70 years
planted_img = nib.Nifti1Image(planted_ageing(volumes, age, ageing, ages=(30, 70)), affine)
change, planted = (np.ravel(masker.transform(img)) for img in (change_img, planted_img))
match = np.corrcoef(change, planted)[0, 1]
print(f"correlation of the decoded ageing map with the planted one: {match:.2f}")
print(f"largest decoded change {np.abs(change).max():.3f}, planted {np.abs(planted).max():.3f}")
scale = np.abs(planted).max()
for effect, title in [
    (change_img, "VAE: decoded(age 70) - decoded(age 30)"),
    (planted_img, "planted: intensity change from 30 to 70"),
]:
    plotting.plot_stat_map(
        effect,
        bg_img=template,
        display_mode="z",
        cut_coords=[-30, -20, -10, 0, 10],
        title=title,
        draw_cross=False,
        vmax=scale,
        threshold=0.1 * scale,
        cbar_tick_format="%.2f",
        symmetric_cbar=True,
    )

# %%
# A subject's image and its VAE reconstruction, cut at the same slices
reconstruction = pipeline.inverse_transform(Z[:1])
for img, title in [(paths[0], "subject 0"), (image.index_img(reconstruction, 0), "decoded")]:
    plotting.plot_anat(img, display_mode="z", cut_coords=[-6, 6, 18, 30, 42], title=title, dim=0)
plt.show()
folder.cleanup()
