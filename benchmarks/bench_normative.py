"""Normative modelling of lesioned brains: deviation maps and subject scores of a CVAE.

On ``nidl_vae.datasets.make_lesion_cohort`` (MNI-based brains at 6 mm, 8,735 voxels; age, sex
and three sites with gains 1, 1.15 and 0.85; 40 patients with one lesion of 12 mm radius
removing 30% of the intensity), a ``CVAE`` conditioned on a DataFrame of age, sex and site is
fitted on 200 healthy subjects and calibrated on 50 others; 50 held-out healthy subjects and
the 40 patients are scored. For each seed it prints:

- how often a held-out healthy voxel's deviation exceeds 1.96 in absolute value (5% for a
  standard normal), and the deviations' mean and SD;
- the share of patients whose most negative voxel lies within 12 mm of the lesion centre;
- the subject scores' AUC (patients against held-out healthy), the share of patients and of
  held-out healthy subjects above 1.645, and the held-out healthy scores' mean and SD;
- the same subject scores for other tails of the statistic (``DEVIATION_TAIL``) and, as a
  baseline, the negative ELBO (``-score_samples``) standardised on the calibration subjects.

``--only new-site``: a fourth site (gain 1.3) is added to a CVAE fitted on three from 20 of its
healthy subjects (``CVAE.adapt``), and its 80 other healthy subjects are scored, against a CVAE
fitted again with those 20 subjects (and calibrated with them too).

Run: ``python benchmarks/bench_normative.py [--seeds 0 1 2] [--only lesions|new-site]``
(about 4 minutes per seed on one thread).
"""

import argparse
import time

import numpy as np
import torch
from sklearn.metrics import roc_auc_score

import nidl_vae.normative as normative
from nidl_vae import CVAE
from nidl_vae.datasets import make_lesion_cohort


def evaluate(seed: int, tails=(0.005, 0.01, 0.02)) -> dict:
    cohort = make_lesion_cohort(n_healthy=300, n_patients=40, random_state=seed)
    X = cohort.volumes[:, 0][:, cohort.mask]
    covariates = cohort.covariates
    healthy = np.random.default_rng(seed).permutation(np.flatnonzero(~cohort.patient))
    train, reference, held_out = healthy[:200], healthy[200:250], healthy[250:]
    patients = np.flatnonzero(cohort.patient)
    cvae = CVAE(random_state=seed).fit(X[train], conditions=covariates.iloc[train])
    cvae.calibrate(X[reference], conditions=covariates.iloc[reference], scale_by="site")

    def scored(rows):
        return X[rows], covariates.iloc[rows]

    d_healthy = cvae.deviations(*scored(held_out))
    d_patients = cvae.deviations(*scored(patients))
    mm = np.argwhere(cohort.mask) @ cohort.affine[:3, :3].T + cohort.affine[:3, 3]
    distance = np.linalg.norm(mm[d_patients.argmin(1)] - cohort.lesion_center[patients], axis=1)
    result = {
        "voxels |d| > 1.96": np.mean(np.abs(d_healthy) > 1.96),
        "voxel d mean": d_healthy.mean(),
        "voxel d SD": d_healthy.std(),
        "localised within 12 mm": np.mean(distance <= 12),
    }
    labels = np.r_[np.zeros(len(held_out)), np.ones(len(patients))]
    default_tail = normative.DEVIATION_TAIL
    for tail in tails:
        normative.DEVIATION_TAIL = tail
        cvae.calibrate(X[reference], conditions=covariates.iloc[reference], scale_by="site")
        s_healthy = cvae.deviation_scores(*scored(held_out))
        s_patients = cvae.deviation_scores(*scored(patients))
        name = "default" if tail == default_tail else f"tail {tail}"
        result[f"{name}: AUC"] = roc_auc_score(labels, np.r_[s_healthy, s_patients])
        result[f"{name}: patients > 1.645"] = np.mean(s_patients > 1.645)
        result[f"{name}: healthy > 1.645"] = np.mean(s_healthy > 1.645)
        result[f"{name}: healthy mean"] = s_healthy.mean()
        result[f"{name}: healthy SD"] = s_healthy.std()
    normative.DEVIATION_TAIL = default_tail
    # the baseline: the negative ELBO, z-scored against the calibration subjects
    elbo = [
        -cvae.score_samples(X[rows], conditions=covariates.iloc[rows])
        for rows in (reference, held_out, patients)
    ]
    z = [(e - elbo[0].mean()) / elbo[0].std(ddof=1) for e in elbo[1:]]
    result["ELBO: AUC"] = roc_auc_score(labels, np.r_[z[0], z[1]])
    result["ELBO: patients > 1.645"] = np.mean(z[1] > 1.645)
    result["ELBO: healthy > 1.645"] = np.mean(z[0] > 1.645)
    return result


def new_site(seed: int) -> dict:
    """A fourth site (gain 1.3, beyond the others) added from 20 of its healthy subjects by
    ``adapt``, against a CVAE fitted again with them; its other healthy subjects scored."""
    gains = {"A": 1.0, "B": 1.15, "C": 0.85, "D": 1.3}
    cohort = make_lesion_cohort(n_healthy=400, n_patients=0, site_gains=gains, random_state=seed)
    X, covariates = cohort.volumes[:, 0][:, cohort.mask], cohort.covariates
    rng = np.random.default_rng(seed)
    known = rng.permutation(np.flatnonzero(covariates["site"] != "D"))
    new = rng.permutation(np.flatnonzero(covariates["site"] == "D"))
    train, reference, adapted, held_out = known[:220], known[220:], new[:20], new[20:]

    def calibration(model, name):
        d = model.deviations(X[held_out], conditions=covariates.iloc[held_out])
        s = model.deviation_scores(X[held_out], conditions=covariates.iloc[held_out])
        return {
            f"{name}: voxels |d| > 1.96": np.mean(np.abs(d) > 1.96),
            f"{name}: voxel d SD": d.std(),
            f"{name}: scores mean": s.mean(),
            f"{name}: scores > 1.645": np.mean(s > 1.645),
        }

    cvae = CVAE(random_state=seed).fit(X[train], conditions=covariates.iloc[train])
    cvae.calibrate(X[reference], conditions=covariates.iloc[reference], scale_by="site")
    start = time.perf_counter()
    cvae.adapt(X[adapted], conditions=covariates.iloc[adapted])
    result = {"adapt seconds": time.perf_counter() - start, **calibration(cvae, "adapted")}
    everyone = np.r_[train, adapted]
    refit = CVAE(random_state=seed).fit(X[everyone], conditions=covariates.iloc[everyone])
    calibrating = np.r_[reference, adapted]
    refit.calibrate(X[calibrating], conditions=covariates.iloc[calibrating], scale_by="site")
    return {**result, **calibration(refit, "refitted")}


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--only", choices=["lesions", "new-site"])
    args = parser.parse_args()
    torch.set_num_threads(1)
    sections = {"lesions": evaluate, "new-site": new_site}
    for name, section in sections.items():
        if args.only not in (None, name):
            continue
        results = [section(seed) for seed in args.seeds]
        print(f"== {name}: seeds {args.seeds}; DEVIATION_TAIL = {normative.DEVIATION_TAIL} ==")
        for key in results[0]:
            values = ", ".join(f"{r[key]:.3f}" for r in results)
            print(f"  {key:34s} {values}")


if __name__ == "__main__":
    main()
