from __future__ import annotations

import pytest

from ptm.errors import InvalidDocument
from ptm.names import NAME_PATTERN, check_name, is_valid_name

GOOD = ["a", "0", "age-stats", "hospital-a", "v1.2_final", "a" * 63, "a..b", "a-", "x.yaml"]
BAD = [
    "",
    ".",
    "..",
    "../x",
    "a/b",
    "/abs",
    "a\\b",
    "x\n",
    "\nx",
    "x\r",
    "a\0b",
    "-rf",
    ".hidden",
    "_a",
    "Upper",
    "hospit\u0430l-a",  # Cyrillic small a
    "\uff41",  # fullwidth a
    "a\u200b",  # zero-width space
    "\u0661",  # Arabic-Indic digit one: a digit for str.isdigit, not for us
    "caf\u00e9",
    "a b",
    "a" * 64,
    "a:b",
    "*",
]


@pytest.mark.parametrize("name", GOOD)
def test_valid_names(name: str) -> None:
    assert is_valid_name(name)
    assert check_name(name, kind="task id", source="tasks") == name


@pytest.mark.parametrize("name", BAD, ids=repr)
def test_invalid_names(name: str) -> None:
    assert not is_valid_name(name)
    with pytest.raises(InvalidDocument) as caught:
        check_name(name, kind="task id", source="tasks/x/task.yaml")
    (problem,) = caught.value.problems
    assert (problem.source, problem.path, problem.rule) == (
        "tasks/x/task.yaml",
        "(top level)",
        "name",
    )
    assert problem.message == f"{name!r} is not a valid task id: it must match {NAME_PATTERN}"


@pytest.mark.parametrize("value", [None, 1, b"abc", ["abc"]])
def test_non_strings_are_not_names(value: object) -> None:
    assert not is_valid_name(value)


def test_check_name_names_the_field() -> None:
    with pytest.raises(InvalidDocument) as caught:
        check_name("../etc", kind="site name", source="site.yaml", path="site")
    assert str(caught.value) == (
        f"site.yaml: site: '../etc' is not a valid site name: it must match {NAME_PATTERN} [name]"
    )


def test_long_values_are_cut_in_the_message() -> None:
    with pytest.raises(InvalidDocument) as caught:
        check_name("x" * 10_000, kind="task id", source="s")
    assert len(str(caught.value)) < 200
