"""The claims table: verdicts follow the stated rules on hand-made result tables."""
import math

import pandas as pd

from locoprop.experiments.claims import COMPARABLE, verdicts


def finals(**losses):
    """One row per (optimizer, seed) from ``name=[loss of seed 0, loss of seed 1, ...]``."""
    return pd.DataFrame([{"optimizer": name.replace("_", "-"), "seed": s, "train_loss": v}
                         for name, values in losses.items() for s, v in enumerate(values)])


def reach(target=250.0, **times):
    return pd.DataFrame([{"optimizer": name.replace("_", "-"), "target": target, "time_to_target": t}
                         for name, t in times.items()])


def verdict_of(table, number):
    return table.loc[table["claim"].str.startswith(f"{number}."), "verdict"].tolist()


FIRST = dict(sgd=[250] * 3, momentum=[240] * 3, nesterov=[245] * 3, adagrad=[230] * 3, rmsprop=[260] * 3)  # all but Adam


def test_first_order_claim_supported_mixed_or_not():
    floor = 100.0
    assert verdict_of(verdicts(finals(locoprop_m=[200, 201, 202], adam=[210, 212, 211], **FIRST), floor, {}), 1) \
        == ["supported"]
    # lower mean, but a LocoProp-M seed is above an Adam seed: mixed
    assert verdict_of(verdicts(finals(locoprop_m=[200, 215, 201], adam=[210, 212, 211], **FIRST), floor, {}), 1) \
        == ["mixed"]
    assert verdict_of(verdicts(finals(locoprop_m=[220] * 3, adam=[210] * 3, **FIRST), floor, {}), 1) == ["not supported"]
    assert verdict_of(verdicts(finals(kfac=[200]), floor, {}), 1) == ["not measured here"]


def test_a_verdict_with_rivals_missing_is_provisional_and_names_them():
    table = verdicts(finals(locoprop_m=[200], adam=[210], sgd=[250]), 100.0, {})
    assert verdict_of(table, 1) == ["supported so far"]
    assert "not run yet: Momentum, Nesterov, AdaGrad, RMSProp;" in table.loc[0, "evidence"]
    table = verdicts(finals(locoprop_m=[160], kfac=[150]), 100.0, {"CPU": reach(locoprop_m=50.0, kfac=80.0)})
    assert verdict_of(table, 2) == ["not supported so far"] and "not run yet: Shampoo" in table.loc[1, "evidence"]
    assert verdict_of(table, 3) == ["not measured here", "supported so far"]


def test_second_order_claim_compares_the_excess_over_the_floor():
    floor = 100.0
    best = 150.0                         # K-FAC: excess 50
    edge = floor + COMPARABLE * (best - floor)
    assert verdict_of(verdicts(finals(locoprop_m=[edge - 0.01] * 3, kfac=[best] * 3, shampoo=[160] * 3), floor, {}), 2) \
        == ["supported"]  # both rivals present with three seeds each: a final verdict
    assert verdict_of(verdicts(finals(locoprop_m=[edge + 0.01] * 3, kfac=[best] * 3, shampoo=[160] * 3), floor, {}), 2) \
        == ["not supported"]
    table = verdicts(finals(locoprop_m=[160], kfac=[150]), floor, {})
    assert "1.20×" in table.loc[1, "evidence"]  # (160 - 100) / (150 - 100)


def test_wall_clock_claim_per_device_and_not_measured_without_a_gpu():
    table = verdicts(finals(locoprop_m=[200], kfac=[190], shampoo=[195]), 100.0,
                     {"GPU": None, "CPU": reach(locoprop_m=50.0, kfac=80.0, shampoo=math.nan)})
    assert verdict_of(table, 3) == ["not measured here", "supported"]
    assert "GPU" in table.loc[2, "claim"] and "CPU" in table.loc[3, "claim"]
    slower = verdicts(finals(locoprop_m=[200]), 100.0, {"GPU": reach(locoprop_m=90.0, kfac=80.0, shampoo=100.0)})
    assert verdict_of(slower, 3) == ["not supported"]
    never = verdicts(finals(locoprop_m=[200]), 100.0, {"GPU": reach(locoprop_m=math.nan, kfac=math.nan, shampoo=80.0)})
    assert verdict_of(never, 3) == ["not supported"]


def test_wall_clock_claim_is_judged_at_the_lowest_target_and_reports_every_target():
    easy = reach(target=280.0, locoprop_m=50.0, kfac=40.0, shampoo=45.0)   # slower to the easy target
    hard = reach(target=205.0, locoprop_m=900.0, kfac=1500.0, shampoo=math.nan)  # faster to the hard one
    for stacked in (pd.concat([easy, hard]), pd.concat([hard, easy])):   # order of the rows does not matter
        table = verdicts(finals(locoprop_m=[200]), 100.0, {"GPU": stacked})
        assert verdict_of(table, 3) == ["supported"]
        evidence = table.loc[2, "evidence"]
        assert evidence.index("205.0 (decides)") < evidence.index("280.0")
        assert "Shampoo never" in evidence and "K-FAC 40 s" in evidence
    harder = reach(target=190.0, locoprop_m=math.nan, kfac=3000.0, shampoo=math.nan)  # LocoProp-M never gets there
    table = verdicts(finals(locoprop_m=[200]), 100.0, {"GPU": pd.concat([easy, hard, harder])})
    assert verdict_of(table, 3) == ["not supported"]


def test_a_verdict_reads_so_far_until_every_optimizer_of_the_claim_has_three_seeds():
    three = dict(adam=[210, 212, 211], **FIRST)
    table = verdicts(finals(locoprop_m=[200], **three), 100.0, {})
    assert verdict_of(table, 1) == ["supported so far"]
    assert table.loc[0, "evidence"].endswith("seeds so far: LocoProp-M 1 of 3")
    table = verdicts(finals(locoprop_m=[200, 201, 199], **{**three, "sgd": [250, 251]}), 100.0, {})
    assert verdict_of(table, 1) == ["supported so far"] and "SGD 2 of 3" in table.loc[0, "evidence"]
    slow = reach(locoprop_m=90.0, kfac=80.0, shampoo=100.0).assign(seeds=[3, 1, 3])
    table = verdicts(finals(locoprop_m=[200] * 3), 100.0, {"GPU": slow})
    assert verdict_of(table, 3) == ["not supported so far"] and table.loc[2, "evidence"].endswith("K-FAC 1 of 3")


def test_the_loss_claims_report_the_test_loss_as_evidence():
    frame = finals(locoprop_m=[200] * 3, adam=[210] * 3, kfac=[205] * 3, shampoo=[203] * 3, **FIRST)
    frame["test_loss"] = frame["train_loss"] + frame["optimizer"].map({"locoprop-m": 8.0, "adam": 3.0}).fillna(4.0)
    table = verdicts(frame, 100.0, {})
    assert table.loc[0, "evidence"].endswith("final test loss LocoProp-M 208.0, Adam 213.0")
    assert table.loc[1, "evidence"].endswith("final test loss LocoProp-M 208.0, K-FAC 209.0, Shampoo 207.0")
