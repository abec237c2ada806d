"""Decoder likelihoods :math:`p(x|z)`: log-densities summed over features, and their means.

The decoder network outputs one tensor per row: the location of a Normal or Laplace
distribution, or the logits of a Bernoulli or categorical one. Scales of the Normal and Laplace
likelihoods are either fixed or learned per feature (:class:`DecoderLikelihood`).
"""

import math
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .missing import missing_cells

# every family; the VAE leaves out "categorical", which needs one-hot rows
DECODER_DISTS = ("normal", "laplace", "bernoulli", "categorical")
# A learned scale starts at, and may not fall below, these fractions of the features'
# root-mean-square standard deviation, so that neither depends on the data's units.
# ``python benchmarks/bench_decoder_scale.py`` measures both choices.
# The floor: a feature that is (almost) constant in the training data drives its own scale
# towards zero and its likelihood towards infinity (an absolute floor of 1e-3 let the border
# pixels of digits reach 0.004), so the loss rewards nats that carry no information.
HALF_LOG_2PI = 0.5 * math.log(2 * math.pi)
LOG_2 = math.log(2.0)
LEARNED_SCALE_START = 0.4
LEARNED_SCALE_FLOOR = 0.1
# The default networks read and write X / u, u chosen so that X's features vary by about
# MODEL_SPREAD (root-mean-square standard deviation) whatever X's units: their initialisation
# and Adam's steps then act alike on X and a * X. The encoders read each feature centred on
# its training mean (``nidl_vae.missing.FilledInput``), which makes the fit shift-invariant too.
# Earlier measurements of this choice (R^2 of age from the latents of uncentred encoders, on
# in-sample latents) were made on collapsed models: uncentred, the VAE on 8,735 voxels of
# MNI-based brains decoded the mean image for every subject (KL 3 nats) while a linear
# regression still read age from its latents' tiny variations; on held-out subjects those
# latents read age at R^2 0.35 (4 latents), centred at 0.90. On digits in [0, 1] (spread
# 0.27, the other regime the defaults were measured on) 0.25 keeps their figures.
MODEL_SPREAD = 0.25


def model_unit(spread: float) -> float:
    """u, the model's unit in X's units, for data whose features' root-mean-square standard
    deviation is ``spread``: X / u varies by ``MODEL_SPREAD``."""
    return spread / MODEL_SPREAD


# features per block of LinearNormalReadout's float64 sums
_FEATURE_BLOCK = 8192


def normal_log_prob(
    x: Tensor,
    loc: Tensor,
    scale: Tensor | float,
    missing: Tensor | None = None,
    unit: Tensor | None = None,
) -> Tensor:
    """:math:`\\sum_j m_j \\log N(x_j; \\mu_j, \\sigma_j^2)
    = -\\sum_j m_j [\\frac12\\log 2\\pi + \\log\\sigma_j + (x_j-\\mu_j)^2 / 2\\sigma_j^2]`,
    over the observed cells (``missing`` is the mask of NaN cells of x, or None).

    With a ``unit`` u, the location is given in the model's units: :math:`\\mu_j = u\\,
    \\mathrm{loc}_j` (``scale`` is in X's units)."""
    # the per-feature constants are summed once, not broadcast over the batch, and the squares
    # keep no full-size tensor for the backward pass: at 10^5 features every full-size
    # temporary costs as much memory as the batch itself
    scale = torch.as_tensor(scale, dtype=loc.dtype, device=loc.device)
    constant = _observed_sum(torch.log(scale) + HALF_LOG_2PI, missing, loc.shape[-1])
    unit = None if unit is None else unit.to(loc.dtype)
    if torch.is_grad_enabled():
        return -_HalfSquaredResidual.apply(x, loc, 1.0 / scale, missing, unit) - constant
    # inference: no backward pass, so no autograd Function (its call costs as much as the
    # arithmetic on digits' 64 features, thousands of times per log_likelihood)
    return -_HalfSquaredResidual.value(x, loc, 1.0 / scale, missing, unit) - constant


