"""The loss terms against values computed by hand (the numbers in the comments)."""

import math

import numpy as np
import pytest
import torch
from numpy.testing import assert_allclose

from nidl_vae.data import moments
from nidl_vae.distributions import (
    LEARNED_SCALE_FLOOR,
    LEARNED_SCALE_START,
    DecoderLikelihood,
    LinearNormalReadout,
    bernoulli_log_prob,
    categorical_log_prob,
    laplace_log_prob,
    normal_log_prob,
)
from nidl_vae.objectives import (
    gaussian_kl,
    gaussian_log_density,
    log_mean_exp,
    product_of_experts,
    reparameterize,
    standard_normal_log_density,
)

t = torch.tensor


def test_gaussian_kl_to_standard_normal():
    # mu = (1, 0), s^2 = (1, 4): 0.5 * [(1 + 1 - 1 - 0) + (4 + 0 - 1 - log 4)] = 1.306853
    kl = gaussian_kl(t([[1.0, 0.0]]), t([[0.0, math.log(4.0)]]))
    assert_allclose(kl.numpy(), [1.306853], rtol=1e-6)


def test_gaussian_kl_between_two_gaussians():
    # KL(N(0, 1) || N(1, 4)) = log 2 + (1 + 1) / 8 - 1/2 = 0.443147
    kl = gaussian_kl(t([[0.0]]), t([[0.0]]), t([[1.0]]), t([[math.log(4.0)]]))
    assert_allclose(kl.numpy(), [0.443147], rtol=1e-6)
    assert gaussian_kl(t([[0.3]]), t([[0.2]]), t([[0.3]]), t([[0.2]])).item() == 0.0


def test_gaussian_kl_to_a_sharp_expert_stays_finite():
    # a joint of one expert is that expert: KL 0, and finite gradients, even where the
    # expert's precision exp(-logvar) overflows float32 (logvar < -88)
    mu = torch.tensor([[0.3, -1.2]], requires_grad=True)
    logvar = torch.tensor([[-150.0, -20.0]], requires_grad=True)
    kl = gaussian_kl(mu, logvar, mu, logvar)
    kl.sum().backward()
    assert kl.item() == 0.0
    assert torch.isfinite(mu.grad).all() and torch.isfinite(logvar.grad).all()


def test_gaussian_kl_prior_argument_matches_standard_form():
    mu, logvar = torch.randn(4, 3), torch.randn(4, 3)
    zeros = torch.zeros(4, 3)
    assert_allclose(gaussian_kl(mu, logvar), gaussian_kl(mu, logvar, zeros, zeros), rtol=1e-6)


def test_gaussian_log_densities():
    # log N(0; 0, 1) = -0.918939 per dimension; log N(1; 0, 4) = -0.918939 - log 2 - 1/8
    assert_allclose(standard_normal_log_density(t([[0.0, 0.0]])).numpy(), [-1.837877], rtol=1e-6)
    value = gaussian_log_density(t([[1.0]]), t([[0.0]]), t([[math.log(4.0)]]))
    assert_allclose(value.numpy(), [-1.737086], rtol=1e-6)


def test_reparameterize():
    # 1 + sqrt(4) * 0.5 = 2
    assert reparameterize(t([1.0]), t([math.log(4.0)]), t([0.5])).item() == pytest.approx(2.0)


def test_normal_log_prob():
    # x = 1, mu = 0, sigma = 2: -(0.5 log 2pi + log 2 + 1/8) = -1.737086, per feature, summed
    value = normal_log_prob(t([[1.0, 1.0]]), t([[0.0, 0.0]]), 2.0)
    assert_allclose(value.numpy(), [2 * -1.737086], rtol=1e-6)


def test_laplace_log_prob():
    # x = 1, mu = 0, b = 2: -(log 4 + 1/2) = -1.886294
    value = laplace_log_prob(t([[1.0]]), t([[0.0]]), t([2.0]))
    assert_allclose(value.numpy(), [-1.886294], rtol=1e-6)


def test_bernoulli_log_prob_from_logits():
    # x = 1, logit 0: log 0.5; x = 0.25, p = 0.75: 0.25 log 0.75 + 0.75 log 0.25 = -1.111641
    value = bernoulli_log_prob(t([[1.0, 0.25]]), t([[0.0, math.log(3.0)]]))
    assert_allclose(value.numpy(), [-0.693147 - 1.111641], rtol=1e-6)
    # extreme logits stay finite
    assert torch.isfinite(bernoulli_log_prob(t([[1.0]]), t([[-200.0]]))).all()


