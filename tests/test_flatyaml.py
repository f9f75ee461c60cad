"""ptm.flatyaml's quick reading against the strict loader, over adversarial documents.

The property (issue 8, part 3): for every text, ``quick_fields`` is None or exactly what the
strict loader reads for those keys; and a text the strict loader refuses never yields a value,
so the overview (quick) cannot show a state that the detail view (strict) does not.
"""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from ptm.errors import InvalidDocument
from ptm.flatyaml import quick_fields, read_flat_fields
from ptm.schema import dump_yaml, load_yaml_text

KEYS = ("ptm", "task", "site", "state", "reason", "sites")

# Pieces an attacker (or a confused editor) puts into a status.yaml.
FRAGMENTS = [
    "state: completed",
    "  state: completed",
    "- state: completed",
    "state: 'completed'",
    'state: "completed"',
    "state: completed # done",
    "state:",
    "  completed",
    "---",
    "...",
    "--- state: completed",
    "%YAML 1.1",
    "reason: |",
    "reason: >-",
    "reason: &a x",
    "reason: *a",
    "reason: !!str x",
    "reason: {a: 1}",
    "reason: [a, b]",
    "reason: [a, [b]]",
    "reason: 'it''s'",
    "reason: 'open",
    'reason: "esc\\u0041"',
    'reason: "open',
    "reason: a: b",
    "reason: a #c",
    "reason: ~",
    "reason: Yes",
    "reason: NULL",
    "reason: yEs",
    "reason: a:",
    "reason: a:b c",
    "reason: a - b (c) d=e",
    "reason: a  b",
    "reason: ''",
    "reason: 'a'b'",
    "x: 12:",
    "x: 1:20",
    "x: 09",
    "x: 0b12",
    "x: 3f2c3f2c",
    "x: 1e5",
    "x: 1.e+999",
    "x: " + "9" * 70,
    "outputs:",
    "- path: a",
    "  bytes: 1",
    "  bytes: 2",
    "  path: a",
    "reason: null",
    "reason: yes",
    "reason: 0x1f",
    "reason: 1_000",
    "reason: 007",
    "reason: .nan",
    "reason: 2026-11-29T10:00:00Z",
    "sites:",
    "- a",
    "  - a",
    "-",
    "- - a",
    "- '*'",
    "  nested: 1",
    "  other: two words",
    "? complex",
    ": value",
    "<<: {a: 1}",
    "yes: 1",
    "1: one",
    "a b: c",
    "key:value",
    "# comment",
    "  # indented comment",
    "",
    "   ",
    "junk",
    "]",
    "ptm: 1",
    "ptm: true",
    "task: t1",
    "site: s",
    "\tstate: completed",
    "state:\tcompleted",
    "state: completed\r",
    "\ufeffstate: completed",
    "state: compl\x85eted",
    "state: compl\x1beted",
    "state: compl\u2028eted",
]

LINES = st.lists(st.sampled_from(FRAGMENTS), min_size=1, max_size=12)


def strict_fields(text: str) -> dict[str, Any] | None:
    """What the strict loader reads for KEYS, or None when it refuses the text."""
    try:
        document = load_yaml_text(text, source="x")
    except InvalidDocument:
        return None
    return {key: document[key] for key in KEYS if key in document}


def check_agrees(text: str) -> bool:
    """Assert the property for ``text``; True when the quick reading answered."""
    quick = quick_fields(text, KEYS)
    strict = strict_fields(text)
    if strict is None:
        assert quick is None, (text, quick)
        with pytest.raises(InvalidDocument):
            read_flat_fields(text.encode("utf-8", "surrogatepass"), KEYS, source="x")
        return False
    assert quick is None or quick == strict, (text, quick, strict)
    return quick is not None


@settings(
    max_examples=400,
    deadline=None,
    derandomize=True,  # the same examples in CI as here; run with more locally to search
    suppress_health_check=[HealthCheck.too_slow],
)
@given(LINES, st.sampled_from(["\n", "\r\n"]), st.booleans())
@example(["state: completed", "---", "state: failed"], "\n", False)
@example(["reason: |", "  state: completed"], "\n", False)
@example(["state: completed", "state: failed"], "\n", False)
@example(["state: completed"], "\r\n", False)
@example(["state: completed"], "\n", True)
@example(["reason: >-", "state: completed"], "\n", False)
@example(["reason: 'open", "state: completed", "  x'"], "\n", False)
def test_lines_of_fragments(lines: list[str], newline: str, bom: bool) -> None:
    text = ("\ufeff" if bom else "") + newline.join(lines) + newline
    check_agrees(text)


