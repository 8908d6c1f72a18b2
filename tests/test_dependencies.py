"""Dependencies that hold: every direct import of kit/ is declared, the bounds are tested ones, and constraints.txt
(what CI installs with) pins every declared package within those bounds."""

from __future__ import annotations

import ast
import importlib.metadata
import importlib.util
import sys
from pathlib import Path

import pytest
import tomllib
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

REPO = Path(__file__).resolve().parents[1]
KIT = REPO / "kit"
TEMPLATES = {p.stem for p in (KIT / "templates").glob("*.py")}  # a kernel script imports its sibling template


def project() -> dict:
    return tomllib.loads((REPO / "pyproject.toml").read_text())["project"]


def declared() -> set[str]:
    """Every distribution kit declares: its dependencies and those of its extras."""
    lines = list(project()["dependencies"])
    for extra in project()["optional-dependencies"].values():
        lines += extra
    return {canonicalize_name(Requirement(line).name) for line in lines} - {"kit"}


def _optional(node: ast.Try) -> bool:
    """A try whose handler catches ImportError: an import with a fallback, not a dependency."""
    names = {ast.unparse(h.type) for h in node.handlers if h.type is not None}
    return bool(names & {"ImportError", "ModuleNotFoundError", "(ImportError, ModuleNotFoundError)"})


def imported_modules(path: Path) -> set[str]:
    """The top-level modules ``path`` imports, at the top or inside a function, outside optional imports."""
    found: set[str] = set()

    def visit(node: ast.AST) -> None:
        if isinstance(node, ast.Try) and _optional(node):
            return
        if isinstance(node, ast.Import):
            found.update(a.name.split(".")[0] for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            found.add(node.module.split(".")[0])
        for child in ast.iter_child_nodes(node):
            visit(child)

    visit(ast.parse(path.read_text()))
    return found - set(sys.stdlib_module_names) - {"kit", "__future__"} - TEMPLATES


def undeclared(paths: list[Path], known: set[str]) -> list[str]:
    """'module (distribution) in file' for each import whose distribution ``known`` lacks."""
    owners = importlib.metadata.packages_distributions()
    out = []
    for path in paths:
        for module in sorted(imported_modules(path)):
            dists = {canonicalize_name(d) for d in owners.get(module, [module])}
            if not dists & known:
                out.append(f"{module} ({', '.join(sorted(dists))}) in {path.relative_to(REPO)}")
    return out


def test_every_direct_import_of_kit_is_a_declared_dependency():
    problems = undeclared(sorted(KIT.rglob("*.py")), declared())
    assert not problems, "declare in pyproject.toml (dependencies or an extra): " + "; ".join(problems)


def test_the_import_check_catches_an_undeclared_import(tmp_path):
    module = KIT / "_undeclared_probe.py"  # inside kit/ so that paths read like the real ones
    module.write_text("import yaml\n\ntry:\n    import tomli\nexcept ImportError:\n    tomli = None\n")
    try:
        assert undeclared([module], declared() - {"pyyaml"}) == ["yaml (pyyaml) in kit/_undeclared_probe.py"]
        assert undeclared([module], declared()) == []  # tomli is optional: guarded by except ImportError
    finally:
        module.unlink()


def requirements() -> dict[str, Requirement]:
    lines = list(project()["dependencies"])
    for extra in project()["optional-dependencies"].values():
        lines += [line for line in extra if canonicalize_name(Requirement(line).name) != "kit"]
    return {canonicalize_name(Requirement(line).name): Requirement(line) for line in lines}


@pytest.mark.parametrize("name, floor, ceiling", [
    ("torch", "2.2", "3"), ("timm", "1.0.21", "2"), ("optuna", "4.9", "6"), ("kaggle", "2.2.5", "3")])
def test_bounds_are_a_tested_floor_and_below_the_next_major(name, floor, ceiling):
    spec = requirements()[name].specifier
    assert {(s.operator, s.version) for s in spec} == {(">=", floor), ("<", ceiling)}
    assert Version(ceiling).major == Version(floor).major + 1 or name == "optuna"  # optuna: 4.9 and 5.x both pass


def test_dev_refers_to_the_other_extras_instead_of_repeating_them():
    extras = project()["optional-dependencies"]
    others = sorted(name for name in extras if name != "dev")
    [kit_line] = [x for x in extras["dev"] if canonicalize_name(Requirement(x).name) == "kit"]
    assert sorted(Requirement(kit_line).extras) == others  # every other extra, by name
    repeated = {canonicalize_name(Requirement(x).name) for x in extras["dev"]} & {
        canonicalize_name(Requirement(x).name) for name in others for x in extras[name]}
    assert not repeated


def pins(path: Path) -> dict[str, Version]:
    out = {}
    for line in path.read_text().splitlines():
        if line.strip() and not line.startswith("#"):
            name, _, version = line.partition("==")
            out[canonicalize_name(name)] = Version(version)
    return out


def test_constraints_pin_every_declared_package_within_its_bounds():
    pinned = pins(REPO / "constraints.txt")
    missing = sorted(declared() - set(pinned))
    assert not missing, f"constraints.txt lacks {missing}: run scripts/refresh_constraints.py"
    outside = [f"{name}=={pinned[name]} ({req.specifier})" for name, req in requirements().items()
               if not req.specifier.contains(pinned[name], prereleases=True)]
    assert not outside, f"constraints.txt pins outside pyproject.toml's bounds: {outside}"


def test_setup_installs_with_the_constraints():
    setup = (REPO / "scripts" / "setup.sh").read_text()
    assert '-e ".[dev]" -c constraints.txt' in setup


def test_refresh_constraints_pins_what_is_installed_here(tmp_path):
    spec = importlib.util.spec_from_file_location("refresh_constraints", REPO / "scripts" / "refresh_constraints.py")
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    assert script.main(["--out", str(tmp_path / "c.txt")]) == 0
    pinned = pins(tmp_path / "c.txt")
    for name in ("torch", "timm", "optuna", "kaggle", "kagglesdk", "lightgbm", "psycopg"):  # deps of deps too
        assert str(pinned[name]) == importlib.metadata.version(name).split("+")[0]
    with pytest.raises(SystemExit):
        script.main(["--help"])


def test_license_is_mit_in_the_file_and_the_metadata():
    assert project()["license"] == "MIT" and project()["license-files"] == ["LICENSE"]
    assert (REPO / "LICENSE").read_text().startswith("MIT License")
