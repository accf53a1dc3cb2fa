"""bfloat16 products against float32: the error bounds of the arithmetic, the dtypes that stay float32,
and where bf16 is offered (locoprop.experiments.bf16_check, locoprop.experiments.train.products)."""
import contextlib
import dataclasses
import json
import warnings

import pytest
import torch
from torch import nn
from torch.utils._python_dispatch import TorchDispatchMode

import locoprop
from locoprop.experiments import bf16_check
from locoprop.models import deep_autoencoder, reconstruction_loss
from locoprop.optim import FIRST_ORDER, OPTIMIZERS, REVISIONS, make_optimizer
from locoprop.precision import float32_accumulation
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


def product_error(u_in: float, u_out: float, n: int) -> float:
    r"""Coefficient :math:`c` of :math:`|\hat P - P| \le c\,|A|^\top|B|` for a length-``n`` product whose factors are
    rounded with unit roundoff ``u_in``, summed in float32 and rounded once with ``u_out``:
    :math:`(1 + u_{in})^2(1 + \gamma_n)(1 + u_{out}) - 1`, :math:`\gamma_n = n u_{32}/(1 - n u_{32})`."""
    gamma_n = n * U_FP32 / (1 - n * U_FP32)
    return (1 + u_in) ** 2 * (1 + gamma_n) * (1 + u_out) - 1


def check_first_local_step(variant, products, u_in, u_out, recorded_pass, the_pass=contextlib.nullcontext,
                           device="cpu", naive_breaks=True):
    r"""T = 1 with gradient descent is one BackProp step, :math:`-\nu\gamma G^\top X` (tests/test_locoprop).

    The first residual must be :math:`\gamma G` to float32 rounding (:math:`\hat A = A + X\cdot 0` exactly) in
    any precision of the products; only the weight-gradient product :math:`\delta^\top X` carries the products'
    rounding: entrywise at most :math:`c\,|\delta|^\top|X|` (:func:`product_error`), the residual's
    :math:`u_{32}(|b| + 2\gamma|G|)` with :math:`b = A` (S) or :math:`f(A)` (M), and the SGD update adds
    :math:`u_{32}|W'|`.  A residual recomputed as :math:`f(\bar X\bar W^\top)` in the products' precision would be off
    by about :math:`u_{in}|X||W|`, far outside this bound here (checked when ``naive_breaks``; not in float32,
    where that error is as small as the residual's).  ``the_pass``: the context of the forward and backward
    passes and of the step (autocast, emulated TF32).
    """
    nu, gamma, n = 0.05, 1.0, 16
    g = torch.Generator().manual_seed(1)
    x, y = torch.randn(n, 6, generator=g).to(device), torch.randn(n, 4, generator=g).to(device)
    model = mlp().to(device)
    before = [(m.weight.detach().clone(), m.bias.detach().clone()) for m in model if isinstance(m, nn.Linear)]
    loss_fn = lambda z, t: 0.5 * ((z.float() - t) ** 2).sum(-1).mean()  # noqa: E731
    with the_pass():
        _, inputs, preacts, grads = recorded_pass(model, x, y, loss_fn)
    inputs, preacts, grads = ([t.float().cpu() for t in ts] for ts in (inputs, preacts, grads))
    opt = locoprop.LocoProp(model, lr=nu, variant=variant, gamma=gamma, local_iters=1, inner=torch.optim.SGD,
                            output_activation="identity", products=products)
    opt.zero_grad()
    with the_pass():
        logits = model(x)
        loss_fn(logits, y).backward()
        opt.step()
    c = product_error(u_in, u_out, n)
    linears = [m for m in model if isinstance(m, nn.Linear)]
    for k, (m, (w0, b0), xk, ak, gk) in enumerate(zip(linears, before, inputs, preacts, grads)):
        w0, b0 = w0.cpu(), b0.cpu()
        transfer = torch.tanh if (variant == "M" and k < len(linears) - 1) else (lambda t: t)
        base = ak if variant == "S" else transfer(ak)
        delta = (gamma * gk).double()
        residual_err = U_FP32 * (base.abs() + 2 * gamma * gk.abs()).double()
        product_bound = c * (delta.abs().T @ xk.abs().double()) + residual_err.T @ xk.abs().double() * (1 + c)
        expected_w = w0.double() - nu * delta.T @ xk.double()
        bound_w = nu * product_bound + U_FP32 * (expected_w.abs() + w0.abs().double())
        assert ((m.weight.detach().cpu().double() - expected_w).abs() <= bound_w).all(), f"layer {k} weight"
        expected_b = b0.double() - nu * delta.sum(0)
        bound_b = nu * (n * U_FP32 * delta.abs().sum(0) + residual_err.sum(0)) + U_FP32 * (expected_b.abs() + b0.abs().double())
        assert ((m.bias.detach().cpu().double() - expected_b).abs() <= bound_b).all(), f"layer {k} bias"
        # the bound is tight enough to matter: a recomputation of A in the products' precision would break it
        naive_err = max(u_in, U_FP32) * (xk.abs() @ w0.abs().T).double()
        assert not naive_breaks or (nu * naive_err.T @ xk.abs().double() > bound_w).any()


