"""The installed distribution's metadata: its name, one version, tested floors, classifiers."""

from __future__ import annotations

import re
from importlib import metadata

import ptm

DISTRIBUTION = "ptm-health-train"
# The floors scripts/test-lowest installs and tests; raising one is a decision, not an accident.
FLOORS = {
    "watchdog": "3.0",
    "docker": "7.1",
    "jsonschema": "4.18",
    "pyyaml": "6.0.1",
    "paramiko": "3.4",
    "pyrage": "1.2.3",
}


def test_the_distribution_is_ptm_health_train_with_the_package_version() -> None:
    assert metadata.version(DISTRIBUTION) == ptm.__version__
    assert metadata.metadata(DISTRIBUTION)["Name"] == DISTRIBUTION


def test_the_command_is_still_ptm() -> None:
    scripts = metadata.distribution(DISTRIBUTION).entry_points.select(group="console_scripts")
    assert {(e.name, e.value) for e in scripts} == {("ptm", "ptm.main:main")}


def test_every_runtime_dependency_has_its_tested_floor() -> None:
    requires = metadata.requires(DISTRIBUTION) or []
    runtime = [r for r in requires if "extra ==" not in r]
    floors = {}
    for requirement in runtime:
        found = re.fullmatch(r"([A-Za-z0-9._-]+)\s*>=\s*([0-9.]+)", requirement)
        assert found is not None, f"{requirement!r} is not a plain >= floor"
        floors[found.group(1).lower()] = found.group(2)
    assert floors == FLOORS


def test_metadata_is_complete() -> None:
    meta = metadata.metadata(DISTRIBUTION)
    classifiers = set(meta.get_all("Classifier") or [])
    for version in ("3.10", "3.11", "3.12", "3.13"):
        assert f"Programming Language :: Python :: {version}" in classifiers
    assert "Operating System :: POSIX :: Linux" in classifiers
    assert "Topic :: Scientific/Engineering :: Medical Science Apps." in classifiers
    assert "Development Status :: 3 - Alpha" in classifiers
    assert meta["License-Expression"] == "Apache-2.0" or meta["License"] == "Apache-2.0"
    assert "personal health train" in (meta["Keywords"] or "")
    assert meta["Requires-Python"] == ">=3.10"
