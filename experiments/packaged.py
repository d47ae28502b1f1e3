"""The configs that ship with kseq, found by name: `kseq run quickstart`, `kseq list`.

The repository keeps its configs in the top-level `configs/` folder. A wheel installs them
inside the package, as `experiments/configs/*.yaml` (setup.py maps the folder in as the package
`experiments.configs`); a checkout, installed editable or put on `PYTHONPATH`, reads its
`configs/` folder itself. Either way an installed kseq runs its configs from any folder.

A folder of the working directory named `experiments/` cannot shadow kseq's package in the
`kseq` command, whose `sys.path` starts with the command's own folder. It can where the working
directory comes first on `sys.path` (`python -m experiments.cli`, a REPL or a notebook started
there, `PYTHONPATH=.`): a package there (with an `__init__.py`) is imported instead of kseq's,
so that none of kseq's code runs; and with an editable install even a plain folder becomes the
`experiments` namespace, under which kseq's modules are still found, and any file of that
folder would stand in for one of them. `check_package` stops the command line in that case.
"""

from __future__ import annotations

import difflib
import pathlib
import sys

from experiments.config import ConfigError
from experiments.errors import RunError

__all__ = ["check_package", "config_folder", "config_names", "find_config"]

_PACKAGE = pathlib.Path(__file__).resolve().parent


def config_folder() -> pathlib.Path:
    """The folder of the packaged configs: `experiments/configs/` in an installed package, else
    the `configs/` folder of the checkout that holds this package."""
    installed = _PACKAGE / "configs"
    if installed.is_dir():
        return installed
    checkout = _PACKAGE.parent
    if (checkout / "pyproject.toml").is_file() and (checkout / "configs").is_dir():
        return checkout / "configs"
    raise FileNotFoundError(
        f"no packaged configs: neither {installed} nor a checkout's configs/ folder exists "
        "(reinstall kseq)"
    )


def config_names() -> list[str]:
    """The names of the packaged configs (`quickstart` for `quickstart.yaml`), sorted."""
    return sorted(path.stem for path in config_folder().glob("*.yaml"))


def find_config(path_or_name) -> pathlib.Path:
    """The config file that `kseq run` is given: `path_or_name` if it is an existing file, else
    the packaged config of that name (`quickstart` or `quickstart.yaml`, without a folder).

    Raises `ConfigError` otherwise, naming the packaged configs."""
    path = pathlib.Path(path_or_name)
    if path.is_file():
        return path
    name = path.name.removesuffix(".yaml")
    names = config_names()
    if len(path.parts) != 1:
        packaged = (
            f" (`kseq run {name}` runs the packaged config of that name)" if name in names else ""
        )
        raise ConfigError(f"config file not found: {path}{packaged}")
    if name in names:
        return config_folder() / f"{name}.yaml"
    hint = difflib.get_close_matches(name, names, n=1)
    raise ConfigError(
        f"{path_or_name!r} is neither a config file nor a packaged config"
        + (f" (did you mean {hint[0]!r}?)" if hint else "")
        + "; packaged configs: "
        + ", ".join(names)
    )


def check_package() -> None:
    """Raises `RunError` unless the imported `experiments` package is this one (see the module
    docstring: a folder named `experiments/` in the working directory can stand in for it)."""
    module = sys.modules.get("experiments")
    file = getattr(module, "__file__", None)
    if file is not None and pathlib.Path(file).resolve().parent == _PACKAGE:
        return
    where = file or ", ".join(getattr(module, "__path__", None) or ["nowhere"])
    raise RunError(
        f"the `experiments` package was imported from {where}, not from kseq ({_PACKAGE}): a "
        "folder of that name in the working directory shadows kseq's; use the `kseq` command, "
        "or run from another folder"
    )