def _observed_sum(per_feature: Tensor, missing: Tensor | None, n_features: int) -> Tensor:
    """:math:`\\sum_j m_j c_j` for a per-feature (or one) constant c: a number without
    missing cells, one per row with them."""
    if missing is None:
        return per_feature.sum(-1) if per_feature.dim() else per_feature * n_features
    observed = (~missing).to(per_feature.dtype)
    return observed @ per_feature.expand(n_features)


class _HalfSquaredResidual(torch.autograd.Function):
    """:math:`\\frac12 \\sum_j m_j ((x_j - \\mu_j) / \\sigma_j)^2` over the last dimension,
    with :math:`\\mu = \\mathrm{loc}`, or :math:`u\\, \\mathrm{loc}` given a unit u (a
    location in the model's units).

    Saves its inputs, not the residual: the backward pass recomputes it, so one full-size
    temporary lives at a time instead of three kept from forward to backward. Missing cells
    (NaN in x) contribute nothing, to the value or to any gradient.
    """

    @staticmethod
    def _residual(x, loc, inv_scale, missing, unit) -> Tensor:
        # one full-size temporary: the location in the model's units is mapped to X's in place
        r = torch.sub(x, loc) if unit is None else loc.mul(-unit).add_(x)
        r.mul_(inv_scale)
        return r if missing is None else r.masked_fill_(missing, 0.0)

    @staticmethod
    def value(x, loc, inv_scale, missing, unit=None) -> Tensor:
        r = _HalfSquaredResidual._residual(x, loc, inv_scale, missing, unit)
        return 0.5 * torch.linalg.vecdot(r, r)

    @staticmethod
    def forward(ctx, x, loc, inv_scale, missing, unit) -> Tensor:
        ctx.save_for_backward(x, loc, inv_scale, missing, unit)
        return _HalfSquaredResidual.value(x, loc, inv_scale, missing, unit)

    @staticmethod
    def backward(ctx, grad: Tensor):
        x, loc, inv_scale, missing, unit = ctx.saved_tensors
        r = _HalfSquaredResidual._residual(x, loc, inv_scale, missing, unit)
        # under mixed precision the incoming gradient may be half precision; autograd casts
        # the returned gradients to their inputs' types
        grad = grad.to(r.dtype)
        g = grad.unsqueeze(-1)
        grad_inv = None
        if ctx.needs_input_grad[2]:
            # d/d(1/sigma_j) = sum over rows of g * r_j^2 / (1/sigma_j)
            per_feature = torch.einsum("...j,...j,...->j", r, r, grad) / inv_scale
            grad_inv = per_feature if inv_scale.dim() else per_feature.sum()
        # d/dx = g r / sigma, d/dloc = -u d/dx
        r.mul_(inv_scale).mul_(g)
        grad_x = _sum_to(r, x.shape) if ctx.needs_input_grad[0] else None
        grad_loc = None
        if ctx.needs_input_grad[1]:  # in place unless grad_x still holds r
            factor = -1.0 if unit is None else -unit
            grad_loc = _sum_to(r.mul(factor) if grad_x is not None else r.mul_(factor), loc.shape)
        return grad_x, grad_loc, grad_inv, None, None


def _sum_to(t: Tensor, shape: torch.Size) -> Tensor:
    """``t`` summed over the dimensions it was broadcast along to reach its shape."""
    while t.dim() > len(shape):
        t = t.sum(0)
    return t


def laplace_log_prob(
    x: Tensor,
    loc: Tensor,
    scale: Tensor | float,
    missing: Tensor | None = None,
    unit: Tensor | None = None,
) -> Tensor:
    """:math:`\\sum_j m_j \\log \\mathrm{Laplace}(x_j; \\mu_j, b_j)
    = -\\sum_j m_j [\\log 2b_j + |x_j-\\mu_j| / b_j]`, with :math:`\\mu` as in
    :func:`normal_log_prob`."""
    scale = torch.as_tensor(scale, dtype=loc.dtype, device=loc.device)
    if unit is not None:
        loc = loc * unit.to(loc.dtype)
    deviation = (_zero_filled(x, missing) - loc).abs() / scale
    constant = _observed_sum(torch.log(scale) + LOG_2, missing, loc.shape[-1])
    return -_observed(deviation, missing).sum(-1) - constant


