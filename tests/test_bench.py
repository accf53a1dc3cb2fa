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
    contenders = [c for c in bench.CONTENDERS if c.optimizer in ("sgd", "rmsprop", "locoprop-m", "locoprop-s")]
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


def test_flops_of_a_locoprop_s_step_in_the_gram_form(rows):
    loco = next(r for r in rows if r["optimizer"] == "locoprop-s" and r.get("precision", "fp32") == "fp32")
    # every layer of these sizes takes the Gram form: X^T X and R0^T X once, then T = 10 products Delta (X^T X)
    gram = sum(2 * B * a * a + 2 * B * a * b + 10 * 2 * b * a * a for a, b in zip(SIZES[:-1], SIZES[1:]))
    assert loco["flops_per_step"] == sum(matmul_flops(SIZES, B)) + gram


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
                         "--optimizer", "rmsprop", "--precision", "fp32", "--results-dir", str(tmp_path)])
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


def test_every_bench_run_writes_a_new_report(tmp_path, monkeypatch):
    """Two runs within the same second (the time stamp of the file name) still give two files."""
    monkeypatch.setattr(bench.time, "strftime", lambda *_: "20260101T000000")
    args = ["--device", "cpu", "--epochs", "1", "--warmup-epochs", "0", "--steps-per-epoch", "1",
            "--optimizer", "sgd", "--precision", "fp32", "--quiet", "--results-dir", str(tmp_path)]
    bench.main(args)
    bench.main(args)
    assert len(list((tmp_path / "bench").glob("*.json"))) == 2


def test_tuned_without_finished_tuning_is_a_usage_error(tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_:
        bench.main(["--tuned", "--device", "cpu", "--results-dir", str(tmp_path), "--no-save"])
    err = capsys.readouterr().err
    assert exit_.value.code == 2 and "no finished short search" in err and len(err.strip().splitlines()) == 1


def test_invalid_settings():
    with pytest.raises(ValueError, match="epochs"):
        bench.benchmark(epochs=0)


def test_counts_per_step(rows):
    """Host reads, operations and multi-tensor calls per training step (locoprop.experiments.counting)."""
    by_name = {r["optimizer"]: r for r in rows}
    for r in rows:
        assert r["host_reads_per_step"] == 0 and r["eigh_per_step"] == 0 and r["cuda_syncs_per_step"] is None
        assert r["ops_per_step"] > r["foreach_per_step"] >= 0
    assert by_name["rmsprop"]["foreach_per_step"] == 7  # TF-RMSProp: one multi-tensor call per operation
    assert by_name["locoprop-m"]["foreach_per_step"] == 9 * 10 + 1  # 9 per local iteration, T = 10, and W^t
    assert by_name["locoprop-m"]["ops_per_step"] > by_name["sgd"]["ops_per_step"]


def test_each_contender_is_freed_before_the_next_is_built(monkeypatch):
    """The models (and with them their optimizers, hooks and batches) of earlier contenders are gone when the next
    contender's optimizer is built: LocoProp's and K-FAC's hooks tie model and optimizer in a cycle that only a
    garbage collection frees."""
    import gc
    import weakref

    built = []
    real = bench.make_optimizer

    def checked(name, model, **kwargs):
        assert all(ref() is None for ref in built), "an earlier contender's model is still alive"
        built.append(weakref.ref(model))
        return real(name, model, **kwargs)

    monkeypatch.setattr(bench, "make_optimizer", checked)
    data = torch.rand(2 * B, SIZES[0], generator=torch.Generator().manual_seed(0))
    contenders = [c for c in bench.CONTENDERS if c.optimizer in ("locoprop-m", "kfac", "sgd")]
    gc.disable()  # only the benchmark's own collection may free the cycles
    try:
        bench.benchmark(contenders, "cpu", epochs=1, warmup_epochs=0, steps_per_epoch=1, batch_size=B, data=data,
                        sizes=SIZES)
    finally:
        gc.enable()
    assert len(built) == len(contenders)


@pytest.mark.parametrize("before", [False, True])
def test_tf32_flag_is_set_for_the_benchmark_and_restored(before, monkeypatch, tmp_path):
    matmul = torch.backends.cuda.matmul
    seen = []

    def fake(*args, **kwargs):
        seen.append(matmul.allow_tf32)
        raise RuntimeError("stop")

    saved = matmul.allow_tf32
    try:
        matmul.allow_tf32 = before
        monkeypatch.setattr(bench, "benchmark", fake)
        for flag, expected in ((["--tf32"], True), ([], False)):
            with pytest.raises(RuntimeError, match="stop"):
                bench.main(["--device", "cpu", "--optimizer", "sgd", "--no-save", "--results-dir", str(tmp_path), *flag])
            assert seen[-1] is expected and matmul.allow_tf32 is before
        monkeypatch.undo()
        bench.main(["--device", "cpu", "--epochs", "1", "--warmup-epochs", "0", "--steps-per-epoch", "1",
                    "--optimizer", "sgd", "--precision", "fp32", "--no-save", "--tf32"])
        assert matmul.allow_tf32 is before
    finally:
        matmul.allow_tf32 = saved


def test_tuned_contenders_add_locoprop_at_other_local_iterations_with_the_same_total_step(tmp_path, monkeypatch):
    from locoprop.experiments import bench as bench_module
    from locoprop.optim.locoprop import step_sum

    setting = {"lr": 1e-4, "gamma": 10.0}
    monkeypatch.setattr(bench_module, "tuned_setting",
                        lambda base, search: dict(setting) if base.optimizer in ("locoprop-m", "adam") else
                        (_ for _ in ()).throw(ValueError("not tuned")))
    contenders = bench_module.tuned_contenders("fashion-mnist", results_dir=str(tmp_path), local_iters=[1, 5, 10])
    labels = [c.label for c in contenders]
    assert labels == ["adam", "locoprop-m", "locoprop-m (T=1)", "locoprop-m (T=5)"]   # T = 10 is the tuned one
    for c in contenders[2:]:
        T = c.hparams["local_iters"]
        assert c.hparams["lr"] * step_sum(T) == pytest.approx(1e-4 * step_sum(10), rel=5e-6)


def test_bench_prints_a_line_per_contender_while_it_times(capsys):
    from locoprop.experiments import bench as bench_module

    bench_module.main(["--device", "cpu", "--optimizer", "sgd,adam", "--precision", "fp32", "--epochs", "1",
                       "--warmup-epochs", "0", "--steps-per-epoch", "1", "--no-save"])
    err = capsys.readouterr().err
    assert "bench: 1/2 sgd (fp32)" in err and "bench: 2/2 adam (fp32)" in err
