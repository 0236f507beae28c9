"""Packages: everything under src/ plus three data packages mapped onto the repository's top-level folders, so
the wheel ships the configs, sweep specs and sbatch templates while the repository keeps one copy of each.
(Metadata and package data are in pyproject.toml; only this list needs code: find_packages for src/.)"""

from setuptools import find_packages, setup

DATA_PACKAGES = {"lorasweep.conf": "conf", "lorasweep.sweeps": "sweeps", "lorasweep.slurm_templates": "slurm"}

setup(packages=[*find_packages("src"), *DATA_PACKAGES], package_dir={"": "src", **DATA_PACKAGES})
