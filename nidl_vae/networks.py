"""Default networks sized from the data, and the Gaussian heads every encoder feeds.

Rows of features get multilayer perceptrons; images (C, H, W) and volumes (C, D, H, W) get a
convolutional encoder of strided convolutions and its mirrored decoder (:func:`conv_encoder`,
:func:`conv_decoder`).

Every layer built here is initialised from a generator the estimator owns (PyTorch's default
initialisation, drawn from that generator): building a model never touches torch's global
generator, so fits running in several threads do not disturb one another.
"""

import copy
import math
from collections.abc import Sequence
from typing import NamedTuple

import torch
from torch import Tensor, nn

from .distributions import DecoderLikelihood, model_unit, output_for_mean
from .missing import FilledInput
from .optim import FeatureLinear


def _init_from(layer: nn.Module, generator: torch.Generator) -> nn.Module:
    """PyTorch's default initialisation of a linear or convolutional layer, drawn from
    ``generator``: weights and biases uniform in :math:`\\pm 1/\\sqrt{\\mathrm{fan\\_in}}`."""
    fan_in = layer.weight[0].numel()  # inputs (times the kernel's size) of one output
    bound = 1.0 / math.sqrt(fan_in) if fan_in > 0 else 0.0
    with torch.no_grad():
        layer.weight.uniform_(-bound, bound, generator=generator)
        layer.bias.uniform_(-bound, bound, generator=generator)
    return layer


def _relu() -> nn.ReLU:
    # in place: every layer before a ReLU (linear, convolution, group normalisation) keeps its
    # input, not its output, for the backward pass, and a fresh tensor per activation costs
    # page faults on new memory at every decoded chunk
    return nn.ReLU(inplace=True)


def linear(in_dim: int, out_dim: int, generator: torch.Generator) -> nn.Linear:
    """An ``nn.Linear`` with PyTorch's default initialisation drawn from ``generator``:
    weights and biases uniform in :math:`\\pm 1/\\sqrt{\\mathrm{in\\_dim}}`."""
    return _init_from(nn.utils.skip_init(nn.Linear, in_dim, out_dim), generator)


def feature_linear(
    in_dim: int, out_dim: int, n_conditions: int, generator: torch.Generator
) -> FeatureLinear:
    """A :class:`~nidl_vae.optim.FeatureLinear` reading ``in_dim`` inputs, the last
    ``n_conditions`` of them conditions, drawn as :func:`linear` draws the same layer."""
    layer = nn.utils.skip_init(FeatureLinear, in_dim, out_dim, n_conditions)
    return _init_from(layer, generator)


def mlp(
    in_dim: int,
    hidden_layer_sizes: Sequence[int],
    out_dim: int | None = None,
    *,
    generator: torch.Generator,
    start: Tensor | None = None,
    n_conditions: int | None = None,
) -> nn.Sequential:
    """Linear + ReLU layers of the given widths, then an optional linear output layer whose
    bias is shifted by ``start`` (a decoder's output for the data's mean). An encoder gives
    ``n_conditions`` (0 without): its input is the data's features followed by that many
    conditions, and its first layer a :class:`~nidl_vae.optim.FeatureLinear`.

    Started from zero on unscaled data (brain intensities near 0.5 that vary by 0.02), a
    decoder's first gradients are orders of magnitude larger than its later ones and fill
    Adam's running second moment, which then shrinks every later step: the decoder stayed at
    the mean brain (``benchmarks/bench_volumes.py`` measures what it draws).
    """
    layers: list[nn.Module] = []
    for width in hidden_layer_sizes:
        if n_conditions is not None and not layers:
            layers += [feature_linear(in_dim, width, n_conditions, generator), _relu()]
        else:
            layers += [linear(in_dim, width, generator), _relu()]
        in_dim = width
    if out_dim is not None:
        layers.append(linear(in_dim, out_dim, generator))
        if start is not None:
            with torch.no_grad():
                layers[-1].bias.add_(start.flatten())
    return nn.Sequential(*layers)


class WithInput(nn.Module):
    """``[body(z), z]``: a module's output with its input appended."""

    def __init__(self, body: nn.Module):
        super().__init__()
        self.body = body

    def forward(self, z: Tensor) -> Tensor:
        return torch.cat([self.body(z), z], -1)


