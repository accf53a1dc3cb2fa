"""The paper's protocol as one command (``locoprop.experiments.protocol``): the order of its parts, the T
ablation and official runs it names, its plan against the result files, and its plan as SLURM jobs and
CPU-hours."""
from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from locoprop.experiments import cli, protocol, tuning
from locoprop.experiments.config import RunConfig, grid
from locoprop.experiments.protocol import cluster_plan
from locoprop.experiments.results import bench_report
from locoprop.optim.locoprop import step_sum

ROOT = Path(__file__).resolve().parents[1]


# --------------------------------------------------------------------------- the parts and their order
def test_the_parts_train_in_order_locoprop_m_then_its_ablations_then_the_rest(monkeypatch, tmp_path):
    calls = []
    monkeypatch.setattr(protocol, "tune", lambda bases, seeds, **_: calls.append(("tune", [b.optimizer for b in bases],
                                                                                  tuple(seeds))) or [])
    monkeypatch.setattr(protocol, "sweep", lambda configs, **_: calls.append(
        ("sweep", [(c.optimizer, c.hparams.get("local_iters"), c.hparams["lr"]) for c in configs], ())) or [])
    survivor = {"lr": 1e-4, "gamma": 100.0}
    monkeypatch.setattr(protocol, "halving", lambda base: type("H", (), {"setting": survivor})())
    runs = protocol.bases(["locoprop-m", "adam", "locoprop-s"], profile="smoke", results_dir=str(tmp_path))
    protocol.run(runs, report=lambda _: None)
    # the same-total-step rule: nu_T = nu_10 * step_sum(10) / step_sum(T), 6 significant digits
    t_lrs = [float(f"{1e-4 * step_sum(10) / step_sum(T):.6g}") for T in (1, 2, 5)]
    assert calls == [
        ("tune", ["locoprop-m"], (0, 1, 2)),
        ("sweep", [("locoprop-m", 1, t_lrs[0]), ("locoprop-m", 2, t_lrs[1]), ("locoprop-m", 5, t_lrs[2])], ()),
        ("sweep", [("locoprop-m", None, 1e-5), ("locoprop-s", None, 1e-5)], ()),
        ("tune", ["adam"], (0, 1, 2)),
        ("tune", ["locoprop-s"], (0, 1, 2)),
    ]


def test_the_t_ablation_waits_for_the_halving_and_names_the_runs_of_the_sweep_command(monkeypatch):
    """Before LocoProp-M's halving has a survivor there is no T ablation; after, its runs are those of the
    command the Reproduce page gives for it."""
    base = protocol.bases(["locoprop-m"], dataset="fashion-mnist", device="cpu")["locoprop-m"]
    unfinished = type("Halving", (), {"setting": None, "complete": False, "rungs": []})()
    finished = type("Halving", (), {"setting": {"lr": 1e-4, "gamma": 10.0}, "complete": True})()
    monkeypatch.setattr(protocol, "halving", lambda _: unfinished)
    assert protocol.t_ablation(base) == []
    monkeypatch.setattr(protocol, "halving", lambda _: finished)
    monkeypatch.setattr(tuning, "halving", lambda _: finished)  # what `sweep --tuned` reads
    args = cli._build_parser().parse_args("sweep --tuned --profile paper --dataset fashion-mnist --device cpu "
                                          "--optimizer locoprop-m --grid local_iters=1,2,5 --same-total-step".split())
    tuned = cli._base_config(args, "locoprop-m", 0)
    tuned = dataclasses.replace(tuned, hparams={**tuning.tuned_setting(tuned, args.search), **tuned.hparams})
    command = [tuning.same_total_step(c, c.hparams["local_iters"]) for c in grid(tuned, local_iters=[1, 2, 5])]
    assert [c.run_id for c in protocol.t_ablation(base)] == [c.run_id for c in command]
    book = (ROOT / "book" / "reproduce.md").read_text()
    assert "--optimizer locoprop-m \\\n    --grid local_iters=1,2,5 --same-total-step" in book


def test_the_protocols_plan_counts_every_part(tmp_path):
    runs = protocol.bases(["locoprop-m", "locoprop-s", "sgd"], results_dir=str(tmp_path))
    text = protocol.plan(runs)
    assert all(f"{name}: successive halving" in text for name in runs)
    assert "LocoProp-M's T ablation: 3 runs of 100 epochs (waits for LocoProp-M's successive halving); to go: 300 epochs" in text
    assert "LocoProp at the official setting: 2 runs of 100 epochs; recorded: 0; to go: 200 epochs" in text
    assert "no estimate" in text  # no benchmark report in an empty results folder


