"""Build an example's image without any image registry: busybox-static plus the example's app/.

An example folder holds ``Dockerfile`` (``FROM busybox``, ``COPY app/ /app/``, then ``ENV``,
``USER``, ``WORKDIR``, ``CMD``) for anyone with a registry. This module builds the same image
offline: a root folder with Debian's busybox-static binary, a link per applet, ``/etc/passwd``
with ``nobody`` (65534) and the example's ``app/`` at ``/app``, ``docker import``ed with the
Dockerfile's ``ENV``/``USER``/``WORKDIR``/``CMD``/``ENTRYPOINT`` lines as its settings.

    from examples.images import build_example_image
    image_id = build_example_image("federated-mean", "ptm-examples/federated-mean:latest",
                                   docker_host=None)   # None: $DOCKER_HOST or the default socket

Command line: ``examples/build-offline federated-mean [--tag T] [--docker-host H]`` or
``python -m examples.images …`` from the repository's root.
"""

from __future__ import annotations

import argparse
import io
import struct
import subprocess
import sys
import tarfile
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

import docker
import docker.errors
import requests

from ptm.errors import PtmError

EXAMPLES_DIR = Path(__file__).resolve().parent
EXAMPLES = ("federated-mean", "iterative")
BUSYBOX = Path("/bin/busybox")  # Debian's busybox-static puts its binary here
APP_COPY = ("app/", "/app/")
IMPORT_SETTINGS = frozenset({"CMD", "ENTRYPOINT", "ENV", "USER", "WORKDIR"})
PASSWD = "root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/nonexistent:/bin/false\n"
GROUP = "root:x:0:\nnogroup:x:65534:\n"
# The folders every image has; /tmp is added writable for all (the sandbox mounts a tmpfs there).
EMPTY_DIRS: tuple[str, ...] = ("bin", "sbin", "usr/bin", "usr/sbin", "etc", "root", "home")
EMPTY_DIRS += ("var", "proc", "sys", "dev")


class ImageBuildError(PtmError):
    """The image could not be built (unknown example, no static busybox, engine refused)."""


def default_tag(example: str) -> str:
    return f"ptm-examples/{example}:latest"


def build_example_image(
    example: str, tag: str, *, docker_host: str | None, busybox: Path = BUSYBOX
) -> str:
    """Build ``example``'s image offline into the engine at ``docker_host``; return its ID."""
    folder = example_folder(example)
    settings = import_settings(folder / "Dockerfile")
    check_static(busybox)
    archive = rootfs_archive(busybox, folder / "app")
    repository, version = _split_tag(tag)
    with _engine(docker_host) as client:
        try:
            client.api.import_image_from_data(
                archive, repository=repository, tag=version, changes=settings
            )
            image_id = client.images.get(tag).id
        except (docker.errors.DockerException, requests.RequestException) as exc:
            raise ImageBuildError(f"importing {tag}: {exc}") from exc
    if image_id is None:
        raise ImageBuildError(f"importing {tag}: the engine reported no image ID")
    return image_id


def example_folder(example: str) -> Path:
    if example not in EXAMPLES:
        raise ImageBuildError(f"no example {example!r}; the examples are {', '.join(EXAMPLES)}")
    return EXAMPLES_DIR / example


def import_settings(dockerfile: Path) -> list[str]:
    """The Dockerfile's settings, for ``docker import --change``; refuse what import cannot do."""
    settings: list[str] = []
    for line in _instructions(dockerfile.read_text(encoding="utf-8")):
        keyword, _, rest = line.partition(" ")
        keyword = keyword.upper()
        if keyword == "FROM":
            continue
        if keyword == "COPY" and tuple(rest.split()) == APP_COPY:
            continue
        if keyword not in IMPORT_SETTINGS:
            raise ImageBuildError(
                f"{dockerfile}: {line!r} cannot be built offline (only FROM, "
                f"COPY app/ /app/ and {', '.join(sorted(IMPORT_SETTINGS))})"
            )
        settings.append(f"{keyword} {rest.strip()}")
    return settings


def _instructions(text: str) -> Iterator[str]:
    pending = ""
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        yield pending + line
        pending = ""


def check_static(busybox: Path) -> None:
    """A dynamically linked busybox would not start in an image without a C library."""
    if not busybox.is_file():
        raise ImageBuildError(
            f"{busybox} is missing; install busybox-static (apt-get install busybox-static)"
        )
    if _elf_interpreter(busybox.read_bytes()[:65536]):
        raise ImageBuildError(f"{busybox} is dynamically linked; install busybox-static")


