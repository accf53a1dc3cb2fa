"""environment.yml (conda users) must install what pyproject.toml and the Makefile install (pip users).

The rules, derived from parsing the files (nothing is hard-coded except the file names):

* environment.yml's Python satisfies pyproject's ``requires-python``;
* the torch pin of environment.yml equals the Makefile's (``pip install ... torch==X``) and satisfies
  pyproject's torch requirement;
* every requirement of pyproject's ``test`` and ``book`` extras is installed by environment.yml:
  either it installs the project with both extras (``-e .[test,book]``) or it lists the same
  requirement with exactly the same version specifier;
* a package that environment.yml lists explicitly and pyproject pins must carry the same specifier.
"""
from __future__ import annotations

import re
import tomllib
from pathlib import Path

import pytest
import yaml
from packaging.requirements import Requirement
from packaging.specifiers import SpecifierSet
from packaging.utils import canonicalize_name
from packaging.version import Version

ROOT = Path(__file__).resolve().parents[1]
EXTRAS = ("test", "book")
_PROJECT_INSTALL = re.compile(r"^\./?\[(?P<extras>[^\]]*)\]$")


def load_pyproject(path: Path = ROOT / "pyproject.toml") -> dict:
    return tomllib.loads(path.read_text())


def load_environment(path: Path = ROOT / "environment.yml") -> dict:
    return yaml.safe_load(path.read_text())


def makefile_torch_pin(path: Path = ROOT / "Makefile") -> str | None:
    """The ``torch==X`` the Makefile installs, or None if it installs no pinned torch."""
    match = re.search(r"pip install[^\n]*\btorch==([0-9A-Za-z.+]+)", path.read_text())
    return match.group(1) if match else None


def environment_parts(env: dict) -> tuple[str | None, list[str]]:
    """(the conda ``python`` spec, the list of ``pip:`` lines) of an environment.yml document."""
    python, pip_lines = None, []
    for dep in env.get("dependencies") or []:
        if isinstance(dep, dict) and "pip" in dep:
            pip_lines.extend(str(x).strip() for x in dep["pip"] or [])
        elif isinstance(dep, str) and re.match(r"^python(\s|=|$)", dep):
            python = dep
    return python, pip_lines


def installed_extras(pip_lines: list[str]) -> set[str]:
    """Extras of the project itself that the pip lines install (``-e .[a,b]`` -> {a, b})."""
    extras: set[str] = set()
    for line in pip_lines:
        target = re.sub(r"^(-e|--editable)\s+", "", line.strip()).replace(" ", "")
        m = _PROJECT_INSTALL.match(target)
        if m:
            extras |= {e.strip() for e in m.group("extras").split(",") if e.strip()}
    return extras


def listed_requirements(pip_lines: list[str]) -> dict[str, Requirement]:
    """Named requirements among the pip lines (options and the project install are skipped)."""
    out = {}
    for line in pip_lines:
        if line.startswith("-") or line.startswith("."):
            continue
        req = Requirement(line)
        out[canonicalize_name(req.name)] = req
    return out


def problems(pyproject: dict, env: dict, make_torch: str | None) -> list[str]:
    """Every disagreement between the three files (empty when they agree)."""
    errors: list[str] = []
    project = pyproject["project"]
    python, pip_lines = environment_parts(env)
    listed = listed_requirements(pip_lines)
    extras = installed_extras(pip_lines)

    # Python version.
    if python is None:
        errors.append("environment.yml does not pin python")
    else:
        version = re.sub(r"^python\s*=*\s*", "", python).rstrip(".*")
        if not version or Version(version) not in SpecifierSet(project.get("requires-python", "")):
            errors.append(f"environment.yml {python!r} does not satisfy requires-python {project.get('requires-python')!r}")

    # torch.
    env_torch = listed.get("torch")
    if env_torch is None:
        errors.append("environment.yml does not install torch")
    else:
        pins = [s.version for s in env_torch.specifier if s.operator == "=="]
        if len(pins) != 1:
            errors.append(f"environment.yml torch is not pinned exactly: {env_torch}")
        else:
            if make_torch is not None and pins[0] != make_torch:
                errors.append(f"torch pin differs: environment.yml {pins[0]}, Makefile {make_torch}")
            for dep in project.get("dependencies", []):
                req = Requirement(dep)
                if canonicalize_name(req.name) == "torch" and Version(pins[0]) not in req.specifier:
                    errors.append(f"environment.yml torch=={pins[0]} violates pyproject's {dep!r}")

    # Extras.
    optional = project.get("optional-dependencies", {})
    for extra in EXTRAS:
        if extra not in optional:
            errors.append(f"pyproject has no [{extra}] extra")
            continue
        for dep in optional[extra]:
            req = Requirement(dep)
            name = canonicalize_name(req.name)
            if name in listed:
                if listed[name].specifier != req.specifier:
                    errors.append(
                        f"{req.name}: environment.yml has {listed[name]}, pyproject [{extra}] has {dep}"
                    )
            elif extra not in extras:
                errors.append(f"{dep} (pyproject [{extra}]) is not installed by environment.yml")
    return errors


def test_environment_yml_agrees_with_pyproject_and_makefile():
    errors = problems(load_pyproject(), load_environment(), makefile_torch_pin())
    assert not errors, "environment.yml disagrees with pyproject.toml/Makefile:\n" + "\n".join(errors)


def test_environment_yml_has_a_pip_section():
    _, pip_lines = environment_parts(load_environment())
    assert pip_lines, "environment.yml has no pip: section"


# The checker must be able to fail: feed it altered copies of the real files.

def _real():
    return load_pyproject(), load_environment(), makefile_torch_pin()


def _replace_pip(env: dict, lines: list[str]) -> dict:
    env = {**env, "dependencies": [d for d in env["dependencies"] if not (isinstance(d, dict) and "pip" in d)]}
    env["dependencies"].append({"pip": lines})
    return env


def test_checker_detects_a_missing_extra():
    pyproject, env, make_torch = _real()
    env = _replace_pip(env, ["torch==2.13.0", "-e .[test]"])
    assert any("[book]" in e for e in problems(pyproject, env, make_torch))


def test_checker_detects_a_different_pin():
    pyproject, env, make_torch = _real()
    pinned = [d for d in pyproject["project"]["optional-dependencies"]["book"] if "==" in d]
    if not pinned:
        pytest.skip("pyproject's [book] extra has no exact pin to alter")
    name = Requirement(pinned[0]).name
    env = _replace_pip(env, ["torch==2.13.0", f"{name}==0.0.0", "-e .[test,book]"])
    assert any(name in e for e in problems(pyproject, env, make_torch))


def test_checker_detects_a_different_torch():
    pyproject, env, make_torch = _real()
    env = _replace_pip(env, ["torch==0.1.0", "-e .[test,book]"])
    assert any("torch" in e for e in problems(pyproject, env, make_torch or "2.13.0"))


def test_checker_detects_a_wrong_python():
    pyproject, env, make_torch = _real()
    env = {**env, "dependencies": ["python=2.7" if isinstance(d, str) and d.startswith("python") else d
                                   for d in env["dependencies"]]}
    assert any("requires-python" in e for e in problems(pyproject, env, make_torch))
