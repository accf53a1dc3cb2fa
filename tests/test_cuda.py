"""The CUDA path against the CPU path (runs only where a CUDA device is present).

Every optimizer's training step on CUDA must compute the same update as on the CPU, in float64
(tolerance 1e-9 relative, far above float64 rounding, far below any real difference); the runner,
the benchmark and the data loader must work with data resident on the GPU.
"""
import pytest
import torch

import locoprop
from locoprop.models import deep_autoencoder

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device on this machine")

# K-FAC samples Fisher labels from a device-specific generator: compare its empirical-Fisher variant.
SETTINGS = {name: {} for name in locoprop.OPTIMIZERS}
SETTINGS["kfac"] = {"fisher": "empirical", "inverse_update_freq": 1}
SETTINGS["shampoo"] = {"precondition_frequency": 1, "start_preconditioning_step": 1}


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


def test_runner_trains_on_cuda(tmp_path):
    from locoprop.experiments.config import RunConfig
    from locoprop.experiments.train import run

    result = run(RunConfig(optimizer="locoprop-m", dataset="digits", profile="smoke", epochs=3, device="cuda",
                           results_dir=str(tmp_path)), progress=False)
    assert result.status == "completed"
    assert result.final["train_loss"] < result.records[0]["train_loss"]
    assert "cuda" in result.provenance["device"]


def test_benchmark_reports_gpu_memory():
    from locoprop.experiments import bench

    data = torch.rand(2000, 784)
    contenders = [c for c in bench.CONTENDERS if c.optimizer in ("rmsprop", "locoprop-m")]
    rows = bench.benchmark(contenders, "cuda", epochs=1, warmup_epochs=1, data=data)
    assert all(r["peak_memory_mib"] > 0 for r in rows)