def bernoulli_log_prob(x: Tensor, logits: Tensor, missing: Tensor | None = None) -> Tensor:
    """:math:`\\sum_j m_j [x_j \\log \\sigma(l_j) + (1-x_j) \\log(1-\\sigma(l_j))]`, targets
    in [0, 1].

    Computed from logits (never from probabilities) for numerical stability.
    """
    # unlike the other families, this torch function does not broadcast (x is (B, F) when the
    # logits are (K, B, F), K latent draws per row)
    target = _zero_filled(x, missing).expand_as(logits)
    cells = F.binary_cross_entropy_with_logits(logits, target, reduction="none")
    return -_observed(cells, missing).sum(-1)


def categorical_log_prob(x: Tensor, logits: Tensor, missing: Tensor | None = None) -> Tensor:
    """:math:`\\sum_c m_c x_c \\log \\mathrm{softmax}(l)_c` for one-hot (or probability)
    targets."""
    return (_zero_filled(x, missing) * torch.log_softmax(logits, dim=-1)).sum(-1)


def _zero_filled(x: Tensor, missing: Tensor | None) -> Tensor:
    # a NaN target would make the gradient NaN even where the cell's term is masked out
    return x if missing is None else x.masked_fill(missing, 0.0)


def _observed(cells: Tensor, missing: Tensor | None) -> Tensor:
    return cells if missing is None else cells.masked_fill(missing, 0.0)


def check_data_fits(low: float, high: float, dist: str, what: str = "X", where: str = "") -> None:
    """A ValueError, before training, when a family read from logits gets values outside [0, 1]
    (``low`` and ``high`` are the data's minimum and maximum)."""
    if dist in ("bernoulli", "categorical") and (low < 0 or high > 1):
        raise ValueError(
            f"decoder_dist={dist!r}{where} needs {what} in [0, 1]; got values in "
            f"[{low:.3g}, {high:.3g}]. Scale the data (e.g. MinMaxScaler) or use 'normal'."
        )


def output_for_mean(dist: str, mean: Tensor) -> Tensor:
    """The decoder output whose likelihood has mean ``mean``: the location itself, or the
    logits of the mean for the families read from logits (clipped away from 0 and 1)."""
    if dist in ("normal", "laplace"):
        return mean
    p = mean.clamp(1e-3, 1 - 1e-3)
    return torch.logit(p) if dist == "bernoulli" else torch.log(p)