def mlp_with_linear_path(
    in_dim: int,
    hidden_layer_sizes: Sequence[int],
    out_dim: int,
    *,
    start: Tensor,
    generator: torch.Generator,
) -> nn.Sequential:
    """An MLP decoder plus a linear map of its input:
    :math:`f(z) = W_h h(z) + W_z z + b`, with h the last hidden layer.

    :math:`W_h` and b are the MLP's output layer (drawn as :func:`mlp` draws it, b shifted by
    ``start``, the output for the data's mean); :math:`W_z` starts at zero. The last module is
    one linear layer reading :math:`[h(z), z]`, so the output stays linear in what it reads.
    """
    if not hidden_layer_sizes:
        return mlp(in_dim, (), out_dim, generator=generator, start=start)
    body = mlp(in_dim, hidden_layer_sizes, generator=generator)
    last = linear(hidden_layer_sizes[-1], out_dim, generator)
    combined = nn.utils.skip_init(nn.Linear, hidden_layer_sizes[-1] + in_dim, out_dim)
    with torch.no_grad():
        combined.weight.zero_()
        combined.weight[:, : hidden_layer_sizes[-1]] = last.weight
        combined.bias.copy_(last.bias + start.flatten())
    return nn.Sequential(WithInput(body), combined)


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


def conv_depth(spatial_shape: Sequence[int], n_channels: int) -> int:
    """Number of stride-2 layers of the default convolutional networks: one per entry of
    ``conv_channels``, but no more than halve the smallest side to 2 voxels or more."""
    smallest = min(spatial_shape)
    return max(1, min(n_channels, int(math.log2(max(smallest, 2) / 2))))


