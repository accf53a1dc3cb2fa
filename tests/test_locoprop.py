"""LocoProp against closed forms derived from the math (paper.md §1.3-§1.6)."""
import copy
import math

import numpy as np
import pytest
import torch
from torch import nn

import locoprop
from locoprop.capture import LayerCapture
from locoprop.experiments.counting import OpCounter
from locoprop.models import deep_autoencoder, reconstruction_loss
from locoprop.optim import locoprop as locoprop_module
from locoprop.models import PAPER_SIZES
from locoprop.optim.locoprop import closed_form_s, gram_pays, implicit_m, local_iterates, local_target
from locoprop.transfer import get_transfer

HIDDEN = ["identity", "sigmoid", "tanh", "relu"]
U64 = torch.finfo(torch.float64).eps / 2  # unit roundoff of float64
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


@pytest.fixture(params=["gram", "displacement"])
def local_form(request, monkeypatch):
    """Each layer's local gradient in the given form, whatever the shapes make cheaper (see ``gram_pays``)."""
    monkeypatch.setattr(locoprop_module, "gram_pays", lambda *shape: request.param == "gram")
    return request.param


def weights_aug(linear):
    return torch.cat([linear.weight, linear.bias[:, None]], 1).detach().numpy()


@pytest.mark.parametrize("T", [1, 2, 7])
def test_locoprop_s_iterates_are_the_truncated_neumann_series(T, recorded_pass, local_form):
    nu, gamma, eta = 0.02, 2.0, 5.0
    x, y = batch()
    model = tiny_mlp("tanh")
    linears, inputs, _, grads = recorded_pass(model, x, y, output_loss("identity"))
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


def test_the_gram_form_halves_the_local_work_of_the_paper_autoencoder():
    # the method chapter's statement, from the multiply-adds of each form (the products that
    # test_bench's FLOP counts find a step doing): batch 1000, T = 10
    shapes = list(zip(PAPER_SIZES[:-1], PAPER_SIZES[1:]))
    assert all(gram_pays(1000, d_in, d_out, 10) for d_in, d_out in shapes)
    displacement = sum(2 * 10 * 1000 * d_in * d_out for d_in, d_out in shapes)
    gram = sum(1000 * d_in * (d_in + d_out) + 10 * d_out * d_in**2 for d_in, d_out in shapes)
    assert 0.45 < gram / displacement < 0.55
    assert not gram_pays(10, 1000, 1000, 10)  # a batch far narrower than the layer: two thin products are cheaper


def test_locoprop_m_with_identity_transfers_takes_locoprop_s_steps(local_form):
    # f = identity: the matching loss is the squared loss and f(A) - gamma G = A - gamma G, so M's local
    # problems are S's; M takes the displacement form, S each of the two
    x, y = batch()
    runs = {}
    for variant in ("M", "S"):
        model = tiny_mlp("identity")
        opt = locoprop.LocoProp(model, lr=0.02, variant=variant, gamma=2.0, local_iters=5, eta=3.0,
                                output_activation="identity")
        for _ in range(3):
            train_step(model, opt, x, y, output_loss("identity"))
        runs[variant] = list(model.parameters())
    for p, q in zip(runs["M"], runs["S"]):
        torch.testing.assert_close(p, q, rtol=1e-10, atol=1e-12)


