from __future__ import annotations

import re
from pathlib import Path

from setuptools import find_packages, setup


def read_version() -> str:
    """The one source of the version is ptm/__init__.py; read, not imported (no dependencies
    are installed yet when setup.py runs)."""
    text = Path("ptm/__init__.py").read_text(encoding="utf-8")
    found = re.search(r'^__version__ = "([^"]+)"$', text, re.MULTILINE)
    if found is None:
        raise SystemExit("ptm/__init__.py: no line __version__ = \"…\"")
    return found.group(1)


def data_files(folder: str) -> list[str]:
    return sorted(
        str(p.relative_to(folder))
        for p in Path(folder).rglob("*")
        if p.is_file() and "__pycache__" not in p.parts
    )


TEMPLATE_FILES = data_files("registry-template")
# The examples ship with ptm as ptm.examples: 'ptm demo' builds and runs federated-mean.
EXAMPLE_FILES = [f for f in data_files("examples") if "/" in f]

BASE_REQUIRES = ["jsonschema>=4.18", "pyyaml>=6.0.1"]
SFTP_REQUIRES = ["paramiko>=3.4"]  # ptm sftp serve (the trusted third party)
AGE_REQUIRES = ["pyrage>=1.2.3"]  # ptm results --identity (decrypting results)
# ptm agent and ptm demo: containers, the watch loop, delivery over SFTP, encrypted results
AGENT_REQUIRES = ["docker>=7.1", "watchdog>=3.0", *SFTP_REQUIRES, *AGE_REQUIRES]

setup(
    # "ptm" on the public package index is an unrelated project: the distribution is
    # ptm-health-train, the import package and the command stay "ptm".
    name="ptm-health-train",
    version=read_version(),
    description="Personal Health Train on git: a task registry in git, site agents running Docker",
    long_description=Path("README.md").read_text(encoding="utf-8"),
    long_description_content_type="text/markdown",
    license="Apache-2.0",
    python_requires=">=3.10",
    # schemas/ and registry-template/ live at the top of the repository (other tools and the
    # registry's CI read them there) and ship inside the package as ptm.schemas and
    # ptm.registry_template, so that a normal, non-editable install finds them too.
    packages=[
        *find_packages(include=["ptm", "ptm.*"]),
        "ptm.schemas",
        "ptm.registry_template",
        "ptm.examples",
    ],
    package_dir={
        "ptm.schemas": "schemas",
        "ptm.registry_template": "registry-template",
        "ptm.examples": "examples",
    },
    package_data={
        "ptm": ["py.typed"],
        "ptm.schemas": ["*.json"],
        "ptm.registry_template": TEMPLATE_FILES,
        "ptm.examples": EXAMPLE_FILES,
    },
    # The base install is what researchers, auditors and registry CI (ptm validate, ptm task,
    # status, results, audit, policy explain; the pre-commit hook) need; the libraries only a
    # site agent, the SFTP service or decrypting results needs are extras, and a command that
    # lacks one says which to install (ptm/commands/__init__.py, EXTRA_OF_LIBRARY).
    # Floors are tested: scripts/test-lowest installs exactly these versions (extras included)
    # and runs the tests that use each library. docker 7.0 cannot reach an engine with
    # requests >= 2.32, paramiko < 3.4 lacks the Terrapin fix, PyYAML 6.0 does not build with
    # Cython 3, pyrage < 1.2.3 has age's plugin-name flaw (GHSA-4fg7-vxc8-qx5w).
    install_requires=BASE_REQUIRES,
    extras_require={
        "agent": AGENT_REQUIRES,
        "sftp": SFTP_REQUIRES,
        "age": AGE_REQUIRES,
        "test": [
            *AGENT_REQUIRES,
            "pytest>=7.4",
            "pytest-timeout>=2.1",
            "hypothesis>=6.0",
            "mypy>=1.8",
            "ruff>=0.5",
            "types-pyyaml",
            "types-paramiko",
            "types-docker",
            "types-jsonschema",
            "pyrage-stubs",
        ],
    },
    entry_points={"console_scripts": ["ptm=ptm.main:main"]},
    keywords=[
        "personal health train",
        "federated analysis",
        "federated learning",
        "git",
        "docker",
        "hospital",
        "privacy",
    ],
    classifiers=[
        "Development Status :: 3 - Alpha",
        "Environment :: Console",
        "Intended Audience :: Healthcare Industry",
        "Intended Audience :: Science/Research",
        "Intended Audience :: System Administrators",
        "Operating System :: POSIX :: Linux",
        "Programming Language :: Python :: 3",
        "Programming Language :: Python :: 3 :: Only",
        "Programming Language :: Python :: 3.10",
        "Programming Language :: Python :: 3.11",
        "Programming Language :: Python :: 3.12",
        "Programming Language :: Python :: 3.13",
        "Topic :: Scientific/Engineering :: Medical Science Apps.",
        "Topic :: System :: Distributed Computing",
        "Typing :: Typed",
    ],
)
