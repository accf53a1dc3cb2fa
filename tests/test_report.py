"""The notebooks' tables (locoprop.experiments.report) on small frames whose answers are worked out by hand."""
import json
import types

import pandas as pd
import pytest

from locoprop.experiments import report
from locoprop.experiments.results import COLUMNS, ResultsError, bench_report


def curves(spec, epoch_time=2.0):
    """Result records (the columns of load_results) from {(optimizer, seed): [train loss at epoch 0, 1, ...]};
    the test loss is the train loss + 3, every epoch takes ``epoch_time`` seconds."""
    rows = []
    for (name, seed), losses in spec.items():
        for epoch, loss in enumerate(losses):
            rows.append({"run_id": f"{name}_{seed}", "profile": "paper", "dataset": "fashion-mnist", "optimizer": name,
                         "seed": seed, "hparams": json.dumps({"lr": 0.1}), "epoch": epoch, "train_loss": loss,
                         "test_loss": loss + 3.0, "train_squared_error": 0.0, "test_squared_error": 0.0,
                         "epoch_time": 0.0 if epoch == 0 else epoch_time, "train_time": epoch * epoch_time,
                         "lr": 0.1, "status": "completed", "diverged_epoch": None, "device": "cpu",
                         "git_commit": "x", "precision": "fp32", "horizon": len(losses) - 1})
    return pd.DataFrame(rows, columns=list(COLUMNS))


SPEC = {("adam", 0): [500, 300, 210, 205], ("adam", 1): [500, 310, 220, 207],
        ("locoprop-m", 0): [500, 250, 200, 201], ("locoprop-m", 1): [500, 260, 199, 203]}


def test_finals_table_gives_mean_range_lowest_and_gap_in_the_books_order():
    runs = report.labelled(curves(SPEC))
    per_epoch = pd.Series({"Adam": 6.0, "LocoProp-M": 50.0})
    bench = {"rows": [{"optimizer": "adam", "flops_per_step": 2e9, "precision": "fp32"},
                      {"optimizer": "adam", "flops_per_step": 9e9, "precision": "bf16"}]}
    table = report.finals_table(runs, per_epoch, bench, {"adam": {"lr": 0.002}, "locoprop-m": {"lr": 1e-4, "gamma": 10.0}})
    assert list(table.index) == ["Adam", "LocoProp-M"]  # the optimizers' order, not the alphabet's
    adam, loco = table.loc["Adam"], table.loc["LocoProp-M"]
    assert adam["final train loss"] == "206.00" and adam["train range over seeds"] == "205.00–207.00"
    assert adam["final test loss"] == "209.00" and adam["test range over seeds"] == "208.00–210.00"
    assert adam["test − train"] == "3.00" and adam["seeds"] == "0,1"
    # LocoProp-M's mean curve: 500, 255, 199.5, 202 -> lowest 199.5 at epoch 2
    assert loco["lowest train loss (epoch)"] == "199.50 (2)"
    assert adam["GFLOP / step"] == "2" and loco["GFLOP / step"] == ""  # the float32 row; none for LocoProp-M
    assert loco["s / epoch"] == "50" and loco["setting"] == "lr=0.0001, gamma=10"


def test_ties_text_tells_apart_finals_that_print_alike():
    def run(name, loss):
        return [{"run_id": name, "optimizer": name, "epoch": 0, "train_loss": 500.0},
                {"run_id": name, "optimizer": name, "epoch": 100, "train_loss": loss}]
    runs = pd.DataFrame(run("LocoProp-S", 200.543) + run("LocoProp-M", 200.5358) + run("Adam", 205.31))
    text = report.ties_text(runs)
    assert text.startswith("LocoProp-M and LocoProp-S both show 200.54: 200.536 and 200.543")
    assert "Adam" not in text
    assert report.ties_text(pd.DataFrame(run("Adam", 205.31) + run("SGD", 205.32))) == ""


