"""Default networks sized from the data, and the Gaussian heads every encoder feeds."""

from collections.abc import Sequence

import torch
from torch import Tensor, nn


def mlp(
    in_dim: int, hidden_layer_sizes: Sequence[int], out_dim: int | None = None
) -> nn.Sequential:
    """Linear + ReLU layers of the given widths, then an optional linear output layer."""
    layers: list[nn.Module] = []
    for width in hidden_layer_sizes:
        layers += [nn.Linear(in_dim, width), nn.ReLU()]
        in_dim = width
    if out_dim is not None:
        layers.append(nn.Linear(in_dim, out_dim))
    return nn.Sequential(*layers)


class GaussianEncoder(nn.Module):
    """Any backbone followed by two linear heads: :math:`\\mu(x)` and :math:`\\log s^2(x)`.

    The backbone's output is flattened, so a convolutional backbone can end in feature maps.
    Conditions ``c``, when given, are appended to the features the heads read.
    """

    def __init__(
        self, backbone: nn.Module, backbone_out_dim: int, latent_dim: int, cond_dim: int = 0
    ):
        super().__init__()
        self.backbone = backbone
        self.mu = nn.Linear(backbone_out_dim + cond_dim, latent_dim)
        self.logvar = nn.Linear(backbone_out_dim + cond_dim, latent_dim)

    def forward(self, x: Tensor, c: Tensor | None = None) -> tuple[Tensor, Tensor]:
        h = self.backbone(x).flatten(1)
        if c is not None:
            h = torch.cat([h, c], dim=1)
        return self.mu(h), self.logvar(h)


def output_width(module: nn.Module, example: Tensor) -> int:
    """Flattened width of ``module``'s output on an example batch (weights untouched)."""
    was_training = module.training
    module.eval()
    with torch.no_grad():
        width = module(example).flatten(1).shape[1]
    module.train(was_training)
    return width
