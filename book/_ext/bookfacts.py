"""Facts about this site that are read when it is built, so that no page has to type them.

A local Sphinx extension (``sphinx: local_extensions: bookfacts: book/_ext`` in ``_config.yml``).
It reads only JSON files and git, with the standard library: it never imports the ``locoprop``
package (and so neither PyTorch), and the book still builds where those are not installed.

* **Footer.** The date of the build and the commit it was built from (``git rev-parse``; "unknown"
  outside a git checkout), appended to the theme's ``extra_footer``.  ``SOURCE_DATE_EPOCH``, when
  set, fixes the date (reproducible builds).
* **Substitutions** (MyST ``{{ name }}``), computed from the repository's files:

  - ``build_date``, ``build_commit``;
  - ``flops_ratio``, ``flops_locoprop_gflop``, ``flops_backprop_gflop``, ``flops_report``: the FLOPs of
    one training step of LocoProp-M and of RMSProp (a BackProp step) as ``torch.utils.flop_counter``
    counted them in the newest benchmark report under ``data/results/bench/`` (the tuned one if
    there is one), their ratio, and the report's date and device;
  - ``tuned_lr_locoprop_m``, ``tuned_gamma_locoprop_m``, ``tuned_lr_locoprop_s``,
    ``tuned_gamma_locoprop_s``: the settings of LocoProp that the newest ``bench --tuned`` report
    timed (as inline math);
  - ``paper_inventory`` and ``paper_devices``: what the result files under ``data/results/paper/``
    hold (runs by length, status and precision) and on which devices they ran;
  - ``exec_<notebook>_duration``, ``exec_<notebook>_profile``, ``exec_<notebook>_date`` for every
    executed notebook ``notebooks/<notebook>.ipynb`` (papermill's metadata).

* **Directive** ``execution-status``: a table with one row per executed notebook, from papermill's
  metadata (start, duration, profile, parameters, success) and the SHA-256 of its source.
* **Directive** ``proof-list``: a list of the theorems, lemmas, propositions and algorithms of the
  site (sphinx-proof's), each with its number and title, linked to where it is stated.
"""
from __future__ import annotations

import hashlib
import html
import json
import os
import subprocess
from collections import Counter
from datetime import datetime, timezone
from pathlib import Path

from docutils import nodes
from docutils.statemachine import StringList
from sphinx.util.docutils import SphinxDirective

NOT_MEASURED = "not measured yet"


# --- the build ----------------------------------------------------------------------------------

def _git(root: Path, *args: str) -> str | None:
    try:
        proc = subprocess.run(["git", *args], cwd=root, capture_output=True, text=True, timeout=20, check=False)
    except (OSError, subprocess.SubprocessError):
        return None
    return proc.stdout.strip() if proc.returncode == 0 else None


def build_info(root: Path) -> dict[str, str]:
    """``{"date", "commit", "dirty"}``: the build's date (UTC) and the git commit of ``root``."""
    epoch = os.environ.get("SOURCE_DATE_EPOCH")
    when = datetime.fromtimestamp(int(epoch), timezone.utc) if epoch and epoch.isdigit() else datetime.now(timezone.utc)
    commit = _git(root, "rev-parse", "--short=10", "HEAD")
    dirty = bool(commit) and bool(_git(root, "status", "--porcelain", "--untracked-files=no"))
    return {"date": when.strftime("%Y-%m-%d"), "commit": commit or "unknown",
            "dirty": " (with uncommitted changes)" if dirty else ""}


# --- result files -------------------------------------------------------------------------------

def _read_json(path: Path) -> dict | None:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def _threads(n) -> str:
    return f"{n} thread" if n == 1 else f"{n} threads"


def _device(prov: dict) -> str:
    """"AMD EPYC CPU, 2 threads" or the device's name (a GPU): without the "1 threads" of raw names."""
    if prov.get("device", "cpu") == "cpu":
        name = prov.get("cpu") or "CPU"
        return f"{name} CPU, {_threads(prov['threads'])}" if prov.get("threads") else f"{name} CPU"
    return str(prov.get("device_name") or prov.get("device"))


def _number(value: float) -> str:
    """A hyper-parameter as inline math: $10^{-4}$, $3 \\cdot 10^{-5}$, $10$, $0.5$."""
    if value == 0 or 1e-2 <= abs(value) < 1e4:
        return f"${value:g}$"
    mantissa, exponent = f"{value:.3e}".split("e")
    mantissa, exponent = f"{float(mantissa):g}", int(exponent)
    return f"$10^{{{exponent}}}$" if mantissa == "1" else f"${mantissa} \\cdot 10^{{{exponent}}}$"


