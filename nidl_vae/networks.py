"""Default networks sized from the data, and the Gaussian heads every encoder feeds.

Every layer built here is initialised from a generator the estimator owns (PyTorch's default
initialisation, drawn from that generator): building a model never touches torch's global
generator, so fits running in several threads do not disturb one another.
"""

import math
from collections.abc import Sequence

import torch
from torch import Tensor, nn


def linear(in_dim: int, out_dim: int, generator: torch.Generator) -> nn.Linear:
    """An ``nn.Linear`` with PyTorch's default initialisation drawn from ``generator``:
    weights and biases uniform in :math:`\\pm 1/\\sqrt{\\mathrm{in\\_dim}}`."""
    layer = nn.utils.skip_init(nn.Linear, in_dim, out_dim)
    bound = 1.0 / math.sqrt(in_dim) if in_dim > 0 else 0.0
    with torch.no_grad():
        layer.weight.uniform_(-bound, bound, generator=generator)
        layer.bias.uniform_(-bound, bound, generator=generator)
    return layer


def mlp(
    in_dim: int,
    hidden_layer_sizes: Sequence[int],
    out_dim: int | None = None,
    *,
    generator: torch.Generator,
) -> nn.Sequential:
    """Linear + ReLU layers of the given widths, then an optional linear output layer."""
    layers: list[nn.Module] = []
    for width in hidden_layer_sizes:
        layers += [linear(in_dim, width, generator), nn.ReLU()]
        in_dim = width
    if out_dim is not None:
        layers.append(linear(in_dim, out_dim, generator))
    return nn.Sequential(*layers)


class GaussianEncoder(nn.Module):
    """Any backbone followed by two linear heads: :math:`\\mu(x)` and :math:`\\log s^2(x)`.

    The backbone's output is flattened, so a convolutional backbone can end in feature maps.
    Conditions ``c``, when given, are appended to the features the heads read.
    """

    def __init__(
        self,
        backbone: nn.Module,
        backbone_out_dim: int,
        latent_dim: int,
        cond_dim: int = 0,
        *,
        generator: torch.Generator,
    ):
        super().__init__()
        self.backbone = backbone
        self.mu = linear(backbone_out_dim + cond_dim, latent_dim, generator)
        self.logvar = linear(backbone_out_dim + cond_dim, latent_dim, generator)

    def forward(self, x: Tensor, c: Tensor | None = None) -> tuple[Tensor, Tensor]:
        h = self.backbone(x).flatten(1)
        if c is not None:
            h = torch.cat([h, c], dim=1)
        return self.mu(h), self.logvar(h)


def output_width(module: nn.Module, example: Tensor, name: str) -> int:
    """Flattened width of ``module``'s output on an example batch (weights untouched).

    A module that cannot read the batch raises a ValueError naming it and the batch's shape.
    """
    was_training = module.training
    module.eval()
    try:
        with torch.no_grad():
            width = module(example).flatten(1).shape[1]
    except (RuntimeError, ValueError, TypeError, IndexError) as exc:
        raise ValueError(
            f"The {name} cannot read a batch of shape {tuple(example.shape)} ({exc}). It "
            f"receives rows of {example.shape[-1]} values: make its input width match."
        ) from None
    finally:
        module.train(was_training)
    return width
