"""LocoProp against closed forms derived from the math (paper.md §1.3-§1.6)."""
import copy

import numpy as np
import pytest
import torch
from torch import nn

import locoprop
from locoprop.capture import LayerCapture
from locoprop.models import deep_autoencoder, reconstruction_loss
from locoprop.optim.locoprop import closed_form_s, implicit_m, local_iterates, local_target
from locoprop.transfer import get_transfer

HIDDEN = ["identity", "sigmoid", "tanh", "relu"]
MODULES = {"identity": nn.Identity, "sigmoid": nn.Sigmoid, "tanh": nn.Tanh, "relu": nn.ReLU}


def tiny_mlp(hidden: str, seed: int = 0, sizes=(5, 6, 4, 3)) -> nn.Sequential:
    torch.manual_seed(seed)
    layers = []
    for k in range(len(sizes) - 1):
        layers.append(nn.Linear(sizes[k], sizes[k + 1]))
        if k < len(sizes) - 2:
            layers.append(MODULES[hidden]())
    return nn.Sequential(*layers).double()


def output_loss(output_activation: str):
    """A global loss whose natural link is ``output_activation`` (logits in, batch mean out)."""
    def loss(z, y):
        if output_activation == "softmax":
            return -(torch.softmax(y, -1) * torch.log_softmax(z, -1)).sum(-1).mean()
        if output_activation == "sigmoid":
            return nn.functional.binary_cross_entropy_with_logits(z, torch.sigmoid(y), reduction="sum") / len(z)
        return 0.5 * ((z - y) ** 2).sum(-1).mean()
    return loss


def batch(n=8, d_in=5, d_out=3, seed=1):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, d_in, generator=g, dtype=torch.float64), torch.randn(n, d_out, generator=g, dtype=torch.float64)


def train_step(model, opt, x, y, loss_fn):
    opt.zero_grad()
    loss = loss_fn(model(x), y)
    loss.backward()
    opt.step()
    return loss


@pytest.mark.parametrize("variant", ["S", "M"])
@pytest.mark.parametrize("hidden", HIDDEN)
@pytest.mark.parametrize("out", ["identity", "sigmoid", "softmax"])
def test_one_local_sgd_step_is_one_backprop_step(variant, hidden, out):
    nu, gamma = 0.05, 3.0
    x, y = batch()
    model = tiny_mlp(hidden)
    reference = copy.deepcopy(model)
    loss_fn = output_loss(out)
    opt = locoprop.LocoProp(model, lr=nu, variant=variant, gamma=gamma, local_iters=1,
                            inner=torch.optim.SGD, output_activation=out)
    train_step(model, opt, x, y, loss_fn)
    sgd = torch.optim.SGD(reference.parameters(), lr=nu * gamma)
    train_step(reference, sgd, x, y, loss_fn)
    for p, q in zip(model.parameters(), reference.parameters()):
        torch.testing.assert_close(p, q, rtol=1e-12, atol=1e-12)


def manual_pass(model, x, y, loss_fn):
    """Layer inputs and pre-activation gradients, computed without the package's capture."""
    inputs, preacts, h = [], [], x
    linears = [m for m in model if isinstance(m, nn.Linear)]
    for m in model:
        if isinstance(m, nn.Linear):
            inputs.append(h.detach())
            h = m(h)
            h.retain_grad()
            preacts.append(h)
        else:
            h = m(h)
    loss_fn(h, y).backward()
    return linears, inputs, [a.detach() for a in preacts], [a.grad for a in preacts]


def weights_aug(linear):
    return torch.cat([linear.weight, linear.bias[:, None]], 1).detach().numpy()


@pytest.mark.parametrize("T", [1, 2, 7])
def test_locoprop_s_iterates_are_the_truncated_neumann_series(T):
    nu, gamma, eta = 0.02, 2.0, 5.0
    x, y = batch()
    model = tiny_mlp("tanh")
    linears, inputs, _, grads = manual_pass(copy.deepcopy(model), x, y, output_loss("identity"))
    start = [weights_aug(m) for m in linears]
    opt = locoprop.LocoProp(model, lr=nu, variant="S", gamma=gamma, local_iters=T, eta=eta, lr_floor=1.0,
                            inner=torch.optim.SGD, output_activation="identity")
    train_step(model, opt, x, y, output_loss("identity"))
    for m, X, G, W0 in zip([m for m in model if isinstance(m, nn.Linear)], inputs, grads, start):
        Xb = np.hstack([X.numpy(), np.ones((len(X), 1))])
        C = Xb.T @ Xb + np.eye(Xb.shape[1]) / eta
        grad_L = G.numpy().T @ Xb  # d_out x (d_in + 1), the BackProp gradient of [W, b]
        series = sum(np.linalg.matrix_power(np.eye(len(C)) - nu * C, i) for i in range(T))
        expected = W0 - nu * gamma * grad_L @ series  # C is symmetric: right-multiplication
        np.testing.assert_allclose(weights_aug(m), expected, rtol=1e-10, atol=1e-12)


