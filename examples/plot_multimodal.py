"""
Brain images and clinical scores in one CRMVAE
==============================================

The canonical multimodal study: a brain image per subject and a handful of clinical scores,
some subjects missing the scores. ``nidl_vae.datasets.make_imaging_clinical_cohort`` builds
300 masked brains from nilearn's MNI152 template (8,735 voxels at 6 mm) and 12 scores driven
by age (which the image shows) and by a severity factor the image does not show; 30% of the
subjects have no scores (NaN). One CRMVAE learns a latent space from both modalities, as
columns of one X; we impute held-out subjects' scores from their images against what a
neuroimager would try first (``RidgeCV`` from the voxels, ``KNNImputer``, the column means),
estimate the density of the scores given the image, and see what a missing modality costs
the latents.
"""

import os

import matplotlib.pyplot as plt
import numpy as np
from scipy.stats import multivariate_normal
from sklearn.impute import KNNImputer
from sklearn.linear_model import LinearRegression, RidgeCV

from nidl_vae import CRMVAE
from nidl_vae.datasets import make_imaging_clinical_cohort

EPOCHS = 3 if os.environ.get("NIDL_VAE_FAST_EXAMPLES") else 200
cohort = make_imaging_clinical_cohort(random_state=0)
X, p = cohort.X, cohort.n_voxels
with_scores = np.flatnonzero(~cohort.missing)
test = np.random.default_rng(0).permutation(with_scores)[: int(0.3 * len(with_scores))]
train = np.setdiff1d(np.arange(len(X)), test)
fitted = train[~cohort.missing[train]]  # training subjects that have scores
print(
    f"X: {X.shape[0]} subjects x {p} voxels + {X.shape[1] - p} scores; "
    f"{cohort.missing.mean():.0%} without scores; {len(test)} held out"
)

crm = CRMVAE(modalities={"mri": p, "clinical": X.shape[1] - p}, max_epochs=EPOCHS, random_state=0)
crm.fit(X[train])
print("hidden widths per modality:", crm.hidden_layer_sizes_)

# %%
# Scores imputed from the image
# -----------------------------
# The held-out subjects' scores are blanked and filled in from their images alone. The
# dashed line is the best any predictor from the image can do: the variance of the severity
# and noise parts of the scores.
scores = X[test, p:]
blanked = X[test].copy()
blanked[:, p:] = np.nan
alphas = np.logspace(-3, 6, 19)
predictions = {
    "CRMVAE": crm.impute(blanked)[:, p:],
    "RidgeCV\n(voxels -> scores)": RidgeCV(alphas=alphas)
    .fit(X[fitted, :p], X[fitted, p:])
    .predict(X[test, :p]),
    "KNNImputer": KNNImputer().fit(X[train]).transform(blanked)[:, p:],
    "column means": np.broadcast_to(np.nanmean(X[train, p:], 0), scores.shape),
}
errors = {name: np.mean((pred - scores) ** 2) for name, pred in predictions.items()}
for name, error in errors.items():
    print(f"{name.replace(chr(10), ' '):30s} mean squared error {error:.3f}")

fig, ax = plt.subplots(figsize=(6.5, 3.5), layout="constrained")
ax.bar(list(errors), list(errors.values()), color=["C0", "C7", "C7", "C7"])
ax.axhline(cohort.best_mse.mean(), color="k", linestyle="--", label="best possible from the image")
ax.set_ylabel("mean squared error of the scores")
ax.set_title("Held-out subjects' clinical scores imputed from their images")
ax.legend(loc="upper left")

# %%
# The density of the scores given the image
# -----------------------------------------
# ``conditional_log_likelihood`` estimates :math:`\log p(x_{clinical} | x_{mri})` by
# self-normalised importance sampling, with draws from the image's posterior and from the
# joint posterior of image and scores (the CRMVAE guide gives the estimator and the test
# against a closed form). Two references: a Gaussian
# fitted to the training scores alone (what the image adds is measured against it) and the
# true density of the scores given the subject's exact age, which no model of the image can
# beat on average.
conditional = crm.conditional_log_likelihood(X[test], target="clinical", given="mri")
train_scores = X[fitted, p:]
gaussian = multivariate_normal(train_scores.mean(0), np.cov(train_scores.T)).logpdf(scores)
truth = [
    multivariate_normal(m, cohort.covariance_given_age).logpdf(s)
    for m, s in zip(cohort.age_part[test], scores, strict=True)
]
print(
    f"log p(scores | image), nats per subject: CRMVAE {np.mean(conditional):.1f}; "
    f"Gaussian of the scores alone {np.mean(gaussian):.1f}; true, given the exact age "
    f"{np.mean(truth):.1f}"
)

# %%
# What a missing modality costs
# -----------------------------
# ``transform(X, modalities=...)`` encodes a subject from the modalities chosen. Age shows
# in both the image and the scores; the severity only in the scores, so latents from the
# image alone cannot read it. A linear regression fitted on the training subjects' latents
# reads each factor from the held-out subjects' latents (R^2).
factors = {"age": cohort.age, "severity": cohort.severity}
encodings = {"both": None, "image only": ["mri"], "scores only": ["clinical"]}
r2 = {}
for label, chosen in encodings.items():
    Z_train = crm.transform(X[fitted], modalities=chosen)
    Z_test = crm.transform(X[test], modalities=chosen)
    r2[label] = [
        LinearRegression().fit(Z_train, y[fitted]).score(Z_test, y[test]) for y in factors.values()
    ]
    print(f"latents from {label:12s} R^2 of age {r2[label][0]:.2f}, severity {r2[label][1]:.2f}")

fig, ax = plt.subplots(figsize=(6.5, 3.5), layout="constrained")
width = 0.25
for k, (label, values) in enumerate(r2.items()):
    ax.bar(np.arange(2) + (k - 1) * width, values, width, label=f"latents from {label}")
ax.set_xticks(range(2), list(factors))
ax.set_ylim(min(0, *np.ravel(list(r2.values()))), 1)
ax.set_ylabel("held-out R^2")
ax.set_title("What the latents read with a modality missing")
fig.legend(loc="outside lower center", ncols=3)

# %%
# Latents from both modalities read the severity about as well as the scores' alone, and
# from the image alone it cannot be read (a held-out image does not show it), while age is
# read as well as with both: for age, the scores cost nothing when missing. The CRMVAE
# weighs each modality's likelihood by the ratio of the widths (``rescale_factors_``: 1 for
# the scores, 12 / 8,735 for the image), so that the image's expert, informed by thousands
# of voxels, is confident only in the directions the image shows. Unweighted
# (``uses_likelihood_rescaling=False``), it outweighed the scores' expert in every latent
# direction: latents of both read the severity no better than the image's alone, the
# scores were imputed with an error above ``KNNImputer``'s and their density fell below a
# Gaussian of the scores alone (the CRMVAE guide gives both over three seeds,
# ``benchmarks/bench_crmvae_clinical.py``).
plt.show()
