"""CVAE on digits conditioned on their label: generation and counterfactuals.

A CVAE with default parameters (and one with ``prior_network='mlp'``) is fitted on all of
scikit-learn's digits scaled to [0, 1]. Printed: how often a logistic regression trained on the
real digits recognises 100 generated digits per label as that label, and how often a digit's
latent decoded under the next label ((y + 1) mod 10) is recognised as that label.

    python benchmarks/bench_cvae_generation.py [--seed 0]
"""

import argparse

import numpy as np
import torch
from sklearn.datasets import load_digits
from sklearn.linear_model import LogisticRegression

from nidl_vae import CVAE


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    torch.set_num_threads(1)
    X, y = load_digits(return_X_y=True)
    X = X / 16
    classifier = LogisticRegression(max_iter=2000).fit(X, y)
    labels, other = np.repeat(np.arange(10), 100), (y + 1) % 10
    print(f"{'prior':24s} {'generated':>10s} {'counterfactual':>15s}")
    for prior in (None, "mlp"):
        cvae = CVAE(prior_network=prior, random_state=args.seed).fit(X, conditions=y)
        generated = (classifier.predict(cvae.sample(conditions=labels)) == labels).mean()
        counterfactual = cvae.inverse_transform(cvae.transform(X, conditions=y), conditions=other)
        swapped = (classifier.predict(counterfactual) == other).mean()
        name = "N(0, I) (default)" if prior is None else "learned ('mlp')"
        print(f"{name:24s} {generated:10.3f} {swapped:15.3f}")


if __name__ == "__main__":
    main()
