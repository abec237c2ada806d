"""The optimizer every model trains with: Adam, except on the layers that read the data's
features, whose second moment is shared by each unit's inputs.

Why: Adam divides each weight's step by that weight's own gradient scale, so every input
moves its weights at the same pace whether it carries signal or only noise. When the features
far outnumber the samples (a few hundred subjects, 10^4-10^5 voxels, most of them background)
the default encoder then reads its training subjects through the noise: on 400 unmasked
24^3 volumes its latents read age at R^2 0.54 on held-out subjects, against 0.93 for PCA
(``benchmarks/bench_scale.py --only held-out``). With one second moment per unit, shared by
its inputs, a step moves each input's weight in proportion to its gradient, as plain gradient
descent does, and weights on inputs whose gradient is only noise stay small.
"""

import math

import torch
from torch import Tensor, nn


class FeatureLinear(nn.Linear):
    """A linear layer that reads the data's features, and after them ``n_conditions``
    conditions (a CVAE's labels or covariates): :math:`y = W [x, c] + b`.

    :class:`RowwiseAdam` trains the columns of W that read the features with one second moment
    per output unit, and the conditions' columns as Adam does: a handful of conditions are not
    the many uninformative inputs the row-wise moment is for.
    """

    def __init__(
        self,
        in_features: int,
        out_features: int,
        n_conditions: int = 0,
        bias: bool = True,
        device=None,
        dtype=None,
    ):
        super().__init__(in_features, out_features, bias, device, dtype)
        self.n_conditions = n_conditions


class RowwiseAdam(torch.optim.Adam):
    """Adam (Kingma & Ba, 2015), but the weights of groups marked ``rowwise=True`` (linear
    layers', of shape (out, in)) keep one second moment per row, the mean over its inputs:

    .. math:: m_{ij} \\leftarrow \\beta_1 m_{ij} + (1 - \\beta_1) g_{ij}, \\qquad
        v_i \\leftarrow \\beta_2 v_i + (1 - \\beta_2) \\frac{1}{n_\\mathrm{in}} \\sum_j g_{ij}^2,

    .. math:: w_{ij} \\leftarrow w_{ij} - \\eta\\, \\frac{m_{ij} / (1 - \\beta_1^t)}
        {\\sqrt{v_i / (1 - \\beta_2^t)} + \\epsilon}

    (with ``weight_decay``, :math:`g` includes :math:`\\lambda w`, as in Adam). The last
    ``free_columns`` columns of such a weight (a CVAE's conditions) keep Adam's moment per
    weight and are left out of the rows' means. Other groups are updated by Adam itself (its
    fused kernel where it has one). The row-wise state costs one value per row instead of one
    per weight.
    """

    # the gradient scaler of mixed precision must unscale the gradients before ``step``: the
    # row-wise update has no kernel that takes the scale
    _step_supports_amp_scaling = False

    @torch.no_grad()
    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        rowwise = [
            (group, p)
            for group in self.param_groups
            if group.get("rowwise")
            for p in group["params"]
            if p.grad is not None
        ]
        grads = [p.grad for _, p in rowwise]
        for _, p in rowwise:
            p.grad = None  # Adam's own step skips parameters without a gradient
        try:
            super().step()
        finally:
            for (_, p), grad in zip(rowwise, grads, strict=True):
                p.grad = grad
        for group, p in rowwise:
            self._rowwise_update(group, p)
        return loss

    def _rowwise_update(self, group: dict, p: Tensor) -> None:
        beta1, beta2 = group["betas"]
        free = group.get("free_columns", 0)
        grad = p.grad
        if group["weight_decay"]:
            grad = grad.add(p, alpha=group["weight_decay"])
        state = self.state[p]
        if not state:
            state["step"] = 0
            state["exp_avg"] = torch.zeros_like(p)
            state["row_sq"] = p.new_zeros(p.shape[0], 1)
            if free:
                state["free_sq"] = p.new_zeros(p.shape[0], free)
        state["step"] += 1
        step = state["step"]
        state["exp_avg"].lerp_(grad, 1 - beta1)
        n_features = p.shape[1] - free
        # the rows' mean squares without a weight-sized temporary
        mean_sq = torch.linalg.vector_norm(grad[:, :n_features], dim=1).square_()
        state["row_sq"].mul_(beta2).add_(mean_sq[:, None], alpha=(1 - beta2) / n_features)
        eps = group["eps"] * math.sqrt(1 - beta2**step)
        step_size = group["lr"] * math.sqrt(1 - beta2**step) / (1 - beta1**step)
        features, conditions = p.split([n_features, free], 1)
        m_features, m_conditions = state["exp_avg"].split([n_features, free], 1)
        features.addcdiv_(m_features, state["row_sq"].sqrt().add_(eps), value=-step_size)
        if free:
            g = grad[:, n_features:]
            state["free_sq"].mul_(beta2).addcmul_(g, g, value=1 - beta2)
            conditions.addcdiv_(m_conditions, state["free_sq"].sqrt().add_(eps), value=-step_size)


def optimizer_for(
    module: nn.Module, lr: float, weight_decay: float, n_rows: int | None = None
) -> RowwiseAdam:
    """:class:`RowwiseAdam` over ``module``'s parameters, row-wise on the feature weights of
    its :class:`FeatureLinear` layers that read more features than the ``n_rows`` training
    rows (all of them when ``n_rows`` is None).

    Only there can the encoder give its training rows any latents it likes through noise
    alone (with more inputs than rows, any assignment is a linear function of the inputs);
    with fewer (digits: 64 pixels, 1,797 rows) Adam reads the data as well or better.
    """
    readers = [
        m
        for m in module.modules()
        if isinstance(m, FeatureLinear)
        and (n_rows is None or m.in_features - m.n_conditions > n_rows)
    ]
    marked = {id(m.weight) for m in readers}
    groups = [{"params": [p for p in module.parameters() if id(p) not in marked]}]
    groups += [
        {"params": [m.weight], "rowwise": True, "free_columns": m.n_conditions} for m in readers
    ]
    options = dict(lr=lr, weight_decay=weight_decay)
    try:
        # the fused kernel updates each parameter in one pass: at 10^5 features it is 20%
        # faster than the default and allocates no parameter-sized temporaries
        return RowwiseAdam(groups, fused=True, **options)
    except (RuntimeError, TypeError):  # no fused kernel for this device or torch version
        return RowwiseAdam(groups, **options)