# --------------------------------------------------------------------------- the protocol as jobs
REPORT = {
    "evaluation_s": 18.0,
    "provenance": {"threads": 2},
    "rows": [
        {"optimizer": "sgd", "precision": "fp32", "epoch_s": 90.0},
        {"optimizer": "sgd", "precision": "bf16", "epoch_s": 1.0},  # not the protocol's precision
        {"optimizer": "locoprop-m", "precision": "fp32", "epoch_s": 270.0},
    ],
}


def test_the_plan_prices_every_part_of_the_protocol():
    ablations = [RunConfig(optimizer="locoprop-m", profile="paper", hparams={"local_iters": t}) for t in (5, 20, 20)]
    plan = cluster_plan(REPORT, finalists=["locoprop-m"], ablations=ablations).set_index("part")
    # successive halving, per optimizer: 8 trials x 10 epochs, 4 x 15, 2 x 25, 1 x 50; both optimizers
    # cost (90 + 18) s and (270 + 18) s per epoch on 2 threads
    per_epoch = (90 + 18 + 270 + 18) * 2 / 3600
    halving = plan.iloc[:4]
    assert list(halving["jobs"]) == [16, 8, 4, 2] and list(halving["arrays"]) == [2, 2, 2, 2]
    assert list(halving["epochs"]) == [160, 120, 100, 100]
    assert list(halving["CPU-hours"]) == pytest.approx([80 * per_epoch, 60 * per_epoch, 50 * per_epoch,
                                                        50 * per_epoch], abs=0.05)
    seeds = plan.loc["seeds 1 and 2 of 1 finalists"]
    assert (seeds["arrays"], seeds["jobs"], seeds["epochs"]) == (1, 2, 200)
    assert seeds["CPU-hours"] == pytest.approx(200 * 288 * 2 / 3600, abs=0.05)
    ablation = plan.loc["ablations"]  # two distinct runs of 100 epochs, 3 + 2T products a step against 23 at T = 10
    assert (ablation["jobs"], ablation["epochs"]) == (2, 200)
    expected = 100 * (270 * 13 / 23 + 18 + 270 * 43 / 23 + 18) * 2 / 3600
    assert ablation["CPU-hours"] == pytest.approx(expected, abs=0.05)
    total = plan.loc["total"]
    assert (total["jobs"], total["epochs"]) == (30 + 2 + 2, 480 + 200 + 200)
    assert total["CPU-hours"] == pytest.approx(480 * per_epoch / 2 + 200 * 288 * 2 / 3600 + expected, abs=0.05)


def test_the_plan_of_the_committed_benchmark_report():
    report = bench_report(ROOT / "data" / "results" / "bench", tuned=True)  # of all optimizers, not the T frontier's
    if report is None:
        pytest.skip("no benchmark report of the tuned settings under data/results/bench/")
    optimizers = {r["optimizer"] for r in report["rows"] if r.get("precision", "fp32") == "fp32"}
    plan = cluster_plan(report).set_index("part")
    # 240 epochs of trials per optimizer (8 x 10 + 4 x 15 + 2 x 25 + 1 x 50), 15 jobs in 4 arrays
    assert plan.iloc[:4]["epochs"].sum() == 240 * len(optimizers)
    assert plan.iloc[:4]["jobs"].sum() == 15 * len(optimizers) and plan.iloc[:4]["arrays"].sum() == 4 * len(optimizers)
    assert plan.iloc[4]["jobs"] == 2 * len(optimizers) and plan.iloc[4]["epochs"] == 200 * len(optimizers)
    assert (plan["CPU-hours"].iloc[:-1] > 0).all()


def test_a_plan_needs_the_costs_it_prices():
    with pytest.raises(ValueError, match="no float32 row of kfac"):
        cluster_plan(REPORT, finalists=["kfac"])
    with pytest.raises(ValueError, match="no float32 rows"):
        cluster_plan({"rows": [{"optimizer": "sgd", "precision": "bf16", "epoch_s": 1.0}]})


def test_by_default_the_plan_prices_the_t_ablation_and_the_official_setting():
    plan = cluster_plan(REPORT).set_index("part")  # REPORT prices sgd and LocoProp-M, not LocoProp-S
    part = plan.loc["T ablation and official setting"]
    # LocoProp-M at T = 1, 2, 5 and at the official setting (T = 10): 3 + 2T products a step against 23 at T = 10
    assert (part["arrays"], part["jobs"], part["epochs"]) == (1, 4, 400)
    expected = 100 * (270 * (5 + 7 + 13 + 23) / 23 + 4 * 18) * 2 / 3600
    assert part["CPU-hours"] == pytest.approx(expected, abs=0.05)
    assert "ablations" not in plan.index