class DecoderLikelihood(nn.Module):
    """The likelihood :math:`p(x|z)` that turns a decoder output into a log-density.

    With ``model_units`` (the default decoders), the Normal and Laplace families model X in
    the model's units: with u the training data's root-mean-square feature standard deviation
    divided by ``MODEL_SPREAD``, the decoder outputs the location of :math:`\\tilde x = x / u`,
    and the density of x in X's own units carries the Jacobian of that map:

    .. math:: \\log p(x \\mid z) = \\log \\tilde p(x / u \\mid z) - n_{obs} \\log u

    so that fitting X or :math:`a X` (a > 0) learns the same networks, and every density and
    output is in X's units. Otherwise (a decoder given by the user, and the families read from
    logits) the decoder outputs in X's units (u = 1).

    Parameters
    ----------
    dist : {'normal', 'laplace', 'bernoulli', 'categorical'}
        The family. 'bernoulli' and 'categorical' read the decoder output as logits.
    scale : float or 'learned'
        Scale of 'normal' (standard deviation) and 'laplace' (diversity) in X's units.
        'learned' makes it a per-feature parameter, starting at ``LEARNED_SCALE_START`` and
        floored at ``LEARNED_SCALE_FLOOR`` times the data's spread; ignored for the other
        families.
    n_features : int
        Number of features, the size of a learned scale.
    spread : float, default=1.0
        The data's root-mean-square feature standard deviation.
    model_units : bool, default=False
        Whether the decoder works in the model's units.
    """

    def __init__(
        self,
        dist: str,
        scale: float | str,
        n_features: int,
        spread: float = 1.0,
        model_units: bool = False,
    ):
        super().__init__()
        self.dist = dist
        self.has_scale = dist in ("normal", "laplace")
        self.learned = self.has_scale and scale == "learned"
        self.in_model_units = self.has_scale and model_units
        unit = model_unit(spread) if self.in_model_units else 1.0
        # a buffer, so that a saved model keeps its data's unit
        self.register_buffer("data_unit", torch.tensor(float(unit)))
        if self.learned:
            spread = spread / unit  # in the decoder's units
            # a buffer, so that a saved model keeps the floor its data set
            self.register_buffer("min_scale", torch.tensor(LEARNED_SCALE_FLOOR * spread))
            excess = torch.full((n_features,), (LEARNED_SCALE_START - LEARNED_SCALE_FLOOR) * spread)
            # inverse softplus, so that softplus(raw) + floor is the start
            self.raw_scale = nn.Parameter(excess + torch.log(-torch.expm1(-excess)))
        else:
            self.fixed_scale = float(scale) if self.has_scale else None

    def scale(self) -> Tensor | None:
        """The current scale in the decoder's units (a tensor of one value per feature when
        learned); None for the families read from logits."""
        if self.learned:
            return F.softplus(self.raw_scale) + self.min_scale
        return None if self.fixed_scale is None else self.fixed_scale / self.data_unit

    def unit(self) -> Tensor | None:
        """u when the decoder works in the model's units (its output o is the location
        :math:`u o` in X's units); None when it works in X's."""
        return self.data_unit if self.in_model_units else None

    def to_model(self, x: Tensor) -> Tensor:
        """Values of X in the decoder's units."""
        return x / self.data_unit.to(x.dtype) if self.in_model_units else x

    def log_prob(self, x: Tensor, out: Tensor) -> Tensor:
        """Log-density of the rows ``x`` (in X's units) given the decoder output, summed over
        the observed features (NaN cells of x are missing, see :mod:`~nidl_vae.missing`)."""
        return self.log_prob_of(x)(out)

    def log_prob_of(self, x: Tensor) -> Callable[[Tensor], Tensor]:
        """:meth:`log_prob` of the rows ``x`` as a function of the decoder output, for rows
        decoded many times (importance sampling): their missing cells are found once."""
        missing = missing_cells(x)
        if self.has_scale:
            # the location and scale in X's units: the Jacobian of the model's units included
            scale, unit = self.scale() * self.data_unit, self.unit()
            family = normal_log_prob if self.dist == "normal" else laplace_log_prob
            return lambda out: family(x, out, scale, missing, unit)
        if self.dist == "bernoulli":
            return lambda out: bernoulli_log_prob(x, out, missing)
        return lambda out: categorical_log_prob(x, out, missing)

    def mean(self, out: Tensor) -> Tensor:
        """The mean of :math:`p(x|z)` given the decoder output, in X's units."""
        if self.dist == "bernoulli":
            return torch.sigmoid(out)
        if self.dist == "categorical":
            return torch.softmax(out, dim=-1)
        return out * self.data_unit.to(out.dtype) if self.in_model_units else out