@pytest.mark.parametrize("autocast", [False, True], ids=["fp32-pass", "bf16-pass"])
@pytest.mark.parametrize("variant", ["S", "M"])
def test_first_bf16_local_step_is_backprop_to_the_rounding_of_its_product(variant, autocast, recorded_pass):
    """bfloat16 local products (factors rounded to bfloat16, summed in float32, the result rounded to
    bfloat16); with the pass itself in bfloat16 (``precision="bf16"``, autocast), X, A and G are its
    bfloat16 values and the same holds."""
    the_pass = (lambda: products("bf16", torch.device("cpu"))) if autocast else contextlib.nullcontext
    check_first_local_step(variant, "bfloat16", U_BF16, U_BF16, recorded_pass, the_pass)


U_TF32 = 2.0 ** -11  # unit roundoff of TF32 with round-to-nearest (11 significant bits)


def round_to_tf32(t: torch.Tensor) -> torch.Tensor:
    """float32 values rounded to nearest (ties to even) with 11 significant bits, as TF32 keeps them."""
    bits = t.contiguous().view(torch.int32)
    bits = (bits + 0x0FFF + ((bits >> 13) & 1)) & ~0x1FFF
    return bits.view(torch.float32)


class TF32Products(TorchDispatchMode):
    """Emulated TF32 matrix products: every float32 operand of a product rounded to TF32 (float32 sums)."""

    PRODUCTS = {"mm", "addmm", "bmm", "baddbmm", "addmv", "mv"}

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if func.overloadpacket.__name__ in self.PRODUCTS:
            args = tuple(round_to_tf32(a) if isinstance(a, torch.Tensor) and a.dtype == torch.float32 else a
                         for a in args)
        return func(*args, **(kwargs or {}))


def test_tf32_emulation():
    x = torch.randn(1000, generator=torch.Generator().manual_seed(0))
    r = round_to_tf32(x)
    assert ((r - x).abs() <= U_TF32 * x.abs()).all() and ((r.view(torch.int32) & 0x1FFF) == 0).all()
    assert (r != x).any()
    a, b = torch.randn(5, 7), torch.randn(7, 3)
    with TF32Products():
        got = a @ b
    assert torch.equal(got, round_to_tf32(a) @ round_to_tf32(b))


@pytest.mark.parametrize("variant", ["S", "M"])
def test_first_local_step_under_tf32_is_backprop_to_the_rounding_of_its_product(variant, recorded_pass):
    r"""Under TF32 (CUDA's ``allow_tf32``, ``torch.set_float32_matmul_precision("high")``), emulated on the CPU by
    rounding every operand of the pass's and the step's float32 products to TF32: the first local residual is
    still exactly :math:`\gamma G`, only the gradient product carries TF32's rounding of its factors."""
    check_first_local_step(variant, "float32", U_TF32, 0.0, recorded_pass, TF32Products)


