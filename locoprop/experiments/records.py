r"""A run's result file: its records, its status, and where a run stops early.

Files, under ``<results_dir>/<profile>/`` (see :class:`~locoprop.experiments.config.RunConfig`):

* ``<run_id>.json``: the records plus provenance (config, git commit, versions, device, times,
  status).  A *finished* run (``completed``, ``diverged`` or ``abandoned``) is skipped when the
  same configuration runs again.  A run trained only up to a budget (``run(..., until=E)``: the
  rungs of successive halving) is ``stopped``: its file holds the records up to epoch ``E`` and its
  checkpoint stays, so a later call with a larger budget continues it;
* ``<run_id>.csv``: the per-epoch records.

Epoch 0 records the untrained model.  A run *diverges* when an evaluated loss is not finite or the
train loss exceeds ``divergence_factor`` times its value at epoch 0; it stops there and is recorded
as diverged.  A run with ``exits`` (the tuning's early exits) is *abandoned* at the first epoch
``e`` with a rule ``(from_epoch, threshold)``, ``e >= from_epoch``, whose best train loss so far
exceeds ``threshold``; ``diverged_epoch`` is the epoch at which a diverged or abandoned run stopped.
"""
from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd

from .config import RunConfig, RunConflictError
from .provenance import atomic_write

__all__ = ["FINISHED", "RECORD_COLUMNS", "STATUSES", "RunResult", "exit_epoch", "find_result", "payload_problem",
           "read_result_file", "stored", "write_result"]


#: Statuses of a run that has ended; ``stopped`` (trained up to a budget, to be continued) is not one.
FINISHED = ("completed", "diverged", "abandoned")
STATUSES = (*FINISHED, "stopped")

RECORD_COLUMNS = (
    "epoch", "train_loss", "test_loss", "train_squared_error", "test_squared_error", "epoch_time", "train_time", "lr",
)

@dataclass
class RunResult:
    """What a run produced: its records and the JSON payload written to ``path``.

    ``skipped`` is true when the result was found on disk instead of being computed.
    """

    run_id: str
    status: str
    diverged_epoch: int | None
    config: RunConfig
    records: list[dict[str, float]]
    provenance: dict[str, Any]
    path: Path
    skipped: bool = False

    @property
    def finished(self) -> bool:
        """Whether the run has ended (not ``stopped`` at a budget)."""
        return self.status in FINISHED

    @property
    def final(self) -> dict[str, float]:
        """The last epoch's record."""
        return self.records[-1]

    @property
    def payload(self) -> dict[str, Any]:
        """The JSON document of this result."""
        return {
            "run_id": self.run_id,
            "status": self.status,
            "diverged_epoch": self.diverged_epoch,
            "config": {**_config_json(self.config), "results_dir": None},  # the folder the file lies in
            "provenance": self.provenance,
            "records": self.records,
        }

    @classmethod
    def from_payload(cls, payload: dict[str, Any], path: Path, skipped: bool = True) -> RunResult:
        """The result a file's JSON document holds (:class:`RunConflictError` naming ``path`` if it is not one)."""
        problem = payload_problem(payload)
        if problem is not None:
            raise RunConflictError(_invalid(path, problem))
        known = {f.name for f in dataclasses.fields(RunConfig)}
        config = {k: v for k, v in payload["config"].items() if k in known}
        config["sizes"] = tuple(config["sizes"])
        config.setdefault("revision", 1)  # written before the arithmetic had revisions
        config["results_dir"] = str(Path(path).resolve().parent.parent)
        return cls(payload["run_id"], payload["status"], payload["diverged_epoch"], RunConfig(**config),
                   payload["records"], payload["provenance"], Path(path), skipped)



def _config_json(cfg: RunConfig) -> dict[str, Any]:
    return json.loads(json.dumps(dataclasses.asdict(cfg)))

def _finite(x: float) -> float | None:
    return x if math.isfinite(x) else None


def stored(records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """``records`` as a result file holds them: a non-finite number becomes None (JSON's null)."""
    return [{k: (_finite(v) if isinstance(v, float) else v) for k, v in r.items()} for r in records]

def _is_int(x: Any) -> bool:
    return isinstance(x, int) and not isinstance(x, bool)

def _is_number(x: Any) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool)

