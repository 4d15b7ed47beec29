"""pyproject.toml as setuptools reads it: no deprecation warnings at `pip install` (issue 16 item 10)."""

from __future__ import annotations

import re
import warnings
from pathlib import Path

import tomllib

PYPROJECT = Path(__file__).resolve().parents[1] / "pyproject.toml"


def test_pyproject_license_is_an_spdx_string_setuptools_reads_without_warnings():
    from setuptools.config.pyprojecttoml import apply_configuration
    from setuptools.dist import Distribution

    data = tomllib.loads(PYPROJECT.read_text())
    assert data["project"]["license"] == "Apache-2.0"  # a TOML table is deprecated by setuptools 77
    # the build backend must be one that accepts the string form (PEP 639 support came in 77)
    req = next(r for r in data["build-system"]["requires"] if r.startswith("setuptools"))
    assert int(re.search(r">=(\d+)", req).group(1)) >= 77, req
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        dist = apply_configuration(Distribution(), str(PYPROJECT))
    assert not [str(w.message) for w in caught if "license" in str(w.message).lower()]
    assert dist.metadata.license_expression == "Apache-2.0"
