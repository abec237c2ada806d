"""The quickstart's printed accuracy over seeds: how far README's figure may drift.

Fits the quickstart's model (``examples/plot_quickstart.py``: ``VAE(latent_dim=2)``, 100
epochs, the same split of the digits) with each of ``--seeds`` and prints the held-out accuracy
of a logistic regression from the two latents, with the seeds' range. README quotes seed 0;
``tests/test_docs.py`` runs the quickstart and allows the range measured here.

    python benchmarks/bench_quickstart.py [--seeds 0 1 2 3 4]
"""

import argparse

import numpy as np
import torch
from sklearn.datasets import load_digits
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import train_test_split

from nidl_vae import VAE


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4])
    args = parser.parse_args()
    torch.set_num_threads(1)
    X, y = load_digits(return_X_y=True)
    X_train, X_test, y_train, y_test = train_test_split(X / 16, y, test_size=0.25, random_state=0)
    scores = []
    for seed in args.seeds:
        vae = VAE(latent_dim=2, max_epochs=100, random_state=seed).fit(X_train)
        clf = LogisticRegression(max_iter=1000).fit(vae.transform(X_train), y_train)
        scores.append(clf.score(vae.transform(X_test), y_test))
        print(f"random_state={seed}: accuracy from 2 VAE latents {scores[-1]:.3f}", flush=True)
    print(
        f"over {len(scores)} seeds: median {np.median(scores):.3f}, "
        f"range {min(scores):.3f}-{max(scores):.3f} ({max(scores) - min(scores):.3f})"
    )


if __name__ == "__main__":
    main()
