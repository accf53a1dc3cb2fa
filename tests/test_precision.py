"""bfloat16 products against float32: the error bounds of the arithmetic, the dtypes that stay float32,
and where bf16 is offered (locoprop.experiments.bf16_check, locoprop.experiments.train.products)."""
import contextlib
import dataclasses
import json
import warnings

import pytest
import torch
from torch import nn

import locoprop
from locoprop.experiments import bf16_check
from locoprop.models import deep_autoencoder, reconstruction_loss
from locoprop.optim import OPTIMIZERS, make_optimizer
from locoprop.experiments.config import RunConfig, default_results_dir
from locoprop.experiments.train import products, run
from locoprop.experiments.tuning import tuned

U_BF16 = 2.0 ** -8                          # unit roundoff of bfloat16 (8 significant bits)
U_FP32 = torch.finfo(torch.float32).eps / 2


def mlp(seed=0, sizes=(6, 7, 5, 4)):
    """Float32 tanh network, linear output; weights large enough that A dwarfs the first step's γG."""
    torch.manual_seed(seed)
    layers = []
    for k in range(len(sizes) - 1):
        layers.append(nn.Linear(sizes[k], sizes[k + 1]))
        if k < len(sizes) - 2:
            layers.append(nn.Tanh())
    model = nn.Sequential(*layers)
    with torch.no_grad():
        for m in model:
            if isinstance(m, nn.Linear):
                m.weight.mul_(4.0)
    return model


@pytest.mark.parametrize("autocast", [False, True], ids=["fp32-pass", "bf16-pass"])
@pytest.mark.parametrize("variant", ["S", "M"])
def test_first_bf16_local_step_is_backprop_to_the_rounding_of_its_product(variant, autocast, recorded_pass):
    r"""T = 1 with gradient descent is one BackProp step, :math:`-\nu\gamma G^\top X` (tests/test_locoprop).

    With bfloat16 local products the first residual must still be :math:`\gamma G` to float32 rounding
    (:math:`\hat A = A + X\cdot 0` exactly); only the weight-gradient product :math:`\delta^\top X` is
    taken from bfloat16-rounded factors with float32 accumulation.  Entrywise, with :math:`u` the unit
    roundoffs, the product's error is at most :math:`(2u_{bf} + u_{bf}^2 + B u_{32})\,|\delta|^\top|X|`, the
    residual's :math:`u_{32}(|b| + 2\gamma|G|)` with :math:`b = A` (S) or :math:`f(A)` (M), and the SGD
    update adds :math:`u_{32}|W'|`.  A residual recomputed as :math:`f(\mathrm{bf16}(X)\,\mathrm{bf16}(W)^\top)`
    would be off by about :math:`u_{bf}|X||W|`, far outside this bound here.  With the pass itself in
    bfloat16 (``precision="bf16"``, autocast), X, A and G are its bfloat16 values and the same holds.
    """
    nu, gamma, n = 0.05, 1.0, 16
    g = torch.Generator().manual_seed(1)
    x, y = torch.randn(n, 6, generator=g), torch.randn(n, 4, generator=g)
    model = mlp()
    before = [(m.weight.detach().clone(), m.bias.detach().clone()) for m in model if isinstance(m, nn.Linear)]
    loss_fn = lambda z, t: 0.5 * ((z.float() - t) ** 2).sum(-1).mean()  # noqa: E731
    the_pass = (lambda: products("bf16", torch.device("cpu"))) if autocast else contextlib.nullcontext
    with the_pass():
        _, inputs, preacts, grads = recorded_pass(model, x, y, loss_fn)
    assert preacts[0].dtype == (torch.bfloat16 if autocast else torch.float32)  # the pass ran in that precision
    inputs, preacts, grads = ([t.float() for t in ts] for ts in (inputs, preacts, grads))
    opt = locoprop.LocoProp(model, lr=nu, variant=variant, gamma=gamma, local_iters=1, inner=torch.optim.SGD,
                            output_activation="identity", products="bfloat16")
    opt.zero_grad()
    with the_pass():
        logits = model(x)
    loss_fn(logits, y).backward()
    opt.step()
    linears = [m for m in model if isinstance(m, nn.Linear)]
    for k, (m, (w0, b0), xk, ak, gk) in enumerate(zip(linears, before, inputs, preacts, grads)):
        transfer = torch.tanh if (variant == "M" and k < len(linears) - 1) else (lambda t: t)
        base = ak if variant == "S" else transfer(ak)
        delta = (gamma * gk).double()
        residual_err = U_FP32 * (base.abs() + 2 * gamma * gk.abs()).double()
        product_bound = (2 * U_BF16 + U_BF16 ** 2 + n * U_FP32) * (delta.abs().T @ xk.abs().double()) \
            + residual_err.T @ xk.abs().double() * (1 + 2 * U_BF16)
        expected_w = w0.double() - nu * delta.T @ xk.double()
        bound_w = nu * product_bound + U_FP32 * (expected_w.abs() + w0.abs().double())
        assert ((m.weight.detach().double() - expected_w).abs() <= bound_w).all(), f"layer {k} weight"
        expected_b = b0.double() - nu * delta.sum(0)
        bound_b = nu * (n * U_FP32 * delta.abs().sum(0) + residual_err.sum(0)) + U_FP32 * (expected_b.abs() + b0.abs().double())
        assert ((m.bias.detach().double() - expected_b).abs() <= bound_b).all(), f"layer {k} bias"
        # the bound is tight enough to matter: a bfloat16 recomputation of A would break it
        naive_err = U_BF16 * (xk.abs() @ w0.abs().T).double()
        assert (nu * naive_err.T @ xk.abs().double() > bound_w).any()