def bench_report(root: Path) -> dict | None:
    """The newest benchmark report of the tuned settings under data/results/bench/, else the newest one (by the
    start time in its provenance, then by file name: names begin with the device)."""
    named = [(r, p.name) for p in (root / "data" / "results" / "bench").glob("*.json") if (r := _read_json(p))]
    named.sort(key=lambda pair: (str(pair[0].get("provenance", {}).get("started", "")), pair[1]))
    reports = [r for r, _ in named]
    reports = [r for r in reports if not r.get("settings", {}).get("local_iters")]  # not the T-frontier report
    tuned = [r for r in reports if r.get("settings", {}).get("tuned")]
    return (tuned or reports or [None])[-1]


def bench_facts(root: Path) -> dict[str, str]:
    facts = dict.fromkeys(("flops_ratio", "flops_locoprop_gflop", "flops_backprop_gflop", "flops_report"), NOT_MEASURED)
    for name in ("locoprop_m", "locoprop_s"):
        facts[f"tuned_lr_{name}"] = facts[f"tuned_gamma_{name}"] = NOT_MEASURED
    report = bench_report(root)
    if report is None:
        return facts
    rows = {row["optimizer"]: row for row in report["rows"] if row.get("precision") in (None, "fp32")}
    prov = report.get("provenance", {})
    facts["flops_report"] = f"{str(prov.get('started', ''))[:10]}, {_device(prov)}"
    if "locoprop-m" in rows and "rmsprop" in rows:
        loco, backprop = rows["locoprop-m"]["flops_per_step"], rows["rmsprop"]["flops_per_step"]
        facts.update(flops_ratio=f"{loco / backprop:.2f}", flops_locoprop_gflop=f"{loco / 1e9:.2f}",
                     flops_backprop_gflop=f"{backprop / 1e9:.2f}")
    if report.get("settings", {}).get("tuned"):
        for name in ("locoprop-m", "locoprop-s"):
            hp = rows.get(name, {}).get("hparams", {})
            key = name.replace("-", "_")
            if "lr" in hp:
                facts[f"tuned_lr_{key}"] = _number(float(hp["lr"]))
            if "gamma" in hp:
                facts[f"tuned_gamma_{key}"] = _number(float(hp["gamma"]))
    return facts


_STATUS = {"completed": "completed", "stopped": "stopped at a rung before their last epoch",
           "abandoned": "abandoned by the early exits", "diverged": "diverged"}
_PRECISION = {"fp32": "float32", "bf16": "bfloat16"}


def _plural(n: int, word: str) -> str:
    return f"no {word}" if n == 0 else f"{n} {word}" if n == 1 else f"{n} {word}s"


def _is_run(record) -> bool:
    """A run's result file: a JSON object whose config gives its epochs."""
    config = record.get("config") if isinstance(record, dict) else None
    return isinstance(config, dict) and isinstance(config.get("epochs"), int)


