"""Packaging: what pyproject.toml declares is what the code uses, in the form `.ci/min-versions`
reads (that script proves the floors; it is run by hand whenever a dependency changes); and the
wheel: built from a copy of the sources and installed into a folder of its own, it ships every
package and the configs, and `kseq list`, `kseq run quickstart` and `import kmethods` work from a
folder that holds an unrelated `experiments/` package."""

import ast
import importlib.metadata as md
import os
import pathlib
import re
import shutil
import site
import subprocess
import sys
import tomllib
import types

import pytest

from experiments.cli import main
from experiments.config import ConfigError
from experiments.packaged import config_folder, config_names, find_config

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
    optional = {_name(d) for extra in ("bench", "tensorboard") for d in extras[extra]}
    for module, dists in _imported_distributions().items():
        assert dists & (required | optional), f"{module} ({dists}) is imported but not declared"


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


# ---- configs by name (in process, from the checkout)


def test_configs_are_found_by_name(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # no configs/ here
    assert config_names() == sorted(p.stem for p in (ROOT / "configs").glob("*.yaml"))
    assert find_config("quickstart") == config_folder() / "quickstart.yaml"
    assert find_config("quickstart.yaml") == config_folder() / "quickstart.yaml"
    (tmp_path / "quickstart.yaml").write_text("task: quickstart\n")
    assert find_config("quickstart.yaml") == pathlib.Path("quickstart.yaml")  # a file comes first
    with pytest.raises(ConfigError, match=r"did you mean 'quickstart'\?.*skit_power"):
        find_config("quikstart")
    with pytest.raises(ConfigError, match=r"not found: configs/skit_power.yaml .*run skit_power"):
        find_config("configs/skit_power.yaml")


def test_kseq_list_shows_the_packaged_configs(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    assert main(["list"]) == 0
    assert "quickstart.yaml" in capsys.readouterr().out


def test_a_shadowing_experiments_folder_stops_the_command_line(tmp_path, monkeypatch, capsys):
    """With an editable install, a plain folder `experiments/` in the working directory becomes
    the `experiments` namespace for `python -m experiments.cli`, and kseq's modules are found
    under it: the command line refuses to run so."""
    shadow = types.ModuleType("experiments")
    shadow.__path__ = [str(tmp_path / "experiments")]
    monkeypatch.setitem(sys.modules, "experiments", shadow)
    assert main(["list"]) == 1
    err = capsys.readouterr().err
    assert "kseq list: error:" in err and str(tmp_path / "experiments") in err


# ---- the wheel, installed into a folder of its own

SOURCES = ("pyproject.toml", "setup.py", "README.md", "LICENSE", *PACKAGES, "configs")
TINY = (
    "params.sample_sizes=[25]",
    "params.num_replicates=4",
    "params.num_permutations=20",
    "params.tests=[mmd]",
    "devices.count=1",
)


def _install_wheel(tmp):
    """kseq's wheel, built from a copy of the sources (the checkout gets no build output) and
    installed without its dependencies into a folder of its own, which is returned. pip builds
    it as `pip install .` does, fetching the build requirements of pyproject.toml."""
    for name in SOURCES:
        source, target = ROOT / name, tmp / "src" / name
        if source.is_dir():
            shutil.copytree(source, target, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy(source, target)
    pip = [sys.executable, "-m", "pip", "--disable-pip-version-check", "-q"]
    subprocess.run([*pip, "wheel", "--no-deps", "-w", tmp / "dist", tmp / "src"], check=True)
    (wheel,) = (tmp / "dist").glob("kseq-*.whl")
    subprocess.run([*pip, "install", "--no-deps", "--target", tmp / "site", wheel], check=True)
    return tmp / "site"


def _installed(site_dir, cwd, *args):
    """Runs `python -S ARGS` in `cwd` with the installed wheel, then the dependencies, on the
    path: `-S` skips site-packages and their `.pth` files, and with them the checkout's editable
    install, so that only the wheel can provide kseq."""
    path = [str(site_dir), *site.getsitepackages()]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(path)}
    return subprocess.run(
        [sys.executable, "-S", *args], cwd=cwd, env=env, capture_output=True, text=True
    )


def test_the_wheel_ships_everything_and_runs_from_any_folder(tmp_path):
    """One test, so that the wheel is built once whichever worker runs it."""
    wheel_site = _install_wheel(tmp_path / "wheel")
    for package in PACKAGES:
        for init in (ROOT / package).rglob("__init__.py"):
            assert (wheel_site / init.relative_to(ROOT)).is_file(), init
    shipped = sorted(p.name for p in (wheel_site / "experiments" / "configs").glob("*.yaml"))
    assert shipped == sorted(p.name for p in (ROOT / "configs").glob("*.yaml"))

    # from a folder that holds an experiments package of its own, which must not be imported
    folder = tmp_path / "work"
    (folder / "experiments").mkdir(parents=True)
    (folder / "experiments" / "__init__.py").write_text(
        "raise ImportError('the experiments package of the working directory was imported')\n"
    )
    kseq = str(wheel_site / "bin" / "kseq")

    proc = _installed(wheel_site, folder, "-c", "import kmethods; print(kmethods.__file__)")
    assert proc.returncode == 0, proc.stderr
    assert pathlib.Path(proc.stdout.strip()).is_relative_to(wheel_site)

    proc = _installed(wheel_site, folder, kseq, "list")
    assert proc.returncode == 0, proc.stderr
    assert "quickstart.yaml" in proc.stdout and "skit_power.yaml" in proc.stdout

    out = tmp_path / "runs"
    sets = [a for o in TINY for a in ("--set", o)]
    proc = _installed(wheel_site, folder, kseq, "run", "quickstart", *sets, "--out", out)
    assert proc.returncode == 0, proc.stderr
    (run_dir,) = (out / "quickstart").iterdir()
    assert (run_dir / "results.json").is_file()
