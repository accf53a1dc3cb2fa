"""The CUDA path against the CPU path (runs only where a CUDA device is present).

* Every optimizer's training step on CUDA computes the same update as on the CPU, in float64
  (tolerance 1e-9 relative, far above float64 rounding, far below any real difference).
* LocoProp's first local step is BackProp's step to the rounding of its product, in float32, TF32
  and bfloat16 on CUDA (the bounds of tests/test_precision.py; TF32 operands with 10 stored bits,
  rounded or truncated: unit roundoff :math:`2^{-10}`); bfloat16 products sum in float32.
* K-FAC's sampled Fisher: labels from a seeded generator on the GPU, with the model's probabilities.
* Ordinary steps of every optimizer make no host synchronisation (``torch.cuda.set_sync_debug_mode("error")``).
* A run interrupted on CUDA resumes to the records of an uninterrupted one; CUDA and CPU runs never
  share result files.  The runner, the benchmark and the data loader work with data on the GPU.
"""
import contextlib
import dataclasses

import pytest
import torch

import locoprop
from locoprop.experiments.config import RunConfig
from locoprop.models import deep_autoencoder, reconstruction_loss
from locoprop.precision import float32_accumulation
from test_precision import U_BF16, U_FP32, check_first_local_step

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device on this machine")

# K-FAC samples Fisher labels from a device-specific generator: compare its empirical-Fisher variant.
SETTINGS = {name: {} for name in locoprop.OPTIMIZERS}
SETTINGS["kfac"] = {"fisher": "empirical", "inverse_update_freq": 1}
SETTINGS["shampoo"] = {"precondition_frequency": 1, "start_preconditioning_step": 1}
U_TF32 = 2.0 ** -10  # TF32 keeps 10 of float32's 23 stored bits; the hardware may round or truncate


@contextlib.contextmanager
def tf32(enabled: bool):
    matmul = torch.backends.cuda.matmul
    before = matmul.allow_tf32
    matmul.allow_tf32 = enabled
    try:
        yield
    finally:
        matmul.allow_tf32 = before