def paper_facts(root: Path) -> dict[str, str]:
    """``paper_inventory`` and ``paper_devices`` from the run files under data/results/paper/."""
    files = [_read_json(p) for p in sorted((root / "data" / "results" / "paper").glob("*.json"))]
    runs = [r for r in files if _is_run(r)]
    if not runs:
        return {"paper_inventory": "no result files yet", "paper_devices": "none yet"}
    for r in runs:
        r["provenance"] = r.get("provenance") if isinstance(r.get("provenance"), dict) else {}
    parts = []
    for epochs in sorted({r["config"]["epochs"] for r in runs}):
        group = [r for r in runs if r["config"]["epochs"] == epochs]
        status = Counter(r.get("status", "completed") for r in group)
        precision = Counter(r["config"].get("precision", "fp32") for r in group)
        details = []
        if set(status) != {"completed"}:
            details.append(", ".join(f"{n} {_STATUS.get(s, s)}" for s, n in sorted(status.items(), key=lambda kv: -kv[1])))
        if len(precision) > 1:
            details.append(", ".join(f"{n} {_PRECISION.get(p, p)}" for p, n in sorted(precision.items())))
        parts.append(f"{_plural(len(group), 'run')} of {epochs} epochs" + (f" ({'; '.join(details)})" if details else ""))
    parts[-1:] = [f"and {parts[-1]}"] if len(parts) > 1 else parts
    inventory = f"{_plural(len(runs), 'result file')}, with " + "; ".join(parts)
    unreadable = sum(1 for r in files if not _is_run(r))
    if unreadable:
        inventory += f" ({_plural(unreadable, 'other file')} that could not be read as a run: see `python -m locoprop results`)"
    kinds = Counter(r["provenance"].get("device", "cpu") for r in runs)
    names = sorted({r["provenance"].get("cpu") or r["provenance"].get("device_name") or "not named"
                    for r in runs if r["provenance"].get("device", "cpu") == "cpu"})
    threads = sorted({r["provenance"].get("threads") for r in runs if r["provenance"].get("threads")})
    devices = []
    if kinds.get("cpu"):
        counts = f"; {' or '.join(map(str, threads))} torch thread{'' if threads == [1] else 's'}" if threads else ""
        devices.append(f"{_plural(kinds['cpu'], 'run')} on a CPU ({', '.join(names)}{counts})")
    gpus = sorted({str(r["provenance"].get("device_name")) for r in runs if r["provenance"].get("device", "cpu") != "cpu"})
    n_gpu = sum(n for kind, n in kinds.items() if kind != "cpu")
    devices.append(f"{_plural(n_gpu, 'run')} on a GPU" + (f" ({', '.join(gpus)})" if gpus else ""))
    return {"paper_inventory": inventory, "paper_devices": "; ".join(devices)}


# --- executed notebooks ---------------------------------------------------------------------------

def duration_text(seconds: float | None) -> str:
    if seconds is None:
        return "unknown"
    seconds = round(seconds)
    if seconds < 60:
        return f"{seconds} s"
    minutes, seconds = divmod(seconds, 60)
    if minutes < 60:
        return f"{minutes} min {seconds} s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours} h {minutes} min"


def _errors(nb: dict) -> int:
    return sum(1 for cell in nb.get("cells", []) for out in cell.get("outputs", []) if out.get("output_type") == "error")


def notebook_status(path: Path) -> dict:
    """What an executed notebook's metadata says about its execution."""
    nb = _read_json(path) or {}
    meta = nb.get("metadata", {})
    pm, own = meta.get("papermill", {}), meta.get("locoprop", {})
    source = path.with_name(own.get("source") or path.with_suffix(".py").name)
    recorded = own.get("source_sha256")
    if recorded and source.exists():
        text = source.read_text(encoding="utf-8").replace("\r\n", "\n")  # as locoprop's reproduce hashes it
        current = "yes" if hashlib.sha256(text.encode("utf-8")).hexdigest() == recorded else "no: edited since"
    else:
        current = "unknown"
    # the parameters the package's driver records (papermill's may add driver-only ones, such as executor)
    params = own.get("parameters") or pm.get("parameters") or {}
    started = str(pm.get("start_time") or "")
    failed = pm.get("exception") or _errors(nb)
    return {
        "name": path.stem,
        "started": f"{started[:10]} {started[11:16]}" if started else "unknown",
        "date": started[:10] or "unknown",
        "duration": duration_text(pm.get("duration")),
        "profile": str(params.get("profile", "unknown")),
        "parameters": ", ".join(f"{k}={v}" for k, v in sorted(params.items()) if k != "profile") or "none",
        "success": "no" if failed else ("yes" if pm else "unknown"),
        "current": current,
        "papermill": str(pm.get("version", "")),
    }


def executed_notebooks(root: Path) -> list[Path]:
    return sorted((root / "notebooks").glob("[0-9]*.ipynb"))


def notebook_facts(root: Path) -> dict[str, str]:
    facts = {}
    for path in executed_notebooks(root):
        status = notebook_status(path)
        key = path.stem.lower().replace("-", "_")
        facts.update({f"exec_{key}_duration": status["duration"], f"exec_{key}_profile": status["profile"],
                      f"exec_{key}_date": status["date"]})
    return facts


