"""Shampoo: steps against a float64 NumPy reference, blocking, robustness, checkpointing, training."""
from __future__ import annotations


import numpy as np
import pytest
import torch

from locoprop.models import deep_autoencoder
from locoprop.optim.shampoo import DEFAULT_LR, Shampoo

GRAFTINGS = ["none", "sgd", "adagrad", "rmsprop", "adam"]
EPS32 = float(torch.finfo(torch.float32).eps)


def root_condition(M, eps, relative):
    """kappa = lambda_max / lambda_min of M + eps I (M's eigenvalues clamped at 0, as the optimizer does)."""
    vals = np.clip(np.linalg.eigvalsh(M), 0, None)
    shift = eps * vals.max() if relative else eps
    return (vals.max() + shift) / (vals.min() + shift)


def float32_direction_error(L, R, eps, relative, p):
    r"""Relative (Frobenius) error bound of a float32 direction :math:`(L+\epsilon)^{-1/p} G (R+\epsilon)^{-1/p}`.

    Accumulating the statistic and a backward-stable ``eigh`` perturb :math:`M` (size d) by
    :math:`\lesssim d\,u\,\|M\|`; :math:`\lambda^{-1/p}` then moves by at most
    :math:`\tfrac1p\,d\,u\,\kappa` relative, :math:`\kappa` the condition number of :math:`M + \epsilon I`.
    Both roots, and the two products (d u each), add up; a factor 4 covers the constants.
    """
    m, n = L.shape[0], R.shape[0]
    kappa_l, kappa_r = root_condition(L, eps, relative), root_condition(R, eps, relative)
    return 4 * EPS32 * ((m * kappa_l + n * kappa_r) / p + m + n)


def np_root(M, p, eps, relative):
    vals, vecs = np.linalg.eigh(M)
    vals = np.clip(vals, 0, None)
    shift = eps * vals.max() if relative else eps
    return vecs @ np.diag((vals + shift) ** (-1.0 / p)) @ vecs.T


def reference_directions(grads, grafting, statistics="adagrad", eps=1e-4, relative=False, p=4,
                         beta2=0.9, g_beta2=0.99, g_eps=1e-8):
    """Float64 NumPy Shampoo directions, preconditioning from step 1, every step."""
    out = []
    G0 = grads[0]
    vector = G0.ndim == 1
    L = np.zeros((G0.shape[0],) * 2)
    R = None if vector else np.zeros((G0.shape[1],) * 2)
    D = np.zeros_like(G0)
    v = np.zeros_like(G0)
    for t, G in enumerate(grads, 1):
        if statistics == "ema":
            c = 1 - beta2**t
            if vector:
                D = beta2 * D + (1 - beta2) * G * G
            else:
                L = beta2 * L + (1 - beta2) * G @ G.T
                R = beta2 * R + (1 - beta2) * G.T @ G
        else:
            c = 1.0
            if vector:
                D = D + G * G
            else:
                L, R = L + G @ G.T, R + G.T @ G
        if vector:
            d = D / c
            shift = eps * d.max() if relative else eps
            direction = G * (d + shift) ** (-2.0 / p)
        else:
            direction = np_root(L / c, p, eps, relative) @ G @ np_root(R / c, p, eps, relative)
        if grafting == "adagrad":
            v = v + G * G
            graft = G / (np.sqrt(v) + g_eps)
        elif grafting in ("rmsprop", "adam"):
            v = g_beta2 * v + (1 - g_beta2) * G * G
            vhat = v / (1 - g_beta2**t) if grafting == "adam" else v
            graft = G / (np.sqrt(vhat) + g_eps)
        else:
            graft = G
        if grafting != "none":
            direction = direction * np.linalg.norm(graft) / np.linalg.norm(direction)
        out.append(direction)
    return out


def run_steps(params, grads_per_param, **options):
    opt = Shampoo(params, lr=1.0, momentum=0.0, precondition_frequency=1, start_preconditioning_step=1, **options)
    steps = []
    for grads in grads_per_param:
        before = [p.detach().clone() for p in params]
        for p, g in zip(params, grads):
            p.grad = g.clone()
        opt.step()
        steps.append([b - p.detach() for b, p in zip(before, params)])
    return steps


