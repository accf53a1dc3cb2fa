"""The paper's claims against the evidence in the result files: every verdict is computed, none typed.

The claims (the paper's abstract and the deep-autoencoder section), for LocoProp-M against the other
optimizers, each tuned and trained with the full protocol:

1. **Better than first-order methods per epoch**: its final training loss is below that of every
   first-order method (SGD, momentum, Nesterov, AdaGrad, RMSProp, Adam).  *Supported* when every
   LocoProp-M seed ends below every seed of every first-order method; *mixed* when its mean is
   lower but the seeds overlap; *not supported* when some first-order method's mean is lower.
2. **Comparable to K-FAC and Shampoo per epoch**: its excess loss over the floor (the summed pixel
   entropy, the lowest loss any model can reach) is at most :data:`COMPARABLE` (1.1) times that of
   the better of the two.  *Supported* or *not supported*.
3. **Faster than K-FAC and Shampoo in wall-clock time** on the hardware of the result files: its
   training time to a loss target is below both of theirs.  Given several targets, the claim is
   judged at the lowest (the hardest to reach: an easy target, reached within the first few epochs,
   compares little more than the cost of those epochs); the times to every target are in the
   evidence.  The paper's claim is about one GPU;
   :func:`verdicts` states it for every kind of device it is given results from, and *not
   measured here* for a GPU when no GPU results exist.

A claim whose optimizers are missing from the results is *not measured here*.  Every verdict rests
on the seeds its evidence counts: one reached with only some of a claim's rivals finished, or
before every optimizer of the claim has :data:`SEEDS` (3) seeds, ends in *so far*, and its evidence
names the rivals not run yet and the optimizers short of seeds.  The evidence of the two loss claims
gives the final test loss too (mean over seeds): the claims are about training, and the test loss
says whether a lower training loss carries over to images the model was not trained on.
"""
from __future__ import annotations

import pandas as pd

from ..optim import FIRST_ORDER, LABELS

__all__ = ["COMPARABLE", "SEEDS", "verdicts"]

COMPARABLE = 1.1
SEEDS = 3
SECOND_ORDER = ("kfac", "shampoo")
SUBJECT = "locoprop-m"

_NOT_MEASURED = "not measured here"


def _seeds(n: int) -> str:
    return "one seed" if n == 1 else f"{n} seeds"


def _loss(finals: pd.DataFrame, name: str) -> str:
    values = finals.loc[finals["optimizer"] == name, "train_loss"]
    spread = f" (range {values.min():.1f}–{values.max():.1f})" if len(values) > 1 else ""
    return f"{values.mean():.1f}{spread}, {_seeds(len(values))}"


def _so_far(verdict: str, evidence: str, rivals, have, seeds: dict[str, int]) -> tuple[str, str]:
    """``verdict`` and ``evidence``, marked as provisional when some of ``rivals`` are not in ``have`` or some
    optimizer of the claim (``seeds``: its number of seeds) has fewer than :data:`SEEDS`."""
    missing = [n for n in rivals if n not in have]
    short = [f"{LABELS[n]} {k} of {SEEDS}" for n, k in seeds.items() if k < SEEDS]
    if not (missing or short) or verdict == _NOT_MEASURED:
        return verdict, evidence
    return f"{verdict} so far", evidence + "".join(
        [f"; not run yet: {', '.join(LABELS[n] for n in missing)}" if missing else "", f"; seeds so far: {', '.join(short)}" if short else ""])


def _test_loss(finals: pd.DataFrame, names) -> str:
    if "test_loss" not in finals:
        return ""
    means = finals.groupby("optimizer")["test_loss"].mean()
    return "; final test loss " + ", ".join(f"{LABELS[n]} {means[n]:.1f}" for n in names)


def _seed_counts(finals: pd.DataFrame, names) -> dict[str, int]:
    return {n: int((finals["optimizer"] == n).sum()) for n in names}


def _first_order(finals: pd.DataFrame, names) -> tuple[str, str, str]:
    rivals = [n for n in FIRST_ORDER if n in names]
    if SUBJECT not in names or not rivals:
        return _NOT_MEASURED, "needs LocoProp-M and at least one first-order method", ""
    means = finals.groupby("optimizer")["train_loss"].mean()
    best = min(rivals, key=means.get)
    own = finals.loc[finals["optimizer"] == SUBJECT, "train_loss"]
    others = finals.loc[finals["optimizer"].isin(rivals), "train_loss"]
    if own.max() < others.min():
        verdict = "supported"
    elif means[SUBJECT] < means[best]:
        verdict = "mixed"
    else:
        verdict = "not supported"
    evidence = (f"LocoProp-M {_loss(finals, SUBJECT)}; best first-order, {LABELS[best]}: {_loss(finals, best)}"
                + _test_loss(finals, (SUBJECT, best)))
    return (*_so_far(verdict, evidence, FIRST_ORDER, names, _seed_counts(finals, (SUBJECT, *rivals))), best)