@pytest.mark.parametrize("name", locoprop.OPTIMIZERS)
def test_steps_on_cuda_equal_steps_on_cpu(name, digits, train_on_digits, devices=("cpu", "cuda")):
    results = []
    for device in devices:
        model = deep_autoencoder((64, 32, 8, 32, 64), seed=0).double().to(device)
        opt = locoprop.make_optimizer(name, model, **SETTINGS[name])
        train_on_digits(model, opt, epochs=1, data=digits[:400].double().to(device))
        results.append([p.detach().cpu() for p in model.parameters()])
    for p, q in zip(*results):
        torch.testing.assert_close(q, p, rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("variant", ["S", "M"])
@pytest.mark.parametrize("precision", ["fp32", "tf32", "bf16"])
def test_first_local_step_on_cuda_is_backprop_to_the_rounding_of_its_product(variant, precision, recorded_pass):
    matmul = torch.backends.cuda.matmul
    reduced = matmul.allow_bf16_reduced_precision_reduction
    if precision == "fp32":
        with tf32(False):
            check_first_local_step(variant, "float32", 0.0, 0.0, recorded_pass, device="cuda", naive_breaks=False)
    elif precision == "tf32":
        check_first_local_step(variant, "float32", U_TF32, 0.0, recorded_pass, lambda: tf32(True), device="cuda")
    else:
        matmul.allow_bf16_reduced_precision_reduction = True  # the default, which LocoProp turns off around its products
        try:
            check_first_local_step(variant, "bfloat16", U_BF16, U_BF16, recorded_pass, device="cuda")
        finally:
            matmul.allow_bf16_reduced_precision_reduction = reduced
    assert matmul.allow_bf16_reduced_precision_reduction is reduced and not matmul.allow_tf32


def test_bfloat16_products_sum_in_float32_on_cuda():
    """The bound of tests/test_precision.py (one bfloat16 rounding of the result plus float32 sums) on CUDA,
    inside :func:`float32_accumulation`."""
    g = torch.Generator().manual_seed(0)
    B = 1000
    a = torch.randn(B, 24, generator=g).bfloat16()
    b = torch.randn(B, 32, generator=g).bfloat16()
    with float32_accumulation("cuda"):
        got = (a.cuda().T @ b.cuda()).double().cpu()
    exact = a.double().T @ b.double()
    gamma_b = B * U_FP32 / (1 - B * U_FP32)
    bound = U_BF16 * exact.abs() + (1 + U_BF16) * gamma_b * (a.double().abs().T @ b.double().abs())
    assert ((got - exact).abs() <= bound).all()


def test_sampled_fisher_kfac_on_cuda():
    """Labels from the optimizer's generator on the GPU: reproducible from the seed, drawn with the model's
    probabilities (each Bernoulli mean within 6 standard deviations), the global CUDA generator untouched."""
    from locoprop.optim.kfac import KFAC

    x = torch.rand(64, 12, generator=torch.Generator().manual_seed(0)).cuda()

    def run(seed):
        model = deep_autoencoder((12, 8, 3, 8, 12), seed=0).cuda()
        opt = KFAC(model, lr=0.05, inverse_update_freq=2, seed=seed)
        assert opt._generator.device.type == "cuda"
        state = torch.cuda.get_rng_state()
        for xb in x.split(16):
            opt.zero_grad()
            reconstruction_loss(model(xb), xb).backward()
            opt.step()
        assert torch.equal(torch.cuda.get_rng_state(), state)
        return opt, model, [p.detach().cpu() for p in model.parameters()]

    opt, model, params = run(3)
    _, _, again = run(3)
    _, _, other = run(4)
    assert all(torch.equal(p, q) for p, q in zip(params, again))
    assert not all(torch.equal(p, q) for p, q in zip(params, other))
    with torch.no_grad():
        logits = model(x)
    n = 400
    mean = sum(opt._sample_targets(logits) for _ in range(n)) / n
    p = torch.sigmoid(logits)
    assert ((mean - p).abs() <= 6 * (p * (1 - p) / n).sqrt() + 1e-6).all()


@pytest.mark.parametrize("name", locoprop.OPTIMIZERS)
def test_ordinary_steps_do_not_synchronise(name):
    """Forward, backward, ``opt.step()`` and the scheduler under ``torch.cuda.set_sync_debug_mode("error")`` on
    every step that does not recompute K-FAC's inverses or Shampoo's roots."""
    freq = 3
    hparams = {"kfac": {"inverse_update_freq": freq},
               "shampoo": {"precondition_frequency": freq, "start_preconditioning_step": 1}}.get(name, {})
    model = deep_autoencoder((12, 9, 5, 9, 12), seed=0).cuda()
    opt = locoprop.make_optimizer(name, model, **hparams)
    scheduler = locoprop.warmup_linear_decay(opt, 2, 10)
    x = torch.rand(8 * 20, 12, generator=torch.Generator().manual_seed(0)).cuda()
    for t, xb in enumerate(x.split(20)):
        ordinary = name not in ("kfac", "shampoo") or t % freq != 0
        torch.cuda.synchronize()
        if ordinary and t > 0:  # the first step of torch.optim's optimizers creates their state
            torch.cuda.set_sync_debug_mode("error")
        try:
            opt.zero_grad(set_to_none=True)
            reconstruction_loss(model(xb), xb).backward()
            closure = (lambda xb=xb: reconstruction_loss(model(xb), xb)) if getattr(opt, "needs_loss_closure", False) else None
            opt.step(closure)
            scheduler.step()
        finally:
            torch.cuda.set_sync_debug_mode("default")


@pytest.mark.parametrize("optimizer", ["locoprop-m", "kfac", "shampoo", "adam"])
def test_interrupted_cuda_run_resumes_to_the_same_records(optimizer, tmp_path):
    from locoprop.experiments.train import run

    def strip(records):
        return [{k: v for k, v in r.items() if k not in ("epoch_time", "train_time")} for r in records]

    reference = run(RunConfig(optimizer=optimizer, subset=300, epochs=4, device="cuda", results_dir=str(tmp_path / "a")),
                    progress=False)

    def interrupt(epoch, record):
        if epoch == 2:
            raise KeyboardInterrupt

    cfg = RunConfig(optimizer=optimizer, subset=300, epochs=4, device="cuda", results_dir=str(tmp_path / "b"))
    with pytest.raises(KeyboardInterrupt):
        run(cfg, progress=False, callback=interrupt)
    assert cfg.paths()["checkpoint"].exists()
    resumed = run(cfg, progress=False)
    assert strip(resumed.records) == strip(reference.records)
    assert resumed.provenance["resumed"][0]["at_epoch"] == 2


def test_cuda_and_cpu_runs_never_share_result_files(tmp_path):
    from locoprop.experiments.train import run

    cpu = RunConfig(optimizer="adam", subset=200, epochs=2, device="cpu", results_dir=str(tmp_path))
    cuda = dataclasses.replace(cpu, device="cuda")
    a = run(cpu, progress=False)
    b = run(cuda, progress=False)  # trains: the CPU result is not this run's
    assert a.path != b.path and a.path.exists() and b.path.exists()
    assert b.config.device == "cuda" and a.config.device == "cpu"
    assert run(cpu, progress=False).path == a.path and run(cuda, progress=False).path == b.path


def test_runner_trains_on_cuda(tmp_path):
    from locoprop.experiments.train import run

    result = run(RunConfig(optimizer="locoprop-m", dataset="digits", profile="smoke", epochs=3, device="cuda",
                           results_dir=str(tmp_path)), progress=False)
    assert result.status == "completed"
    assert result.final["train_loss"] < result.records[0]["train_loss"]
    assert "cuda" in result.provenance["device"]


def test_benchmark_reports_gpu_memory_and_synchronisations():
    from locoprop.experiments import bench

    data = torch.rand(2000, 784)
    contenders = [c for c in bench.CONTENDERS if c.optimizer in ("rmsprop", "locoprop-m")]
    rows = bench.benchmark(contenders, "cuda", epochs=1, warmup_epochs=1, data=data)
    assert all(r["peak_memory_mib"] > 0 for r in rows)
    assert all(r["cuda_syncs_per_step"] == 0 and r["host_reads_per_step"] == 0 for r in rows)