@pytest.mark.parametrize("grafting", GRAFTINGS)
@pytest.mark.parametrize("statistics, relative", [("adagrad", False), ("ema", True)])
def test_step_matches_numpy_reference(grafting, statistics, relative):
    rng = np.random.default_rng(0)
    grads_w = [rng.standard_normal((5, 3)) for _ in range(4)]
    grads_b = [rng.standard_normal(5) for _ in range(4)]
    w = torch.nn.Parameter(torch.tensor(rng.standard_normal((5, 3))))
    b = torch.nn.Parameter(torch.tensor(rng.standard_normal(5)))
    options = dict(grafting=grafting, statistics=statistics, beta2=0.9, grafting_beta2=0.99,
                   epsilon=1e-4, epsilon_mode="relative" if relative else "absolute")
    got = run_steps([w, b], [[torch.tensor(gw), torch.tensor(gb)] for gw, gb in zip(grads_w, grads_b)], **options)
    ref_kwargs = dict(statistics=statistics, eps=1e-4, relative=relative)
    ref_w = reference_directions(grads_w, grafting, **ref_kwargs)
    ref_b = reference_directions(grads_b, grafting, **ref_kwargs)
    for (dw, db), rw, rb in zip(got, ref_w, ref_b):
        np.testing.assert_allclose(dw.numpy(), rw, rtol=1e-9, atol=1e-12)
        np.testing.assert_allclose(db.numpy(), rb, rtol=1e-9, atol=1e-12)


def test_float32_step_close_to_reference_and_exponent_is_used():
    rng = np.random.default_rng(1)
    grads = [rng.standard_normal((6, 4)).astype(np.float32).astype(np.float64) for _ in range(3)]
    w = torch.nn.Parameter(torch.zeros(6, 4))
    got = run_steps([w], [[torch.tensor(g, dtype=torch.float32)] for g in grads], grafting="none", epsilon=1e-3,
                    epsilon_mode="absolute", exponent=2)
    ref = reference_directions(grads, "none", eps=1e-3, p=2)
    for t in range(len(grads)):
        L = sum(g @ g.T for g in grads[: t + 1])
        R = sum(g.T @ g for g in grads[: t + 1])
        # step 1: L = G G^T has rank 4 of 6, so kappa = lambda_max / eps and the bound is loose
        tol = float32_direction_error(L, R, 1e-3, False, p=2) * np.linalg.norm(ref[t])
        assert np.linalg.norm(got[t][0].numpy() - ref[t]) <= tol, t
    # exponent p = 2 is used: the p = 4 direction is far outside that tolerance
    other = reference_directions(grads, "none", eps=1e-3, p=4)[-1]
    assert np.linalg.norm(got[-1][0].numpy() - other) > 10 * tol


def test_grafting_before_start_and_momentum():
    rng = np.random.default_rng(2)
    grads = [rng.standard_normal((4, 3)) for _ in range(4)]
    w = torch.nn.Parameter(torch.tensor(np.zeros((4, 3))))
    lr, mu = 0.1, 0.9
    opt = Shampoo([w], lr=lr, momentum=mu, nesterov=True, grafting="adagrad", epsilon=1e-4,
                  epsilon_mode="absolute", precondition_frequency=2, start_preconditioning_step=3)
    ref = reference_directions(grads, "adagrad", eps=1e-4)
    acc = np.zeros((4, 3))
    buf = np.zeros((4, 3))
    expected = np.zeros((4, 3))
    for t, G in enumerate(grads, 1):
        acc += G * G
        if t < 3:
            direction = G / (np.sqrt(acc) + 1e-8)  # AdaGrad alone
        elif t == 3:
            direction = ref[2]  # roots computed at step 3
        else:  # step 4 still uses the step-3 roots with the step-4 gradient and graft norm
            L = sum(g @ g.T for g in grads[:3])
            R = sum(g.T @ g for g in grads[:3])
            direction = np_root(L, 4, 1e-4, False) @ G @ np_root(R, 4, 1e-4, False)
            direction *= np.linalg.norm(G / (np.sqrt(acc) + 1e-8)) / np.linalg.norm(direction)
        buf = mu * buf + direction
        expected = expected - lr * (direction + mu * buf)
        w.grad = torch.tensor(G)
        opt.step()
        np.testing.assert_allclose(w.detach().numpy(), expected, rtol=1e-9, atol=1e-12)


