"""
CRMVAE: imputing a missing modality
===================================

Each digit is split into two modalities, its left half and its right half. A CRMVAE learns one
latent space from both and, for a digit whose right half is missing (an all-NaN block), fills it
in from the left half. We compare with scikit-learn's ``KNNImputer``, training the CRMVAE on
complete digits and on data where 30% of the digits miss one half.
"""

import os

import matplotlib.pyplot as plt
import numpy as np
from sklearn.datasets import load_digits
from sklearn.impute import KNNImputer
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import train_test_split

from nidl_vae import CRMVAE

EPOCHS = 3 if os.environ.get("NIDL_VAE_FAST_EXAMPLES") else 200
X, y = load_digits(return_X_y=True)
pixels = np.arange(64).reshape(8, 8)
order = np.r_[pixels[:, :4].ravel(), pixels[:, 4:].ravel()]  # left half, then right half
X = X[:, order] / 16
X_train, X_test, y_train, y_test = train_test_split(X, y, test_size=0.3, random_state=0, stratify=y)
modalities = {"left": 32, "right": 32}

incomplete = X_train.copy()
rows = np.random.default_rng(0).permutation(len(incomplete))[: int(0.3 * len(incomplete))]
incomplete[rows[::2], :32] = np.nan
incomplete[rows[1::2], 32:] = np.nan

imputers = {
    "KNNImputer": KNNImputer().fit(X_train).transform,
    "CRMVAE": CRMVAE(modalities=modalities, max_epochs=EPOCHS, random_state=0).fit(X_train).impute,
    "CRMVAE, 30% rows\nmissing a half": CRMVAE(
        modalities=modalities, max_epochs=EPOCHS, random_state=0
    )
    .fit(incomplete)
    .impute,
}

# %%
# Squared error of the imputed right half, and how often a classifier trained on real digits
# recognises the completed digit
classifier = LogisticRegression(max_iter=3000).fit(X_train, y_train)
missing_right = X_test.copy()
missing_right[:, 32:] = np.nan
completed = {name: impute(missing_right) for name, impute in imputers.items()}
for name, X_completed in completed.items():
    error = np.mean((X_completed[:, 32:] - X_test[:, 32:]) ** 2)
    recognised = np.mean(classifier.predict(X_completed) == y_test)
    print(
        f"{name.replace(chr(10), ' '):40s} squared error {error:.4f}, recognised {recognised:.3f}"
    )

# %%
# Test digits (top) and their right halves imputed from the left halves


def as_image(row):
    image = np.empty(64)
    image[order] = row
    return image.reshape(8, 8)


fig, axes = plt.subplots(1 + len(completed), 10, figsize=(9, 4.2))
for row, (name, images) in enumerate([("real", X_test), *completed.items()]):
    for ax, image in zip(axes[row], images[:10], strict=True):
        ax.imshow(as_image(image), cmap="gray_r", vmin=0, vmax=1)
        ax.axvline(3.5, color="tab:red", lw=0.8)
        ax.set_axis_off()
    axes[row, 0].set_title(name, loc="left", fontsize=8)
plt.show()