def test_rose_text_names_the_runs_that_ended_five_percent_above_their_own_lowest():
    assert report.rose_text(report.labelled(curves(SPEC))) == ""
    # seed 0 ends 900 > 1.05 × 256; seed 1 ends at 384 (the mean image, 1.54 × its lowest 250); seed 2 ends 4.8%
    # above its lowest (262 < 1.05 × 250 = 262.5), so it is not named
    risen = {**SPEC, ("rmsprop", 0): [500, 256, 300, 900], ("rmsprop", 1): [500, 250, 384, 384],
             ("rmsprop", 2): [500, 250, 255, 262]}
    text = report.rose_text(report.labelled(curves(risen)), mean_image=384.3)
    assert text.startswith("Ended more than 5% above their lowest loss: RMSProp seed 0 (final 900.0, lowest 256.0 at "
                           "epoch 1), seed 1 (final 384.0, lowest 250.0 at epoch 1, the mean-image loss). ")
    assert "seed 2" not in text and "Adam" not in text and "LocoProp" not in text
    assert "the mean-image loss)" not in report.rose_text(report.labelled(curves(risen)))  # no level given


def test_reach_table_counts_epochs_and_seconds_to_each_target():
    runs = report.labelled(curves(SPEC))
    runs["time"] = runs["epoch"] * runs["optimizer"].astype(str).map({"Adam": 6.0, "LocoProp-M": 50.0})
    table = report.reach_table(runs, {"t": 210.0}, reference="Adam")
    # Adam: seed 0 reaches 210 at epoch 2, seed 1 at epoch 3 -> 2.5 epochs, 15 s; LocoProp-M: epoch 2 both -> 100 s
    assert table.loc["Adam", ("t", "epochs")] == "2.5" and table.loc["Adam", ("t", "seconds")] == "15"
    assert table.loc["LocoProp-M", ("t", "epochs")] == "2" and table.loc["LocoProp-M", ("t", "seconds")] == "100"
    never = report.reach_table(runs, {"t": 100.0}, reference="Adam")
    assert never.loc["Adam", ("t", "epochs")] == ""


def test_epoch_costs_prefer_the_benchmark_and_fall_back_to_the_recorded_median():
    runs = report.labelled(curves(SPEC, epoch_time=7.0))
    bench = {"rows": [{"optimizer": "adam", "epoch_s": 6.0, "precision": "fp32"},
                      {"optimizer": "adam", "epoch_s": 3.0, "precision": "bf16"}]}
    per_epoch, recorded = report.epoch_costs(bench, runs)
    assert per_epoch["Adam"] == 6.0 and per_epoch["LocoProp-M"] == 7.0 and recorded["Adam"] == 7.0


def test_cost_table_ratios_to_sgd():
    bench = {"rows": [{"optimizer": "sgd", "epoch_s": 5.0, "flops_per_step": 1e9, "tflops": 0.1},
                      {"optimizer": "locoprop-m", "epoch_s": 50.0, "flops_per_step": 8.34e9, "tflops": 0.09},
                      {"optimizer": "sgd", "epoch_s": 1.0, "flops_per_step": 1e9, "tflops": 0.5, "precision": "bf16"}]}
    table = report.cost_table(bench)
    assert table.loc["LocoProp-M", "× SGD (time)"] == "10" and table.loc["LocoProp-M", "× SGD (FLOPs)"] == "8.34"
    assert list(table.index) == ["SGD", "LocoProp-M"]


