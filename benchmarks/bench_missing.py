"""Imputation of cells missing completely at random: VAE against scikit-learn's imputers.

Digits scaled to [0, 1]; a fraction of the cells (20% and 50%) blanked at random in training
and test rows alike; a 70/30 split. Each imputer is fitted on the incomplete training rows and
fills the test rows; the figure is the mean squared error on the missing test cells, averaged
over seeds (the split and the mask change with the seed, and so does the VAE's).

Run: ``python benchmarks/bench_missing.py`` (about 5 minutes on one CPU thread).
"""

import argparse
import statistics
import time

import numpy as np
import torch
from sklearn.datasets import load_digits
from sklearn.experimental import enable_iterative_imputer  # noqa: F401
from sklearn.impute import IterativeImputer, KNNImputer
from sklearn.model_selection import train_test_split

from nidl_vae import VAE


def missing_completely_at_random(X, rate, seed):
    """X with a fraction ``rate`` of its cells set to NaN, chosen independently."""
    X = X.copy()
    X[np.random.default_rng(seed).random(X.shape) < rate] = np.nan
    return X


def imputation_errors(rate: float, seed: int, with_posterior_mean: bool = False) -> dict:
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
    vae = VAE(random_state=seed).fit(train_holes)
    errors["VAE"] = error(vae.impute(test_holes))
    errors["VAE seconds"] = time.perf_counter() - start
    if with_posterior_mean:
        errors["VAE, posterior mean decoded"] = error(vae.impute(test_holes, n_draws=None))
    return errors


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rates", type=float, nargs="+", default=[0.2, 0.5])
    parser.add_argument("--seeds", type=int, default=3)
    args = parser.parse_args()
    torch.set_num_threads(1)
    for rate in args.rates:
        runs = [imputation_errors(rate, seed, True) for seed in range(args.seeds)]
        mean = {key: statistics.mean(run[key] for run in runs) for key in runs[0]}
        best = min(mean["KNNImputer"], mean["IterativeImputer"])
        print(f"== {rate:.0%} of the cells missing, mean of {args.seeds} seeds ==")
        for key, value in mean.items():
            if key != "VAE seconds":
                print(f"  {key:<28} MSE {value:.4f} ({value / best:.2f}x the better imputer)")
        print(f"  VAE fit and impute: {mean['VAE seconds']:.0f} s")


if __name__ == "__main__":
    main()