class LinearNormalReadout:
    """:math:`\\log N(x; W h + b, \\mathrm{diag}\\, \\sigma^2)` for many hidden vectors h per
    row x, without forming the location :math:`W h + b`.

    With :math:`d = x - b` and :math:`\\Lambda = \\mathrm{diag}\\, \\sigma^{-2}`, the squared
    residual expands into a quadratic form in h:

    .. math:: (d - W h)^\\top \\Lambda (d - W h)
        = d^\\top \\Lambda d - 2 h^\\top W^\\top \\Lambda d + h^\\top W^\\top \\Lambda W h

    :math:`W^\\top \\Lambda W` is computed once for the layer (:meth:`rows` reuses it for
    every batch) and the other two terms once per row, so a draw costs :math:`H^2` operations
    for H hidden units instead of :math:`H p` for p features: at p = 10^4 and H = 256, the
    decoder's last layer is 40 times cheaper. The log-likelihood's importance sampling
    (thousands of draws per row) is where it pays.

    A decoder in the model's units (:meth:`DecoderLikelihood.unit` gives u) has the location
    :math:`u (W h + b)` and the scale :math:`u \\sigma` in X's units: the same form with
    :math:`u W`, :math:`u b` and :math:`u \\sigma`.

    Parameters
    ----------
    layer : nn.Linear
        The decoder's last layer (weight W of shape (p, H), bias b).
    scale : Tensor of shape (p,) or float
        The likelihood's standard deviations, in the layer's units.
    unit : Tensor, optional
        u for a layer in the model's units.
    """

    def __init__(self, layer: nn.Linear, scale: Tensor | float, unit: Tensor | None = None):
        weight, bias = layer.weight, layer.bias
        p, width = weight.shape
        scale = torch.as_tensor(scale, dtype=weight.dtype, device=weight.device)
        # applied to W block by block: a scaled copy of a 10^5-feature layer costs its size
        self.unit = 1.0
        if unit is not None:
            unit = unit.to(weight.dtype)
            self.unit, scale = unit.double(), scale * unit
            bias = None if bias is None else bias * unit
        self.weight, self.bias = weight, bias
        self.inv_var = scale.reciprocal().square().expand(p)
        # in float64, a block of features at a time: the quadratic form is a difference of
        # large numbers (float32 lost 10 times the precision of the direct sum), and a float64
        # copy of a 10^5-feature layer would be larger than the layer
        self.gram = weight.new_zeros(width, width, dtype=torch.float64)
        for _, w, inv in self._blocks():
            self.gram += w.T @ (w * inv[:, None])
        self.constant = float(_observed_sum(torch.log(scale.detach()) + HALF_LOG_2PI, None, p))

    def _blocks(self):
        for start in range(0, self.weight.shape[0], _FEATURE_BLOCK):
            block = slice(start, start + _FEATURE_BLOCK)
            yield block, self.weight[block].double() * self.unit, self.inv_var[block].double()

    def rows(self, x: Tensor) -> Callable[[Tensor], Tensor]:
        """The function mapping the last hidden layer (k, B, H) for rows ``x`` (B, p) to
        :math:`\\log p(x|z)` of shape (k, B)."""
        deviation = x if self.bias is None else x - self.bias
        row_term = x.new_zeros(len(x), dtype=torch.float64)
        cross = x.new_zeros(len(x), self.gram.shape[0], dtype=torch.float64)
        for block, w, inv in self._blocks():
            d = deviation[:, block].double()
            weighted = d * inv
            row_term += torch.linalg.vecdot(weighted, d)
            cross += weighted @ w

        def log_prob(hidden: Tensor) -> Tensor:
            h = hidden.double()
            squared = torch.linalg.vecdot(h @ self.gram - 2 * cross, h) + row_term
            return (-0.5 * squared.clamp_min(0) - self.constant).to(hidden.dtype)

        return log_prob

    @staticmethod
    def applies(layer: nn.Module, dist: str) -> bool:
        """Whether the expansion saves work: a Normal likelihood read from a linear layer with
        at least 4 outputs per input, on a device with float64 (not Apple's MPS)."""
        return (
            dist == "normal"
            and isinstance(layer, nn.Linear)
            and layer.out_features >= 4 * layer.in_features
            and layer.weight.device.type != "mps"
        )
