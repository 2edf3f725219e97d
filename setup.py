"""Package discovery for setuptools (all other settings live in pyproject.toml).

Every package under ``src/`` is found automatically; ``napari_nalu_count.sample_data`` lives at
the top level (``sample_data/``, mapped in ``[tool.setuptools.package-dir]``) so that
``nalu-count count sample_data/`` works from a clone, and is added here.
"""

from setuptools import find_packages, setup

setup(packages=[*find_packages(where="src"), "napari_nalu_count.sample_data"])