def test_categorical_log_prob():
    # softmax(0, log 2, 0) = (1/4, 1/2, 1/4): log p(class 1) = log 0.5
    value = categorical_log_prob(t([[0.0, 1.0, 0.0]]), t([[0.0, math.log(2.0), 0.0]]))
    assert_allclose(value.numpy(), [-0.693147], rtol=1e-6)


def test_log_mean_exp_is_the_importance_weighted_log_likelihood():
    # log((1 + 3) / 2) = log 2; equal weights give the weight itself
    log_w = torch.log(t([[1.0, 5.0], [3.0, 5.0]]))
    assert_allclose(log_mean_exp(log_w).numpy(), [math.log(2), math.log(5)])


def test_product_of_observed_experts():
    mu = torch.tensor([[[1.0]], [[3.0]], [[-5.0]]])  # three experts, one row, one latent
    logvar = torch.log(torch.tensor([[[1.0]], [[0.25]], [[2.0]]]))
    observed = torch.tensor([[True], [True], [False]])
    mu_j, logvar_j = product_of_experts(mu, logvar, observed)
    # precisions 1 and 4: variance 1/5, mean (1 * 1 + 4 * 3) / 5
    assert_allclose(mu_j.item(), 13 / 5, rtol=1e-6)
    assert_allclose(logvar_j.exp().item(), 1 / 5, rtol=1e-6)
    single = product_of_experts(mu, logvar, torch.tensor([[False], [True], [False]]))
    assert_allclose(torch.cat(single).flatten(), [3.0, math.log(0.25)], rtol=1e-6)


def test_product_of_experts_is_finite_for_extreme_variances_and_masked_infinities():
    mu = torch.tensor([[[0.5]], [[math.inf]]], requires_grad=True)
    logvar = torch.tensor([[[-200.0]], [[-math.inf]]], requires_grad=True)
    mu_j, logvar_j = product_of_experts(mu, logvar, torch.tensor([[True], [False]]))
    assert (mu_j.item(), logvar_j.item()) == (0.5, -200.0)
    (mu_j + logvar_j).sum().backward()
    assert mu.grad.tolist() == [[[1.0]], [[0.0]]] and logvar.grad[1].item() == 0.0


def _data_scale(rows, chunk_rows=None):
    rows = np.asarray(rows)
    step = chunk_rows or len(rows)
    return moments(rows[i : i + step] for i in range(0, len(rows), step)).scale()


def test_learned_scale_starts_and_is_floored_in_the_data_unit():
    rows = [[0.0, 1.0, 5.0], [0.0, 3.0, 1.0], [0.0, 5.0, 3.0]]
    unit = _data_scale(rows)
    assert unit == pytest.approx(math.sqrt((0 + 4 + 4) / 3))  # RMS of the column SDs
    assert _data_scale(rows, chunk_rows=1) == pytest.approx(unit)  # chunked: the same
    assert _data_scale(np.float32(rows), chunk_rows=2) == pytest.approx(unit)
    assert _data_scale([[2.0, 2.0], [2.0, 2.0]]) == 1.0  # constant data: unit 1
    assert _data_scale([[2.0, 2.0]]) == 1.0  # one row: no spread, and no warning
    lik = DecoderLikelihood("normal", "learned", 3, spread=unit)
    assert_allclose(lik.scale().detach().numpy(), [LEARNED_SCALE_START * unit] * 3, rtol=1e-5)
    with torch.no_grad():
        lik.raw_scale.fill_(-100.0)
    assert_allclose(lik.scale().detach().numpy(), [LEARNED_SCALE_FLOOR * unit] * 3, rtol=1e-5)
    fixed = DecoderLikelihood("laplace", 0.3, 3)
    assert fixed.scale() == 0.3 and not list(fixed.parameters())


def test_likelihood_means():
    out = t([[0.0, 2.0]])
    assert_allclose(DecoderLikelihood("normal", 1.0, 2).mean(out), out)
    assert_allclose(DecoderLikelihood("bernoulli", 1.0, 2).mean(out), torch.sigmoid(out))


