from __future__ import annotations

from pathlib import Path

from setuptools import find_packages, setup

def data_files(folder: str) -> list[str]:
    return sorted(
        str(p.relative_to(folder))
        for p in Path(folder).rglob("*")
        if p.is_file() and "__pycache__" not in p.parts
    )


TEMPLATE_FILES = data_files("registry-template")
# The examples ship with ptm as ptm.examples: 'ptm demo' builds and runs federated-mean.
EXAMPLE_FILES = [f for f in data_files("examples") if "/" in f]

setup(
    name="ptm",
    version="0.1.0",
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
    install_requires=[
        "gitpython>=3.1.30",
        "watchdog>=3.0",
        "docker>=7.0",
        "jsonschema>=4.18",
        "pyyaml>=6.0",
        "paramiko>=3.0",
    ],
    extras_require={
        "test": [
            "pytest>=7.4",
            "pytest-timeout>=2.1",
            "mypy>=1.8",
            "ruff>=0.5",
            "types-pyyaml",
            "types-paramiko",
            "types-docker",
            "types-jsonschema",
        ],
    },
    entry_points={"console_scripts": ["ptm=ptm.main:main"]},
    classifiers=["Programming Language :: Python :: 3"],
)
