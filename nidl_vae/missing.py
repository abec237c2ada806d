"""Missing cells: NaN values of X, read by the encoder and left out of the likelihood.

Following MIWAE (Mattei & Frellsen, 2019) and HI-VAE (Nazabal et al., 2020), with the mask
:math:`m_j = 1` where :math:`x_j` is observed, the likelihood runs over the observed cells and
the encoder reads the observed values (missing ones at their feature's training mean) beside
the mask:

.. math:: \\log p(x_{\\mathrm{obs}} | z) = \\sum_j m_j \\log p(x_j | z), \\qquad
    q(z | x_{\\mathrm{obs}}) = q(z \\mid \\tilde x, 1 - m), \\quad
    \\tilde x_j = m_j x_j + (1 - m_j) \\bar x_j

This is right when cells are missing at random; when whether a value is missing depends on
the value itself (missing not at random) the model of :math:`x` is biased.
"""

import torch
from torch import Tensor, nn


def missing_cells(x: Tensor) -> Tensor | None:
    """The boolean mask of NaN cells of ``x``, or None when it has none (the common case,
    which then costs one pass over the batch)."""
    missing = torch.isnan(x)
    return missing if missing.any() else None


class FilledInput(nn.Module):
    """The encoder's input for rows that may hold NaN cells.

    With a ``unit`` (the default encoders), the input is each feature's deviation from its
    training mean in the model's units, :math:`(x - \\bar x) / u`, so that the encoder reads X
    and :math:`a X + b` alike; without, X as it is (a network given by the user). NaN cells
    take their feature's training mean; with ``with_mask``, the mask of missing cells (1
    where missing) is appended along dimension 1: after the features of a row, or as extra
    channels of an image.

    Centring matters on wide data: brain intensities sit far from zero (a masked MNI-based
    brain's mean is ~20 times its voxels' spread), and read uncentred, every subject gave the
    encoder nearly the same hidden units and the VAE's latents collapsed (the figures are in
    the comment on ``nidl_vae.distributions.MODEL_SPREAD``).

    Parameters
    ----------
    mean : Tensor
        The training mean of each cell of one sample, in X's units.
    with_mask : bool
        Whether the mask is appended (the default networks, when the training data had NaN
        cells); a network given by the user reads the filled values alone.
    unit : float, optional
        The model's unit u in X's units (see
        :class:`~nidl_vae.distributions.DecoderLikelihood`); None reads X as it is.
    """

    def __init__(self, mean: Tensor, with_mask: bool, unit: float | None = None):
        super().__init__()
        self.scales = unit is not None
        # buffers, so that a saved model keeps its data's unit and origin (a model saved
        # before the origin was kept read X uncentred: its origin is zero)
        self.register_buffer("data_unit", torch.tensor(1.0 if unit is None else float(unit)))
        self.register_buffer("fill", mean / self.data_unit)
        self.register_buffer("origin", self.fill.clone() if self.scales else mean * 0)
        self.with_mask = with_mask

    def forward(self, x: Tensor) -> Tensor:
        if self.scales:
            x = x / self.data_unit.to(x.dtype)
        missing = torch.isnan(x)
        if missing.any():
            x = torch.where(missing, self.fill.to(x.dtype), x)
        if self.scales:
            # in place: x is the division's own tensor here, and one batch-sized temporary
            # less is 51 MB at 128 rows of 100,000 voxels
            x = x.sub_(self.origin.to(x.dtype))
        if self.with_mask:
            return torch.cat([x, missing.to(x.dtype)], 1)
        return x
