"""The documentation site builds with `mkdocs build --strict`, and its API reference has an
entry for every public name.

Public names: the `__all__` of `kmethods`, `seqmodels` and `experiments`, walked recursively
through the namespaces they list, and of every other public module of theirs (no underscore in
its path) that defines `__all__` (`kmethods.sequences.models`, `seqmodels.flax`, the
`experiments` modules). A name has an entry when the built site's `objects.inv` (the inventory
mkdocstrings writes of every object it rendered) holds its path, `namespace.name`, or, for a
re-exported function or class, the path of its definition.
"""

import importlib
import os
import pathlib
import pkgutil
import subprocess
import sys
import types
import zlib

import pytest

ROOT = pathlib.Path(__file__).parents[1]
PACKAGES = ("kmethods", "seqmodels", "experiments")


@pytest.fixture(scope="module")
def site(tmp_path_factory):
    pytest.importorskip("mkdocs")
    pytest.importorskip("material")
    pytest.importorskip("mkdocstrings_handlers.python")
    out = tmp_path_factory.mktemp("site")
    proc = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "-d", str(out)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        env={**os.environ, "NO_MKDOCS_2_WARNING": "1"},
        timeout=600,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return out


def _inventory(site: pathlib.Path) -> set[str]:
    data = (site / "objects.inv").read_bytes()
    header_lines = 4
    body = data.split(b"\n", header_lines)[header_lines]
    lines = zlib.decompress(body).decode().splitlines()
    return {line.split(" ", 1)[0] for line in lines if line.strip()}


def _namespaces() -> list[str]:
    """Every public module to check: the packages, the namespaces their `__all__` lists
    (recursively), and every public submodule that defines `__all__`."""
    found: list[str] = []

    def visit(name: str) -> None:
        if name in found:
            return
        module = importlib.import_module(name)
        if not hasattr(module, "__all__"):
            return
        found.append(name)
        for member in module.__all__:
            value = getattr(module, member)
            if isinstance(value, types.ModuleType):
                visit(value.__name__)

    for package in PACKAGES:
        visit(package)
        root = importlib.import_module(package)
        for info in pkgutil.walk_packages(root.__path__, package + "."):
            if any(part.startswith("_") for part in info.name.split(".")):
                continue
            visit(info.name)
    return found


def public_names() -> list[tuple[str, object]]:
    """(dotted name, object) for every public name."""
    names = []
    for namespace in _namespaces():
        module = importlib.import_module(namespace)
        for member in module.__all__:
            names.append((f"{namespace}.{member}", getattr(module, member)))
    return names


def test_mkdocs_build_strict(site):
    assert (site / "index.html").exists()
    assert (site / "api" / "kmethods" / "index.html").exists()


def test_every_public_name_has_an_entry(site):
    inventory = _inventory(site)
    names = public_names()
    assert len(names) > 150  # the walk found the namespaces
    missing = []
    for dotted, value in names:
        paths = {dotted}
        if isinstance(value, types.ModuleType):
            paths.add(value.__name__)
        elif hasattr(value, "__module__") and hasattr(value, "__qualname__"):
            paths.add(f"{value.__module__}.{value.__qualname__}")
        if not paths & inventory:
            missing.append(dotted)
    assert not missing, f"public names without an API entry: {missing}"


def test_public_names_are_rendered_under_their_namespace(site):
    """The namespace pages name their objects by the public path, not a private one."""
    html = (site / "api" / "kmethods.thinning" / "index.html").read_text()
    assert 'id="kmethods.thinning.mmd_to_sample"' in html
    html = (site / "api" / "kmethods" / "index.html").read_text()
    assert 'id="kmethods.Gaussian"' in html and 'id="kmethods.hsic.hsic"' in html


PAGES_WITH_CODE = sorted(
    str(path.relative_to(ROOT))
    for path in (ROOT / "docs").rglob("*.md")
    if "```python" in path.read_text()
)


@pytest.mark.slow
@pytest.mark.parametrize("page", PAGES_WITH_CODE)
def test_docs_python_blocks_run(page):
    """Each page's Python blocks run as written, in order, in one namespace (slow: they run
    real examples; about 1.5 minutes on 2 CPU cores for all pages)."""
    import re

    text = (ROOT / page).read_text()
    blocks = re.findall(r"```python\n(.*?)```", text, re.S)
    exec(compile("\n".join(blocks), page, "exec"), {"__name__": "docs_example"})
