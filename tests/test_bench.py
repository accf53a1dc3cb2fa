"""The benchmark's FLOP counts against the matrix products a step must do, and its report."""
import json

import pytest
import torch

from locoprop.experiments import bench

SIZES = (16, 12, 4, 12, 16)
B = 50


def matmul_flops(sizes, batch):
    """2 * batch * d_in * d_out per product: forward, weight gradient, and input gradient below layer 1."""
    shapes = list(zip(sizes[:-1], sizes[1:]))
    forward = sum(2 * batch * a * b for a, b in shapes)
    return forward, forward, forward - 2 * batch * shapes[0][0] * shapes[0][1]


@pytest.fixture(scope="module")
def rows():
    data = torch.rand(4 * B, SIZES[0], generator=torch.Generator().manual_seed(0))
    contenders = [c for c in bench.CONTENDERS if c.optimizer in ("sgd", "rmsprop", "locoprop-m")]
    return bench.benchmark(contenders, "cpu", epochs=2, warmup_epochs=1, steps_per_epoch=2, batch_size=B, data=data,
                           sizes=SIZES)


def test_flops_of_a_first_order_step(rows):
    sgd = next(r for r in rows if r["optimizer"] == "sgd")
    assert sgd["flops_per_step"] == sum(matmul_flops(SIZES, B))


def test_flops_of_a_locoprop_step(rows):
    loco = next(r for r in rows if r["optimizer"] == "locoprop-m")
    forward, weight_grad, _ = matmul_flops(SIZES, B)
    # T = 10 local iterations, each a forward product X W^T and a gradient product delta^T X per layer
    assert loco["flops_per_step"] == sum(matmul_flops(SIZES, B)) + 10 * (forward + weight_grad)


def test_rows_report_epochs_and_ratios(rows):
    rms = next(r for r in rows if r["optimizer"] == "rmsprop")
    assert rms["ratio_to_rmsprop"] == 1.0
    for r in rows:
        assert r["steps_per_epoch"] == 2 and r["batches_per_epoch"] == 4 and len(r["epoch_s_all"]) == 2
        assert r["epoch_s"] > 0 and r["tflops"] > 0 and r["peak_memory_mib"] is None  # no CUDA here
        # a whole epoch (4 batches) is the median timed step times 4, though only 2 steps of each epoch are timed
        step_s = [t / 2 for t in r["epoch_s_all"]]
        assert r["batches_per_epoch"] * min(step_s) <= r["epoch_s"] <= r["batches_per_epoch"] * max(step_s)
        assert r["epoch_s"] == pytest.approx(r["step_ms"] / 1e3 * r["batches_per_epoch"], rel=1e-12)


def test_cli_writes_a_json_report(tmp_path, capsys):
    report = bench.main(["--device", "cpu", "--epochs", "1", "--warmup-epochs", "0", "--steps-per-epoch", "1",
                         "--optimizers", "rmsprop", "--precision", "fp32", "--results-dir", str(tmp_path)])
    files = list((tmp_path / "bench").glob("*.json"))
    assert len(files) == 1
    saved = json.loads(files[0].read_text())
    assert saved["rows"][0]["optimizer"] == "rmsprop" and saved["provenance"]["device"] == "cpu"
    row = saved["rows"][0]  # one timed step of the 60 batches of 60,000 images: an epoch is 60 such steps
    assert row["steps_per_epoch"] == 1 and row["batches_per_epoch"] == 60
    assert row["epoch_s"] == pytest.approx(60 * row["epoch_s_all"][0], rel=1e-12)
    assert set(saved["matmul_ceilings_tflops"]) == {"fp32"} and saved["matmul_ceiling_tflops"] > 0
    assert [r["precision"] for r in report["rows"]] == ["fp32"]
    assert "x RMSProp" in capsys.readouterr().out


def test_tuned_without_finished_tuning_is_a_usage_error(tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_:
        bench.main(["--tuned", "--device", "cpu", "--results-dir", str(tmp_path), "--no-save"])
    assert exit_.value.code == 2 and "no finished tuning" in capsys.readouterr().err


def test_invalid_settings():
    with pytest.raises(ValueError, match="epochs"):
        bench.benchmark(epochs=0)
