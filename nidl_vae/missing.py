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

    NaN cells take their feature's training mean; with ``with_mask``, the mask of missing
    cells (1 where missing) is appended along dimension 1: after the features of a row, or as
    extra channels of an image.

    Parameters
    ----------
    fill : Tensor
        The value of each cell of one sample where it is missing (the training mean).
    with_mask : bool
        Whether the mask is appended (the default networks, when the training data had NaN
        cells); a network given by the user reads the filled values alone.
    """

    def __init__(self, fill: Tensor, with_mask: bool):
        super().__init__()
        self.register_buffer("fill", fill)
        self.with_mask = with_mask

    def forward(self, x: Tensor) -> Tensor:
        missing = torch.isnan(x)
        if not self.with_mask and not missing.any():
            return x
        filled = torch.where(missing, self.fill.to(x.dtype), x)
        if self.with_mask:
            return torch.cat([filled, missing.to(x.dtype)], 1)
        return filled