def test_blocking_matches_unblocked_on_block_diagonal_statistics():
    rng = np.random.default_rng(3)
    grads = []
    for _ in range(3):
        G = np.zeros((6, 4))
        G[:3, :3] = rng.standard_normal((3, 3))
        G[3:, 3:] = rng.standard_normal((3, 1))
        grads.append([torch.tensor(G)])
    results = []
    for max_dim in (3, 1024):
        w = torch.nn.Parameter(torch.zeros(6, 4, dtype=torch.float64))
        results.append(run_steps([w], grads, grafting="none", epsilon=1e-3, epsilon_mode="absolute",
                                 max_preconditioner_dim=max_dim))
    for blocked, unblocked in zip(*results):
        np.testing.assert_allclose(blocked[0].numpy(), unblocked[0].numpy(), rtol=1e-9, atol=1e-12)
    # And on a generic gradient each block is preconditioned by its own statistics.
    G = rng.standard_normal((6, 4))
    w = torch.nn.Parameter(torch.zeros(6, 4, dtype=torch.float64))
    (step,), = run_steps([w], [[torch.tensor(G)]], grafting="none", epsilon=1e-3, epsilon_mode="absolute",
                         max_preconditioner_dim=3)
    for rows in (slice(0, 3), slice(3, 6)):
        for cols in (slice(0, 3), slice(3, 4)):
            ref = reference_directions([G[rows, cols]], "none", eps=1e-3)[0]
            np.testing.assert_allclose(step.numpy()[rows, cols], ref, rtol=1e-9, atol=1e-12)


_REAL_EIGH = torch.linalg.eigh


def _fake_eigh(fail_dtypes, calls):
    def fake(m, *args, **kwargs):
        calls.append(m.dtype)
        if m.dtype in fail_dtypes:
            raise torch.linalg.LinAlgError("forced failure")
        return _REAL_EIGH(m, *args, **kwargs)

    return fake


def test_float64_retry_and_keep_last(monkeypatch):
    rng = np.random.default_rng(4)
    grads = [[torch.tensor(rng.standard_normal((5, 3)), dtype=torch.float32)] for _ in range(3)]
    # A relative epsilon of 0.1 bounds the condition number of L + eps I by 11 (L has rank 3 of 5 at
    # step 1), so the float32 and float64 roots agree to a known accuracy.
    options = dict(grafting="adam", epsilon=0.1, epsilon_mode="relative")
    ref_w = torch.nn.Parameter(torch.zeros(5, 3))
    reference = run_steps([ref_w], grads, **options)
    calls = []
    monkeypatch.setattr(torch.linalg, "eigh", _fake_eigh((torch.float32,), calls))
    w = torch.nn.Parameter(torch.zeros(5, 3))
    retried = run_steps([w], grads, **options)
    assert torch.float64 in calls
    g64 = [g[0].double().numpy() for g in grads]
    for t, (a, b) in enumerate(zip(reference, retried)):
        L = sum(g @ g.T for g in g64[: t + 1])
        R = sum(g.T @ g for g in g64[: t + 1])
        # only the float32 roots differ (the float64 ones are exact to float32 precision); grafting
        # rescales by a norm ratio, which at most doubles the relative error
        tol = 2 * float32_direction_error(L, R, 0.1, True, p=4) * torch.linalg.matrix_norm(b[0]).item()
        assert torch.linalg.matrix_norm(a[0] - b[0]).item() <= tol, t
    # Both precisions fail: the roots of the previous update stay.
    w = torch.nn.Parameter(torch.zeros(5, 3))
    opt = Shampoo([w], lr=0.1, precondition_frequency=1, start_preconditioning_step=1)
    w.grad = grads[0][0].clone()
    monkeypatch.setattr(torch.linalg, "eigh", _REAL_EIGH)
    opt.step()
    saved = [r.clone() for r in opt.state[w]["L_root"] + opt.state[w]["R_root"]]
    monkeypatch.setattr(torch.linalg, "eigh", _fake_eigh((torch.float32, torch.float64), []))
    w.grad = grads[1][0].clone()
    opt.step()
    for a, b in zip(saved, opt.state[w]["L_root"] + opt.state[w]["R_root"]):
        assert torch.equal(a, b)
    assert torch.isfinite(w).all()


def test_rank_deficient_and_zero_gradients_stay_finite():
    w = torch.nn.Parameter(torch.ones(4, 3))
    b = torch.nn.Parameter(torch.ones(4))
    opt = Shampoo([w, b], lr=0.1, epsilon=0.0, precondition_frequency=1, start_preconditioning_step=1)
    for g in (torch.zeros(4, 3), torch.outer(torch.ones(4), torch.tensor([1.0, 0.0, 0.0]))):
        w.grad, b.grad = g, torch.zeros(4)
        opt.step()
        assert torch.isfinite(w).all() and torch.isfinite(b).all()


