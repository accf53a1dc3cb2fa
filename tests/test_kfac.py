"""K-FAC: factors, damped steps, robustness, checkpointing and training, checked against
independent computations (torch.func per-example gradients, dense float64 Kronecker solves)."""
from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.func import grad, vmap

from locoprop.models import deep_autoencoder, mlp
from locoprop.optim.kfac import DEFAULT_LR, KFAC

SIZES = (5, 4, 3, 4)  # factor sizes A: 6, 5, 4 and G: 4, 3, 4 (mixed size buckets)
EPS32 = torch.finfo(torch.float32).eps


def tiny_model(seed: int = 0) -> nn.Sequential:
    return mlp(SIZES, activation="tanh", seed=seed).double()


def batch(seed: int = 1, n: int = 7):
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(n, SIZES[0], generator=g, dtype=torch.float64)
    y = torch.rand(n, SIZES[-1], generator=g, dtype=torch.float64)
    return x, y


def loss_fn(logits, y):
    return F.binary_cross_entropy_with_logits(logits, y, reduction="sum") / y.shape[0]


def backward(model, x, y):
    model.zero_grad()
    loss = loss_fn(model(x), y)
    loss.backward()
    return loss


def oracle_factors(model, x, y):
    """Kronecker factors from per-example gradients of the per-example loss (torch.func)."""
    linears = [m for m in model if isinstance(m, nn.Linear)]
    weights = [(m.weight.detach(), m.bias.detach()) for m in linears]

    def example_loss(eps, xb, yb):
        h, inputs = xb, []
        for k, (w, b) in enumerate(weights):
            inputs.append(h)
            a = w @ h + b + eps[k]
            h = torch.tanh(a) if k < len(weights) - 1 else a
        return F.binary_cross_entropy_with_logits(h, yb, reduction="sum")

    eps = [torch.zeros(x.shape[0], w.shape[0], dtype=x.dtype) for w, _ in weights]
    per_example = vmap(grad(example_loss))(eps, x, y)  # list: B x d_out per layer

    # Layer inputs by an explicit forward pass.
    h, factors = x, []
    for k, ((w, b), g) in enumerate(zip(weights, per_example)):
        abar = torch.cat([h, torch.ones(h.shape[0], 1, dtype=h.dtype)], 1)
        factors.append((abar.T @ abar / x.shape[0], g.T @ g / x.shape[0]))
        a = h @ w.T + b
        h = torch.tanh(a) if k < len(weights) - 1 else a
    return factors


def fixed_labels(model, x, seed=3):
    with torch.no_grad():
        p = torch.sigmoid(model(x))
    return torch.bernoulli(p, generator=torch.Generator().manual_seed(seed))


# ---- (1) factors -------------------------------------------------------------------------------

@pytest.mark.parametrize("fisher", ["mc", "empirical"])
def test_factors_match_per_example_gradients(fisher):
    model = tiny_model()
    x, y = batch()
    opt = KFAC(model, lr=1e-3, fisher=fisher, factor_decay=0.9)
    decay = 0.9
    ema, weight = None, 0.0
    for step in range(2):
        sampled = fixed_labels(model, x, seed=10 + step)
        opt._sample_targets = lambda preact, s=sampled: s
        batch_factors = oracle_factors(model, x, sampled if fisher == "mc" else y)
        if ema is None:
            ema = [(torch.zeros_like(A), torch.zeros_like(G)) for A, G in batch_factors]
        # Bias-corrected EMA of the batch factors.
        ema = [(decay * A + (1 - decay) * A1, decay * G + (1 - decay) * G1)
               for (A, G), (A1, G1) in zip(ema, batch_factors)]
        weight = decay * weight + (1 - decay)
        backward(model, x, y)
        opt.step()
        for (A, G), (A_exp, G_exp) in zip(opt.kronecker_factors(), ema):
            torch.testing.assert_close(A, A_exp / weight, rtol=1e-10, atol=1e-12)
            torch.testing.assert_close(G, G_exp / weight, rtol=1e-10, atol=1e-12)