SCALARS = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(10**20), max_value=10**20),
    st.text(max_size=40),
    st.text(alphabet="abc :#'\"-[]{},&*!|>%@`\n ", max_size=30),
    st.sampled_from(["yes", "null", "~", "0x1f", "1.5", "2026-11-29T10:00:00Z", "", "*"]),
)
VALUES = st.recursive(
    SCALARS,
    lambda inner: (
        st.lists(inner, max_size=3)
        | st.dictionaries(st.from_regex(r"[a-z_][a-z0-9_]{0,8}", fullmatch=True), inner, max_size=3)
    ),
    max_leaves=8,
)
DOCUMENTS = st.dictionaries(
    st.sampled_from([*KEYS, "exit_code", "outputs", "image", "a-b", "x"]), VALUES, min_size=1
)


@settings(
    max_examples=400,
    deadline=None,
    derandomize=True,  # the same examples in CI as here; run with more locally to search
    suppress_health_check=[HealthCheck.too_slow],
)
@given(DOCUMENTS, st.integers(min_value=0, max_value=40), st.sampled_from(FRAGMENTS))
def test_dumped_documents_with_a_fragment_spliced_in(
    document: dict[str, Any], where: int, fragment: str
) -> None:
    text = dump_yaml(document)
    check_agrees(text)
    lines = text.split("\n")
    lines.insert(where % len(lines), fragment)
    check_agrees("\n".join(lines))


def test_reads_what_ptm_writes() -> None:
    """The fast path is taken for status files as agents write them (nested outputs too)."""
    document = {
        "ptm": 1,
        "task": "age-stats",
        "site": "hospital-a",
        "state": "completed",
        "reason": "image ptm-test/stats:1 is not allowed: it matches none of 'org/.*:.*' " * 3,
        "task_commit": "3f2c" * 10,
        "submitted_by": "alice@uni.example",
        "exit_code": 0,
        "received_at": "2026-11-29T10:00:00Z",
        "outputs": [
            {"path": "output/summary.csv", "bytes": 120, "sha256": "ab" * 32},
            {"path": "output/plots/a b.png", "bytes": 7, "sha256": "cd" * 32},
        ],
        "limits": {"memory": "2g", "cpus": 1.5, "nested": {"a": [1, 2]}},
        "agent": "ptm 0.1.0",
    }
    text = dump_yaml(document)
    assert quick_fields(text, KEYS) == {k: document[k] for k in KEYS if k in document}
    assert quick_fields(text, ["outputs", "exit_code"]) == {
        "outputs": document["outputs"],
        "exit_code": 0,
    }


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (
            'ptm: 1   # version\nsites: [a, \'b\', "c"]  # or ["*"]\n',
            {"ptm": 1, "sites": ["a", "b", "c"]},
        ),
        ("sites:\n  - a\n  - b\n", {"sites": ["a", "b"]}),
        ("sites:\n- '*'\nreason: null\n", {"sites": ["*"], "reason": None}),
        ("sites:\n# comment\n- a\n", {"sites": ["a"]}),
        ("reason: 'a\n\n  b'\nstate: done\n", {"reason": "a\nb", "state": "done"}),
        ("reason: long plain\n  text folded\n", {"reason": "long plain text folded"}),
    ],
)
def test_common_shapes(text: str, expected: dict[str, Any]) -> None:
    assert quick_fields(text, KEYS) == expected
    assert strict_fields(text) == expected


@pytest.mark.parametrize(
    "text",
    [
        "state: &a completed\n",
        "state: !!str completed\n",
        "---\nstate: completed\n",
        "state: completed\nstate: failed\n",
        "state: completed\n---\nstate: failed\n",
        "state: completed\n...\njunk: [\n",
        'state: "esc\\u0041"\n',
        "state: completed\r\n",
        "\ufeffstate: completed\n",
        "sites: [a, [b]]\n",
        "reason: |\n  state: completed\n",
        "reason: 0x1f\n",
        "ptm: 1\nother:\n  a: 1\n  a: 2\nstate: completed\n",
        "state: completed\njunk\n",
        "# only a comment\n",
        "state: completed\noutputs:\n- path: a\n  path: b\n",
        "state: completed\nx: 12:\n",
        "state: completed\nstate: completed\nx: 1\n",
        "yes: 1\nstate: completed\n",
        "state: completed\nx: " + "9" * 5000 + "\n",
    ],
)
def test_unsure_rather_than_wrong(text: str) -> None:
    assert quick_fields(text, KEYS) is None
    check_agrees(text)