@pytest.mark.parametrize("name", OPTIMIZERS)
def test_bf16_products_keep_weights_gradients_and_state_float32(name):
    """``precision="bf16"``: the products of the pass (autocast) and LocoProp's local products in
    bfloat16; weights, their gradients and every floating optimizer state tensor stay float32."""
    model = deep_autoencoder((12, 8, 3, 8, 12), seed=0)
    opt = make_optimizer(name, model, precision="bf16")
    x = torch.rand(20, 12, generator=torch.Generator().manual_seed(0))
    for _ in range(2):
        opt.zero_grad(set_to_none=True)
        with products("bf16", torch.device("cpu")):
            logits = model(x)
        assert logits.dtype == torch.bfloat16  # the products did run in bfloat16
        loss = reconstruction_loss(logits.float(), x)
        loss.backward()
        if getattr(opt, "needs_loss_closure", False):
            opt.step(lambda: reconstruction_loss(model(x), x))
        else:
            opt.step()
    for p in model.parameters():
        assert p.dtype == torch.float32 and p.grad.dtype == torch.float32 and torch.isfinite(p).all()

    def tensors(obj):
        if isinstance(obj, torch.Tensor):
            yield obj
        elif isinstance(obj, dict):
            for v in obj.values():
                yield from tensors(v)
        elif isinstance(obj, (list, tuple)):
            for v in obj:
                yield from tensors(v)

    floating = [t for t in tensors(opt.state_dict()) if t.is_floating_point()]
    assert floating or name == "sgd"  # plain SGD keeps no state
    assert all(t.dtype == torch.float32 for t in floating)


def test_precision_is_part_of_the_run_identity():
    fp32 = RunConfig(optimizer="sgd")
    bf16 = dataclasses.replace(fp32, precision="bf16")
    assert fp32.run_id != bf16.run_id
    assert bf16.resolve().identity()["precision"] == "bf16"


def test_bf16_is_offered_only_where_the_check_measured_it(tmp_path, monkeypatch):
    """A bf16 run of an optimizer that was not checked, or failed the check, warns; one within the limit does not."""
    cfg = RunConfig(optimizer="sgd", precision="bf16", epochs=2, subset=200, results_dir=str(tmp_path))
    monkeypatch.setattr(bf16_check, "measured", lambda **_: {})
    with pytest.warns(UserWarning, match="not been checked"):
        run(cfg, progress=False)
    monkeypatch.setattr(bf16_check, "measured", lambda **_: {"sgd": 2 * bf16_check.TOLERANCE})
    assert not bf16_check.bf16_offered("sgd")
    with pytest.warns(UserWarning, match="differed from fp32"):
        run(dataclasses.replace(cfg, seed=1), progress=False)
    monkeypatch.setattr(bf16_check, "measured", lambda **_: {"sgd": -bf16_check.TOLERANCE / 2})
    assert bf16_check.bf16_offered("sgd")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        run(dataclasses.replace(cfg, seed=2), progress=False)


def test_measured_is_read_from_the_committed_check_runs():
    """``bf16_check.measured()`` gives, for all ten optimizers, (bf16 - fp32) / fp32 of the final training loss of
    the committed check runs: here those files are found by reading every paper result file and matching its
    configuration (10 epochs, 1 warm-up, seed 0, the short search's winner), not through run ids."""
    found = bf16_check.measured()
    assert set(found) == set(OPTIMIZERS)
    docs = [json.loads(p.read_text()) for p in (default_results_dir() / "paper").glob("*.json")]
    for name, value in found.items():
        setting = tuned(RunConfig(optimizer=name, profile="paper", dataset="fashion-mnist")).setting
        finals = {}
        for doc in docs:
            c = doc["config"]
            if (c["optimizer"], c["epochs"], c["warmup_epochs"], c["seed"], c["dataset"]) == (name, 10, 1, 0, "fashion-mnist") \
                    and c["hparams"] == setting and doc["status"] == "completed":
                assert c["precision"] not in finals, f"{name}: two {c['precision']} check runs"
                finals[c["precision"]] = doc["records"][-1]["train_loss"]
        assert set(finals) == {"fp32", "bf16"}, name
        assert value == pytest.approx((finals["bf16"] - finals["fp32"]) / finals["fp32"], rel=1e-12), name