def test_mc_factor_is_unbiased_fisher_factor():
    """Averaged over many sampled labels, the MC G factor is the expectation under the model."""
    model = tiny_model()
    x, y = batch(n=3)
    opt = KFAC(model, lr=1e-9, factor_decay=0.0, momentum=0.0, inverse_update_freq=10**6, seed=0)
    # Exact expectation for the output layer: E[(s - y)(s - y)^T] = diag(s(1 - s)) + 0 off-diagonal.
    with torch.no_grad():
        s = torch.sigmoid(model(x))
    v = s * (1 - s)
    expected = torch.diag(v.mean(0))
    total = torch.zeros_like(expected)
    n = 150
    for _ in range(n):
        backward(model, x, y)
        opt.step()
        total += opt.kronecker_factors()[-1][1]
    # Tolerance from the sampling variance (lr = 1e-9 keeps s fixed to ~1e-8): with y ~ Bern(s)
    # independent per unit, Var[(s_i - y_i)^2] = v_i (1 - 2 s_i)^2 and, for i != j,
    # Var[(s_i - y_i)(s_j - y_j)] = v_i v_j; each step's factor averages B examples and we average n
    # steps.  Five standard deviations per entry (the labels are seeded, so the draw is fixed).
    B = x.shape[0]
    var = torch.einsum("bi,bj->ij", v, v)
    var.diagonal().copy_((v * (1 - 2 * s) ** 2).sum(0))
    sigma = (var / (B**2 * n)).sqrt()
    assert ((total / n - expected).abs() <= 5 * sigma).all(), ((total / n - expected).abs() / sigma).max()


@pytest.mark.parametrize("output", ["sigmoid", "identity", "softmax"])
def test_sampled_labels_come_from_a_seeded_generator_on_the_parameters_device(output):
    """The module docstring: the labels come from the optimizer's own generator on the parameters' device;
    the same seed gives the same labels (and the same steps), another seed other labels, and the global
    random state is not drawn from."""
    x, y = batch()

    def run(seed):
        model = tiny_model()
        opt = KFAC(model, lr=0.1, output_activation=output, inverse_update_freq=1, seed=seed)
        assert opt._generator.device == next(model.parameters()).device
        labels = opt._sample_targets(model(x).detach())
        state = torch.get_rng_state()
        for _ in range(3):
            model.zero_grad()
            F.mse_loss(model(x), y).backward()
            opt.step()
        assert torch.equal(torch.get_rng_state(), state)
        return labels, [p.detach().clone() for p in model.parameters()]

    (labels, params), (labels_again, params_again), (other, _) = run(7), run(7), run(8)
    assert torch.equal(labels, labels_again) and not torch.equal(labels, other)
    assert all(torch.equal(p, q) for p, q in zip(params, params_again))


# ---- (2) damped steps --------------------------------------------------------------------------

def one_step(damping_mode, damping=0.3):
    model = tiny_model()
    x, y = batch()
    opt = KFAC(model, lr=1.0, momentum=0.0, damping=damping, damping_mode=damping_mode, seed=0)
    backward(model, x, y)
    grads = [torch.cat([m.weight.grad, m.bias.grad[:, None]], 1).clone() for m in model if isinstance(m, nn.Linear)]
    before = [torch.cat([m.weight, m.bias[:, None]], 1).detach().clone() for m in model if isinstance(m, nn.Linear)]
    opt.step()
    after = [torch.cat([m.weight, m.bias[:, None]], 1).detach() for m in model if isinstance(m, nn.Linear)]
    steps = [b - a for b, a in zip(before, after)]  # lr = 1: the preconditioned gradient
    return steps, grads, opt.kronecker_factors()


def test_exact_damping_equals_dense_kronecker_solve():
    lam = 0.3
    steps, grads, factors = one_step("exact", lam)
    for step, V, (A, G) in zip(steps, grads, factors):
        F_dense = torch.kron(A, G)  # column-stacking vec: vec(g a^T) = a (x) g
        vec_v = V.T.reshape(-1)
        sol = torch.linalg.solve(F_dense + lam * torch.eye(F_dense.shape[0], dtype=F_dense.dtype), vec_v)
        expected = sol.reshape(V.shape[1], V.shape[0]).T
        torch.testing.assert_close(step, expected, rtol=1e-8, atol=1e-10)