def test_locoprop_s_converges_to_the_closed_form():
    gamma, eta = 2.0, 0.5
    x, y = batch(n=20)
    model = tiny_mlp("tanh")
    linears, inputs, _, grads = manual_pass(copy.deepcopy(model), x, y, output_loss("identity"))
    start = [weights_aug(m) for m in linears]
    opt = locoprop.LocoProp(model, lr=0.01, variant="S", gamma=gamma, local_iters=3000, eta=eta, lr_floor=1.0,
                            inner=torch.optim.SGD, output_activation="identity")
    train_step(model, opt, x, y, output_loss("identity"))
    for m, X, G, W0 in zip([m for m in model if isinstance(m, nn.Linear)], inputs, grads, start):
        Xb = np.hstack([X.numpy(), np.ones((len(X), 1))])
        closed = W0 - gamma * np.linalg.solve(Xb.T @ Xb + np.eye(Xb.shape[1]) / eta, Xb.T @ G.numpy()).T
        np.testing.assert_allclose(weights_aug(m), closed, rtol=1e-7, atol=1e-9)
        # the Woodbury form of the same solution
        woodbury = W0 - gamma * (Xb.T @ np.linalg.solve(Xb @ Xb.T + np.eye(len(Xb)) / eta, G.numpy())).T
        np.testing.assert_allclose(closed, woodbury, rtol=1e-9, atol=1e-12)
        torch.testing.assert_close(closed_form_s(X, G, gamma, eta).numpy(), closed - W0, rtol=1e-9, atol=1e-12)


def test_local_iterates_function_matches_optimizer_and_neumann():
    nu, gamma, eta, T = 0.03, 1.5, 2.0, 5
    x, y = batch()
    model = tiny_mlp("sigmoid")
    _, inputs, preacts, grads = manual_pass(copy.deepcopy(model), x, y, output_loss("identity"))
    X, A, G = inputs[0], preacts[0], grads[0]
    its = local_iterates("S", get_transfer("sigmoid"), X, A, G, gamma, nu, T, eta)
    Xb = np.hstack([X.numpy(), np.ones((len(X), 1))])
    C = Xb.T @ Xb + np.eye(Xb.shape[1]) / eta
    series = sum(np.linalg.matrix_power(np.eye(len(C)) - nu * C, i) for i in range(T))
    np.testing.assert_allclose(its[-1].numpy(), -nu * gamma * (G.numpy().T @ Xb) @ series, rtol=1e-10, atol=1e-12)


def test_implicit_m_solves_the_fixed_point_equation():
    gamma, eta = 3.0, 0.2
    x, y = batch(n=12)
    model = tiny_mlp("tanh")
    _, inputs, preacts, grads = manual_pass(model, x, y, output_loss("identity"))
    X, A, G = inputs[1], preacts[1], grads[1]
    tanh = get_transfer("tanh")
    dW = implicit_m(tanh, X, A, G, gamma, eta)
    Xb = torch.cat([X, torch.ones(len(X), 1, dtype=X.dtype)], 1)
    rhs = -eta * (torch.tanh(A + Xb @ dW.T) - torch.tanh(A) + gamma * G).T @ Xb
    torch.testing.assert_close(dW, rhs, rtol=1e-6, atol=1e-9)
    # many small local GD steps on the proximal problem reach the same point
    its = local_iterates("M", tanh, X, A, G, gamma, lr=0.01, steps=4000, eta=eta)
    torch.testing.assert_close(its[-1], dW, rtol=1e-5, atol=1e-7)


def test_output_layer_target_is_a_convex_combination_with_the_data(digits):
    gamma = 10.0
    x = digits[:40].double()
    model = deep_autoencoder((64, 20, 6, 20, 64), seed=3).double()
    capture = LayerCapture(model, output_activation="sigmoid")
    reconstruction_loss(model(x), x).backward()
    last = capture.layers[-1]
    target = local_target("M", last.transfer, last.preact, last.grad, gamma)
    B = len(x)
    torch.testing.assert_close(target, (1 - gamma / B) * torch.sigmoid(last.preact) + gamma / B * x)


def _two_optimizers_in_opposite_orders(variant):
    x, y = batch(n=16)
    models = [tiny_mlp("tanh", seed=4) for _ in range(2)]
    opts = [locoprop.LocoProp(m, lr=1e-3, variant=variant, gamma=5.0, local_iters=4, output_activation="identity")
            for m in models]
    opt = opts[1]
    # process the layers last-to-first: every list the step walks, reversed consistently
    opt.capture.layers.reverse()
    opt.param_groups.reverse()
    opt.inner.param_groups.reverse()
    for m, o in zip(models, opts):
        train_step(m, o, x, y, output_loss("identity"))
    return models


