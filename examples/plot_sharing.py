"""
Sharing a fitted model without pickle
=====================================

A model trained at one site is used at another that never sees the training data. ``save``
writes a fitted estimator to one ``.npz`` file (parameters and fitted attributes as JSON,
weights as arrays) and :func:`nidl_vae.load` rebuilds it without running any code from the
file. Here a CVAE normative model of digits given their label is saved, loaded as a new
estimator, and shown to give the same scores bit for bit. The file's JSON header (who wrote
it, the class, its parameters and fitted shape) is read with ``numpy.load(...,
allow_pickle=False)``, as a receiving site would inspect it before use.
"""

import json
import os
import tempfile
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split

from nidl_vae import CVAE, load

EPOCHS = 3 if os.environ.get("NIDL_VAE_FAST_EXAMPLES") else 100

X, y = load_digits(return_X_y=True)
X_train, X_site, y_train, y_site = train_test_split(X / 16, y, test_size=0.3, random_state=0)
model = CVAE(latent_dim=8, max_epochs=EPOCHS, random_state=0).fit(X_train, conditions=y_train)

# %%
# Save, then load as a receiving site would: a new estimator, nothing shared but the file
with tempfile.TemporaryDirectory() as folder:
    path = Path(folder) / "normative.npz"
    model.save(path)
    print(f"file size: {path.stat().st_size / 1e6:.2f} MB")
    with np.load(path, allow_pickle=False) as archive:
        header = json.loads(str(archive["__nidl_vae__"]))
    received = load(path)

print("written by:", header["versions"])
print(
    f"{header['estimator']}, latent_dim={header['params']['latent_dim']}, fitted on "
    f"{header['fitted']['n_features_in_']} features, {header['fitted']['n_iter_']} epochs"
)

# %%
# The received model scores the site's digits exactly as the original does: each digit's
# ELBO given its label (low for digits that do not look like their label)
original = model.score_samples(X_site, conditions=y_site)
loaded = received.score_samples(X_site, conditions=y_site)
print(f"largest difference between the two models' scores: {np.abs(original - loaded).max()}")

fig, ax = plt.subplots(figsize=(5, 4.5))
ax.scatter(original, loaded, s=8, c=y_site, cmap="tab10")
ax.axline((original.mean(), original.mean()), slope=1, color="gray", lw=0.8)
ax.set(
    xlabel="score_samples, original model (nats)",
    ylabel="score_samples, loaded model (nats)",
    title="Saved and loaded: identical scores",
)
plt.show()
