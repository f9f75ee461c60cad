"""A real smart-HTTP git host for tests: Debian's lighttpd running ``git http-backend`` as CGI,
with basic authentication (REMOTE_USER) on a free loopback port in a private folder; stopped
by its pid. scripts/git-peers installs lighttpd."""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from tests.fixtures_docker import free_loopback_port, unavailable
from tests.ssh_servers import wait_for_port

HTTP_BACKEND = Path("/usr/lib/git-core/git-http-backend")


@dataclass(frozen=True)
class HttpGitHost:
    port: int
    repositories: Path

    def url(self, repo: str, user: str | None = None, password: str | None = None) -> str:
        credentials = f"{user}:{password}@" if user else ""
        return f"http://{credentials}127.0.0.1:{self.port}/git/{repo}.git"


@contextmanager
def running_lighttpd(folder: Path, users: Mapping[str, str]) -> Iterator[HttpGitHost]:
    """lighttpd serving the bare repositories in ``folder/repositories`` to ``users``
    (name → password) over smart HTTP; pushes need a login."""
    lighttpd = shutil.which("lighttpd") or "/usr/sbin/lighttpd"
    if not Path(lighttpd).exists() or not HTTP_BACKEND.exists():
        unavailable("no lighttpd or git http-backend (run scripts/git-peers packages)")
    repositories = folder / "repositories"
    repositories.mkdir(parents=True, exist_ok=True)
    (folder / "users").write_text("".join(f"{u}:{p}\n" for u, p in users.items()))
    port = free_loopback_port()
    config = folder / "lighttpd.conf"
    config.write_text(
        f'server.document-root = "{folder}"\nserver.port = {port}\n'
        f'server.bind = "127.0.0.1"\nserver.pid-file = "{folder}/lighttpd.pid"\n'
        f'server.errorlog = "{folder}/error.log"\n'
        'server.modules += ("mod_alias", "mod_cgi", "mod_setenv", "mod_auth", "mod_authn_file")\n'
        f'alias.url = ("/git" => "{HTTP_BACKEND}")\n'
        '$HTTP["url"] =~ "^/git" {\n'
        '  cgi.assign = ("" => "")\n'
        f'  setenv.add-environment = ("GIT_PROJECT_ROOT" => "{repositories}",'
        ' "GIT_HTTP_EXPORT_ALL" => "1")\n'
        '  auth.backend = "plain"\n'
        f'  auth.backend.plain.userfile = "{folder}/users"\n'
        '  auth.require = ("" => ("method" => "basic", "realm" => "git",'
        ' "require" => "valid-user"))\n'
        "}\n"
    )
    process = subprocess.Popen([lighttpd, "-D", "-f", str(config)])
    try:
        wait_for_port(port, process, folder / "error.log")
        yield HttpGitHost(port, repositories)
    finally:
        process.terminate()
        process.wait(timeout=20)
