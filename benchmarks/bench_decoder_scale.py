"""How the decoder scale's start and floor shape a VAE on digits in [0, 1].

The VAE's defaults (latent_dim=10, 100 epochs) on scikit-learn's digits scaled to [0, 1], 70%
for training (stratified split, seed 0). For each setting, means over the seeds of: the number
of active latent dimensions (mean KL to the prior above 0.01 nats on the test digits), the
accuracy of a logistic regression reading the training latents and predicting the test
digits' labels, and the test ELBO in nats (``score``, beta = 1). Start and floor are fractions
of the data's RMS feature standard deviation (0.27 here); the floor 0.0037 is the absolute
1e-3 used before the relative floor of 0.1.

    python benchmarks/bench_decoder_scale.py [--seeds 0 1 2]
"""

import argparse

import numpy as np
import torch
from sklearn.datasets import load_digits
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import train_test_split

import nidl_vae.distributions as distributions
from nidl_vae import VAE
from nidl_vae.objectives import gaussian_kl

# (label, decoder_scale, start, floor); None keeps the library's value
SETTINGS = [
    ("fixed scale 1 (MultiVae's default)", 1.0, None, None),
    ("learned, start 1.0, floor 0.1", "learned", 1.0, 0.1),
    ("learned, start 0.4, floor 0.1 (default)", "learned", 0.4, 0.1),
    ("learned, start 0.2, floor 0.1", "learned", 0.2, 0.1),
    ("learned, start 0.4, floor 0.0037 (1e-3)", "learned", 0.4, 0.0037),
    ("learned, start 0.4, floor 0.3", "learned", 0.4, 0.3),
]


def active_dimensions(vae, X):
    """Latent dimensions whose mean KL to the prior exceeds 0.01 nats."""
    with torch.inference_mode():
        x = torch.as_tensor(X, dtype=torch.float32)
        mu, logvar = vae.module_.model.posterior({"x": x})
        per_dim = gaussian_kl(mu[:, :, None], logvar[:, :, None]).mean(0)
    return int((per_dim > 0.01).sum())


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    args = parser.parse_args()
    torch.set_num_threads(1)
    X, y = load_digits(return_X_y=True)
    X_train, X_test, y_train, y_test = train_test_split(
        X / 16, y, test_size=0.3, random_state=0, stratify=y
    )
    defaults = distributions.LEARNED_SCALE_START, distributions.LEARNED_SCALE_FLOOR
    print(f"{'':42s} {'active dims':>11s} {'accuracy':>9s} {'test ELBO':>10s}")
    for label, scale, start, floor in SETTINGS:
        distributions.LEARNED_SCALE_START = defaults[0] if start is None else start
        distributions.LEARNED_SCALE_FLOOR = defaults[1] if floor is None else floor
        results = []
        for seed in args.seeds:
            vae = VAE(decoder_scale=scale, random_state=seed).fit(X_train)
            classifier = LogisticRegression(max_iter=3000).fit(vae.transform(X_train), y_train)
            results.append(
                (
                    active_dimensions(vae, X_test),
                    classifier.score(vae.transform(X_test), y_test),
                    vae.score(X_test),
                )
            )
        dims, accuracy, elbo = np.mean(results, 0)
        print(f"{label:42s} {dims:11.1f} {accuracy:9.3f} {elbo:10.1f}")


if __name__ == "__main__":
    main()