class ExecutionStatus(SphinxDirective):
    """``{execution-status}``: one row per executed notebook (papermill's metadata)."""

    has_content = False

    def run(self):
        root = Path(self.env.srcdir)
        lines = ["```{list-table}", ":header-rows: 1", ":class: execution-status", "",
                 "* - notebook", "  - profile", "  - other parameters", "  - started", "  - duration",
                 "  - without error", "  - source unchanged"]
        for path in executed_notebooks(root):
            self.env.note_dependency(str(path))
            status = notebook_status(path)
            source = path.with_suffix(".py")
            if source.exists():
                self.env.note_dependency(str(source))
            doc = f"/notebooks/{path.stem}"
            link = f"{{doc}}`{status['name']} <{doc}>`" if doc.lstrip("/") in self.env.found_docs else status["name"]
            lines += [f"* - {link}", f"  - `{status['profile']}`", f"  - {status['parameters']}",
                      f"  - {status['started']}", f"  - {status['duration']}", f"  - {status['success']}",
                      f"  - {status['current']}"]
        lines.append("```")
        container = nodes.container()
        self.state.nested_parse(StringList(lines, source=self.env.docname), self.content_offset, container)
        return container.children


# --- the list of results (sphinx-proof) -------------------------------------------------------------

class results_placeholder(nodes.General, nodes.Element):
    """Placeholder, replaced by the list of results once every document has been read."""


class ProofList(SphinxDirective):
    has_content = False

    def run(self):
        self.env.bookfacts_proof_list_docs = getattr(self.env, "bookfacts_proof_list_docs", set()) | {self.env.docname}
        return [results_placeholder()]


def _proof_titles(env, docname: str) -> dict[str, str]:
    titles = {}
    for node in env.get_doctree(docname).findall(nodes.Element):
        if "realtype" in node.attributes and node.get("label"):
            title = str(node.get("title") or "").strip()
            titles[node["label"]] = title[1:-1] if title.startswith("(") and title.endswith(")") else title
    return titles


def _resolve_proof_lists(app, doctree, docname):
    placeholders = list(doctree.findall(results_placeholder))
    if not placeholders:
        return
    env = app.env
    proofs = getattr(env, "proof_list", {})
    titles = {}
    for doc in sorted({p["docname"] for p in proofs.values()}):
        titles.update(_proof_titles(env, doc))
    items = nodes.bullet_list()
    for label, info in proofs.items():
        if info.get("nonumber") or label not in titles:
            continue
        number = ".".join(map(str, env.toc_fignumbers.get(info["docname"], {}).get(info["countertype"], {}).get(label, ())))
        text = f"{info['realtype'].title()} {number}".strip() + (f" ({titles[label]})" if titles[label] else "")
        uri = app.builder.get_relative_uri(docname, info["docname"]) + "#" + label
        ref = nodes.reference("", text, internal=True, refuri=uri)
        items += nodes.list_item("", nodes.paragraph("", "", ref))
    for node in placeholders:
        node.replace_self(items.deepcopy() if len(items) else nodes.paragraph("", "None."))


def _outdated(app, env, added, changed, removed):
    """A page with a list of results is rewritten whenever another page changed."""
    if added or changed or removed:
        return sorted(getattr(env, "bookfacts_proof_list_docs", set()) - set(added) - set(changed))
    return []


def _purge(app, env, docname):
    docs = getattr(env, "bookfacts_proof_list_docs", set())
    docs.discard(docname)


# --- setup ----------------------------------------------------------------------------------------

def _config_inited(app, config):
    root = Path(app.srcdir)
    info = build_info(root)
    facts = {"build_date": info["date"], "build_commit": info["commit"]}
    facts.update(bench_facts(root))
    facts.update(paper_facts(root))
    facts.update(notebook_facts(root))
    config.myst_substitutions = {**facts, **(config.myst_substitutions or {})}
    options = dict(config.html_theme_options or {})
    built = (f"Built on {html.escape(info['date'])} from commit <code>{html.escape(info['commit'])}</code>"
             f"{html.escape(info['dirty'])}.")
    options["extra_footer"] = f"{options.get('extra_footer', '')}<br/>{built}" if options.get("extra_footer") else built
    config.html_theme_options = options


def setup(app):
    app.connect("config-inited", _config_inited)
    app.add_node(results_placeholder)
    app.add_directive("execution-status", ExecutionStatus)
    app.add_directive("proof-list", ProofList)
    app.connect("doctree-resolved", _resolve_proof_lists)
    app.connect("env-get-outdated", _outdated)
    app.connect("env-purge-doc", _purge)
    return {"parallel_read_safe": False, "parallel_write_safe": True, "env_version": 1}