def test_bench_report_takes_the_newest_file_of_the_kind_asked_for(tmp_path):
    def write(name, tuned, dataset, precisions):
        rows = [{"optimizer": "sgd", "precision": p} for p in precisions]
        (tmp_path / name).write_text(json.dumps({"settings": {"tuned": tuned, "dataset": dataset}, "rows": rows}))

    write("cpu-20260101T000000.json", True, "fashion-mnist", ["fp32"])
    write("cpu-20260102T000000.json", True, "mnist", ["fp32"])
    write("cpu-20260103T000000.json", False, None, ["fp32", "bf16"])
    assert bench_report(tmp_path, tuned=True, dataset="fashion-mnist")["settings"]["dataset"] == "fashion-mnist"
    assert bench_report(tmp_path, tuned=True)["settings"]["dataset"] == "mnist"
    assert bench_report(tmp_path, tuned=False, precisions=("fp32", "bf16")) is not None
    assert bench_report(tmp_path, tuned=True, precisions=("bf16",)) is None


def test_the_newest_bench_report_is_the_latest_started_whatever_its_device(tmp_path):
    """File names begin with the device ("cpu-..." sorts before "cuda-..."), so only the start time orders
    reports of different devices."""
    for name, started in (("cuda--nvidia-h100-20260101T000000.json", "2026-01-01T00:00:00+00:00"),
                          ("cpu--amd-epyc-20260301T000000.json", "2026-03-01T00:00:00+00:00")):
        (tmp_path / name).write_text(json.dumps({"settings": {"tuned": True, "dataset": "fashion-mnist"},
                                                 "provenance": {"started": started}, "rows": []}))
    assert bench_report(tmp_path, tuned=True)["provenance"]["started"].startswith("2026-03-01")


@pytest.mark.parametrize("text", ['{"settings": {"tuned": tr', "[1, 2]"])
def test_a_corrupt_bench_report_is_named_not_skipped(tmp_path, text):
    (tmp_path / "cpu-20260101T000000.json").write_text(json.dumps({"settings": {"tuned": True}, "rows": []}))
    (tmp_path / "cpu-20260102T000000.json").write_text(text)
    with pytest.raises(ResultsError, match=r"cpu-20260102T000000\.json.*restore it"):
        bench_report(tmp_path, tuned=True)


def test_other_runs_lists_finished_full_runs_not_shown_elsewhere():
    runs = curves({**SPEC, ("rmsprop", 0): [500, 256, 300, 900]})
    stopped = curves({("sgd", 0): [500, 400]}).assign(status="stopped", horizon=3)
    table = report.other_runs(pd.concat([runs, stopped]), ["adam_0", "adam_1", "locoprop-m_0", "locoprop-m_1"],
                              {"rmsprop": {"lr": 8e-5}}, "fashion-mnist", 3)
    assert list(table.index) == ["RMSProp"]  # the stopped run is a rung of a search, not a full run
    row = table.loc["RMSProp"]
    assert row["final train loss"] == "900.00" and row["lowest train loss (epoch)"] == "256.00 (1)"
    assert row["tuned setting"] == "lr=8e-05"


def test_precision_check_reports_the_relative_difference_and_a_bf16_rise():
    check = pd.concat([
        curves({("adam", 0): [500, 300, 250, 228.0]}).assign(precision="fp32", run_id="a32"),
        curves({("adam", 0): [500, 300, 250, 227.0]}).assign(precision="bf16", run_id="a16"),
        curves({("nesterov", 0): [500, 300, 260, 250.0]}).assign(precision="fp32", run_id="n32"),
        curves({("nesterov", 0): [500, 300, 380, 384.0]}).assign(precision="bf16", run_id="n16"),
    ])
    table, rel, lines = report.precision_check(check, 0.005)
    assert rel["Adam"] == pytest.approx(-1 / 228) and table.loc["Adam", "within 0.5%"] == "yes"
    assert table.loc["Nesterov", "within 0.5%"] == "no"
    assert lines[0] == "**bfloat16 is offered for** Adam; **not for** Nesterov."
    assert "rose from 300.0 after epoch 1 to 380.0 after epoch 2 and ended at 384.0" in lines[1]


