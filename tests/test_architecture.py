"""The two layers: the optimizer library needs torch only; the harness sits on top of it."""
import json
import subprocess
import sys

HEAVY = ("pandas", "tqdm", "pooch", "sklearn", "matplotlib", "seaborn")


def _loaded(statement: str) -> set[str]:
    code = f"import sys, json\n{statement}\nprint(json.dumps(sorted(sys.modules)))"
    return set(json.loads(subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                                         check=True).stdout))


def test_import_locoprop_loads_none_of_the_harness_packages():
    """Beyond what ``import torch`` loads itself (torch imports tqdm where it is installed), building and using an
    optimizer of the library loads neither the harness nor its data, table and plotting packages."""
    torch_only = _loaded("import torch")
    library = _loaded("import locoprop\nm = locoprop.models.deep_autoencoder((8, 4, 8))\n"
                      "locoprop.make_optimizer('locoprop-m', m); locoprop.make_optimizer('kfac', m)")
    extra = library - torch_only
    assert not {n for n in extra if n.split(".")[0] in HEAVY or n.startswith("locoprop.experiments")}, sorted(extra)
    assert "locoprop.optim.kfac" in extra  # the check does see what the library loads


def test_the_harness_is_where_the_command_line_lives():
    out = subprocess.run([sys.executable, "-m", "locoprop", "--help"], capture_output=True, text=True)
    assert out.returncode == 0 and "run" in out.stdout and "reproduce" in out.stdout