def _numpy_vae_loss(x, W_mu, W_lv, W_dec, eps, scale, beta):
    """The beta-VAE loss written out in numpy for linear encoder heads and decoder."""
    mu, logvar = x @ W_mu.T, x @ W_lv.T
    z = mu + np.exp(0.5 * logvar) * eps
    loc = z @ W_dec.T
    log_lik = -(0.5 * np.log(2 * np.pi) + np.log(scale) + 0.5 * ((x - loc) / scale) ** 2).sum(1)
    kl = 0.5 * (np.exp(logvar) + mu**2 - 1 - logvar).sum(1)
    rec = -log_lik.mean()
    return rec + beta * kl.mean(), rec, kl.mean()


def _linear_vae_module(rng, beta: float, **options):
    """A VAE module with linear encoder heads and decoder (no bias), its weights, and
    rows x of 3 features."""
    from torch import nn

    from nidl_vae.missing import FilledInput
    from nidl_vae.module import VAELightningModule
    from nidl_vae.networks import GaussianEncoder, Networks
    from nidl_vae.vae import VAEModel

    x = rng.normal(size=(4, 3)).astype(np.float32)
    weights = [rng.normal(size=s).astype(np.float32) * 0.5 for s in [(2, 3), (2, 3), (3, 2)]]
    encoder = GaussianEncoder(nn.Identity(), 3, 2, generator=torch.Generator())
    decoder = nn.Linear(2, 3, bias=False)
    with torch.no_grad():
        encoder.mu.weight.copy_(t(weights[0])), encoder.mu.bias.zero_()
        encoder.logvar.weight.copy_(t(weights[1])), encoder.logvar.bias.zero_()
        decoder.weight.copy_(t(weights[2]))
    likelihood = DecoderLikelihood("normal", 0.7, 3)
    networks = Networks(FilledInput(torch.zeros(3), with_mask=False), encoder, decoder, False)
    model = VAEModel(networks, likelihood, beta, **options)
    module = VAELightningModule(model, 1e-3, 0.0, 1, seed=5)
    return module, x, weights


def test_vae_loss_equals_hand_computed_value():
    module, x, (W_mu, W_lv, W_dec) = _linear_vae_module(np.random.default_rng(0), 2.0)
    # the module's noise comes from its own generator, seeded with its seed
    eps = torch.randn(4, 2, generator=torch.Generator().manual_seed(5)).numpy()
    state = torch.get_rng_state()
    terms = module.loss_terms({"x": t(x)}).detach().numpy()
    assert torch.equal(torch.get_rng_state(), state)  # the global generator is untouched
    assert_allclose(terms, _numpy_vae_loss(x, W_mu, W_lv, W_dec, eps, 0.7, 2.0), rtol=1e-5)
    # the ELBO prediction with the same noise as one shared draw per row is its beta = 1
    # counterpart
    from nidl_vae.module import Prediction

    module.prediction = Prediction("elbo", draws=t(eps[:1]), draws_per_chunk=1)
    batch = {"x": t(x[:1]), "index": torch.zeros(1, dtype=torch.long)}
    elbo = module.predict_step(batch)["values"].item()
    loss1, _, _ = _numpy_vae_loss(x[:1], W_mu, W_lv, W_dec, eps[:1], 0.7, 1.0)
    assert elbo == pytest.approx(-loss1, rel=1e-5)


def test_importance_weighted_loss_over_observed_cells_equals_hand_computed_value():
    # MIWAE: K = 3 draws per row, beta = 0.5, two cells missing
    module, x, (W_mu, W_lv, W_dec) = _linear_vae_module(
        np.random.default_rng(1), 0.5, n_train_draws=3
    )
    x[0, 1] = x[2, 0] = np.nan
    filled = np.nan_to_num(x)  # the module's encoder input: NaN at a fill of 0, no mask
    from nidl_vae.missing import FilledInput

    module.model.encoder_input = FilledInput(torch.zeros(3), with_mask=False)
    eps = torch.randn(3, 4, 2, generator=torch.Generator().manual_seed(5)).numpy()
    mu, logvar = filled @ W_mu.T, filled @ W_lv.T
    z = mu + np.exp(0.5 * logvar) * eps
    cells = -(0.5 * np.log(2 * np.pi) + np.log(0.7) + 0.5 * ((x - z @ W_dec.T) / 0.7) ** 2)
    log_lik = np.where(np.isnan(x), 0.0, cells).sum(-1)  # (K, B)
    log_p = -0.5 * (z**2 + np.log(2 * np.pi)).sum(-1)
    log_q = -0.5 * (eps**2 + logvar + np.log(2 * np.pi)).sum(-1)
    log_w = log_lik + 0.5 * (log_p - log_q)
    bound = np.log(np.exp(log_w).mean(0))
    kl = 0.5 * (np.exp(logvar) + mu**2 - 1 - logvar).sum(1)
    terms = module.loss_terms({"x": t(x)}).detach().numpy()
    assert_allclose(terms, [-bound.mean(), -log_lik.mean(), kl.mean()], rtol=1e-5)