def test_pi_damping_equals_dense_and_eigh_computations():
    lam = 0.3
    steps, grads, factors = one_step("pi", lam)
    for step, V, (A, G) in zip(steps, grads, factors):
        pi = np.sqrt((np.trace(A.numpy()) / A.shape[0]) / (np.trace(G.numpy()) / G.shape[0]))
        A_d = A.numpy() + pi * np.sqrt(lam) * np.eye(A.shape[0])
        G_d = G.numpy() + np.sqrt(lam) / pi * np.eye(G.shape[0])
        dense = np.linalg.solve(G_d, V.numpy()) @ np.linalg.inv(A_d)
        np.testing.assert_allclose(step.numpy(), dense, rtol=1e-7, atol=1e-10)
        # The same through eigendecompositions of the undamped factors.
        a, Qa = np.linalg.eigh(A.numpy())
        g, Qg = np.linalg.eigh(G.numpy())
        via_eigh = Qg @ np.diag(1 / (g + np.sqrt(lam) / pi)) @ Qg.T @ V.numpy() @ Qa @ np.diag(1 / (a + pi * np.sqrt(lam))) @ Qa.T
        np.testing.assert_allclose(step.numpy(), via_eigh, rtol=1e-7, atol=1e-10)


def test_momentum_nesterov_weight_decay_and_kl_clip():
    """Update rule around the preconditioner, from the direction of a momentum-free twin."""
    lr, mu, eta, c = 0.1, 0.5, 0.01, 1e-4
    x, y = batch()
    model = tiny_model()
    opt = KFAC(model, lr=lr, momentum=mu, nesterov=True, weight_decay=eta, kl_clip=c, seed=0)
    buffers = None
    for _ in range(3):
        twin = tiny_model()
        twin.load_state_dict(model.state_dict())
        twin_opt = KFAC(twin, lr=1.0, momentum=0.0, seed=0)
        saved = copy.deepcopy(opt.state_dict())
        twin_opt.load_state_dict({**saved, "param_groups": twin_opt.state_dict()["param_groups"]})
        backward(twin, x, y)
        linears = [m for m in twin if isinstance(m, nn.Linear)]
        V = [torch.cat([m.weight.grad + eta * m.weight, m.bias.grad[:, None] + eta * m.bias[:, None]], 1).detach()
             for m in linears]
        for m, v in zip(linears, V):  # hand the twin the weight-decayed gradient
            m.weight.grad.copy_(v[:, :-1])
            m.bias.grad.copy_(v[:, -1])
        before = [torch.cat([m.weight, m.bias[:, None]], 1).detach().clone() for m in linears]
        twin_opt.step()
        d = [b - torch.cat([m.weight, m.bias[:, None]], 1).detach() for b, m in zip(before, linears)]
        nu = min(1.0, float(np.sqrt(c / (lr**2 * abs(sum(float((di * vi).sum()) for di, vi in zip(d, V)))))))
        assert nu < 1.0  # the clip is active in this test
        d = [nu * di for di in d]
        buffers = d if buffers is None else [mu * b + di for b, di in zip(buffers, d)]
        expected = [bf - lr * (di + mu * b) for bf, di, b in zip(before, d, buffers)]
        backward(model, x, y)
        opt.step()
        got = [torch.cat([m.weight, m.bias[:, None]], 1).detach() for m in model if isinstance(m, nn.Linear)]
        for e, g in zip(expected, got):
            torch.testing.assert_close(g, e, rtol=1e-9, atol=1e-12)


# ---- (3) robustness ----------------------------------------------------------------------------

@pytest.mark.parametrize("damping_mode", ["pi", "exact"])
def test_singular_factors_never_give_nan(damping_mode):
    model = mlp(SIZES, seed=0)
    x = torch.zeros(6, SIZES[0])  # rank-one input factors, and no damping at all
    opt = KFAC(model, lr=0.1, damping=0.0, damping_mode=damping_mode, inverse_update_freq=1, seed=0)
    for _ in range(3):
        model.zero_grad()
        loss_fn(model(x), torch.full((6, SIZES[-1]), 0.5)).backward()
        opt.step()
    for p in model.parameters():
        assert torch.isfinite(p).all()


_REAL_CHOLESKY_EX = torch.linalg.cholesky_ex


def _fake_cholesky(fail_dtypes, calls):
    def fake(m, *args, **kwargs):
        calls.append(m.dtype)
        chol, info = _REAL_CHOLESKY_EX(m, *args, **kwargs)
        if m.dtype in fail_dtypes:
            return torch.full_like(chol, float("nan")), torch.ones_like(info)
        return chol, info

    return fake