@pytest.mark.parametrize("variant", ["S", "M"])
def test_layer_order_does_not_matter(variant):
    first, second = _two_optimizers_in_opposite_orders(variant)
    for p, q in zip(first.parameters(), second.parameters()):
        assert torch.equal(p, q)


def test_tf_rmsprop_inner_first_step_by_hand():
    """One LocoProp-M step with T = 2 and TF-RMSProp, computed by hand for a one-layer model."""
    x, y = batch(n=6, d_in=3, d_out=2)
    model = nn.Sequential(nn.Linear(3, 2)).double()
    W0 = weights_aug(model[0])
    nu, gamma, rho, mu, eps = 0.01, 4.0, 0.9, 0.5, 1e-5
    opt = locoprop.LocoProp(model, lr=nu, gamma=gamma, local_iters=2,
                            inner_kwargs=dict(decay=rho, momentum=mu, eps=eps), output_activation="sigmoid")
    loss_fn = output_loss("sigmoid")
    train_step(model, opt, x, y, loss_fn)
    X = np.hstack([x.numpy(), np.ones((6, 1))])
    sig = lambda a: 1 / (1 + np.exp(-a))
    A = X @ W0.T
    G = (sig(A) - sig(y.numpy())) / 6
    target = sig(A) - gamma * G
    W, ms, mom = W0.copy(), np.ones_like(W0), np.zeros_like(W0)
    for j, factor in enumerate([1.0, 0.5]):
        g = (sig(X @ W.T) - target).T @ X
        ms = rho * ms + (1 - rho) * g**2
        mom = mu * mom + nu * factor * g / np.sqrt(ms + eps)
        W = W - mom
    np.testing.assert_allclose(weights_aug(model[0]), W, rtol=1e-10, atol=1e-13)


@pytest.mark.parametrize("inner", ["tf-rmsprop", "adam", torch.optim.SGD])
def test_state_dict_round_trip_continues_bit_identically(inner, digits, resumes_bit_identically):
    def make(fresh):
        model = deep_autoencoder((64, 16, 4, 16, 64), seed=123 if fresh else 0)
        return model, locoprop.LocoProp(model, lr=1e-4, inner=inner, output_activation="sigmoid")

    assert resumes_bit_identically(make, digits[:200].split(50), 3)


def test_lr_scheduler_drives_the_inner_learning_rate():
    x, y = batch()
    model = tiny_mlp("tanh")
    opt = locoprop.LocoProp(model, lr=0.1, local_iters=1, inner=torch.optim.SGD, output_activation="identity")
    torch.optim.lr_scheduler.LambdaLR(opt, lambda step: 0.0)  # lr 0 from the first step on
    before = [p.detach().clone() for p in model.parameters()]
    train_step(model, opt, x, y, output_loss("identity"))
    assert all(torch.equal(p, q) for p, q in zip(model.parameters(), before))


def test_trains_the_autoencoder_on_digits(train_on_digits):
    model = locoprop.models.deep_autoencoder((64, 64, 32, 8, 32, 64, 64), seed=0)
    initial, final = train_on_digits(model, locoprop.LocoProp(model, lr=1e-5, output_activation="sigmoid"))
    assert final < 0.6 * initial, (initial, final)


def test_step_without_backward_is_a_clear_error():
    model = tiny_mlp("tanh")
    opt = locoprop.LocoProp(model, output_activation="identity")
    with pytest.raises(RuntimeError, match="loss.backward"):
        opt.step()


@pytest.mark.parametrize("kwargs, message", [
    (dict(local_iters=0), "local_iters"),
    (dict(local_iters=2.5), "local_iters"),
    (dict(gamma=0.0), "gamma"),
    (dict(gamma=-1.0), "gamma"),
    (dict(lr=-1e-3), "lr"),
    (dict(variant="X"), "variant"),
    (dict(eta=0.0), "eta"),
    (dict(lr_floor=2.0), "lr_floor"),
    (dict(inner="lbfgs"), "inner"),
    (dict(inner=dict), "inner"),
    (dict(output_activation="gelu"), "gelu"),
])
def test_invalid_hyper_parameters_raise_value_error(kwargs, message):
    with pytest.raises(ValueError, match=message):
        locoprop.LocoProp(tiny_mlp("tanh"), **kwargs)


def test_unsupported_modules_are_named():
    model = nn.Sequential(nn.Conv2d(1, 2, 3), nn.Flatten(), nn.Linear(2, 2))
    with pytest.raises(ValueError, match="Conv2d"):
        locoprop.LocoProp(model)
    with pytest.raises(ValueError, match="GELU"):
        locoprop.LocoProp(nn.Sequential(nn.Linear(2, 2), nn.GELU(), nn.Linear(2, 2)))
