"""
CVAE: digits generated per label, and counterfactuals
=====================================================

A conditional VAE learns :math:`p(x | z, y)`: the label y is given, so the latent z keeps what
the label does not say (slant, thickness, style). ``sample(conditions=y)`` draws a digit for
each label; ``inverse_transform(Z, conditions=y)`` decodes a real digit's latent under another
label: the same style, another digit.
"""

import os

import matplotlib.pyplot as plt
import numpy as np
from sklearn.datasets import load_digits

from nidl_vae import CVAE

EPOCHS = 3 if os.environ.get("NIDL_VAE_FAST_EXAMPLES") else 100
X, y = load_digits(return_X_y=True)
X = X / 16
cvae = CVAE(max_epochs=EPOCHS, random_state=0).fit(X, conditions=y)

# %%
# Eight generated digits per label: one column per label
labels = np.tile(np.arange(10), 8)
generated = cvae.sample(conditions=labels, random_state=0)
fig, axes = plt.subplots(8, 10, figsize=(7, 6))
for ax, image in zip(axes.ravel(), generated, strict=True):
    ax.imshow(image.reshape(8, 8), cmap="gray_r", vmin=0, vmax=1)
    ax.set_axis_off()
fig.suptitle("CVAE.sample(conditions=y): each column one label")

# %%
# Counterfactuals: a real digit (left) encoded with its label, decoded under every label
rows = [np.flatnonzero(y == k)[0] for k in (3, 7, 0)]
Z = cvae.transform(X[rows], conditions=y[rows])
fig, axes = plt.subplots(len(rows), 11, figsize=(8, 2.4))
for i, (row, z) in enumerate(zip(rows, Z, strict=True)):
    axes[i, 0].imshow(X[row].reshape(8, 8), cmap="Reds", vmin=0, vmax=1)
    decoded = cvae.inverse_transform(np.repeat(z[None], 10, 0), conditions=np.arange(10))
    for k in range(10):
        axes[i, k + 1].imshow(decoded[k].reshape(8, 8), cmap="gray_r", vmin=0, vmax=1)
for ax in axes.ravel():
    ax.set_axis_off()
fig.suptitle("real digit (red), then its latent decoded as 0, 1, ..., 9")
plt.show()
