"""Quickstart: a VAE on scikit-learn's digits, its latents used by a classifier.

Fits a 10-dimensional VAE with default parameters on 8x8 digit images scaled to [0, 1], then
shows what it learned: the bound on the held-out log-likelihood, how well it reconstructs
held-out digits, and how well a logistic regression classifies digits from the 10 latent
coordinates compared with 10 PCA components.
"""

import numpy as np
import torch
from sklearn.datasets import load_digits
from sklearn.decomposition import PCA
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import train_test_split
from sklearn.pipeline import make_pipeline

from nidl_vae import VAE

torch.set_num_threads(1)
X, y = load_digits(return_X_y=True)
X_train, X_test, y_train, y_test = train_test_split(X / 16, y, test_size=0.25, random_state=0)

vae = VAE(latent_dim=10, random_state=0).fit(X_train)
print(
    f"VAE trained for {vae.n_iter_} epochs; last training loss {vae.history_['loss'][-1]:.1f} nats "
    f"(KL {vae.history_['kl'][-1]:.1f} nats: the latent space is in use)"
)
print(
    f"held-out mean ELBO {vae.score(X_test):.1f} nats, "
    f"importance-weighted log-likelihood {vae.log_likelihood(X_test).mean():.1f} nats"
)

reconstruction = vae.inverse_transform(vae.transform(X_test))
print(
    f"held-out reconstruction error (MSE, pixels in [0, 1]): "
    f"{np.mean((reconstruction - X_test) ** 2):.4f} (predicting the mean digit: "
    f"{np.mean((X_train.mean(0) - X_test) ** 2):.4f})"
)

for name, reducer in [("VAE latents", VAE(latent_dim=10, random_state=0)), ("PCA", PCA(10))]:
    clf = make_pipeline(reducer, LogisticRegression(max_iter=1000)).fit(X_train, y_train)
    print(f"digit classification from 10 {name}: held-out accuracy {clf.score(X_test, y_test):.3f}")

print("generated digits (8x8, one per row of '#'s for pixels > 0.5):")
for image in vae.sample(3, random_state=0).reshape(-1, 8, 8):
    print("\n".join("".join("#" if v > 0.5 else "." for v in row) for row in image), end="\n\n")