def test_bfloat16_products_sum_in_float32():
    r"""A bfloat16 product of LocoProp's shape (a batch of 1000 summed) is within one bfloat16 rounding of the
    exact product of its bfloat16 factors plus float32 summation errors, :math:`u_{bf}|P| + (1 + u_{bf})\gamma_B
    |A|^\top|B|`; products carried in bfloat16 (as a reduced-precision reduction would) break that bound."""
    g = torch.Generator().manual_seed(0)
    B = 1000
    a = torch.randn(B, 24, generator=g).bfloat16()  # zero-mean: sums that cancel, where partial sums matter
    b = torch.randn(B, 32, generator=g).bfloat16()
    got = (a.T @ b).double()
    exact = a.double().T @ b.double()
    gamma_b = B * U_FP32 / (1 - B * U_FP32)
    bound = U_BF16 * exact.abs() + (1 + U_BF16) * gamma_b * (a.double().abs().T @ b.double().abs())
    assert ((got - exact).abs() <= bound).all()
    # the same products summed in bfloat16, one term at a time, on a corner of the matrix
    terms = (a.double()[:, :4, None] * b.double()[:, None, :4]).bfloat16()
    carried = torch.zeros(4, 4, dtype=torch.bfloat16)
    for t in terms:
        carried = (carried.float() + t.float()).bfloat16()
    assert ((carried.double() - exact[:4, :4]).abs() > bound[:4, :4]).any()


def test_float32_accumulation_sets_and_restores_the_cuda_flag():
    matmul = torch.backends.cuda.matmul
    before = matmul.allow_bf16_reduced_precision_reduction
    try:
        for start in (True, False):
            matmul.allow_bf16_reduced_precision_reduction = start
            with float32_accumulation("cpu"):
                assert matmul.allow_bf16_reduced_precision_reduction is start  # nothing to do on the CPU
            with float32_accumulation("cuda:0"):
                assert matmul.allow_bf16_reduced_precision_reduction is False
            assert matmul.allow_bf16_reduced_precision_reduction is start
            with float32_accumulation("cuda", enabled=False):
                assert matmul.allow_bf16_reduced_precision_reduction is start
            with pytest.raises(RuntimeError, match="inside"):
                with float32_accumulation("cuda"):
                    raise RuntimeError("inside")
            assert matmul.allow_bf16_reduced_precision_reduction is start
    finally:
        matmul.allow_bf16_reduced_precision_reduction = before


class _FlagAtProducts(TorchDispatchMode):
    """Records CUDA's bf16 reduced-precision flag at every bfloat16 matrix product."""

    def __init__(self):
        super().__init__()
        self.seen = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if func.overloadpacket.__name__ in ("mm", "addmm") and args[0].dtype == torch.bfloat16:
            self.seen.append(torch.backends.cuda.matmul.allow_bf16_reduced_precision_reduction)
        return func(*args, **(kwargs or {}))


@pytest.mark.parametrize("products_", ["bfloat16", "float32"])
def test_locoprop_turns_reduced_precision_sums_off_around_its_bf16_products_on_cuda(products_):
    """On CUDA, LocoProp's bfloat16 local products sum in float32 (the flag off around them, restored after);
    here the optimizer is told its parameters are on CUDA while the arithmetic runs on the CPU."""
    matmul = torch.backends.cuda.matmul
    model = deep_autoencoder((12, 8, 3, 8, 12), seed=0)
    opt = make_optimizer("locoprop-m", model, precision="bf16" if products_ == "bfloat16" else "fp32")
    x = torch.rand(20, 12, generator=torch.Generator().manual_seed(0))
    for t in range(2):
        opt.zero_grad()
        reconstruction_loss(model(x), x).backward()
        if t == 0:
            opt.step()  # builds what the step keeps on the device, on the CPU
            continue
        opt._device = torch.device("cuda")
        before = matmul.allow_bf16_reduced_precision_reduction
        matmul.allow_bf16_reduced_precision_reduction = True
        try:
            with _FlagAtProducts() as flags:
                opt.step()
            assert matmul.allow_bf16_reduced_precision_reduction is True
        finally:
            matmul.allow_bf16_reduced_precision_reduction = before
    if products_ == "bfloat16":
        assert flags.seen and not any(flags.seen)  # 10 local iterations x 4 layers x 2 products
        assert len(flags.seen) == 2 * 10 * 4
    else:
        assert not flags.seen