def test_locoprop_s_converges_to_the_closed_form(recorded_pass, local_form):
    gamma, eta, nu, T = 2.0, 0.5, 0.01, 3000
    x, y = batch(n=20)
    model = tiny_mlp("tanh")
    linears, inputs, _, grads = recorded_pass(model, x, y, output_loss("identity"))
    start = [weights_aug(m) for m in linears]
    opt = locoprop.LocoProp(model, lr=nu, variant="S", gamma=gamma, local_iters=T, eta=eta, lr_floor=1.0,
                            inner=torch.optim.SGD, output_activation="identity")
    train_step(model, opt, x, y, output_loss("identity"))
    for m, X, G, W0 in zip([m for m in model if isinstance(m, nn.Linear)], inputs, grads, start):
        Xb = np.hstack([X.numpy(), np.ones((len(X), 1))])
        B, n = Xb.shape
        C = Xb.T @ Xb + np.eye(n) / eta
        lam = np.linalg.eigvalsh(C)
        kappa = lam[-1] / lam[0]
        # Local GD on the quadratic with Hessian C contracts the error by q per step: T steps bring it
        # below rounding, so the iterative solver has converged (checked a priori).
        q = max(abs(1 - nu * lam[0]), abs(1 - nu * lam[-1]))
        assert q**T < U64, q
        closed = W0 - gamma * np.linalg.solve(C, Xb.T @ G.numpy()).T
        W, dW = weights_aug(m), closed - W0
        size = np.linalg.norm(W) + np.linalg.norm(W0)
        # Where GD stops in float64: the step nu * grad rounds away once |nu * grad| <= u |W|, so
        # |C (W - W*)| <= (u / nu)|W| and |W - W*| <= u |W| / (nu lam_min); the gradient itself is
        # evaluated to (B + n) u |X|^2 |W| <= (B + n) u kappa lam_min |W|, i.e. (B + n) u kappa |W| after
        # C^-1; the closed form's solve is accurate to n u kappa |dW|.  (Frobenius norms.)
        tol = 4 * U64 * (np.linalg.norm(W) / (nu * lam[0]) + (B + n) * kappa * size + n * kappa * np.linalg.norm(dW))
        assert np.linalg.norm(W - closed) <= tol, (np.linalg.norm(W - closed), tol)
        # the Woodbury form of the same solution, and the package's closed form: two direct solves,
        # each accurate to n u kappa |dW| (kappa of C, or of X X^T + I/eta, which has the same nonzero spread)
        woodbury = W0 - gamma * (Xb.T @ np.linalg.solve(Xb @ Xb.T + np.eye(B) / eta, G.numpy())).T
        kappa_w = np.linalg.cond(Xb @ Xb.T + np.eye(B) / eta)
        direct_tol = 4 * U64 * (B + n) * (kappa + kappa_w) * (np.linalg.norm(dW) + np.linalg.norm(W0))
        assert np.linalg.norm(closed - woodbury) <= direct_tol
        assert np.linalg.norm(closed_form_s(X, G, gamma, eta).numpy() - dW) <= direct_tol


def test_local_iterates_function_matches_optimizer_and_neumann(recorded_pass):
    nu, gamma, eta, T = 0.03, 1.5, 2.0, 5
    x, y = batch()
    model = tiny_mlp("sigmoid")
    _, inputs, preacts, grads = recorded_pass(model, x, y, output_loss("identity"))
    X, A, G = inputs[0], preacts[0], grads[0]
    its = local_iterates("S", get_transfer("sigmoid"), X, A, G, gamma, nu, T, eta)
    Xb = np.hstack([X.numpy(), np.ones((len(X), 1))])
    C = Xb.T @ Xb + np.eye(Xb.shape[1]) / eta
    series = sum(np.linalg.matrix_power(np.eye(len(C)) - nu * C, i) for i in range(T))
    np.testing.assert_allclose(its[-1].numpy(), -nu * gamma * (G.numpy().T @ Xb) @ series, rtol=1e-10, atol=1e-12)


def fixed_point_residual(transfer, X, A, G, gamma, eta, dW):
    r""":math:`R(\Delta W) = \Delta W + \eta(f(A + \bar X\Delta W^\top) - f(A) + \gamma G)^\top\bar X`, zero
    exactly at the LocoProp-M solution, and the rounding error of evaluating it in float64:
    :math:`(B + n + 2)\,u\,\|S\|_F`, :math:`S` the magnitudes of its terms and of :math:`\hat A`'s
    (dot products of lengths B and n, then f and the sums; first order, :math:`|f'| \le 1`)."""
    Xb = torch.cat([X, torch.ones(len(X), 1, dtype=X.dtype)], 1)
    A_hat = A + Xb @ dW.T
    f_hat, f_A = transfer.f(A_hat), transfer.f(A)
    R = dW + eta * (f_hat - f_A + gamma * G).T @ Xb
    S = dW.abs() + eta * (f_hat.abs() + f_A.abs() + gamma * G.abs() + A.abs() + Xb.abs() @ dW.abs().T).T @ Xb.abs()
    return R, (Xb.shape[0] + Xb.shape[1] + 2) * U64 * torch.linalg.matrix_norm(S).item()


