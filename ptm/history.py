"""A branch's history as the auditor reads it: every commit, merges included, with the paths
each one changed, from one ``git log -m`` (a merge comes with one path list per parent it
differs from). Paths are as the branch has them: untrusted."""

from __future__ import annotations

from dataclasses import dataclass, field, replace

from ptm.gitrepo import GitRepo

RECORD = "\x1e"
FIELD = "\x1f"
_ESCAPES = {"a": 7, "b": 8, "t": 9, "n": 10, "v": 11, "f": 12, "r": 13, '"': 34, "\\": 92}


@dataclass(frozen=True)
class LoggedCommit:
    """One commit of ``git log -m``; ``diffs`` has one path list per parent it differs from
    (lists for parents it equals are not shown), a non-merge has one."""

    commit: str
    parents: tuple[str, ...]
    author: str
    subject: str
    date: str
    diffs: tuple[tuple[str, ...], ...] = field(default=())

    @property
    def is_merge(self) -> bool:
        return len(self.parents) > 1

    @property
    def paths(self) -> tuple[str, ...]:
        return tuple(dict.fromkeys(p for diff in self.diffs for p in diff))

    def differs_from_every_parent(self, prefix: str) -> bool:
        """For a merge: does what it has under ``prefix`` differ from each parent's?"""
        shown = sum(1 for diff in self.diffs if any(p.startswith(prefix) for p in diff))
        return self.is_merge and shown == len(self.parents)


def history(repo: GitRepo, ref: str, under: str | None) -> list[LoggedCommit]:
    """Every commit of ``ref`` (touching ``under``, when given), oldest first, parents before
    children (committer dates do not count), in one git process."""
    fmt = FIELD.join(("%H", "%P", "%ae", "%s", "%aI"))
    out = repo.run(
        "--literal-pathspecs",
        "log",
        "--no-show-signature",  # whatever the user's log.showSignature or color settings
        "--no-color",
        "--full-history",
        "--topo-order",
        "--reverse",
        "--no-renames",
        "-m",
        "--name-only",
        f"--format={RECORD}{fmt}",
        "--end-of-options",
        ref,
        "--",
        *([under] if under else []),
        config={"core.quotePath": "false"},
        strip=False,
    )
    return parse_history(out)


def parse_history(output: str) -> list[LoggedCommit]:
    """Pure. Header lines start with RECORD, which a path line never does: git quotes any name
    with a control character (unquoted again here)."""
    commits: dict[str, LoggedCommit] = {}
    current: str | None = None
    for line in output.split("\n"):  # not splitlines(): it splits at RECORD and FIELD too
        if line.startswith(RECORD):
            sha, parents, author, subject, date = (line[1:].split(FIELD) + [""] * 5)[:5]
            known = commits.get(sha) or LoggedCommit(
                sha, tuple(parents.split()), author, subject, date
            )
            commits[sha] = replace(known, diffs=(*known.diffs, ()))
            current = sha
        elif line and current is not None:
            entry = commits[current]
            last = (*entry.diffs[-1], unquote_path(line))
            commits[current] = replace(entry, diffs=(*entry.diffs[:-1], last))
    return list(commits.values())


def unquote_path(text: str) -> str:
    """A path as git prints it: C-quoted, with octal escapes for bytes, when it had to be."""
    if len(text) < 2 or not (text.startswith('"') and text.endswith('"')):
        return text
    raw = bytearray()
    body, i = text[1:-1], 0
    while i < len(body):
        if body[i] == "\\" and body[i + 1 : i + 2] in _ESCAPES:
            raw.append(_ESCAPES[body[i + 1]])
            i += 2
        elif body[i] == "\\" and _is_octal(body[i + 1 : i + 4]):
            raw.append(int(body[i + 1 : i + 4], 8) & 0xFF)
            i += 4
        else:
            raw += body[i].encode("utf-8", "surrogateescape")
            i += 1
    return raw.decode("utf-8", "surrogateescape")


def _is_octal(text: str) -> bool:
    return len(text) == 3 and all(char in "01234567" for char in text)
