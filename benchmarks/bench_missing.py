"""Imputation of cells missing completely at random: VAE against scikit-learn's imputers.

Digits scaled to [0, 1]; a fraction of the cells (20% and 50%) blanked at random in training
and test rows alike; a 70/30 split. Each imputer is fitted on the incomplete training rows and
fills the test rows; the figure is the mean squared error on the missing test cells, averaged
over seeds (the split and the masks change with the seed, and so does the VAE's). The default
VAE (``n_train_draws='auto'``: on data with missing cells, 20 draws of the importance-weighted
bound) imputing with its default 1,000 draws; other ways of imputing with it: 100 and 5,000
draws, equal weights for the draws, and the posterior mean decoded; and the VAE trained on
the ELBO (``n_train_draws=1``, the default before 'auto').

Run: ``python benchmarks/bench_missing.py`` (about 10 minutes on one CPU thread).
"""

import argparse
import contextlib
import statistics
import time

import numpy as np
import torch
from sklearn.datasets import load_digits
from sklearn.experimental import enable_iterative_imputer  # noqa: F401
from sklearn.impute import IterativeImputer, KNNImputer
from sklearn.model_selection import train_test_split

from nidl_vae import VAE
from nidl_vae.vae import VAEModel

TRAIN_DRAWS = 20


def missing_completely_at_random(X, rate, seed):
    """X with a fraction ``rate`` of its cells set to NaN, chosen independently."""
    X = X.copy()
    X[np.random.default_rng(seed).random(X.shape) < rate] = np.nan
    return X


@contextlib.contextmanager
def equal_weights():
    """Impute with the plain mean of the K draws' decoded means (no importance weights)."""
    VAEModel.imputes_by_importance = False
    try:
        yield
    finally:
        VAEModel.imputes_by_importance = True


def imputation_errors(rate: float, seed: int) -> dict:
    """Mean squared error on the missing test cells of each imputer, for one seed."""
    X = load_digits().data / 16
    train, test = train_test_split(X, test_size=0.3, random_state=seed)
    train_holes = missing_completely_at_random(train, rate, seed)
    test_holes = missing_completely_at_random(test, rate, seed + 1000)
    missing = np.isnan(test_holes)

    def error(imputed):
        return float(np.mean((imputed[missing] - test[missing]) ** 2))

    errors = {
        "KNNImputer": error(KNNImputer().fit(train_holes).transform(test_holes)),
        "IterativeImputer": error(
            IterativeImputer(random_state=seed).fit(train_holes).transform(test_holes)
        ),
    }
    start = time.perf_counter()
    # the defaults: n_train_draws='auto' trains on 20 draws when cells are missing
    vae = VAE(random_state=seed).fit(train_holes)
    assert vae.n_train_draws_ == TRAIN_DRAWS
    errors[f"VAE() (n_train_draws_={TRAIN_DRAWS})"] = error(vae.impute(test_holes))
    errors["seconds"] = time.perf_counter() - start
    errors["  same, 100 draws"] = error(vae.impute(test_holes, n_draws=100))
    errors["  same, 5,000 draws"] = error(vae.impute(test_holes, n_draws=5000))
    with equal_weights():
        errors["  same, equal weights"] = error(vae.impute(test_holes))
    errors["  same, posterior mean decoded"] = error(vae.impute(test_holes, n_draws=None))
    errors["VAE(n_train_draws=1)"] = error(
        VAE(n_train_draws=1, random_state=seed).fit(train_holes).impute(test_holes)
    )
    return errors


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rates", type=float, nargs="+", default=[0.2, 0.5])
    parser.add_argument("--seeds", type=int, default=3)
    args = parser.parse_args()
    torch.set_num_threads(1)
    for rate in args.rates:
        runs = [imputation_errors(rate, seed) for seed in range(args.seeds)]
        mean = {key: statistics.mean(run[key] for run in runs) for key in runs[0]}
        best = min(mean["KNNImputer"], mean["IterativeImputer"])
        print(f"== {rate:.0%} of the cells missing, mean of {args.seeds} seeds ==")
        for key, value in mean.items():
            if key != "seconds":
                print(f"  {key:<32} MSE {value:.4f} ({value / best:.2f}x the better imputer)")
        print(f"  VAE() fit and impute: {mean['seconds']:.0f} s")


if __name__ == "__main__":
    main()