@pytest.mark.parametrize("options", [dict(), dict(statistics="ema", grafting="rmsprop", nesterov=True, weight_decay=1e-3)])
def test_state_dict_round_trip_is_bit_identical(options, resumes_bit_identically):
    g = torch.Generator().manual_seed(5)
    data = [torch.rand(10, 8, generator=g) for _ in range(12)]
    settings = dict(lr=0.01, precondition_frequency=3, start_preconditioning_step=2, **options)

    def make(fresh):
        model = deep_autoencoder((8, 6, 3, 6, 8), seed=123 if fresh else 0)
        return model, Shampoo(model.parameters(), **settings)

    assert resumes_bit_identically(make, data, 7)


def test_trains_digits_autoencoder(train_on_digits):
    model = deep_autoencoder((64, 32, 16, 8, 16, 32, 64), seed=0)
    initial, final = train_on_digits(model, Shampoo(model.parameters(), lr=DEFAULT_LR))
    assert final < 0.7 * initial, (initial, final)


@pytest.mark.parametrize("name, value", [
    ("lr", 0.0), ("momentum", -0.1), ("momentum", 1.0), ("weight_decay", -1.0), ("epsilon", -1e-6),
    ("epsilon_mode", "rel"), ("statistics", "sum"), ("beta2", 1.0), ("exponent", 0),
    ("max_preconditioner_dim", 0), ("precondition_frequency", 0), ("start_preconditioning_step", 0),
    ("grafting", "lamb"), ("grafting_beta2", 1.5), ("grafting_epsilon", 0.0), ("nesterov", 1),
])
def test_invalid_hyperparameters_raise(name, value):
    with pytest.raises(ValueError, match=name):
        Shampoo([torch.nn.Parameter(torch.zeros(2, 2))], **{name: value})


def test_invalid_hyperparameter_in_added_group_raises():
    opt = Shampoo([torch.nn.Parameter(torch.zeros(2, 2))])
    with pytest.raises(ValueError, match="precondition_frequency"):
        opt.add_param_group({"params": [torch.nn.Parameter(torch.zeros(2))], "precondition_frequency": -1})


# ---- roots that do not swing with the rounding of the decomposition ------------------------------

U64 = float(torch.finfo(torch.float64).eps) / 2
U32 = EPS32 / 2


def permuted_roots(root_dtype):
    """``inverse_root`` through the symmetric permutation :math:`PMP^\\top` of each statistic, un-permuted:
    mathematically the same root from another decomposition (another rounding), in ``root_dtype``."""
    from locoprop.optim import linalg

    def inverse_root(mats, exponent, epsilon, relative, previous, retry_float64=True, permute=True):
        m = mats.to(root_dtype)
        n = m.shape[-1]
        perm = torch.randperm(n, generator=torch.Generator().manual_seed(n)) if permute else torch.arange(n)
        vals, q, _ = linalg.eigh_with_retry(m[:, perm][:, :, perm])
        vecs = torch.empty_like(q)
        vecs[:, perm] = q
        vals = vals.clamp_min(0.0)
        shifted = vals + (epsilon * vals.amax(-1, keepdim=True) if relative else epsilon)
        return ((vecs * shifted.pow(-1.0 / exponent)[..., None, :]) @ vecs.mT).to(mats.dtype)

    return inverse_root


def one_step(monkeypatch, inverse_root, grad, **options):
    """Weights and state after one Shampoo step (roots from step 1) of a matrix with gradient ``grad``."""
    from locoprop.optim import shampoo

    if inverse_root is not None:
        monkeypatch.setattr(shampoo, "inverse_root", inverse_root)
    w = torch.nn.Parameter(torch.randn(*grad.shape, generator=torch.Generator().manual_seed(1), dtype=grad.dtype) * 0.05)
    opt = Shampoo([w], precondition_frequency=1, start_preconditioning_step=1, **options)
    w.grad = grad.clone()
    opt.step()
    monkeypatch.undo()
    return w.detach().clone(), opt.state[w]


def root_error(stat: torch.Tensor, eps: float, p: float) -> torch.Tensor:
    r"""The bound of :func:`locoprop.optim.linalg.inverse_root` on a float64 root's error (2-norm):
    :math:`n u_{64}/(p\epsilon)\,s^{-1/p}`, :math:`s = \epsilon\lambda_{\max}`."""
    n = stat.shape[0]
    s = eps * torch.linalg.eigvalsh(stat.double()).max()
    return n * U64 / (p * eps) * s ** (-1 / p)