@pytest.mark.parametrize("device, precision, expected", [("cuda", "bf16", [False]), ("cuda", "fp32", [True]),
                                                         ("cpu", "bf16", [True])])
def test_bf16_runs_on_cuda_sum_in_float32(device, precision, expected, tmp_path, monkeypatch):
    """The training loop of a bf16 run on CUDA runs with float32 sums (forward, backward and step)."""
    from locoprop.experiments import train

    matmul = torch.backends.cuda.matmul
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(bf16_check, "bf16_offered", lambda name: True)
    seen = []

    def fake_train(cfg, *args):
        seen.append(matmul.allow_bf16_reduced_precision_reduction)
        raise KeyboardInterrupt

    monkeypatch.setattr(train, "_train", fake_train)
    before = matmul.allow_bf16_reduced_precision_reduction
    matmul.allow_bf16_reduced_precision_reduction = True
    try:
        with pytest.raises(KeyboardInterrupt):
            run(RunConfig(optimizer="sgd", device=device, precision=precision, results_dir=str(tmp_path)),
                progress=False)
        assert seen == expected
        assert matmul.allow_bf16_reduced_precision_reduction is True
    finally:
        matmul.allow_bf16_reduced_precision_reduction = before


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

    state = opt.state_dict()
    # hyper-parameters apart: LocoProp's learning rates are float64 0-dim tensors (the numbers a float holds)
    groups = state.pop("param_groups")
    assert all(g["lr"].dtype == torch.float64 and g["lr"].shape == () if name.startswith("locoprop")
               else isinstance(g["lr"], float) for g in groups)
    floating = [t for t in tensors(state) if t.is_floating_point()]
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
    """``bf16_check.measured()`` gives (bf16 - fp32) / fp32 of the final training loss of the committed check runs,
    for exactly the optimizers whose fp32 and bf16 check runs both completed at the current revision of their
    arithmetic: here those files are found by reading every paper result file and matching its configuration
    (10 epochs, 1 warm-up, seed 0, the short search's winner, the revision), not through run ids.  A check run
    of an older revision vouches for nothing: the arithmetic it measured is gone."""
    found = bf16_check.measured()
    docs = [json.loads(p.read_text()) for p in (default_results_dir() / "paper").glob("*.json")]
    expected = {}
    for name in OPTIMIZERS:
        setting = tuned(RunConfig(optimizer=name, profile="paper", dataset="fashion-mnist")).setting
        finals = {}
        for doc in docs:
            c = doc["config"]
            if (c["optimizer"], c["epochs"], c["warmup_epochs"], c["seed"], c["dataset"], c.get("revision", 1)) \
                    == (name, 10, 1, 0, "fashion-mnist", REVISIONS[name]) \
                    and c["hparams"] == setting and doc["status"] == "completed":
                assert c["precision"] not in finals, f"{name}: two {c['precision']} check runs"
                finals[c["precision"]] = doc["records"][-1]["train_loss"]
        if set(finals) == {"fp32", "bf16"}:
            expected[name] = (finals["bf16"] - finals["fp32"]) / finals["fp32"]
    assert set(FIRST_ORDER) | {"kfac"} <= set(expected), "the committed check runs of revision 1 are missing"
    assert set(found) == set(expected)
    for name, value in expected.items():
        assert found[name] == pytest.approx(value, rel=1e-12), name