def _second_order(finals: pd.DataFrame, names, floor: float) -> tuple[str, str]:
    rivals = [n for n in SECOND_ORDER if n in names]
    if SUBJECT not in names or not rivals:
        return _NOT_MEASURED, "needs LocoProp-M and K-FAC or Shampoo"
    means = finals.groupby("optimizer")["train_loss"].mean()
    best = min(rivals, key=means.get)
    ratio = (means[SUBJECT] - floor) / (means[best] - floor)
    verdict = "supported" if ratio <= COMPARABLE else "not supported"
    evidence = (f"LocoProp-M {_loss(finals, SUBJECT)}; "
                + "; ".join(f"{LABELS[n]}: {_loss(finals, n)}" for n in rivals)
                + f"; excess over the floor {floor:.1f}: {ratio:.2f}× the better one's"
                + _test_loss(finals, (SUBJECT, *rivals)))
    return _so_far(verdict, evidence, SECOND_ORDER, names, _seed_counts(finals, (SUBJECT, *rivals)))


def _wall_clock(reach: pd.DataFrame | None) -> tuple[str, str]:
    if reach is None or reach.empty:
        return _NOT_MEASURED, "no results from this kind of device"
    present = set(reach["optimizer"])
    rivals = [n for n in SECOND_ORDER if n in present]
    if SUBJECT not in present or not rivals:
        return _NOT_MEASURED, "needs LocoProp-M and K-FAC or Shampoo"

    def fmt(t):
        return "never" if pd.isna(t) else f"{t:.0f} s"

    evidence, faster = [], False
    for target, rows in sorted(reach.groupby("target"), key=lambda item: item[0]):
        times = rows.set_index("optimizer")["time_to_target"]
        if not evidence:  # the lowest target decides
            own = times[SUBJECT]
            faster = not pd.isna(own) and all(pd.isna(times[n]) or own < times[n] for n in rivals)
        decides = " (decides)" if not evidence and reach["target"].nunique() > 1 else ""
        evidence.append(f"time to a train loss of {target:.1f}{decides}: "
                        + ", ".join(f"{LABELS[n]} {fmt(times[n])}" for n in (SUBJECT, *rivals)))
    seeds = reach.groupby("optimizer")["seeds"].max().astype(int).to_dict() if "seeds" in reach else {}
    return _so_far("supported" if faster else "not supported", "; ".join(evidence), SECOND_ORDER, present,
                   {n: seeds[n] for n in (SUBJECT, *rivals) if n in seeds})


def verdicts(finals: pd.DataFrame, floor: float, reach: dict[str, pd.DataFrame | None]) -> pd.DataFrame:
    """The claims table: ``claim``, ``evidence`` (numbers from the results), ``verdict``.

    ``finals``: one row per finished full-protocol run with ``optimizer`` (package names),
    ``train_loss`` (its final training loss) and, where known, ``test_loss``.  ``floor``: the dataset's entropy floor.  ``reach``:
    per kind of device (``"GPU"``, ``"CPU"``), the :func:`locoprop.experiments.results.time_to_target` table of the
    runs on it (package names in ``optimizer``; rows of several targets stacked, told apart by ``target``;
    its ``seeds`` column counts the seeds), or None when there are none; the GPU row is always
    present (the paper's claim), the others only when given.
    """
    names = set(finals["optimizer"])
    v1, e1, _ = _first_order(finals, names)
    v2, e2 = _second_order(finals, names, floor)
    rows = [
        {"claim": "1. LocoProp-M reaches a lower training loss than the first-order methods, per epoch",
         "evidence": e1, "verdict": v1},
        {"claim": "2. LocoProp-M is comparable to K-FAC and Shampoo per epoch "
                  f"(excess loss over the floor at most {COMPARABLE:g}× the better one's)",
         "evidence": e2, "verdict": v2},
    ]
    for kind in ["GPU", *sorted(k for k in reach if k != "GPU")]:
        v3, e3 = _wall_clock(reach.get(kind))
        rows.append({"claim": f"3. LocoProp-M is faster than K-FAC and Shampoo in wall-clock time, on one {kind}"
                              + (" (the paper's claim)" if kind == "GPU" else ""),
                     "evidence": e3, "verdict": v3})
    return pd.DataFrame(rows, columns=["claim", "evidence", "verdict"])