# the paper's 500 -> 250 layer, the gradient of a batch of 100 (rank 100: most eigenvalues of the statistics
# are 0, where the relative shift 1e-6 decides the root), the tuned setting: lr 3e-4, relative epsilon 1e-6
LR, EPS, P = 3e-4, 1e-6, 4


def paper_layer_gradient(dtype=torch.float32):
    g = torch.Generator().manual_seed(0)
    return (torch.randn(250, 100, generator=g, dtype=torch.float64) @ torch.randn(100, 500, generator=g, dtype=torch.float64)
            / 100).to(dtype)


def test_roots_from_two_equal_decompositions_agree_to_the_bound_of_inverse_root():
    r""":math:`(M + \epsilon\lambda_{\max}I)^{-1/p}` from ``eigh`` of :math:`M` and from ``eigh`` of :math:`PMP^\top`
    (un-permuted) differ by the rounding of the two decompositions only: with float64 decompositions
    (:func:`~locoprop.optim.linalg.inverse_root`) at most :func:`root_error` each (a backward error
    :math:`n u_{64}\lambda_{\max}` and :math:`|f'| \le f/(p s)` for :math:`f(\lambda) = (\lambda + s)^{-1/p}`), plus the one
    rounding to float32 of each entry.  Float32 decompositions break that bound."""
    from locoprop.optim.linalg import inverse_root

    grad = paper_layer_gradient()
    for stat in (grad @ grad.T, grad.T @ grad):  # the float32 statistics of the first step
        eye = torch.eye(stat.shape[0])[None]
        root = inverse_root(stat[None], P, EPS, True, eye)[0]
        other = permuted_roots(torch.float64)(stat[None], P, EPS, True, eye)[0]
        bound = 2 * root_error(stat, EPS, P) + U32 * (root.abs() + other.abs()).double()
        assert ((root - other).double().abs() <= bound).all()
        swinging = permuted_roots(torch.float32)(stat[None], P, EPS, True, eye)[0]
        assert ((swinging - root).double().abs() > 100 * bound).any()


def test_steps_from_two_equal_decompositions_agree_to_the_bound_of_inverse_root(monkeypatch):
    r"""One Shampoo step (roots from step 1, Adam grafting) in float64, where only the decompositions round:
    :math:`D = L_r g R_r` moves by at most :math:`\|\Delta L_r\|_2\|gR_r\|_F + \|L_rg\|_F\|\Delta R_r\|_2 +
    \|\Delta L_r\|_2\|g\|_F\|\Delta R_r\|_2` (root errors :math:`2\,`:func:`root_error`), plus the products' rounding
    :math:`2\gamma_n\||L_r||g||R_r|\|_F`; the grafted step :math:`\text{lr}\,D\|A\|/\|D\|` by at most
    :math:`2\,\text{lr}\|A\|\|\Delta D\|/\|D\|`.  With float32 decompositions the step breaks that bound (by a factor of about 10 here)."""
    grad = paper_layer_gradient(torch.float64)
    options = dict(lr=LR, epsilon=EPS, epsilon_mode="relative", exponent=P, grafting="adam")
    w, state = one_step(monkeypatch, None, grad, **options)
    w_permuted, _ = one_step(monkeypatch, permuted_roots(torch.float64), grad, **options)
    w_float32, _ = one_step(monkeypatch, permuted_roots(torch.float32), grad, **options)
    L_r, R_r = state["L_root"][0], state["R_root"][0]
    d_l, d_r = 2 * root_error(state["L"][0], EPS, P), 2 * root_error(state["R"][0], EPS, P)
    gamma = max(grad.shape) * U64 / (1 - max(grad.shape) * U64)
    dD = (d_l * (grad @ R_r).norm() + (L_r @ grad).norm() * d_r + d_l * grad.norm() * d_r
          + 2 * (2 * gamma + gamma ** 2) * (L_r.abs() @ grad.abs() @ R_r.abs()).norm())
    graft = (grad / ((state["graft_v"] / (1 - 0.999)).sqrt() + 1e-8)).norm()  # Adam's grafted step A
    bound = LR * 2 * graft * dD / (L_r @ grad @ R_r).norm() + 8 * U64 * (LR * graft + w.norm())
    assert (w_permuted - w).norm() <= bound
    assert (w_float32 - w).norm() > 5 * bound
