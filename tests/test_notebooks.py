"""The notebooks in notebooks/ run from top to bottom, each within a minute (CI runs them); each
opens with a Colab badge, and its install cell installs this checkout when it runs inside it and
the repository that pyproject.toml names when it runs elsewhere (executed here: the command the
cell builds is run into a throwaway environment)."""

import importlib.util
import json
import os
import pathlib
import shutil
import subprocess
import sys
import textwrap
import time
import tomllib

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
NOTEBOOKS = sorted((ROOT / "notebooks").glob("*.ipynb"))
REPOSITORY = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["urls"]["Repository"]


def _install_cell(path):
    """The notebook's first code cell, its install cell."""
    cells = json.loads(path.read_text())["cells"]
    return next("".join(c["source"]) for c in cells if c["cell_type"] == "code")


def test_there_are_three_tours():
    assert {p.stem for p in NOTEBOOKS} >= {"kernel_tests", "kernel_thinning", "sequence_models"}


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_notebook_opens_with_a_colab_badge(path):
    first = json.loads(path.read_text())["cells"][0]
    assert first["cell_type"] == "markdown"
    repo = REPOSITORY.removeprefix("https://github.com/")
    link = f"https://colab.research.google.com/github/{repo}/blob/main/notebooks/{path.name}"
    badge = "https://colab.research.google.com/assets/colab-badge.svg"
    assert f"[![Open In Colab]({badge})]({link})" in "".join(first["source"])


def test_install_cells_name_the_repository_of_pyproject():
    cells = {path.stem: _install_cell(path) for path in NOTEBOOKS}
    assert len(set(cells.values())) == 1, "the install cells differ"
    for cell in cells.values():
        assert f'REPOSITORY = "{REPOSITORY}"\n' in cell


def _run_install_cell(cwd, tmp_path, rewrite=""):
    """Runs the install cell in `cwd` as a fresh Python without kseq would (`python -S`: no
    site-packages, so kmethods does not import), with `subprocess.run` recording each command
    and running it, with `--no-deps`, into a throwaway environment instead of this one
    (`pip --python`); `rewrite` may change the command first (`cmd`). Returns the commands, the
    throwaway environment's python, and where kmethods imports from after the cell."""
    env_dir = tmp_path / "env"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", env_dir], check=True)
    python = env_dir / "bin" / "python"
    harness = textwrap.dedent(
        f"""
        import importlib.util, json, subprocess, sys

        commands, run = [], subprocess.run

        def recorded(cmd, **kwargs):
            commands.append(list(cmd))
            {rewrite}
            pip = [cmd[0], "-m", "pip", "--python", {str(python)!r}]
            return run([*pip, *cmd[3:], "--no-deps"], **kwargs)

        subprocess.run = recorded
        exec(compile({_install_cell(NOTEBOOKS[0])!r}, "install cell", "exec"))
        spec = importlib.util.find_spec("kmethods")
        print(json.dumps({{"commands": commands, "origin": spec and spec.origin}}))
        """
    )
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    proc = subprocess.run(
        [sys.executable, "-S", "-c", harness], cwd=cwd, env=env, capture_output=True, text=True
    )
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout.splitlines()[-1])
    return out["commands"], python, out["origin"]


def _origin_in(python, cwd):
    """Where kmethods imports from in the environment of `python` (found, not imported)."""
    code = "import importlib.util; print(importlib.util.find_spec('kmethods').origin)"
    proc = subprocess.run([python, "-c", code], cwd=cwd, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    return pathlib.Path(proc.stdout.strip())


def test_install_cell_installs_the_checkout_it_runs_in(tmp_path):
    commands, python, origin = _run_install_cell(ROOT / "notebooks", tmp_path)
    assert commands == [[sys.executable, "-m", "pip", "install", "-q", "-e", str(ROOT)]]
    assert origin == str(ROOT / "kmethods" / "__init__.py")  # at once, in the same process
    assert _origin_in(python, tmp_path) == ROOT / "kmethods" / "__init__.py"  # next start


def test_install_cell_skips_a_checkout_that_is_installed():
    """Here kmethods imports from this checkout (the suite runs on it): the cell runs nothing."""
    spec = importlib.util.find_spec("kmethods")
    assert pathlib.Path(spec.origin).is_relative_to(ROOT), "the suite runs on another kmethods"
    code = "import subprocess\n\ndef refuse(cmd, **kwargs):\n    raise AssertionError(cmd)\n\n"
    code += "subprocess.run = refuse\n" + _install_cell(NOTEBOOKS[0]) + "\nprint(installed, root)"
    proc = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT / "notebooks", capture_output=True, text=True
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split() == ["True", str(ROOT)]


@pytest.mark.skipif(
    shutil.which("git") is None or not (ROOT / ".git").exists(), reason="needs a git checkout"
)
def test_install_cell_installs_the_repository_elsewhere(tmp_path):
    """Outside a checkout the cell installs `kseq @ git+REPOSITORY`; that requirement is run with
    this checkout's repository (its committed state) in REPOSITORY's place."""
    folder = tmp_path / "anywhere"
    folder.mkdir()
    rewrite = f"cmd = [*cmd[:-1], cmd[-1].replace({REPOSITORY!r}, {ROOT.as_uri()!r})]"
    commands, python, origin = _run_install_cell(folder, tmp_path, rewrite)
    assert commands == [[sys.executable, "-m", "pip", "install", "-q", f"kseq @ git+{REPOSITORY}"]]
    installed = _origin_in(python, folder)
    assert installed.parent.name == "kmethods" and "site-packages" in installed.parts
    assert origin is None  # -S: the cell's process has no site-packages to import it from


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_notebook_runs(path, monkeypatch):
    nbformat = pytest.importorskip("nbformat")
    nbclient = pytest.importorskip("nbclient")
    monkeypatch.setenv("MPLBACKEND", "Agg")
    nb = nbformat.read(path, as_version=4)
    start = time.perf_counter()
    nbclient.NotebookClient(nb, timeout=120, kernel_name="python3").execute(cwd=str(path.parent))
    seconds = time.perf_counter() - start
    errors = [o for c in nb.cells for o in c.get("outputs", []) if o.get("output_type") == "error"]
    assert not errors
    assert seconds < 60, f"{path.name} took {seconds:.0f} s"
