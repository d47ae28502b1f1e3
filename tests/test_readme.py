"""The README's Python tour runs as written (slow: it runs full-size examples)."""

import pathlib
import re

import pytest


@pytest.mark.slow
def test_readme_python_blocks_run():
    text = (pathlib.Path(__file__).parents[1] / "README.md").read_text()
    blocks = re.findall(r"```python\n(.*?)```", text, re.S)
    assert blocks
    exec(compile("\n".join(blocks), "README.md", "exec"), {})