def test_search_table_and_trial_points_of_a_short_search():
    trial = lambda lr, loss, status="completed": types.SimpleNamespace(  # noqa: E731
        config=types.SimpleNamespace(hparams={"lr": lr, "damping": 3.0}), final={"train_loss": loss}, status=status)
    tuned = types.SimpleNamespace(setting={"lr": 0.1, "damping": 3.0}, trials=[trial(0.1, 230.0), trial(1.0, 600.0, "abandoned")],
                                  complete=True, extensions=0, edge=[])
    table = report.search_table({"kfac": {"lr": [0.1, 1.0], "damping": [3.0]}}, {"kfac": tuned}, 8, (5, 1))
    assert table.loc["K-FAC", "winner"] == "lr=0.1, damping=3" and table.loc["K-FAC", "best train loss after 5 epochs"] == "230.0"
    assert table.loc["K-FAC", "grid"] == "lr ∈ {0.1, 1}; damping ∈ {3}"
    points = report.trial_points({"kfac": tuned})
    assert list(points["other"]) == ["damping=3", "damping=3"] and points["final train loss"].isna().tolist() == [False, True]


def test_what_it_shows_states_the_numbers_the_verdicts_and_what_the_test_loss_says():
    last = curves(SPEC).sort_values("epoch").groupby("run_id").tail(1)
    last = report.labelled(last)
    claims = pd.DataFrame([
        {"claim": "1. LocoProp-M reaches a lower training loss than the first-order methods, per epoch",
         "verdict": "mixed so far"},
        {"claim": "3. LocoProp-M is faster than K-FAC and Shampoo in wall-clock time, on one CPU (2 cores)",
         "verdict": "not supported"},
        {"claim": "3. LocoProp-M is faster than K-FAC and Shampoo in wall-clock time, on one CPU (2 cores), "
                  "LocoProp-M at T = 2 (beyond the paper's T = 10)", "verdict": "supported so far"}])
    text = report.what_it_shows(last, claims, {"Adam": "halving", "LocoProp-M": "short"}, "fashion-mnist, CPU")
    # LocoProp-M 201, 203 (mean 202, range 201-203); Adam 205, 207: the training losses are those of SPEC's last epoch
    assert "LocoProp-M ends at a training loss of 202.0 (2 seeds, range 201.0–203.0)" in text
    assert "the best first-order method, Adam, at 206.0 (2 seeds, range 205.0–207.0)" in text
    assert ("claim 1: **mixed so far**; claim 3 on one CPU: **not supported**; claim 3 on one CPU, LocoProp-M at "
            "T = 2 (beyond the paper's T = 10): **supported so far**") in text
    # test = train + 3 for both: LocoProp-M 204-206 against Adam 208-210 -> below: the lower loss carries over
    assert ("LocoProp-M's loss, 205.00 (2 seeds, range 204.00–206.00), is below Adam's 209.00 (2 seeds, range "
            "208.00–210.00)") in text and "its lower training loss carries over to unseen images." in text
    assert "successive halving on the protocol's own horizon for 1 of the 2 optimizers shown (Adam)" in text
    assert "official" not in text
    text = report.what_it_shows(last, claims, {"Adam": "halving", "LocoProp-M": "short"}, "fashion-mnist, CPU",
                                {"LocoProp-M": (212.25, 200.5), "LocoProp-S": (200.5, 200.504)})
    assert text.endswith("At the official notebook's setting (ν = 1e-5, γ = 10) the final training loss of seed 0 is "
                         "212.2 for LocoProp-M, 11.8 nats above its tuned setting's 200.5; 200.5 for LocoProp-S, "
                         "level with its tuned setting's 200.5.")


def _result(lr, losses, status="stopped", seed=0):
    records = [{"epoch": e, "train_loss": v, "test_loss": v + 3.0} for e, v in enumerate(losses)]
    return types.SimpleNamespace(config=types.SimpleNamespace(hparams={"lr": lr}, seed=seed), status=status,
                                 records=records, final=records[-1])


