"""
Quickstart: a VAE on digits
===========================

Fit a VAE with a 2-D latent space on scikit-learn's 8x8 digits (scaled to [0, 1]), then look at
what it learned: the latent map coloured by digit, reconstructions of held-out digits, digits
generated from the prior, and the training curve kept in ``history_``. It prints how well
the two latents separate the digits (a logistic regression's held-out accuracy) next to the
first two principal components. Run without a display (a cluster node, a container), it saves
its figures to a folder and prints where.
"""

import os
import tempfile
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
from sklearn.datasets import load_digits
from sklearn.decomposition import PCA
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import train_test_split

from nidl_vae import VAE

EPOCHS = 3 if os.environ.get("NIDL_VAE_FAST_EXAMPLES") else 100
# With a display the figures open in windows at the end; without one (matplotlib's
# non-interactive backends: a cluster node, a container) each is saved as it is drawn
HEADLESS = plt.get_backend().lower() in ("agg", "pdf", "ps", "svg", "pgf", "cairo", "template")
FIGURES = Path(tempfile.gettempdir()) / "nidl_vae_quickstart"


def keep(fig, name: str) -> None:
    if HEADLESS:
        FIGURES.mkdir(exist_ok=True)
        fig.savefig(FIGURES / f"{name}.png", dpi=100)


X, y = load_digits(return_X_y=True)
X_train, X_test, y_train, y_test = train_test_split(X / 16, y, test_size=0.25, random_state=0)

vae = VAE(latent_dim=2, max_epochs=EPOCHS, random_state=0).fit(X_train)
print(f"trained {vae.n_iter_} epochs on {len(X_train)} digits of 64 pixels")
print(f"held-out mean ELBO: {vae.score(X_test):.1f} nats per digit")

# %%
# What the two latents learned: a logistic regression trained on the training digits' latents
# reads the held-out digits' classes, against the same classifier on two principal components
pca = PCA(2).fit(X_train)
for name, encode in (("VAE latents", vae.transform), ("PCA components", pca.transform)):
    clf = LogisticRegression(max_iter=1000).fit(encode(X_train), y_train)
    print(f"digit accuracy from 2 {name}: {clf.score(encode(X_test), y_test):.3f}")

# %%
# The latent map: posterior means of held-out digits
Z = vae.transform(X_test)
fig, ax = plt.subplots(figsize=(6, 5))
points = ax.scatter(Z[:, 0], Z[:, 1], c=y_test, cmap="tab10", s=12)
fig.colorbar(points, ax=ax, label="digit")
ax.set(xlabel="$z_1$", ylabel="$z_2$", title="Held-out digits in the VAE's latent space")
keep(fig, "latent_map")

# %%
# Reconstructions (bottom) of held-out digits (top), and digits generated from N(0, I)
reconstructed = vae.inverse_transform(Z[:10])
generated = vae.sample(10, random_state=0)
fig, axes = plt.subplots(3, 10, figsize=(10, 3.3))
for row, (images, label) in enumerate(
    [(X_test[:10], "held-out"), (reconstructed, "reconstructed"), (generated, "generated")]
):
    for ax, image in zip(axes[row], images, strict=True):
        ax.imshow(image.reshape(8, 8), cmap="gray_r", vmin=0, vmax=1)
        ax.set_axis_off()
    axes[row, 0].set_title(label, loc="left", fontsize=9)
keep(fig, "reconstructed_and_generated")

# %%
# The training curve: per-epoch means of the loss and its two terms (``vae.history_``). The
# loss goes below zero: the reconstruction term is a negative log-density of continuous
# pixels, and a density, unlike a probability, may exceed 1 (a Normal of scale 0.05 has
# density 8 at its mean), so a model that places the pixels precisely earns negative nats.
fig, ax = plt.subplots(figsize=(6, 3.5), layout="constrained")
epochs = np.arange(1, vae.n_iter_ + 1)
for name in ("loss", "reconstruction", "kl"):
    ax.plot(epochs, vae.history_[name], label=name)
ax.axhline(0, color="0.7", lw=0.8, zorder=0)
ax.set(
    xlabel="epoch",
    ylabel="nats per digit",
    title="Training curve: loss = reconstruction + KL (beta = 1)",
)
ax.legend()
keep(fig, "training_curve")

if HEADLESS:
    print(f"no display: figures saved in {FIGURES}")
else:
    plt.show()