@pytest.mark.parametrize("name", ["tanh", "sigmoid", "relu", "identity", "softmax"])
def test_implicit_m_solves_the_fixed_point_equation(name, recorded_pass):
    r"""To machine precision, and where many local GD steps (an independent solver, run to convergence) end.

    :math:`R = \eta\nabla\phi` for the :math:`(1/\eta)`-strongly convex local objective :math:`\phi`, so
    (i) :math:`\|W - W^\star\|_F \le \|R(W)\|_F` for any :math:`W`, and (ii) :math:`R` is Lipschitz with
    :math:`\kappa = 1 + \eta\|\bar X\|_2^2` (:math:`\|J_f\| \le 1` for every transfer here), so the correctly
    rounded solution has :math:`\|R\|_F \le \kappa u\|W^\star\|_F`, plus the evaluation error.
    """
    gamma, eta = 3.0, 0.2
    x, y = batch(n=12)
    model = tiny_mlp("tanh")
    _, inputs, preacts, grads = recorded_pass(model, x, y, output_loss("identity"))
    X, A, G = inputs[1], preacts[1], grads[1]
    transfer = get_transfer(name)
    Xb = torch.cat([X, torch.ones(len(X), 1, dtype=X.dtype)], 1)
    x_norm2 = torch.linalg.matrix_norm(Xb, ord=2).item() ** 2
    kappa = 1 + eta * x_norm2
    norm = lambda t: torch.linalg.matrix_norm(t).item()  # noqa: E731  (Frobenius)

    dW = implicit_m(transfer, X, A, G, gamma, eta)
    R, eval_err = fixed_point_residual(transfer, X, A, G, gamma, eta, dW)
    newton_tol = 4 * (kappa * U64 * norm(dW) + eval_err)
    assert norm(R) <= newton_tol, (norm(R), newton_tol)

    # Local gradient descent from rest on phi (strongly convex with mu = 1/eta, gradient Lipschitz with
    # L = 1/eta + |X|_2^2) with step nu = 2/(mu + L) contracts the error by q = (L - mu)/(L + mu) per step:
    # enough steps bring it below rounding (the reference converges, a priori).
    mu, lipschitz = 1 / eta, 1 / eta + x_norm2
    nu, q = 2 / (mu + lipschitz), (lipschitz - mu) / (lipschitz + mu)
    steps = math.ceil(math.log(U64) / math.log(q)) + 10
    assert q**steps < U64, q
    gd = local_iterates("M", transfer, X, A, G, gamma, lr=nu, steps=steps, eta=eta)[-1]
    # ... and it stops where nu * grad rounds away, |nu grad| <= u|W|: |R| = eta|grad| <= (eta/nu) u |W|
    R_gd, eval_err_gd = fixed_point_residual(transfer, X, A, G, gamma, eta, gd)
    gd_tol = 4 * ((eta / nu + kappa) * U64 * norm(gd) + eval_err_gd)
    assert norm(R_gd) <= gd_tol, (norm(R_gd), gd_tol)  # converged, a posteriori
    # both are within their exact residuals of the unique minimiser, by (i)
    assert norm(gd - dW) <= norm(R) + norm(R_gd) + eval_err + eval_err_gd


def test_implicit_m_reports_non_convergence(recorded_pass):
    x, y = batch(n=12)
    _, inputs, preacts, grads = recorded_pass(tiny_mlp("tanh"), x, y, output_loss("identity"))
    with pytest.raises(RuntimeError, match="did not converge"):
        implicit_m(get_transfer("tanh"), inputs[1], preacts[1], grads[1], 3.0, 0.2, max_iter=1)


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


# ---- the step as one program (module docstring, "The step as one program") ----------------------

class _PerLayerTFRMSProp(locoprop.TFRMSProp):
    """TF1-RMSProp run through LocoProp's ``torch.optim`` path: one ``step()`` per local iteration with
    Python-float learning rates, one parameter group (layer) at a time."""


def _train_with_schedule(opt, model, batches, warmup=2, total=10):
    scheduler = locoprop.warmup_linear_decay(opt, warmup, total)
    for x in batches:
        opt.zero_grad()
        reconstruction_loss(model(x), x).backward()
        opt.step()
        scheduler.step()