def _elf_interpreter(head: bytes) -> bool:
    """True when a 64-bit little-endian ELF file asks for a program interpreter (PT_INTERP)."""
    if head[:4] != b"\x7fELF" or head[4] != 2 or head[5] != 1:
        raise ImageBuildError("busybox is not a 64-bit little-endian ELF binary")
    (phoff,) = struct.unpack_from("<Q", head, 0x20)
    phentsize, phnum = struct.unpack_from("<HH", head, 0x36)
    types = (struct.unpack_from("<I", head, phoff + i * phentsize)[0] for i in range(phnum))
    return 3 in types  # PT_INTERP


def rootfs_archive(busybox: Path, app: Path) -> bytes:
    """The image's root filesystem as a tar archive (owned by root, app read-only)."""
    applets = subprocess.run(
        [str(busybox), "--list"], capture_output=True, text=True, check=True
    ).stdout.split()
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as tar:
        for name in EMPTY_DIRS:
            tar.addfile(_entry(name, tarfile.DIRTYPE, 0o755))
        tar.addfile(_entry("tmp", tarfile.DIRTYPE, 0o1777))
        binary = busybox.read_bytes()
        tar.addfile(_entry("bin/busybox", tarfile.REGTYPE, 0o755, len(binary)), io.BytesIO(binary))
        for applet in applets:
            if applet != "busybox":
                tar.addfile(_entry(f"bin/{applet}", tarfile.SYMTYPE, 0o777, link="busybox"))
        for name, text in (("etc/passwd", PASSWD), ("etc/group", GROUP)):
            data = text.encode()
            tar.addfile(_entry(name, tarfile.REGTYPE, 0o644, len(data)), io.BytesIO(data))
        _add_app(tar, app)
    return buffer.getvalue()


def _add_app(tar: tarfile.TarFile, app: Path) -> None:
    tar.addfile(_entry("app", tarfile.DIRTYPE, 0o755))
    for path in sorted(app.rglob("*")):
        name = f"app/{path.relative_to(app).as_posix()}"
        if path.is_symlink():
            raise ImageBuildError(f"{path}: links are not copied into images")
        if path.is_dir():
            tar.addfile(_entry(name, tarfile.DIRTYPE, 0o755))
        else:
            data = path.read_bytes()
            mode = 0o755 if path.suffix == ".sh" else 0o644
            tar.addfile(_entry(name, tarfile.REGTYPE, mode, len(data)), io.BytesIO(data))


def _entry(name: str, kind: bytes, mode: int, size: int = 0, link: str = "") -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type, info.mode, info.size, info.linkname = kind, mode, size, link
    info.uid = info.gid = 0
    info.mtime = int(time.time())
    return info


def _split_tag(tag: str) -> tuple[str, str]:
    """``host:port/name:tag`` → (``host:port/name``, ``tag``); the tag defaults to latest."""
    head, _, last = tag.rpartition("/")
    if ":" not in last:
        return tag, "latest"
    name, _, version = last.partition(":")
    return (f"{head}/{name}" if head else name), version


@contextmanager
def _engine(docker_host: str | None) -> Iterator[docker.DockerClient]:
    try:
        client = docker.DockerClient(base_url=docker_host) if docker_host else docker.from_env()
        client.ping()
    except (docker.errors.DockerException, requests.RequestException) as exc:
        where = docker_host or "DOCKER_HOST or the default socket"
        raise ImageBuildError(f"no Docker engine answers at {where}: {exc}") from exc
    try:
        yield client
    finally:
        client.close()


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="build-offline", description="Build an example's image from busybox-static."
    )
    parser.add_argument("example", choices=EXAMPLES)
    parser.add_argument("--tag", help="image name (default ptm-examples/EXAMPLE:latest)")
    parser.add_argument("--docker-host", help="engine address (default: $DOCKER_HOST)")
    parser.add_argument("--busybox", type=Path, default=BUSYBOX, help="a static busybox binary")
    args = parser.parse_args(argv)
    tag = args.tag or default_tag(args.example)
    try:
        image_id = build_example_image(
            args.example, tag, docker_host=args.docker_host, busybox=args.busybox
        )
    except (PtmError, OSError, subprocess.CalledProcessError) as exc:
        print(f"build-offline: {exc}", file=sys.stderr)
        return 1
    print(f"built {tag} ({image_id})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
