"""ptm.history: parsing ``git log -m --name-only`` output, quoted names included (pure)."""

from __future__ import annotations

from ptm.history import parse_history, unquote_path


def test_merges_keep_one_path_list_per_parent_they_differ_from() -> None:
    output = (
        "\x1eaaa\x1fp1\x1fa@x\x1fAdd\x1f2026-01-01T00:00:00+00:00\n\ntasks/t1/task.yaml\n"
        "\x1emmm\x1fp1 p2\x1fm@x\x1fMerge\x1f2026-01-02T00:00:00+00:00\n\ntasks/t1/a\n"
        "\x1emmm\x1fp1 p2\x1fm@x\x1fMerge\x1f2026-01-02T00:00:00+00:00\n\ntasks/t1/b\ntasks/t2/c\n"
        "\x1eeee\x1fp3\x1fe@x\x1fEmpty\x1f2026-01-03T00:00:00+00:00\n"
    )
    first, merge, empty = parse_history(output)
    assert (first.commit, first.paths, first.is_merge) == ("aaa", ("tasks/t1/task.yaml",), False)
    assert merge.diffs == (("tasks/t1/a",), ("tasks/t1/b", "tasks/t2/c"))
    assert merge.differs_from_every_parent("tasks/t1/")
    assert not merge.differs_from_every_parent("tasks/t2/")
    assert (merge.author, merge.subject) == ("m@x", "Merge")
    assert empty.paths == ()


def test_a_path_that_looks_like_a_header_cannot_start_a_record() -> None:
    output = '\x1eaaa\x1f\x1fa@x\x1fs\x1fd\n\n"tasks/\\036bbb\\037p"\n'
    (only,) = parse_history(output)
    assert only.paths == ("tasks/\x1ebbb\x1fp",)


def test_unquote_path() -> None:
    assert unquote_path("plain/name.txt") == "plain/name.txt"
    assert unquote_path('"a\\tb\\n\\"c\\\\"') == 'a\tb\n"c\\'
    assert unquote_path('"caf\\303\\251"') == "café"
    assert unquote_path('"bad\\377"') == "bad\udcff"
    assert unquote_path('"\\9x"') == "\\9x"
