"""
Missing values: imputing cells with a VAE
=========================================

Real tables have holes: a skipped questionnaire item, a failed regional measure. A VAE trains on
the observed cells only (its likelihood leaves NaN cells out and its encoder reads which cells
are missing) and ``impute`` fills each hole with its conditional mean given the rest of the row.
We blank 20% and then 50% of the cells of the digits at random, in training and test rows
alike, and compare with scikit-learn's ``KNNImputer`` and ``IterativeImputer``.
"""

import os

import matplotlib.pyplot as plt
import numpy as np
from sklearn.datasets import load_digits
from sklearn.experimental import enable_iterative_imputer  # noqa: F401
from sklearn.impute import IterativeImputer, KNNImputer
from sklearn.model_selection import train_test_split

from nidl_vae import VAE

EPOCHS = 3 if os.environ.get("NIDL_VAE_FAST_EXAMPLES") else "auto"
X = load_digits().data / 16
X_train, X_test = train_test_split(X, test_size=0.3, random_state=0)
rng = np.random.default_rng(0)


def blank(X, rate):
    """X with a fraction ``rate`` of its cells missing (NaN), chosen independently."""
    X = X.copy()
    X[rng.random(X.shape) < rate] = np.nan
    return X


# %%
# Each imputer is fitted on the incomplete training rows and fills the incomplete test rows;
# the error is measured on the cells that were blanked. With missing cells in its training
# data, the default VAE (``n_train_draws='auto'``) trains on 20 draws of the
# importance-weighted bound (MIWAE's objective), the better imputer.
errors, completed = {}, {}
for rate in (0.2, 0.5):
    train, test = blank(X_train, rate), blank(X_test, rate)
    missing = np.isnan(test)
    imputers = {
        "KNNImputer": KNNImputer(),
        "IterativeImputer": IterativeImputer(random_state=0),
        "VAE": VAE(max_epochs=EPOCHS, random_state=0),
    }
    for name, imputer in imputers.items():
        imputer.fit(train)
        filled = imputer.impute(test) if name == "VAE" else imputer.transform(test)
        errors[name, rate] = np.mean((filled[missing] - X_test[missing]) ** 2)
        completed[name, rate] = filled
        print(f"{rate:.0%} missing, {name:17s} squared error {errors[name, rate]:.4f}")
    completed["holes", rate] = test

# %%
# Squared error on the missing cells (lower is better)
fig, ax = plt.subplots(figsize=(6, 3.5))
names = ["KNNImputer", "IterativeImputer", "VAE"]
for i, rate in enumerate((0.2, 0.5)):
    values = [errors[name, rate] for name in names]
    ax.bar(np.arange(3) + 0.4 * i, values, width=0.4, label=f"{rate:.0%} of the cells missing")
ax.set_xticks(np.arange(3) + 0.2, names)
ax.set_ylabel("mean squared error")
ax.legend(loc="lower center", bbox_to_anchor=(0.5, 1.0), ncol=2, frameon=False)
fig.tight_layout()

# %%
# Test digits, the same with half of their pixels missing (grey), and their imputations
completed["original", 0.5] = X_test
rows = ["original", "holes", *names]
fig, axes = plt.subplots(len(rows), 6, figsize=(6, 5.4))
for r, name in enumerate(rows):
    for c in range(6):
        image = completed[name, 0.5][c].reshape(8, 8)
        axes[r, c].imshow(np.ma.masked_invalid(image), cmap="gray_r", vmin=0, vmax=1)
        axes[r, c].set_facecolor("#bbbbbb")
        axes[r, c].set_xticks([]), axes[r, c].set_yticks([])
    axes[r, 0].set_ylabel(name, rotation=0, ha="right", va="center", fontsize=8)
fig.tight_layout()
plt.show()
