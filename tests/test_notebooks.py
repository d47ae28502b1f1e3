"""The notebooks in notebooks/ run from top to bottom, each within a minute (CI runs them)."""

import pathlib
import time

import pytest

NOTEBOOKS = sorted((pathlib.Path(__file__).parent.parent / "notebooks").glob("*.ipynb"))


def test_there_are_three_tours():
    assert {p.stem for p in NOTEBOOKS} >= {"kernel_tests", "kernel_thinning", "sequence_models"}


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_notebook_runs(path, monkeypatch):
    nbformat = pytest.importorskip("nbformat")
    nbclient = pytest.importorskip("nbclient")
    monkeypatch.setenv("MPLBACKEND", "Agg")
    nb = nbformat.read(path, as_version=4)
    first_code = next(c for c in nb.cells if c.cell_type == "code")
    assert "pip" in first_code.source and "find_spec" in first_code.source  # the Colab cell
    start = time.perf_counter()
    nbclient.NotebookClient(nb, timeout=120, kernel_name="python3").execute(cwd=str(path.parent))
    seconds = time.perf_counter() - start
    errors = [o for c in nb.cells for o in c.get("outputs", []) if o.get("output_type") == "error"]
    assert not errors
    assert seconds < 60, f"{path.name} took {seconds:.0f} s"
