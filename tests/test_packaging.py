"""The installed distribution's metadata: its name, one version, tested floors, the light base
and its extras, classifiers."""

from __future__ import annotations

import re
from importlib import metadata
from pathlib import Path

import yaml

import ptm
from ptm.commands import DISTRIBUTION as NAMED_IN_MESSAGES
from ptm.commands import EXTRA_OF_COMMAND, EXTRA_OF_LIBRARY

DISTRIBUTION = "ptm-health-train"
REPO = Path(__file__).resolve().parents[1]
# The floors scripts/test-lowest installs and tests; raising one is a decision, not an accident.
# The base is what researchers, auditors, registry CI and the pre-commit hook need.
FLOORS = {"jsonschema": "4.18", "pyyaml": "6.0.1"}
EXTRA_FLOORS = {
    "agent": {"docker": "7.1", "watchdog": "3.0", "paramiko": "3.4", "pyrage": "1.2.3"},
    "sftp": {"paramiko": "3.4"},
    "age": {"pyrage": "1.2.3"},
}
HEAVY = ("docker", "watchdog", "paramiko", "pyrage")


def floors_of(extra: str | None) -> dict[str, str]:
    """name → floor of the distribution's requirements for ``extra`` (None: the base)."""
    floors = {}
    for requirement in metadata.requires(DISTRIBUTION) or []:
        spec, _, marker = requirement.partition(";")
        found_extra = re.search(r"extra\s*==\s*[\"']([a-z]+)[\"']", marker)
        if (found_extra.group(1) if found_extra else None) != extra:
            continue
        found = re.fullmatch(r"([A-Za-z0-9._-]+)\s*>=\s*([0-9.]+)", spec.strip())
        assert found is not None, f"{requirement!r} is not a plain >= floor"
        floors[found.group(1).lower()] = found.group(2)
    return floors


def test_the_distribution_is_ptm_health_train_with_the_package_version() -> None:
    assert metadata.version(DISTRIBUTION) == ptm.__version__
    assert metadata.metadata(DISTRIBUTION)["Name"] == DISTRIBUTION


def test_the_command_is_still_ptm() -> None:
    scripts = metadata.distribution(DISTRIBUTION).entry_points.select(group="console_scripts")
    assert {(e.name, e.value) for e in scripts} == {("ptm", "ptm.main:main")}


def test_every_runtime_dependency_has_its_tested_floor() -> None:
    assert floors_of(None) == FLOORS
    for extra, floors in EXTRA_FLOORS.items():
        assert floors_of(extra) == floors, extra


def test_the_base_install_pulls_in_no_agent_library() -> None:
    assert not set(floors_of(None)) & set(HEAVY)


def test_the_test_extra_installs_the_agent_extra() -> None:
    test_requires = {
        r.partition(";")[0].strip() for r in metadata.requires(DISTRIBUTION) or [] if "test" in r
    }
    for name, floor in EXTRA_FLOORS["agent"].items():
        assert f"{name}>={floor}" in test_requires


def test_each_missing_library_message_names_an_extra_that_brings_it() -> None:
    assert NAMED_IN_MESSAGES == DISTRIBUTION
    assert set(EXTRA_OF_LIBRARY) == set(HEAVY)
    for library, extra in EXTRA_OF_LIBRARY.items():
        assert library in EXTRA_FLOORS[extra]
    for extra in EXTRA_OF_COMMAND.values():
        assert extra in EXTRA_FLOORS


def test_ptms_pre_commit_hook_runs_validate_with_the_base_only() -> None:
    """pre-commit installs a 'language: python' hook's repository with pip (the base, no
    extras) plus its additional_dependencies: there must be none, and the entry is validate."""
    (hook,) = yaml.safe_load((REPO / ".pre-commit-hooks.yaml").read_text())
    assert hook["language"] == "python"
    assert hook["entry"] == "ptm validate --staged"
    assert "additional_dependencies" not in hook


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
