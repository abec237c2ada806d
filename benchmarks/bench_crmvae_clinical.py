"""Brain images and clinical scores in one CRMVAE: each predicted from the other.

On ``nidl_vae.datasets.make_imaging_clinical_cohort`` (300 MNI-based brains at 6 mm, 8,735
voxels; 12 clinical scores from a nonlinear age decline and a severity factor the image does
not show; 30% of subjects without scores), 30% of the subjects with scores are held out.
``CRMVAE(modalities={"mri": 8735, "clinical": 12})`` with its defaults is fitted on the rest
(missing scores included). Printed per seed:

- clinical from the image: the mean squared error of the held-out subjects' scores imputed
  from their images, against ``RidgeCV`` (image -> scores, fitted on the training subjects
  with scores), ``KNNImputer`` (fitted on the training rows), the column means, and the best
  any predictor from the image can do (the severity and noise variance);
- the image from the clinical scores: the voxels' mean squared error against ``RidgeCV``
  (scores -> image) and the mean image;
- the conditional log-likelihood ``log p(scores | image)`` of the held-out subjects, between
  a Gaussian fitted to the training scores alone and the true density given the exact age.

``--rescaling`` sets ``uses_likelihood_rescaling``: 'auto' (the default: the image's
reconstruction weighted by the widths' ratio, 12 / 8,735, the scores' by 1), 'true'
(MultiVae's: the image's by 1, the scores' by 8,735 / 12) or 'false' (both by 1);
``--rescale-image F`` weights the image's by F and the scores' by 1.
``--volumes`` gives the CRMVAE the whole volumes (26 x 32 x 27 voxels, background included)
as an image modality, ``modalities={"mri": (1, 26, 32, 27), "clinical": 12}``, with its
convolutional expert and decoder; the baselines and the image's error stay on the masked
voxels.

Run: ``python benchmarks/bench_crmvae_clinical.py [--seeds 0 1 2] [--rescale-image F]
[--rescaling auto|true|false] [--volumes]``.
"""

import argparse
import time

import numpy as np
import torch
from scipy.stats import multivariate_normal
from sklearn.impute import KNNImputer
from sklearn.linear_model import RidgeCV

from nidl_vae import CRMVAE
from nidl_vae.datasets import make_imaging_clinical_cohort, make_mni_cohort

ALPHAS = np.logspace(-3, 6, 19)


def evaluate(seed: int, volumes: bool = False, **params) -> dict:
    cohort = make_imaging_clinical_cohort(random_state=seed)
    X, p = cohort.X, cohort.n_voxels
    with_scores = np.flatnonzero(~cohort.missing)
    test = np.random.default_rng(seed).permutation(with_scores)[: int(0.3 * len(with_scores))]
    train = np.setdiff1d(np.arange(len(X)), test)
    fitted = train[~cohort.missing[train]]
    scores = X[test, p:]
    # what the CRMVAE reads: the masked voxels, or the whole volumes (the same subjects)
    modalities, model_X, masked = {"mri": p, "clinical": X.shape[1] - p}, X, slice(None)
    if volumes:
        whole = make_mni_cohort(len(X), 6.0, random_state=seed)[0]  # the cohort's volumes
        assert np.array_equal(whole[:, 0][:, cohort.mask], X[:, :p])
        modalities["mri"] = whole.shape[1:]
        model_X = np.concatenate([whole.reshape(len(X), -1), X[:, p:]], 1)
        masked = np.flatnonzero(np.broadcast_to(cohort.mask, whole.shape[1:]).ravel())
    p_model = model_X.shape[1] - modalities["clinical"]
    start = time.perf_counter()
    crm = CRMVAE(modalities=modalities, random_state=seed, **params)
    crm.fit(model_X[train])
    seconds = time.perf_counter() - start

    def mse(a, b):
        return float(np.mean((a - b) ** 2))

    blanked, unscored = model_X[test].copy(), X[test].copy()
    blanked[:, p_model:], unscored[:, p:] = np.nan, np.nan
    result = {
        "fit seconds": seconds,
        "clinical: CRMVAE": mse(crm.impute(blanked)[:, p_model:], scores),
        "clinical: RidgeCV": mse(
            RidgeCV(alphas=ALPHAS).fit(X[fitted, :p], X[fitted, p:]).predict(X[test, :p]), scores
        ),
        "clinical: KNNImputer": mse(KNNImputer().fit(X[train]).transform(unscored)[:, p:], scores),
        "clinical: column means": mse(np.nanmean(X[train, p:], 0), scores),
        "clinical: best possible": float(cohort.best_mse.mean()),
    }
    images = X[test, :p]
    blanked = model_X[test].copy()
    blanked[:, :p_model] = np.nan
    ridge = RidgeCV(alphas=ALPHAS).fit(X[fitted, p:], X[fitted, :p])
    # in units of 1e-6: voxel intensities lie in [0, 1]
    result |= {
        "image (1e-6): CRMVAE": 1e6 * mse(crm.impute(blanked)[:, :p_model][:, masked], images),
        "image (1e-6): RidgeCV": 1e6 * mse(ridge.predict(X[test, p:]), images),
        "image (1e-6): mean image": 1e6 * mse(X[train, :p].mean(0), images),
    }
    train_scores = X[fitted, p:]
    gaussian = multivariate_normal(train_scores.mean(0), np.cov(train_scores.T))
    truth = [
        multivariate_normal(m, cohort.covariance_given_age).logpdf(s)
        for m, s in zip(cohort.age_part[test], scores, strict=True)
    ]
    result |= {
        "log p(clinical | mri): CRMVAE": float(
            np.mean(crm.conditional_log_likelihood(model_X[test], target="clinical", given="mri"))
        ),
        "log p(clinical): Gaussian": float(np.mean(gaussian.logpdf(scores))),
        "log p(clinical | exact age)": float(np.mean(truth)),
    }
    return result


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--rescale-image", type=float)
    parser.add_argument("--rescaling", choices=["auto", "true", "false"], default="auto")
    parser.add_argument("--volumes", action="store_true")
    args = parser.parse_args()
    torch.set_num_threads(1)
    rescaling = {"auto": "auto", "true": True, "false": False}[args.rescaling]
    params = {"volumes": args.volumes, "uses_likelihood_rescaling": rescaling}
    if args.rescale_image is not None:
        params["rescale_factors"] = {"mri": args.rescale_image, "clinical": 1.0}
    results = [evaluate(seed, **params) for seed in args.seeds]
    print(f"seeds {args.seeds}")
    for key in results[0]:
        print(f"  {key:34s} " + ", ".join(f"{r[key]:.3f}" for r in results))
    ratio = [
        r["clinical: CRMVAE"] / min(r["clinical: RidgeCV"], r["clinical: KNNImputer"])
        for r in results
    ]
    print("  clinical: CRMVAE / better baseline  " + ", ".join(f"{v:.2f}" for v in ratio))


if __name__ == "__main__":
    main()