def test_float64_retry(monkeypatch):
    x, y = batch()
    reference = mlp(SIZES, seed=0)
    patched = mlp(SIZES, seed=0)
    lr, lam = 0.1, 1.0
    results = []
    for model, fail in ((reference, ()), (patched, (torch.float32,))):
        calls = []
        monkeypatch.setattr(torch.linalg, "cholesky_ex", _fake_cholesky(fail, calls))
        opt = KFAC(model, lr=lr, damping=lam, seed=0)
        before = [torch.cat([m.weight, m.bias[:, None]], 1).detach().clone() for m in model if isinstance(m, nn.Linear)]
        backward(model, x.float(), y.float())
        opt.step()
        after = [torch.cat([m.weight, m.bias[:, None]], 1).detach().clone() for m in model if isinstance(m, nn.Linear)]
        results.append((calls, before, after, opt.kronecker_factors()))
    assert torch.float64 not in results[0][0]
    assert torch.float64 in results[1][0]  # the float32 failure was retried in float64
    # Both runs see the same float32 factors; only the damped inverses differ: float32 Cholesky
    # inverses are accurate to ~ d u kappa (relative), the float64 ones (cast) to u.  The step
    # G_inv V A_inv, hence lr times it, differs by at most the sum of the two relative errors
    # (plus the products' and the update's float32 rounding).
    for before, got, want, (A, G) in zip(results[0][1], results[1][2], results[0][2], results[0][3]):
        A, G = A.double(), G.double()
        pi = ((torch.trace(A) / A.shape[0]) / (torch.trace(G) / G.shape[0])).sqrt()
        kappa_a = torch.linalg.cond(A + pi * lam**0.5 * torch.eye(A.shape[0], dtype=A.dtype)).item()
        kappa_g = torch.linalg.cond(G + lam**0.5 / pi * torch.eye(G.shape[0], dtype=G.dtype)).item()
        step = torch.linalg.matrix_norm(want - before).item()
        bound = 4 * EPS32 * ((A.shape[0] * kappa_a + G.shape[0] * kappa_g) * step + torch.linalg.matrix_norm(before).item())
        assert torch.linalg.matrix_norm(got - want).item() <= bound


def test_keep_last_inverse_when_both_precisions_fail(monkeypatch):
    x, y = batch()
    model = mlp(SIZES, seed=0)
    opt = KFAC(model, lr=0.1, inverse_update_freq=2, seed=0)
    backward(model, x.float(), y.float())
    opt.step()  # computes inverses normally
    linears = [m for m in model if isinstance(m, nn.Linear)]
    saved = [(opt.state[m.weight]["A_inv"].clone(), opt.state[m.weight]["G_inv"].clone()) for m in linears]
    monkeypatch.setattr(torch.linalg, "cholesky_ex", _fake_cholesky((torch.float32, torch.float64), []))
    for _ in range(2):  # the second step is an inverse-update step; every factorisation fails
        backward(model, x.float(), y.float())
        opt.step()
    for m, (A_inv, G_inv) in zip(linears, saved):
        assert torch.equal(opt.state[m.weight]["A_inv"], A_inv)
        assert torch.equal(opt.state[m.weight]["G_inv"], G_inv)
    assert all(torch.isfinite(p).all() for p in model.parameters())


# ---- (5) checkpointing -------------------------------------------------------------------------

@pytest.mark.parametrize("options", [
    dict(fisher="mc", damping_mode="pi", adaptive_damping=True, inverse_update_freq=3),
    dict(fisher="mc", damping_mode="exact", nesterov=True, kl_clip=1e-2),
])
def test_state_dict_round_trip_is_bit_identical(options, resumes_bit_identically):
    g = torch.Generator().manual_seed(5)
    data = [torch.rand(10, 8, generator=g) for _ in range(12)]

    def make(fresh):
        model = deep_autoencoder((8, 6, 3, 6, 8), seed=123 if fresh else 0)
        return model, KFAC(model, lr=0.05, seed=999 if fresh else 1, **options)

    assert resumes_bit_identically(make, data, 7)


# ---- (6) training ------------------------------------------------------------------------------

@pytest.mark.parametrize("options", [{}, {"adaptive_damping": True}, {"damping_mode": "exact", "damping": 3.0}])
def test_trains_digits_autoencoder(options, train_on_digits):
    model = deep_autoencoder((64, 32, 16, 8, 16, 32, 64), seed=0)
    initial, final = train_on_digits(model, KFAC(model, lr=DEFAULT_LR, seed=0, **options))
    assert final < 0.7 * initial, (initial, final)