def payload_problem(doc: Any) -> str | None:
    """What keeps ``doc`` (a parsed JSON document) from being a result file's, or None if nothing does."""
    if not isinstance(doc, dict):
        return f"it holds a JSON {type(doc).__name__}, not an object"
    kinds = {"run_id": str, "status": str, "config": dict, "provenance": dict, "records": list}
    for key, kind in kinds.items():
        if key not in doc:
            return f"it has no {key!r}"
        if not isinstance(doc[key], kind):
            return f"its {key!r} is {json.dumps(doc[key])[:40]}, not a JSON {'object' if kind is dict else kind.__name__}"
    if doc["status"] not in STATUSES:
        return f"its status {doc['status']!r} is none of {', '.join(STATUSES)}"
    if doc.get("diverged_epoch") is not None and not _is_int(doc["diverged_epoch"]):
        return f"its diverged_epoch {doc['diverged_epoch']!r} is not a whole number or null"
    cfg = doc["config"]
    for key in ("optimizer", "dataset", "profile"):
        if not isinstance(cfg.get(key), str):
            return f"its config.{key} is {json.dumps(cfg.get(key))[:40]}, not a string"
    if not _is_int(cfg.get("seed")):
        return f"its config.seed is {json.dumps(cfg.get('seed'))[:40]}, not a whole number"
    if not isinstance(cfg.get("hparams"), dict):
        return f"its config.hparams is {json.dumps(cfg.get('hparams'))[:40]}, not an object"
    sizes = cfg.get("sizes")
    if not (isinstance(sizes, list) and len(sizes) >= 2 and all(_is_int(s) and s >= 1 for s in sizes)):
        return f"its config.sizes is {json.dumps(sizes)[:40]}, not a list of at least two widths"
    if not doc["records"]:
        return "its records are empty (epoch 0 is always recorded)"
    for i, record in enumerate(doc["records"]):
        if not isinstance(record, dict) or not _is_int(record.get("epoch")):
            return f"its record {i} is not an object with a whole-number epoch"
        bad = [k for k in RECORD_COLUMNS[1:] if k in record and record[k] is not None and not _is_number(record[k])]
        if bad:
            return f"its record {i} has {bad[0]} {json.dumps(record[bad[0]])[:40]}, not a number or null"
    return None

def _invalid(path: Path, problem: str) -> str:
    return (f"{path} is not a valid result file: {problem}; it was left as it is: restore it (e.g. from git), or move "
            f"it away to train that configuration again")

def read_result_file(path: Path, error: type[Exception] = RunConflictError) -> dict[str, Any]:
    """The JSON document of the result file ``path``, checked by :func:`payload_problem` (``error`` if it is not one)."""
    try:
        doc = json.loads(path.read_text())
    except (OSError, ValueError) as err:
        raise error(f"cannot read the result file {path} ({type(err).__name__}: {err}); it was left as it is: "
                    f"restore it (e.g. from git), or move it away to train that configuration again") from None
    problem = payload_problem(doc)
    if problem is not None:
        raise error(_invalid(path, problem))
    return doc

def find_result(config: RunConfig, stopped: bool = False) -> RunResult | None:
    """The finished result of ``config`` on disk, or None; with ``stopped``, also a run stopped at a budget.

    Raises :class:`RunConflictError` when the file under its name holds another configuration.
    """
    cfg = config.resolve()
    path = cfg.paths()["json"]
    if not path.exists():
        return None
    payload = read_result_file(path)
    stored = RunResult.from_payload(payload, path).config
    if stored.identity() != cfg.identity():
        raise RunConflictError(
            f"{path} holds a different configuration ({stored.identity()}) than the one requested "
            f"({cfg.identity()}); it was not overwritten: move it away or use another results_dir"
        )
    result = RunResult.from_payload(payload, path, skipped=True)
    return result if stopped or result.finished else None

def exit_epoch(records: list[dict[str, Any]], exits, divergence_factor: float) -> tuple[str, int] | None:
    """``(status, epoch)`` of the first epoch at which a run with these records stops early, or None.

    ``diverged``: an evaluated loss is not finite (None in a result file) or the train loss exceeds
    ``divergence_factor`` times its epoch-0 value; ``abandoned``: an early-exit rule
    ``(from_epoch, threshold)`` with ``epoch >= from_epoch`` finds the best train loss so far above
    ``threshold``.  The runner stops by this rule, so the records of a run without ``exits`` also
    tell where the same run with them would have stopped.
    """
    best = math.inf
    for record in records[1:]:
        epoch, train, test = record["epoch"], record["train_loss"], record["test_loss"]
        if train is None or test is None or not (math.isfinite(train) and math.isfinite(test)) or \
                train > divergence_factor * records[0]["train_loss"]:
            return "diverged", epoch
        best = min(best, train)
        if any(epoch >= start and best > threshold for start, threshold in exits):
            return "abandoned", epoch
    return None

def write_result(result: RunResult, paths: dict[str, Path]) -> None:
    """The CSV first, then the JSON (whose presence marks the run finished); both atomic."""
    table = pd.DataFrame(result.records, columns=list(RECORD_COLUMNS))
    atomic_write(paths["csv"], lambda tmp: table.to_csv(tmp, index=False))
    text = json.dumps(result.payload, indent=1, allow_nan=False)
    atomic_write(paths["json"], lambda tmp: tmp.write_text(text + "\n"))
