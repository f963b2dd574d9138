"""Build step for the optional C accelerator; everything else is in pyproject.toml.

``optional=True``: where no C compiler is available the build warns and goes on, and circuitry runs
on its pure-Python faces (the same logic; see circuitry/_faces.py).
"""

from setuptools import Extension, setup

setup(ext_modules=[Extension("circuitry._speedups", ["circuitry/_speedups.c"], optional=True)])
