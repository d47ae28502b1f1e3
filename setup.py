"""The packages of kseq, for setuptools; everything else is declared in pyproject.toml.

The packages are found, and the repository's top-level `configs/` folder joins them as the
package `experiments.configs`: a wheel installs the configs as `experiments/configs/*.yaml`,
where `kseq run NAME` and `kseq list` find them (`experiments.packaged`; a checkout reads
`configs/` itself).
"""

from setuptools import find_packages, setup

setup(
    packages=[
        *find_packages(include=["kmethods*", "seqmodels*", "experiments*"]),
        "experiments.configs",
    ],
    package_dir={"experiments.configs": "configs"},
    package_data={"experiments.configs": ["*.yaml"]},
)
