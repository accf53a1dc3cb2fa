"""Matching losses against their closed KL / cross-entropy forms (paper.md §1.5)."""
import pytest
import torch
from torch import nn

from locoprop.transfer import TRANSFERS, get_transfer, matching_loss, transfer_of_module

def bernoulli_kl(p, q):
    """KL(Bern(p) || Bern(q)), summed over the last dimension."""
    return (p * torch.log(p / q) + (1 - p) * torch.log((1 - p) / (1 - q))).sum(-1)


@pytest.fixture
def pair():
    g = torch.Generator().manual_seed(1)
    return (2 * torch.randn(50, 7, generator=g, dtype=torch.float64),
            2 * torch.randn(50, 7, generator=g, dtype=torch.float64))


def test_sigmoid_matching_loss_is_bernoulli_kl(pair):
    a_hat, a = pair
    expected = bernoulli_kl(torch.sigmoid(a), torch.sigmoid(a_hat))
    torch.testing.assert_close(matching_loss("sigmoid", a_hat, a), expected)


def test_sigmoid_matching_loss_is_cross_entropy_minus_entropy(pair):
    a_hat, a = pair
    y = torch.sigmoid(a)
    bce = nn.functional.binary_cross_entropy_with_logits(a_hat, y, reduction="none").sum(-1)
    entropy = nn.functional.binary_cross_entropy(y, y, reduction="none").sum(-1)
    torch.testing.assert_close(matching_loss("sigmoid", a_hat, a), bce - entropy)


def test_tanh_matching_loss_is_kl_of_shifted_bernoullis(pair):
    a_hat, a = pair
    expected = bernoulli_kl((1 + torch.tanh(a)) / 2, (1 + torch.tanh(a_hat)) / 2)
    torch.testing.assert_close(matching_loss("tanh", a_hat, a), expected)


def test_tanh_matching_loss_dual_form(pair):
    a_hat, a = pair
    y = torch.tanh(a)
    dual = (torch.log(torch.cosh(a_hat)) - y * a_hat
            + 0.5 * ((1 + y) * torch.log(1 + y) + (1 - y) * torch.log(1 - y))).sum(-1)
    torch.testing.assert_close(matching_loss("tanh", a_hat, a), dual)


def test_softmax_matching_loss_is_categorical_kl(pair):
    a_hat, a = pair
    y, q = torch.softmax(a, -1), torch.softmax(a_hat, -1)
    torch.testing.assert_close(matching_loss("softmax", a_hat, a), (y * torch.log(y / q)).sum(-1))


def test_relu_matching_loss_closed_form(pair):
    a_hat, a = pair
    y = torch.relu(a)
    expected = (0.5 * (torch.relu(a_hat) - y) ** 2 + y * torch.relu(-a_hat)).sum(-1)
    torch.testing.assert_close(matching_loss("relu", a_hat, a), expected)


def test_identity_matching_loss_is_half_squared_distance(pair):
    a_hat, a = pair
    torch.testing.assert_close(matching_loss("identity", a_hat, a), 0.5 * ((a_hat - a) ** 2).sum(-1))


@pytest.mark.parametrize("name", sorted(TRANSFERS))
def test_matching_loss_nonnegative_and_zero_on_the_diagonal(name, pair):
    a_hat, a = pair
    # D_F = F(a_hat) - F(a) - f(a)(a_hat - a) is computed with a cancellation: its rounding error is a few
    # units of float64 roundoff times the size of the terms (8 eps covers the row sums of 7 terms)
    t = get_transfer(name)
    size = t.integral(a_hat).abs() + t.integral(a).abs() + (t.f(a) * (a_hat - a)).abs().sum(-1)
    assert (matching_loss(name, a_hat, a) >= -8 * torch.finfo(torch.float64).eps * size).all()
    torch.testing.assert_close(matching_loss(name, a, a), torch.zeros(len(a), dtype=a.dtype), atol=1e-12, rtol=0)


@pytest.mark.parametrize("name", sorted(TRANSFERS))
def test_gradient_of_bregman_form_is_f_of_prediction_minus_target(name, pair):
    a_hat, a = pair
    transfer = get_transfer(name)
    a_hat = a_hat.clone().requires_grad_()
    transfer.bregman(a_hat, a).sum().backward()
    torch.testing.assert_close(a_hat.grad, transfer.f(a_hat.detach()) - transfer.f(a))


@pytest.mark.parametrize("name", sorted(TRANSFERS))
def test_local_loss_differs_from_bregman_by_a_constant(name, pair):
    a_hat, a = pair
    transfer = get_transfer(name)
    y = transfer.f(a)
    diff = transfer.local_loss(a_hat, y) - transfer.bregman(a_hat, a)
    torch.testing.assert_close(diff, transfer.local_loss(a, y) - 0 * diff)


@pytest.mark.parametrize("name", ["identity", "sigmoid", "tanh", "relu"])
def test_derivative_matches_autograd(name, pair):
    a, _ = pair
    transfer = get_transfer(name)
    a = a.clone().requires_grad_()
    transfer.f(a).sum().backward()
    torch.testing.assert_close(transfer.derivative(a.detach()), a.grad)


def test_transfer_of_module_and_unknown_names():
    assert transfer_of_module(nn.Tanh()).name == "tanh"
    assert transfer_of_module(nn.Softmax(dim=-1)).name == "softmax"
    assert transfer_of_module(nn.Conv2d(1, 1, 1)) is None
    with pytest.raises(ValueError, match="unknown activation 'gelu'"):
        get_transfer("gelu")