@pytest.mark.parametrize("settings", [
    dict(),
    dict(variant="S", eta=0.5, local_iters=3),
    dict(products="bfloat16"),
    dict(uneven=True),
    dict(double=True),
])
def test_multi_tensor_step_equals_the_per_layer_inner_steps(settings, digits):
    """The multi-tensor step (all layers per local iteration, learning rates as float64 tensors rounded once)
    and the per-layer ``TFRMSProp.step`` with ``float`` learning rates are the same arithmetic: equal bits,
    with an lr scheduler changing the rate at every step."""
    settings = dict(settings)
    uneven, double = settings.pop("uneven", False), settings.pop("double", False)
    data = digits[:240].double() if double else digits[:240]
    models, opts = [], []
    for inner in ("tf-rmsprop", _PerLayerTFRMSProp):
        model = deep_autoencoder((64, 16, 4, 16, 64), seed=0)
        model = model.double() if double else model
        opt = locoprop.LocoProp(model, lr=3e-4, inner=inner, output_activation="sigmoid", **settings)
        if uneven:  # layers with their own T and lr_floor
            opt.param_groups[1]["local_iters"], opt.param_groups[2]["lr_floor"] = 4, 0.0
        _train_with_schedule(opt, model, data.split(40))
        models.append(model)
        opts.append(opt)
    assert opts[0]._multi_tensor and not opts[1]._multi_tensor
    for p, q in zip(*(m.parameters() for m in models)):
        assert torch.equal(p, q)
    for p, q in zip(*(m.parameters() for m in models)):
        assert all(torch.equal(a, b) for a, b in zip(opts[0].inner.state[p].values(), opts[1].inner.state[q].values()))


def test_the_step_keeps_its_buffers_and_the_backprop_gradients(digits):
    """Inner state at rest from construction, in the state_dict format of TF-RMSProp (per parameter ``ms``
    and ``mom``); ``.grad`` keeps the BackProp gradient (the same tensor); the local gradients live in
    buffers allocated once; each local iteration is one multi-tensor call per operation of the update."""
    T = 3
    model = deep_autoencoder((64, 16, 4, 16, 64), seed=0)
    opt = locoprop.LocoProp(model, lr=1e-4, local_iters=T, output_activation="sigmoid")
    params = list(model.parameters())
    inner = opt.state_dict()["inner"]["state"]
    assert sorted(inner) == list(range(len(params)))
    for i, p in enumerate(params):
        assert set(inner[i]) == {"ms", "mom"}
        assert torch.equal(inner[i]["ms"], torch.ones_like(p)) and torch.equal(inner[i]["mom"], torch.zeros_like(p))
    buffers = [id(g) for grads in opt._local_grads for g in grads]
    for x in digits[:80].split(40):
        opt.zero_grad()
        reconstruction_loss(model(x), x).backward()
        grads = [p.grad for p in params]
        backprop = [g.clone() for g in grads]
        with OpCounter() as ops:
            opt.step()
        assert all(p.grad is g and torch.equal(g, b) for p, g, b in zip(params, grads, backprop))
        assert [id(g) for grads in opt._local_grads for g in grads] == buffers
        # 9 multi-tensor calls per local iteration (tf_rmsprop_update with tensor rates) and one copy of W^t
        assert ops.foreach == 9 * T + 1
        assert ops.counts["_foreach_mul"] == T  # one call of the rates for all layers, not one per layer


def test_a_state_saved_with_number_learning_rates_loads_and_continues_bit_identically(digits):
    """States saved before the learning rates were tensors hold ``float`` rates: they load, and training
    continues as from the tensor state."""
    batches = digits[:320].split(40)

    def make(seed):
        model = deep_autoencoder((64, 16, 4, 16, 64), seed=seed)
        opt = locoprop.LocoProp(model, lr=1e-4, output_activation="sigmoid")
        return model, opt, locoprop.warmup_linear_decay(opt, 2, 10)

    model, opt, scheduler = make(0)
    for x in batches[:3]:
        opt.zero_grad(); reconstruction_loss(model(x), x).backward(); opt.step(); scheduler.step()
    saved = copy.deepcopy((model.state_dict(), opt.state_dict(), scheduler.state_dict()))
    assert all(torch.is_tensor(g["lr"]) and g["lr"].dtype == torch.float64 for g in saved[1]["param_groups"])
    as_numbers = copy.deepcopy(saved[1])
    for group in as_numbers["param_groups"]:
        group["lr"], group["initial_lr"] = float(group["lr"]), float(group["initial_lr"])
    scheduler_numbers = {**saved[2], "base_lrs": [float(v) for v in saved[2]["base_lrs"]],
                         "_last_lr": [float(v) for v in saved[2]["_last_lr"]]}
    runs = []
    for opt_state, scheduler_state in ((saved[1], saved[2]), (as_numbers, scheduler_numbers)):
        model, opt, scheduler = make(1)
        model.load_state_dict(saved[0]); opt.load_state_dict(opt_state); scheduler.load_state_dict(scheduler_state)
        assert all(torch.is_tensor(g["lr"]) and g["lr"].dtype == torch.float64 for g in opt.param_groups)
        for x in batches[3:]:
            opt.zero_grad(); reconstruction_loss(model(x), x).backward(); opt.step(); scheduler.step()
        runs.append(model)
    assert all(torch.equal(p, q) for p, q in zip(*(m.parameters() for m in runs)))


