"""The optimizer: Adam, with one second moment per unit on the layers that read the features."""

import pickle

import numpy as np
import pytest
import torch
from torch import nn

from nidl_vae import CRMVAE, CVAE, VAE
from nidl_vae.optim import FeatureLinear, RowwiseAdam, optimizer_for


def _pair():
    torch.manual_seed(0)
    net = nn.Sequential(FeatureLinear(6, 4), nn.ReLU(), nn.Linear(4, 3))
    plain = nn.Sequential(nn.Linear(6, 4), nn.ReLU(), nn.Linear(4, 3))
    plain.load_state_dict(net.state_dict())
    return net, plain


@pytest.mark.parametrize("weight_decay", [0.0, 0.1])
def test_rowwise_step_equals_its_equations(weight_decay):
    net, _ = _pair()
    optimizer = optimizer_for(net, lr=0.01, weight_decay=weight_decay)
    x = torch.randn(8, 6, generator=torch.Generator().manual_seed(1))
    w = net[0].weight.detach().clone()
    m, v = torch.zeros_like(w), torch.zeros(4, 1)
    for t in range(1, 4):
        optimizer.zero_grad()
        net(x).square().sum().backward()
        g = net[0].weight.grad + weight_decay * w
        m = 0.9 * m + 0.1 * g
        v = 0.999 * v + 0.001 * g.square().mean(1, keepdim=True)
        w = w - 0.01 * (m / (1 - 0.9**t)) / ((v / (1 - 0.999**t)).sqrt() + 1e-8)
        optimizer.step()
        torch.testing.assert_close(net[0].weight.detach(), w, rtol=1e-5, atol=1e-7)
    assert optimizer.state[net[0].weight]["row_sq"].shape == (4, 1)  # one value per unit


def test_other_parameters_follow_adam_exactly():
    net, plain = _pair()
    net[0].weight.requires_grad_(False)  # the two nets then differ only in the optimizer
    plain[0].weight.requires_grad_(False)
    ours = optimizer_for(net, lr=0.01, weight_decay=0.0)
    adam = torch.optim.Adam([p for p in plain.parameters() if p.requires_grad], lr=0.01)
    x = torch.randn(8, 6, generator=torch.Generator().manual_seed(1))
    for _ in range(5):
        for model, optimizer in ((net, ours), (plain, adam)):
            optimizer.zero_grad()
            model(x).square().sum().backward()
            optimizer.step()
    for ours_p, adam_p in zip(net.parameters(), plain.parameters(), strict=True):
        torch.testing.assert_close(ours_p, adam_p)


def test_a_step_moves_each_input_weight_in_proportion_to_its_gradient():
    # why the layer that reads the features is row-wise: Adam moves the weight of an input
    # whose gradient is 1000x smaller as far as the others; row-wise it moves 1000x less
    for kind, expected in ((nn.Linear, 1.0), (FeatureLinear, 1e-3)):
        layer = kind(2, 1, bias=False)
        optimizer = optimizer_for(layer, lr=0.01, weight_decay=0.0)
        before = layer.weight.detach().clone()
        layer.weight.grad = torch.tensor([[1.0, 1e-3]])
        optimizer.step()
        step = (layer.weight.detach() - before).abs()[0]
        assert step[1] / step[0] == pytest.approx(expected, rel=1e-3)


def test_default_encoders_read_the_features_through_a_feature_layer():
    rng = np.random.default_rng(0)
    X = rng.normal(size=(40, 6)).astype(np.float32)
    fitted = [
        VAE(max_epochs=1, random_state=0).fit(X),
        CVAE(max_epochs=1, random_state=0).fit(X, conditions=rng.integers(0, 2, 40)),
        CRMVAE(modalities={"a": 3, "b": 3}, max_epochs=1, random_state=0).fit(X),
    ]
    for model in fitted:
        expected = 2 if isinstance(model, CRMVAE) else 1  # one per modality's expert
        for module in (model.module_, pickle.loads(pickle.dumps(model)).module_):
            readers = [m for m in module.modules() if isinstance(m, FeatureLinear)]
            assert len(readers) == expected
    # the CVAE's reads the 6 features and, in its last 2 columns, the one-hot conditions
    (reader,) = [m for m in fitted[1].module_.modules() if isinstance(m, FeatureLinear)]
    assert reader.weight.shape == (256, 8) and reader.n_conditions == 2


def test_the_conditions_columns_follow_adam_and_the_features_are_row_wise():
    torch.manual_seed(0)
    net = nn.Sequential(FeatureLinear(6, 4, n_conditions=2), nn.ReLU(), nn.Linear(4, 3))
    optimizer = optimizer_for(net, lr=0.01, weight_decay=0.0)
    x = torch.randn(8, 6, generator=torch.Generator().manual_seed(1))
    w = net[0].weight.detach().clone()
    m, v_rows, v_free = torch.zeros_like(w), torch.zeros(4, 1), torch.zeros(4, 2)
    for t in range(1, 4):
        optimizer.zero_grad()
        net(x).square().sum().backward()
        g = net[0].weight.grad
        m = 0.9 * m + 0.1 * g
        v_rows = 0.999 * v_rows + 0.001 * g[:, :4].square().mean(1, keepdim=True)
        v_free = 0.999 * v_free + 0.001 * g[:, 4:].square()
        v = torch.cat([v_rows.expand(4, 4), v_free], 1)
        w = w - 0.01 * (m / (1 - 0.9**t)) / ((v / (1 - 0.999**t)).sqrt() + 1e-8)
        optimizer.step()
        torch.testing.assert_close(net[0].weight.detach(), w, rtol=1e-5, atol=1e-7)


def test_the_optimizer_is_rowwise_adam_with_the_estimators_options():
    X = np.random.default_rng(0).normal(size=(40, 6)).astype(np.float32)
    module = VAE(max_epochs=1, lr=0.02, weight_decay=0.1, random_state=0).fit(X).module_
    optimizer = module.configure_optimizers()
    assert isinstance(optimizer, RowwiseAdam)
    assert {g["lr"] for g in optimizer.param_groups} == {0.02}
    assert {g["weight_decay"] for g in optimizer.param_groups} == {0.1}


def test_feature_layers_are_row_wise_only_when_they_read_more_features_than_rows():
    net = nn.Sequential(FeatureLinear(6, 4), nn.ReLU(), nn.Linear(4, 3))
    for n_rows, expected in ((None, 1), (5, 1), (6, 0), (100, 0)):
        optimizer = optimizer_for(net, lr=0.01, weight_decay=0.0, n_rows=n_rows)
        rowwise = [p for g in optimizer.param_groups if g.get("rowwise") for p in g["params"]]
        assert len(rowwise) == expected
    # the estimator passes its training rows: digits (64 pixels) train with Adam alone
    X = np.random.default_rng(0).normal(size=(40, 6)).astype(np.float32)
    assert VAE(max_epochs=1, random_state=0).fit(X).module_.n_train_rows == 40


def test_a_feature_layer_is_drawn_as_the_plain_layer():
    from nidl_vae.networks import feature_linear, linear

    plain = linear(7, 3, torch.Generator().manual_seed(0))
    layer = feature_linear(7, 3, 2, torch.Generator().manual_seed(0))
    assert torch.equal(layer.weight, plain.weight) and torch.equal(layer.bias, plain.bias)
