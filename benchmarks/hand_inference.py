"""The baseline of inference through the Trainer: the estimators' former hand-written loop.

Before inference ran through ``Trainer.predict``, ``transform`` validated X, then encoded it
batch by batch (batches padded to whole blocks of 16 rows) under inference mode on the
module's device and concatenated the means. ``hand_transform`` is that loop over a fitted
estimator's model, so the benchmarks can time the Trainer's cost against it.
"""

import numpy as np
import torch

from nidl_vae.data import pad_rows
from nidl_vae.training import inference_batch_rows


def hand_transform(estimator, X, conditions=None) -> np.ndarray:
    """Posterior means of X's rows (given a CVAE's conditions), without a Trainer."""
    if conditions is None:
        rows = estimator._inference_rows(X)
    else:
        rows = estimator._conditioned_rows(X, conditions, "transform")
    model = estimator.module_.model
    device = next(model.parameters()).device
    batch_rows = inference_batch_rows(estimator.n_features_in_)
    outputs = []
    with torch.inference_mode():
        for start in range(0, len(rows), batch_rows):
            batch = rows.read(slice(start, min(start + batch_rows, len(rows))))
            batch, n = pad_rows({k: t.to(device) for k, t in batch.items()})
            outputs.append(model.posterior(batch).mu[:n])
    return torch.cat(outputs).cpu().numpy().astype(getattr(X, "dtype", np.float32), copy=False)
