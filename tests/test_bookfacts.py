"""The book's build-time facts (``book/_ext/bookfacts.py``) from result files written here: the run
inventory counts what the files hold, a file that is not a run is named and not counted, the FLOPs
ratio is the two counts' quotient, and a hyper-parameter prints as the number it is."""
from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "book" / "_ext"))
bookfacts = pytest.importorskip("bookfacts")


def _run(folder: Path, name: str, epochs: int, status: str = "completed", precision: str = "fp32",
         provenance: dict | None = None) -> None:
    doc = {"run_id": name, "status": status, "config": {"epochs": epochs, "precision": precision},
           "provenance": {"device": "cpu", "cpu": "AMD EPYC", "threads": 2} if provenance is None else provenance,
           "records": []}
    (folder / f"{name}.json").write_text(json.dumps(doc))


def test_the_inventory_counts_runs_by_length_status_and_precision(tmp_path):
    paper = tmp_path / "data" / "results" / "paper"
    paper.mkdir(parents=True)
    for i in range(3):
        _run(paper, f"full{i}", 100)
    _run(paper, "stopped", 100, status="stopped")
    _run(paper, "check-fp32", 10)
    _run(paper, "check-bf16", 10, precision="bf16")
    _run(paper, "gpu", 10, provenance={"device": "cuda", "device_name": "NVIDIA H100"})
    facts = bookfacts.paper_facts(tmp_path)
    assert facts["paper_inventory"] == (
        "7 result files, with 3 runs of 10 epochs (1 bfloat16, 2 float32); "
        "and 4 runs of 100 epochs (3 completed, 1 stopped at a rung before their last epoch)")
    assert facts["paper_devices"] == "6 runs on a CPU (AMD EPYC; 2 torch threads); 1 run on a GPU (NVIDIA H100)"


def test_a_file_that_is_not_a_run_is_named_and_not_counted(tmp_path):
    paper = tmp_path / "data" / "results" / "paper"
    paper.mkdir(parents=True)
    _run(paper, "full", 100, provenance={})
    (paper / "list.json").write_text("[1, 2]")
    (paper / "edited.json").write_text(json.dumps({"run_id": "x", "config": {"epochs": "many"}}))
    (paper / "broken.json").write_text("{")
    facts = bookfacts.paper_facts(tmp_path)
    assert facts["paper_inventory"] == ("1 result file, with 1 run of 100 epochs (3 other files that could not "
                                        "be read as a run: see `python -m locoprop results`)")
    assert facts["paper_devices"] == "1 run on a CPU (not named); no run on a GPU"  # its provenance was empty


def test_no_result_files_say_so(tmp_path):
    assert bookfacts.paper_facts(tmp_path) == {"paper_inventory": "no result files yet", "paper_devices": "none yet"}


def test_the_flops_ratio_is_the_quotient_of_the_two_counts(tmp_path):
    bench = tmp_path / "data" / "results" / "bench"
    bench.mkdir(parents=True)
    rows = [{"optimizer": "locoprop-m", "precision": "fp32", "flops_per_step": 5.0e10,
             "hparams": {"lr": 1e-4, "gamma": 100.0}},
            {"optimizer": "rmsprop", "precision": "fp32", "flops_per_step": 8.0e9, "hparams": {"lr": 5e-6}}]
    report = {"settings": {"tuned": True}, "provenance": {"started": "2026-12-01T10:00:00", "device": "cpu",
                                                          "cpu": "AMD EPYC", "threads": 2}, "rows": rows}
    (bench / "2026-12-01.json").write_text(json.dumps(report))
    facts = bookfacts.bench_facts(tmp_path)
    assert facts["flops_ratio"] == "6.25"  # 5e10 / 8e9
    assert facts["flops_locoprop_gflop"] == "50.00" and facts["flops_backprop_gflop"] == "8.00"
    assert facts["flops_report"] == "2026-12-01, AMD EPYC CPU, 2 threads"
    assert facts["tuned_lr_locoprop_m"] == "$10^{-4}$" and facts["tuned_gamma_locoprop_m"] == "$100$"
    assert facts["tuned_lr_locoprop_s"] == bookfacts.NOT_MEASURED


@pytest.mark.parametrize("value, text", [(1e-4, "$10^{-4}$"), (3e-5, r"$3 \cdot 10^{-5}$"), (10.0, "$10$"),
                                         (0.5, "$0.5$"), (0.0, "$0$"), (2.5e4, r"$2.5 \cdot 10^{4}$")])
def test_a_hyper_parameter_prints_as_the_number_it_is(value, text):
    assert bookfacts._number(value) == text


def test_the_book_takes_the_latest_started_tuned_report_whatever_its_device(tmp_path):
    bench = tmp_path / "data" / "results" / "bench"
    bench.mkdir(parents=True)
    for name, started, ratio in (("cuda--nvidia-h100-20260101T000000.json", "2026-01-01T00:00:00", 2.0),
                                 ("cpu--amd-epyc-20260301T000000.json", "2026-03-01T00:00:00", 4.0)):
        rows = [{"optimizer": "locoprop-m", "flops_per_step": ratio * 1e9}, {"optimizer": "rmsprop", "flops_per_step": 1e9}]
        (bench / name).write_text(json.dumps({"settings": {"tuned": True}, "provenance": {"started": started}, "rows": rows}))
    assert bookfacts.bench_facts(tmp_path)["flops_ratio"] == "4.00"  # the CPU report, started two months later
