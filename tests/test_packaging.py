"""Packaging: what pyproject.toml declares is what the code uses, in the form `.ci/min-versions`
reads (that script proves the floors; it is run by hand whenever a dependency changes)."""

import ast
import importlib.metadata as md
import pathlib
import re
import sys
import tomllib

ROOT = pathlib.Path(__file__).resolve().parents[1]
PROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())
PACKAGES = ("kmethods", "seqmodels", "experiments")


def _name(requirement):
    return re.split(r"[<>=!~\[;\s]", requirement, maxsplit=1)[0].lower().replace("_", "-")


def _imported_distributions():
    """The distributions of the third-party modules that the packages import."""
    modules = set()
    for package in PACKAGES:
        for path in (ROOT / package).rglob("*.py"):
            for node in ast.walk(ast.parse(path.read_text())):
                if isinstance(node, ast.Import):
                    modules.update(alias.name.split(".")[0] for alias in node.names)
                elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                    modules.add(node.module.split(".")[0])
    modules -= set(sys.stdlib_module_names) | set(PACKAGES)
    by_module = md.packages_distributions()
    return {m: {d.lower().replace("_", "-") for d in by_module.get(m, [m])} for m in modules}


def test_every_dependency_has_a_plain_floor():
    for dep in PROJECT["project"]["dependencies"]:
        assert re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]*>=[0-9][A-Za-z0-9.]*", dep), dep


def test_imports_are_declared():
    required = {_name(d) for d in PROJECT["project"]["dependencies"]}
    extras = PROJECT["project"]["optional-dependencies"]
    bench = {_name(d) for d in extras["bench"]}
    for module, dists in _imported_distributions().items():
        assert dists & (required | bench), f"{module} ({dists}) is imported but not declared"


def test_dev_extra_is_every_other_extra():
    extras = PROJECT["project"]["optional-dependencies"]
    (dev,) = extras["dev"]
    names = re.fullmatch(r"kseq\[([a-z,-]+)\]", dev)
    assert names and set(names[1].split(",")) == set(extras) - {"dev"}, dev


def test_ruff_targets_the_oldest_supported_python():
    floor = re.fullmatch(r">=3\.(\d+)", PROJECT["project"]["requires-python"])
    assert floor, PROJECT["project"]["requires-python"]
    assert PROJECT["tool"]["ruff"]["target-version"] == f"py3{floor[1]}"


def test_license_file_is_apache_2():
    assert PROJECT["project"]["license"] == "Apache-2.0"
    text = (ROOT / "LICENSE").read_text()
    assert "Apache License" in text and "Version 2.0, January 2004" in text
    assert "END OF TERMS AND CONDITIONS" in text
