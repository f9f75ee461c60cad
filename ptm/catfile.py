"""Many git objects through one ``git cat-file --batch-command --buffer`` (git 2.36 or later).

A reader asks for sizes first (``info``), decides on them, and only then asks for the contents
(``contents``) of what it accepted, all in the same process: a tree walk costs one git process
however many levels it has. A file's contents can be copied out in chunks (``copy``), so a file
of any size never sits in memory whole. The session has the deadline of one git call
(``GitRepo.session``); any failure of git is a RegistryError.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Sequence

from ptm.errors import CommandTimedOut, RegistryError
from ptm.gitrepo import GitRepo

COPY_CHUNK_BYTES = 1024**2

ObjectInfo = tuple[str, int]  # type, size


class CatFile:
    """One ``cat-file --batch-command`` session; use it as a context manager."""

    def __init__(self, repo: GitRepo) -> None:
        self._repo = repo
        self._session = repo.session("cat-file", "--batch-command", "--buffer")

    def __enter__(self) -> CatFile:
        return self

    def __exit__(self, *exc: object) -> None:
        self._session.__exit__()

    def info(self, oids: Sequence[str]) -> list[ObjectInfo | None]:
        """(type, size) of each object, None when it is missing."""
        if not oids:
            return []
        with self._translated():
            self._request("info", oids)
            return [_header(self._session.read_line(), oid) for oid in oids]

    def contents(self, oids: Sequence[str]) -> list[bytes | None]:
        """The contents of objects whose sizes the caller checked; None when one is missing."""
        if not oids:
            return []
        found: list[bytes | None] = []
        with self._translated():
            self._request("contents", oids)
            for oid in oids:
                header = _header(self._session.read_line(), oid)
                found.append(None if header is None else self._body(header[1]))
        return found

    def copy(self, oid: str, write: Callable[[bytes], object]) -> bool:
        """Hand the contents of ``oid`` to ``write`` a chunk at a time; False when missing."""
        with self._translated():
            self._request("contents", [oid])
            header = _header(self._session.read_line(), oid)
            if header is None:
                return False
            for chunk in self._session.read_chunks(header[1], COPY_CHUNK_BYTES):
                write(chunk)
            self._end_of_object()
        return True

    def _request(self, command: str, oids: Sequence[str]) -> None:
        lines = "".join(f"{command} {oid}\n" for oid in oids)
        self._session.send(f"{lines}flush\n".encode("ascii"))

    def _body(self, size: int) -> bytes:
        data = self._session.read_exact(size)
        self._end_of_object()
        return data

    def _end_of_object(self) -> None:
        if self._session.read_line(limit=0) != b"":
            raise EOFError("an object's contents did not end where its size said")

    @contextlib.contextmanager
    def _translated(self) -> Iterator[None]:
        try:
            yield
        except (CommandTimedOut, EOFError, OSError) as exc:
            raise RegistryError(self._repo.describe_session_error(self._session, exc)) from exc


def _header(line: bytes, oid: str) -> ObjectInfo | None:
    """``<oid> <type> <size>``, or None for ``<oid> missing`` (and ``ambiguous``)."""
    parts = line.decode("ascii", "replace").split(" ")
    if len(parts) == 3 and parts[0] == oid and parts[2].isdigit():
        return parts[1], int(parts[2])
    if len(parts) == 2 and parts[1] in ("missing", "ambiguous"):
        return None
    raise EOFError(f"git cat-file answered {line[:80]!r} for {oid}")
