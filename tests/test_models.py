"""The paper's autoencoder, its losses, the lr schedule and the layer capture."""
import math

import numpy as np
import pytest
import torch
from torch import nn

import locoprop
from locoprop.capture import LayerCapture
from locoprop.models import PAPER_SIZES, deep_autoencoder, mlp, reconstruction_loss, squared_error
from locoprop.schedules import warmup_linear_decay, warmup_linear_decay_factor


def test_paper_architecture():
    model = deep_autoencoder()
    linears = [m for m in model if isinstance(m, nn.Linear)]
    assert [m.in_features for m in linears] + [linears[-1].out_features] == list(PAPER_SIZES)
    # 2,837,314 parameters (paper.md §3.1)
    assert sum(p.numel() for p in model.parameters()) == 2_837_314
    kinds = [type(m).__name__ for m in model]
    # tanh after every hidden layer but the 30-unit code layer; logits out
    assert kinds == ["Linear", "Tanh", "Linear", "Tanh", "Linear", "Tanh", "Linear", "Linear", "Tanh",
                     "Linear", "Tanh", "Linear", "Tanh", "Linear"]
    transfers = [layer.transfer.name for layer in LayerCapture(model, "sigmoid").layers]
    assert transfers == ["tanh"] * 3 + ["identity"] + ["tanh"] * 3 + ["sigmoid"]


def test_glorot_uniform_weights_and_biases():
    model = deep_autoencoder(seed=0)
    first = model[0]
    w_bound, b_bound = math.sqrt(6 / (784 + 1000)), math.sqrt(3 / 1000)
    # Seeded draws; the margins are statistical: P(max of N = 784,000 |U(-c, c)| < 0.99 c) = 0.99^N ~ e^-7840,
    # P(max of 1000 biases < 0.95 c) = 0.95^1000 ~ 5e-23.
    assert first.weight.abs().max() <= w_bound and first.weight.abs().max() > 0.99 * w_bound
    assert first.bias.abs().max() <= b_bound and first.bias.abs().max() > 0.95 * b_bound
    # variance of U(-c, c) is c^2 / 3; the sample variance of N draws has relative standard deviation
    # sqrt((9/5 - 1) / N) ~ 1e-3 (kurtosis 9/5), so rel=0.01 is ten standard deviations
    assert first.weight.var().item() == pytest.approx(w_bound**2 / 3, rel=0.01)


def test_seeded_initialisation():
    a, b, c = deep_autoencoder(seed=1), deep_autoencoder(seed=1), deep_autoencoder(seed=2)
    assert all(torch.equal(p, q) for p, q in zip(a.parameters(), b.parameters()))
    assert not torch.equal(a[0].weight, c[0].weight)


def test_reconstruction_loss_is_summed_bce_per_image():
    g = torch.Generator().manual_seed(0)
    z, x = torch.randn(4, 10, generator=g, dtype=torch.float64), torch.rand(4, 10, generator=g, dtype=torch.float64)
    p = 1 / (1 + np.exp(-z.numpy()))
    expected = -(x.numpy() * np.log(p) + (1 - x.numpy()) * np.log(1 - p)).sum() / 4
    # float64, 40 positive terms: the NumPy form's log(1 - p) loses at most a factor 1/(1 - p) < 20 here
    assert reconstruction_loss(z, x).item() == pytest.approx(expected, rel=1e-12)
    # logits at zero cost log 2 per pixel.  The float32 sum of n = 3 * 784 equal terms is a blocked
    # (cascade) summation whose blocking depends on the CPU and the thread count; its relative error
    # is at most (ceil(log2 n) + 2) eps32 (pairwise-summation bound, plus log 2's and the division's roundings)
    n = 3 * 784
    rel = (math.ceil(math.log2(n)) + 2) * torch.finfo(torch.float32).eps
    assert reconstruction_loss(torch.zeros(3, 784), torch.rand(3, 784)).item() == pytest.approx(784 * math.log(2), rel=rel)
    # squared error uses ONE sigmoid
    assert squared_error(z, x).item() == pytest.approx(((p - x.numpy()) ** 2).mean(), rel=1e-12)


def test_schedule_warms_up_then_decays_linearly():
    factors = [warmup_linear_decay_factor(t, 5, 100) for t in range(100)]
    np.testing.assert_allclose(factors[:5], [0.2, 0.4, 0.6, 0.8, 1.0])
    np.testing.assert_allclose(factors[5:], (100 - np.arange(5, 100)) / 95)
    model = nn.Linear(2, 2)
    opt = torch.optim.SGD(model.parameters(), lr=0.5)
    sched = warmup_linear_decay(opt, 2, 4)
    seen = []
    for _ in range(4):
        seen.append(opt.param_groups[0]["lr"])
        opt.step(), sched.step()
    np.testing.assert_allclose(seen, [0.25, 0.5, 0.5, 0.25])
    with pytest.raises(ValueError, match="warmup_steps"):
        warmup_linear_decay(opt, 10, 10)


def test_capture_records_inputs_preactivations_and_gradients():
    model = mlp((5, 4, 3), activation="tanh", seed=0).double()
    capture = LayerCapture(model, output_activation="sigmoid")
    x = torch.randn(6, 5, dtype=torch.float64)
    a1 = model[0](x)
    a1.retain_grad()
    h = torch.tanh(a1)
    a2 = model[2](h)
    a2.retain_grad()
    reconstruction_loss(a2, torch.rand(6, 3, dtype=torch.float64)).backward()
    first, second = capture.layers
    assert torch.equal(first.inputs, x) and torch.equal(second.inputs, h.detach())
    torch.testing.assert_close(first.preact, a1.detach())
    torch.testing.assert_close(first.grad, a1.grad)
    torch.testing.assert_close(second.grad, a2.grad)
    with torch.no_grad():
        model(torch.randn(2, 5, dtype=torch.float64))  # evaluation does not overwrite the record
    assert first.inputs.shape[0] == 6


def test_backpropagate_equals_autograd_for_another_loss():
    model = mlp((5, 6, 4, 3), activation="relu", seed=0).double()
    capture = LayerCapture(model, output_activation="sigmoid")
    x = torch.randn(7, 5, dtype=torch.float64)
    model(x).sum().backward()
    preacts, h = [], x
    for m in model:
        h = m(h)
        if isinstance(m, nn.Linear):
            h.retain_grad()
            preacts.append(h)
    other = torch.randn(7, 3, dtype=torch.float64)
    (h * other).sum().backward()
    for got, a in zip(capture.backpropagate(other), preacts):
        torch.testing.assert_close(got, a.grad)


@pytest.mark.parametrize("name", locoprop.OPTIMIZERS)
def test_factory_builds_every_optimizer_and_it_trains(name, digits, train_on_digits):
    model = deep_autoencoder((64, 32, 8, 32, 64), seed=0)
    initial, final = train_on_digits(model, locoprop.make_optimizer(name, model), epochs=6, data=digits[:500])
    assert final < 0.9 * initial, (initial, final)


def test_factory_rejects_unknown_names():
    with pytest.raises(ValueError, match="unknown optimizer 'lamb'"):
        locoprop.make_optimizer("lamb", nn.Linear(2, 2))
    with pytest.raises(ValueError, match="unknown activation"):
        mlp((3, 3, 3), activation="gelu")