def _groups(channels: int) -> int:
    # groups of at least 2 channels, at most 8 groups
    return max(1, min(8, channels // 2))


class _ToShape(nn.Module):
    """A module that brings the trailing spatial dimensions of its input to ``shape``."""

    def __init__(self, shape: Sequence[int]):
        super().__init__()
        self.shape = tuple(shape)

    def extra_repr(self) -> str:
        return f"shape={self.shape}"


class PadTo(_ToShape):
    """Zero-pads the trailing spatial dimensions at their end to ``shape``."""

    def forward(self, x: Tensor) -> Tensor:
        pad: list[int] = []
        for have, want in zip(reversed(x.shape[2:]), reversed(self.shape), strict=True):
            pad += [0, want - have]
        return nn.functional.pad(x, pad) if any(pad) else x


class CropTo(_ToShape):
    """Keeps the first ``shape`` entries of the trailing spatial dimensions."""

    def forward(self, x: Tensor) -> Tensor:
        return x[(..., *(slice(0, n) for n in self.shape))]


class Offset(nn.Module):
    """Adds a learned value per output (of one sample's shape), started at ``start``: the
    decoder's output for the mean sample, so training starts from the data's mean."""

    def __init__(self, start: Tensor):
        super().__init__()
        self.offset = nn.Parameter(start.detach().clone().float())

    def forward(self, x: Tensor) -> Tensor:
        return x + self.offset


def _padded_shape(spatial_shape: Sequence[int], depth: int) -> tuple[int, ...]:
    step = 2**depth
    return tuple(-(-n // step) * step for n in spatial_shape)


def conv_encoder(
    sample_shape: Sequence[int], channels: Sequence[int], *, generator: torch.Generator
) -> nn.Sequential:
    """Strided convolutions for images (C, H, W) or volumes (C, D, H, W).

    The input is zero-padded to a multiple of :math:`2^L` along each side (91 x 109 x 91
    becomes 96 x 112 x 96 with L = 4), then each of the L layers (see :func:`conv_depth`)
    halves every side: a 3-wide convolution of stride 2, group normalisation and a ReLU, with
    ``channels[i]`` output channels. Its output is the last feature map.
    """
    in_channels, *spatial = sample_shape
    depth = conv_depth(spatial, len(channels))
    conv = nn.Conv3d if len(spatial) == 3 else nn.Conv2d
    layers: list[nn.Module] = [PadTo(_padded_shape(spatial, depth))]
    for width in channels[:depth]:
        layer = conv(in_channels, width, kernel_size=3, stride=2, padding=1)
        layers += [_init_from(layer, generator), nn.GroupNorm(_groups(width), width), _relu()]
        in_channels = width
    return nn.Sequential(*layers)


def conv_decoder(
    sample_shape: Sequence[int],
    channels: Sequence[int],
    in_dim: int,
    *,
    generator: torch.Generator,
    start: Tensor | None = None,
    linear_path: bool = False,
) -> nn.Module:
    """The mirror of :func:`conv_encoder`: a linear layer from ``in_dim`` latent (and
    condition) values to the smallest feature map, transposed convolutions that double every
    side, a last one to the input's channels (the likelihood's location), cropped to the
    input's shape, plus a learned :class:`Offset` of the input's shape started at ``start``
    (zeros by default); with ``linear_path``, plus a linear map of its input
    (:class:`WithLinearPath`)."""
    out_channels, *spatial = sample_shape
    depth = conv_depth(spatial, len(channels))
    widths = list(channels[:depth])[::-1]
    padded = _padded_shape(spatial, depth)
    smallest = tuple(n // 2**depth for n in padded)
    transposed = nn.ConvTranspose3d if len(spatial) == 3 else nn.ConvTranspose2d
    layers: list[nn.Module] = [
        linear(in_dim, widths[0] * math.prod(smallest), generator),
        nn.Unflatten(1, (widths[0], *smallest)),
        _relu(),
    ]
    for i, width in enumerate(widths):
        last = i == len(widths) - 1
        out = out_channels if last else widths[i + 1]
        layer = transposed(width, out, kernel_size=3, stride=2, padding=1, output_padding=1)
        layers.append(_init_from(layer, generator))
        if not last:
            layers.append(_relu())
    layers.append(CropTo(spatial))
    layers.append(Offset(torch.zeros(sample_shape) if start is None else start))
    decoder = nn.Sequential(*layers)
    return WithLinearPath(decoder, in_dim, sample_shape) if linear_path else decoder


class WithLinearPath(nn.Module):
    """A decoder plus a linear map of its input, :math:`f(z) = g(z) + W_z z`, with
    :math:`W_z z` shaped as one sample and :math:`W_z` started at zero (the decoder starts as
    ``body``).

    The path is a principal-component-like reading of the latents: a fixed pattern per latent
    at every voxel, which a convolutional decoder, built to draw shapes anywhere in the
    volume, represents poorly.
    """

    def __init__(self, body: nn.Module, in_dim: int, sample_shape: Sequence[int]):
        super().__init__()
        self.body = body
        self.sample_shape = tuple(sample_shape)
        self.path = nn.Linear(in_dim, math.prod(sample_shape), bias=False)
        nn.init.zeros_(self.path.weight)

    def forward(self, z: Tensor) -> Tensor:
        return self.body(z) + self.path(z).unflatten(-1, self.sample_shape)


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


class Networks(NamedTuple):
    """What :func:`build_networks` returns: the encoder's input (NaN cells filled, the mask
    appended), the Gaussian encoder, the decoder, and whether the encoder's backbone reads
    the conditions beside x (the default MLP) or x alone (a user's module, a CNN)."""

    encoder_input: FilledInput
    encoder: GaussianEncoder
    decoder: nn.Module
    encoder_reads_conditions: bool


def build_networks(
    example: Tensor,
    *,
    n_conditions: int,
    latent_dim: int,
    hidden_layer_sizes: Sequence[int],
    conv_channels: Sequence[int],
    linear_path: bool | str,
    likelihood: DecoderLikelihood,
    mean: Tensor,
    spread: float,
    with_mask: bool,
    generator: torch.Generator,
    encoder: nn.Module | None = None,
    decoder: nn.Module | None = None,
    encoder_out_dim: int | None = None,
    where: str = "",
    heads_first: bool = False,
) -> Networks:
    """The networks of one modelled block of data (a VAE's X, a CVAE's X given its
    conditions, one CRMVAE modality), the defaults built for whatever the user did not give.

    Parameters
    ----------
    example : Tensor
        Two samples of the block (rows of features, or images / volumes), NaN where missing.
    n_conditions : int
        Width of the conditions every network reads beside its input (0 without).
    latent_dim, hidden_layer_sizes, conv_channels, linear_path
        The estimator's parameters of the same names.
    likelihood : DecoderLikelihood
        The block's likelihood, which says what output the decoder starts at and in which
        units.
    mean : Tensor
        The block's mean sample in X's units: where the default decoders start (their output
        for the mean, see :func:`mlp`) and what the encoder reads in a missing cell.
    spread : float
        The root-mean-square of the block's feature standard deviations: the default encoder
        reads :math:`x / u` (:func:`~nidl_vae.distributions.model_unit`,
        :class:`~nidl_vae.missing.FilledInput`).
    with_mask : bool
        Whether the default encoder reads the mask of missing cells beside the values (the
        training data had NaN cells); a user's encoder reads the filled values alone.
    generator : torch.Generator
        Draws every default layer's initial weights.
    encoder, decoder : nn.Module, optional
        The user's networks, copied (never trained in place).
    encoder_out_dim : int, optional
        The width the user says their encoder outputs; checked.
    where : str, default=''
        Appended to the networks' names in errors (" of modality 'mri'").
    heads_first : bool, default=False
        Draw the encoder's heads before the decoder (a CRMVAE's experts) rather than after
        it (the VAE's and CVAE's): the order every model drew its layers in before this
        builder was shared, kept so that one ``random_state`` fits the models as measured.
    """
    images = example.dim() > 2
    n_features = example[0].numel()
    mean = mean.reshape(example.shape[1:])
    default = encoder is None  # reads the model's units; a user's encoder reads X as it is
    unit = model_unit(spread) if default else None
    encoder_input = FilledInput(mean, with_mask and default, unit)
    seen = encoder_input(example)
    conditions = torch.zeros(len(example), n_conditions)
    if encoder is None and images:
        backbone = conv_encoder(seen.shape[1:], conv_channels, generator=generator)
        out_dim = output_width(backbone, seen, f"default encoder{where}")
    elif encoder is None:
        backbone = mlp(
            seen.shape[1] + n_conditions,
            hidden_layer_sizes,
            generator=generator,
            n_conditions=n_conditions,
        )
        out_dim = output_width(
            backbone, torch.cat([seen, conditions], 1), f"default encoder{where}"
        )
    else:
        backbone = copy.deepcopy(encoder)
        out_dim = output_width(backbone, seen, f"encoder{where}")
        if encoder_out_dim is not None and encoder_out_dim != out_dim:
            raise ValueError(
                f"encoder_out_dim={encoder_out_dim}, but the encoder outputs {out_dim} values "
                f"per row: set encoder_out_dim={out_dim} or leave it None."
            )
    if heads_first:
        heads = GaussianEncoder(backbone, out_dim, latent_dim, n_conditions, generator=generator)
    in_dim = latent_dim + n_conditions
    start = output_for_mean(likelihood.dist, likelihood.to_model(mean))
    # 'auto': the path on the convolutional decoder only (see the parameter's documentation)
    linear_path = images if linear_path == "auto" else linear_path
    hidden = tuple(hidden_layer_sizes)[::-1]
    if decoder is None and images:
        decoder = conv_decoder(
            example.shape[1:],
            conv_channels,
            in_dim,
            generator=generator,
            start=start,
            linear_path=linear_path,
        )
    elif decoder is None and linear_path:
        decoder = mlp_with_linear_path(in_dim, hidden, n_features, start=start, generator=generator)
    elif decoder is None:
        decoder = mlp(in_dim, hidden, n_features, generator=generator, start=start)
    else:
        decoder = copy.deepcopy(decoder)
        width = output_width(decoder, torch.zeros(2, in_dim), f"decoder{where}")
        if width != n_features:
            raise ValueError(
                f"The decoder{where} outputs {width} values per latent row but a sample has "
                f"{n_features} values: its output (flattened) must match one sample."
            )
    if not heads_first:
        heads = GaussianEncoder(backbone, out_dim, latent_dim, n_conditions, generator=generator)
    reads_conditions = bool(n_conditions) and encoder is None and not images
    return Networks(encoder_input, heads, decoder, reads_conditions)