# ---- (7) validation ----------------------------------------------------------------------------

@pytest.mark.parametrize("name, value", [
    ("lr", 0.0), ("lr", -1.0), ("damping", -1e-3), ("factor_decay", 1.0), ("factor_update_freq", 0),
    ("inverse_update_freq", 1.5), ("momentum", 1.0), ("weight_decay", -0.1), ("fisher", "exact"),
    ("damping_mode", "eigen"), ("kl_clip", 0.0), ("damping_adaptation_decay", 1.0),
    ("damping_adaptation_interval", 0), ("min_damping", -1.0), ("nesterov", "yes"),
])
def test_invalid_hyperparameters_raise(name, value):
    with pytest.raises(ValueError, match=name):
        KFAC(mlp(SIZES), **{name: value})


def test_nesterov_needs_momentum_and_model_must_be_an_mlp():
    with pytest.raises(ValueError, match="nesterov"):
        KFAC(mlp(SIZES), momentum=0.0, nesterov=True)
    with pytest.raises(ValueError):
        KFAC(nn.Sequential(nn.Linear(3, 3), nn.BatchNorm1d(3)))
    with pytest.raises(ValueError, match="output_activation"):
        KFAC(mlp(SIZES), output_activation="tanh")


@pytest.mark.parametrize("lr, direction", [(0.5, "down"), (5.0, "up")])
def test_adaptive_damping_follows_reduction_ratio(lr, direction):
    """λ moves by ω = decay^T according to ρ = Δh / Δ(quadratic model), recomputed here in float64."""
    x, y = batch()
    model = tiny_model()
    decay, interval, lam0 = 0.9, 2, 2.0
    opt = KFAC(model, lr=lr, damping=lam0, adaptive_damping=True, damping_adaptation_decay=decay,
               damping_adaptation_interval=interval, momentum=0.0, seed=0)
    assert opt.needs_loss_closure
    closure = lambda: loss_fn(model(x), y)  # noqa: E731
    lam = lam0
    for step in range(1, 7):
        loss = backward(model, x, y)
        linears = [m for m in model if isinstance(m, nn.Linear)]
        V = [torch.cat([m.weight.grad, m.bias.grad[:, None]], 1).clone() for m in linears]
        before = [torch.cat([m.weight, m.bias[:, None]], 1).detach().clone() for m in linears]
        opt.step(closure)
        if step % interval:
            assert float(opt.damping) == pytest.approx(lam)
            continue
        delta = [torch.cat([m.weight, m.bias[:, None]], 1).detach() - b for m, b in zip(linears, before)]
        with torch.no_grad():
            actual = float(closure() - loss)
        predicted = sum(float((v * d).sum() + 0.5 * (G @ d @ A * d).sum() + 0.5 * lam * (d * d).sum())
                        for v, d, (A, G) in zip(V, delta, opt.kronecker_factors()))
        rho = actual / predicted
        omega = decay**interval
        lam = lam * omega if rho > 0.75 else lam / omega if rho < 0.25 else lam
        assert float(opt.damping) == pytest.approx(lam, rel=1e-6), rho
    assert (lam < lam0) if direction == "down" else (lam > lam0)


def test_frozen_parameters_stay_and_the_other_layers_step_as_without_them():
    """A parameter with ``requires_grad=False`` never moves; K-FAC's blocks are layerwise, so in one
    step (without the KL clip, which couples the layers) the trainable layers move as when nothing
    is frozen."""
    x, y = batch()
    free, frozen = tiny_model(), tiny_model()
    linears = [m for m in frozen if isinstance(m, nn.Linear)]
    linears[0].weight.requires_grad_(False)
    linears[1].requires_grad_(False)
    before = copy.deepcopy(frozen)
    for model in (free, frozen):
        opt = KFAC(model, lr=0.1, damping=0.3, seed=0)
        backward(model, x, y)
        opt.step()
    old = [m for m in before if isinstance(m, nn.Linear)]
    new_free = [m for m in free if isinstance(m, nn.Linear)]
    assert torch.equal(linears[0].weight, old[0].weight)
    assert torch.equal(linears[1].weight, old[1].weight) and torch.equal(linears[1].bias, old[1].bias)
    assert not torch.equal(linears[0].bias, old[0].bias)
    assert torch.equal(linears[-1].weight, new_free[-1].weight) and torch.equal(linears[-1].bias, new_free[-1].bias)