def test_learning_rate_as_a_tensor():
    model = tiny_mlp("tanh")
    given = torch.tensor(0.01)
    opt = locoprop.LocoProp(model, lr=given, output_activation="identity")
    lrs = [group["lr"] for group in opt.param_groups]
    assert all(lr.dtype == torch.float64 and lr.shape == () and float(lr) == float(given) for lr in lrs)
    assert len({id(lr) for lr in lrs} | {id(given)}) == len(lrs) + 1  # each layer's own copy
    for bad in (torch.tensor(-1.0), torch.tensor([0.1, 0.2]), torch.tensor(float("nan")), torch.tensor(1)):
        with pytest.raises(ValueError, match="lr"):
            locoprop.LocoProp(tiny_mlp("tanh"), lr=bad)


def test_compiled_step_is_one_graph_that_equals_the_eager_step(digits):
    """``torch.compile(step, fullgraph=True)`` with the lr scheduler of the training loop attached and the rate
    changing at every step: no graph break, one graph for all steps (a recompilation raises), the same bits
    as the eager step ("aot_eager" runs the traced aten operations eagerly)."""
    import torch._dynamo
    from torch._dynamo.utils import counters

    torch._dynamo.reset()
    counters.clear()
    models = [deep_autoencoder((64, 12, 4, 12, 64), seed=0) for _ in range(2)]
    opts = [locoprop.make_optimizer("locoprop-m", m, lr=3e-4, local_iters=3) for m in models]
    schedulers = [locoprop.warmup_linear_decay(o, 0, 6) for o in opts]  # a linear decay: a new rate every step
    # opts[1].step is the scheduler's wrapper (which Dynamo does not trace): compile the optimizer's own step
    compiled = torch.compile(type(opts[1]).step, fullgraph=True, backend="aot_eager")
    opts[1]._opt_called = True  # what the wrapper would record for the scheduler
    rates = []
    with torch._dynamo.config.patch(error_on_recompile=True):
        for x in digits[:200].split(40):
            rates.append(float(opts[0].param_groups[0]["lr"]))
            for k, (model, opt, scheduler) in enumerate(zip(models, opts, schedulers)):
                opt.zero_grad()
                reconstruction_loss(model(x), x).backward()
                opt.step() if k == 0 else compiled(opt)
                scheduler.step()
            for p, q in zip(*(m.parameters() for m in models)):
                assert torch.equal(p, q)
    assert len(set(rates)) == len(rates)  # a new rate at every step
    assert not counters["graph_break"]
    assert counters["stats"]["unique_graphs"] == 1


@pytest.mark.parametrize("variant", ["S", "M"])
def test_frozen_parameters_stay_and_the_other_layers_step_as_without_them(variant):
    """A parameter with ``requires_grad=False`` never moves.  Each layer's local problem reads only
    its own captured input and target, so in one step the trainable layers move exactly as they do
    when nothing is frozen."""
    x, y = batch()
    loss_fn = output_loss("identity")
    free, frozen = tiny_mlp("tanh"), tiny_mlp("tanh")
    frozen[0].weight.requires_grad_(False)  # a frozen weight beside a trainable bias
    frozen[2].requires_grad_(False)  # a whole frozen layer
    before = copy.deepcopy(frozen)
    for model in (free, frozen):
        train_step(model, locoprop.LocoProp(model, lr=1e-2, variant=variant, local_iters=3), x, y, loss_fn)
    assert torch.equal(frozen[0].weight, before[0].weight)
    assert torch.equal(frozen[2].weight, before[2].weight) and torch.equal(frozen[2].bias, before[2].bias)
    assert not torch.equal(frozen[0].bias, before[0].bias)  # the trainable bias of the frozen weight moves
    assert torch.equal(frozen[4].weight, free[4].weight) and torch.equal(frozen[4].bias, free[4].bias)