def test_the_halving_tables_follow_the_rungs():
    rung10 = [_result(0.002, [500, 223.3]), _result(0.001, [500, 224.4]), _result(0.1, [500, 700.0], "abandoned")]
    rung25 = [_result(0.001, [500, 214.1]), _result(0.002, [500, 215.0])]
    halved = types.SimpleNamespace(rungs=[(10, rung10), (25, rung25)], kept=[[{"lr": 0.002}, {"lr": 0.001}], [{"lr": 0.001}]],
                                   budget=125, extensions=1, setting=None, edge=[], complete=False, pending=1, final=None)
    table = report.halving_table({"adam": halved})
    row = table.loc["Adam"]
    assert row["epochs trained"] == 125 and row["trials beyond the grid"] == 1
    assert row["best at epoch 10"] == "223.3 (lr=0.002)" and row["best at epoch 25"] == "214.1 (lr=0.001)"
    points = report.rung_points({"adam": halved})
    assert len(points) == 5 and points["train loss"].isna().sum() == 1
    # continued past rung 10: the two kept; the last rung reached continues nowhere yet
    assert points.loc[points["rung"] == 10, "continued"].tolist() == [True, True, False]
    assert not points.loc[points["rung"] == 25, "continued"].any()
    short = types.SimpleNamespace(setting={"lr": 0.002})
    final = types.SimpleNamespace(search="short", results=[_result(0.002, [500, 205.0], "completed", seed=s) for s in (0, 1)])
    status = report.status_table({"adam": (short, halved, final)}, (10, 25, 50, 100))
    assert status.loc["Adam", "successive halving"] == "rung 25 of 100 reached, 1 trial on the way to the next"
    two = types.SimpleNamespace(**{**vars(halved), "pending": 2})
    assert report.status_table({"adam": (short, two, final)}, (10, 25, 50, 100)).loc["Adam", "successive halving"] == \
        "rung 25 of 100 reached, 2 trials on the way to the next"
    assert status.loc["Adam", "full runs shown"] == "short: seeds 0,1"
    side = report.searches_side_by_side({"adam": (short, halved, final)}, {"adam": _result(0.002, [500, 205.4], "completed")})
    assert side.loc["Adam", ("short search", "final train")] == "205.40" and side.loc["Adam", ("successive halving", "winner")] == ""


def test_t_frontier_prices_the_epochs_to_each_target():
    runs = curves({("locoprop-m", 0): [500, 250, 200, 195], ("locoprop-m", 1): [500, 300, 260, 240]})
    runs["hparams"] = [json.dumps({"lr": 1e-4 if seed == 0 else 5.7e-4, **({} if seed == 0 else {"local_iters": 1})})
                       for seed in runs["seed"]]
    t_runs = report.ablation_runs(runs, {"locoprop-m": "LocoProp-M"})
    t_runs["hp_local_iters"] = t_runs["hp_local_iters"].fillna(10).astype(int)
    table = report.t_frontier(t_runs, {10: 50.0, 1: 8.0}, {"target": 250.0, "low": 230.0})
    # T = 10 reaches 250 at epoch 1 (50 s); T = 1 at epoch 3 (24 s)
    assert table.loc[10, "epochs to target"] == "1" and table.loc[10, "seconds to target"] == "50"
    assert table.loc[1, "epochs to target"] == "3" and table.loc[1, "seconds to target"] == "24"
    # 230: T = 10 at epoch 2 (100 s); T = 1 ends its run at 240 without reaching it
    assert table.loc[10, "epochs to low"] == "2" and table.loc[10, "seconds to low"] == "100"
    assert table.loc[1, "epochs to low"] == table.loc[1, "seconds to low"] == "not reached"
    assert table.loc[1, "ν"] == "0.00057" and table.loc[1, "final train loss"] == "240.00"
    # T = 1 is the quicker to "target" (24 s against 50 s); it ends 45 nats above T = 10 (240 against 195, test +3)
    assert report.t_summary(table, "target") == (
        "To reach target, T = 1 is the quickest: 24 s against 50 s at the paper's T = 10 (2.1× sooner), and it ends "
        "45.00 nats above T = 10 in final train loss (240.00 against 195.00), 45.00 nats above T = 10 in final test "
        "loss (243.00 against 198.00). One seed per T.")
    assert report.t_summary(table, "low") == ("To reach low, the paper's T = 10 is the quickest (100 s). T = 1 never "
                                              "reaches it in 3 epochs. One seed per T.")