@pytest.mark.parametrize(
    "loc_shape, scale_shape", [((4, 5), (5,)), ((3, 4, 5), (5,)), ((4, 5), ())]
)
def test_normal_log_prob_gradients_match_autograd_of_the_formula(loc_shape, scale_shape):
    # the log-density recomputes its residual in the backward pass instead of keeping it
    from nidl_vae.distributions import normal_log_prob

    g = torch.Generator().manual_seed(0)
    x = torch.randn(4, 5, generator=g, dtype=torch.float64, requires_grad=True)
    loc = torch.randn(*loc_shape, generator=g, dtype=torch.float64, requires_grad=True)
    scale = (torch.rand(scale_shape, generator=g, dtype=torch.float64) + 0.5).requires_grad_()
    formula = -(0.5 * math.log(2 * math.pi) + torch.log(scale) + 0.5 * ((x - loc) / scale) ** 2)
    assert_allclose(normal_log_prob(x, loc, scale).detach(), formula.sum(-1).detach())
    assert torch.autograd.gradcheck(normal_log_prob, (x, loc, scale))
    # with missing cells, the gradients of the observed cells' terms alone
    missing = torch.rand(4, 5, generator=g) < 0.3
    observed = (~missing).double()
    assert_allclose(
        normal_log_prob(x, loc, scale, missing).detach(), (formula * observed).sum(-1).detach()
    )
    assert torch.autograd.gradcheck(lambda *a: normal_log_prob(*a, missing), (x, loc, scale))
    # a location in the model's units: mu = u * loc
    unit = torch.tensor(2.5, dtype=torch.float64)
    in_units = -(
        0.5 * math.log(2 * math.pi) + torch.log(scale) + 0.5 * ((x - unit * loc) / scale) ** 2
    )
    assert_allclose(normal_log_prob(x, loc, scale, None, unit).detach(), in_units.sum(-1).detach())
    assert torch.autograd.gradcheck(lambda *a: normal_log_prob(*a, missing, unit), (x, loc, scale))


@pytest.mark.parametrize("per_feature", [True, False])
def test_linear_normal_readout_equals_the_direct_density_in_float64(per_feature):
    # the expanded quadratic form against sum_j log N(x_j; (W h + b)_j, s_j^2) computed in
    # float64 from the location itself, for (k, B) = (7, 3) hidden vectors of width 5
    gen = torch.Generator().manual_seed(0)
    layer = torch.nn.Linear(5, 40)
    x = torch.randn(3, 40, generator=gen) + 2.0
    hidden = torch.randn(7, 3, 5, generator=gen)
    scale = torch.rand(40, generator=gen) + 0.1 if per_feature else 0.3
    with torch.no_grad():
        fast = LinearNormalReadout(layer, scale).rows(x)(hidden)
        loc = hidden.double() @ layer.weight.double().T + layer.bias.double()
        direct = normal_log_prob(x.double(), loc, torch.as_tensor(scale).double())
    assert fast.shape == (7, 3)
    assert_allclose(fast.numpy(), direct.numpy(), rtol=1e-6)


def test_linear_normal_readout_applies_to_wide_linear_normal_decoders_only():
    wide, narrow = torch.nn.Linear(8, 32), torch.nn.Linear(8, 31)
    assert LinearNormalReadout.applies(wide, "normal")
    assert not LinearNormalReadout.applies(narrow, "normal")
    assert not LinearNormalReadout.applies(wide, "laplace")
    assert not LinearNormalReadout.applies(torch.nn.ReLU(), "normal")
