"""Time to target, on result documents whose numbers are chosen by hand."""
import math

from locoprop.experiments.results import frame, summary, time_to_target


def doc(optimizer, seed, losses, epoch_time, lr=0.1, precision="fp32"):
    records = [dict(epoch=e, train_loss=loss, test_loss=loss, train_squared_error=0.0, test_squared_error=0.0,
                    epoch_time=0.0 if e == 0 else epoch_time, train_time=e * epoch_time, lr=lr)
               for e, loss in enumerate(losses)]
    return {"run_id": f"{optimizer}-{seed}-{lr}-{precision}-{len(losses)}", "status": "completed", "diverged_epoch": None,
            "config": {"profile": "p", "dataset": "d", "optimizer": optimizer, "seed": seed, "hparams": {"lr": lr},
                       "precision": precision, "epochs": len(losses) - 1},
            "provenance": {"device": "cpu"}, "records": records}


def test_time_to_reach_the_reference_final_loss():
    df = frame([
        doc("rmsprop", 0, [50, 40, 30, 20], epoch_time=1.0),          # target: 20 (final loss)
        doc("locoprop-m", 0, [50, 25, 19, 15], epoch_time=3.0),       # reaches 20 at epoch 2: 6 s
        doc("locoprop-m", 1, [50, 22, 20, 14], epoch_time=2.0),       # reaches 20 at epoch 2: 4 s
        doc("sgd", 0, [50, 45, 40, 35], epoch_time=0.5),              # never
        doc("sgd", 0, [50, 49, 48, 47], epoch_time=0.5, lr=0.01),     # a worse setting, not the best
    ])
    out = time_to_target(df).set_index("optimizer")
    assert (out["target"] == 20).all()
    assert out.loc["rmsprop", "epochs_to_target"] == 3 and out.loc["rmsprop", "time_to_target"] == 3.0
    assert out.loc["locoprop-m", "epochs_to_target"] == 2 and out.loc["locoprop-m", "time_to_target"] == 5.0
    assert out.loc["locoprop-m", "seeds_reaching"] == 2 and out.loc["locoprop-m", "speedup"] == 3.0 / 5.0
    assert math.isnan(out.loc["sgd", "time_to_target"]) and out.loc["sgd", "seeds_reaching"] == 0
    assert list(out.index[:2]) == ["rmsprop", "locoprop-m"]  # sorted by time, unreached last


def test_runs_of_other_precision_or_length_are_not_averaged_into_a_setting():
    df = frame([
        doc("adam", 0, [50, 40, 30], epoch_time=1.0),                       # 2 epochs, fp32: 30
        doc("adam", 0, [50, 40, 30, 26, 24], epoch_time=1.0),               # 4 epochs, fp32: 24
        doc("adam", 0, [50, 40, 30, 25, 22], epoch_time=1.0, precision="bf16"),  # 4 epochs, bf16: 22
    ])
    best = summary(df).set_index(["precision", "horizon"])
    assert len(best) == 3 and (best["seeds"] == 1).all()
    assert best["final_train_loss"].to_dict() == {("fp32", 2): 30.0, ("fp32", 4): 24.0, ("bf16", 4): 22.0}
    # a target is reached by the runs of its own group only: 25 by the 4-epoch bf16 run at epoch 3
    reach = time_to_target(df, reference="adam", target=25).set_index(["precision", "horizon"])
    assert reach.loc[("bf16", 4), "epochs_to_target"] == 3 and reach.loc[("fp32", 4), "epochs_to_target"] == 4
    assert math.isnan(reach.loc[("fp32", 2), "epochs_to_target"])