def test_device_text_names_the_cpu_once():
    assert report.device_text({"device": "cpu", "cpu": "AMD EPYC", "threads": 2}) == "AMD EPYC CPU, 2 threads"
    assert report.device_text({"device": "cpu", "threads": 1}) == "CPU, 1 thread"
    assert report.device_text({"device": "cpu", "cpu": "Intel(R) Xeon(R) Processor", "threads": 2}) == \
        "Intel Xeon CPU, 2 threads"


def test_hardware_text_counts_the_runs_of_each_machine_when_they_differ():
    amd, intel = {"device": "cpu", "cpu": "AMD EPYC", "threads": 2}, {"device": "cpu", "cpu": "Intel Xeon", "threads": 2}
    assert report.hardware_text([amd, amd]) == "AMD EPYC CPU, 2 threads"
    assert report.hardware_text([intel, amd, amd]) == "AMD EPYC CPU (2 runs), Intel Xeon CPU (1 run), 2 threads"
    assert report.hardware_text([amd, {**amd, "threads": 1}]) == "AMD EPYC CPU (2 runs), 1–2 threads"


def test_the_official_setting_stands_beside_the_tuned_final_of_the_same_seed():
    finals = {"locoprop-m": types.SimpleNamespace(setting={"lr": 1e-4, "gamma": 100.0}, results=[
        _result(1e-4, [500, 201.0], "completed", seed=1), _result(1e-4, [500, 200.5], "completed", seed=0)])}
    official = {"locoprop-m": {"lr": 1e-5, "gamma": 10.0}, "locoprop-s": {"lr": 1e-5, "gamma": 10.0}}
    table = report.official_table(official, {"locoprop-m": _result(1e-5, [500, 212.25], "completed")}, finals)
    m, s = table.loc["LocoProp-M"], table.loc["LocoProp-S"]
    assert m[("official notebook's setting", "setting")] == "lr=1e-05, gamma=10"
    assert m[("official notebook's setting", "final train")] == "212.25" and m[("official notebook's setting", "final test")] == "215.25"
    assert m[("tuned setting", "setting")] == "lr=0.0001, gamma=100"
    assert m[("tuned setting", "final train")] == "200.50"  # seed 0, not seed 1's 201.00
    assert s[("official notebook's setting", "final train")] == "not run yet" and s[("tuned setting", "final train")] == "not run yet"


def test_the_ablation_tables_give_the_mean_and_range_over_seeds():
    runs = curves({("locoprop-m", 0): [500, 300, 210.0], ("locoprop-m", 1): [500, 300, 214.0],
                   ("locoprop-s", 0): [500, 300, 220.0]})
    runs["variant"] = runs["optimizer"]
    table = report.final_by(runs, ["variant"]).set_index("variant")
    assert table.loc["locoprop-m", "final_train_loss"] == 212.0 and table.loc["locoprop-m", "seeds"] == 2
    assert table.loc["locoprop-m", "final_test_loss"] == 215.0  # test = train + 3 in curves()
    readable = report.shown(table)
    assert list(readable.columns[:3]) == ["final train loss", "train range over seeds", "final test loss"]
    assert readable.loc["locoprop-m", "train range over seeds"] == "210–214" and readable.loc["locoprop-m", "final train loss"] == "212"
    assert readable.loc["locoprop-s", "train range over seeds"] == "" and readable.loc["locoprop-s", "seeds"] == 1
