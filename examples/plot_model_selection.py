"""
Model selection: GridSearchCV over beta and latent_dim
======================================================

A VAE is an ordinary scikit-learn transformer, so a Pipeline ``VAE -> LogisticRegression``
goes into ``GridSearchCV`` like any other. Here the grid crosses the KL weight ``beta`` with the
latent dimension, scored by classification accuracy of the latents; the score surface shows
which combinations keep the digits' identity in the latent space.
"""

import os

import matplotlib.pyplot as plt
import numpy as np
from sklearn.datasets import load_digits
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import GridSearchCV
from sklearn.pipeline import make_pipeline

from nidl_vae import VAE

FAST = bool(os.environ.get("NIDL_VAE_FAST_EXAMPLES"))
X, y = load_digits(return_X_y=True)
X = X / 16

pipeline = make_pipeline(
    VAE(max_epochs=2 if FAST else 30, random_state=0), LogisticRegression(max_iter=1000)
)
grid = {
    "vae__beta": [0.5, 2.0] if FAST else [0.25, 1.0, 4.0],
    "vae__latent_dim": [2, 4] if FAST else [2, 5, 10],
}
search = GridSearchCV(pipeline, grid, cv=3).fit(X, y)
print("best parameters:", search.best_params_, f"accuracy {search.best_score_:.3f}")

# %%
# The score surface: mean cross-validated accuracy for each (beta, latent_dim)
scores = search.cv_results_["mean_test_score"].reshape(
    len(grid["vae__beta"]), len(grid["vae__latent_dim"])
)
fig, ax = plt.subplots(figsize=(5, 4))
image = ax.imshow(scores, cmap="viridis", origin="lower")
ax.set_xticks(range(len(grid["vae__latent_dim"])), grid["vae__latent_dim"])
ax.set_yticks(range(len(grid["vae__beta"])), grid["vae__beta"])
ax.set(xlabel="latent_dim", ylabel="beta", title="Accuracy of a classifier on VAE latents")
for (i, j), value in np.ndenumerate(scores):
    ax.text(j, i, f"{value:.2f}", ha="center", va="center", color="w")
fig.colorbar(image, ax=ax)
plt.show()
