from __future__ import annotations

from pathlib import Path

import pytest

from ptm.errors import ConfigError, InvalidDocument
from ptm.siteconfig import (
    ImageRule,
    Limits,
    Mount,
    PolicySettings,
    RegistrySettings,
    RuntimeSettings,
    SftpTarget,
    SiteConfig,
    load_site_config,
)
from tests.test_schema import DESIGN_SITE_YAML, SHA

MINIMAL = (
    "site: hospital-a\nregistry: {url: /srv/registry.git}\npolicy: {require_signed_tasks: false}\n"
)


def write_config(tmp_path: Path, text: str, name: str = "site.yaml") -> Path:
    path = tmp_path / "etc" / name
    path.parent.mkdir(exist_ok=True)
    path.write_text(text, encoding="utf-8")
    return path


def test_design_example_loads(tmp_path: Path) -> None:
    path = write_config(tmp_path, DESIGN_SITE_YAML)
    config = load_site_config(path)
    assert config.site == "hospital-a" and config.source == path
    assert config.registry == RegistrySettings(
        "ssh://git@git.example.org/consortium/registry.git", "main", Path("/etc/ptm/deploy_key")
    )
    assert (config.workdir, config.poll_interval) == (Path("/var/lib/ptm"), 30)
    assert config.policy.require_signed_tasks and not config.policy.require_digest
    assert config.policy.allowed_signers == Path("/etc/ptm/allowed_signers")
    assert config.policy.trusted_submitters == ("alice@uni.example",)
    assert (config.policy.approval, config.policy.release) == ("auto", "auto")
    assert config.limits == Limits(
        timeout=3600,
        memory_bytes=2 * 1024**3,
        cpus=2.0,
        pids=256,
        output_bytes=104857600,
        output_files=1000,
        max_parallel=2,
    )
    assert config.runtime == RuntimeSettings("unix:///var/run/docker.sock", "always", "none")
    assert dict(config.environment) == {"SPARQL_ENDPOINT": "http://sparql.internal:8890/sparql"}
    assert config.mounts == (Mount(Path("/srv/data"), "/data"),)
    assert config.signing_key == Path("/etc/ptm/site_key")
    assert config.sftp_targets["ttp"] == SftpTarget(
        "ttp",
        "ttp.example.org",
        "hospital-a",
        Path("/etc/ptm/ttp_key"),
        "ssh-ed25519 AAAA…",
        22,
        "/incoming",
    )


def test_defaults(tmp_path: Path) -> None:
    config = load_site_config(write_config(tmp_path, MINIMAL))
    assert config.registry.branch == "main" and config.registry.ssh_key is None
    assert (config.workdir, config.poll_interval, config.signing_key) == (
        Path("/var/lib/ptm"),
        30,
        None,
    )
    assert config.policy == PolicySettings(require_signed_tasks=False)
    assert config.limits == Limits(3600, 2 * 1024**3, 2.0, 256, 100 * 1024**2, 1000, 16, 1024**2, 2)
    assert config.runtime == RuntimeSettings(None, "always", "none", "65534:65534", False)
    assert (dict(config.environment), config.mounts, dict(config.sftp_targets)) == ({}, (), {})


def test_policy_defaults_refuse_every_image(tmp_path: Path) -> None:
    config = load_site_config(write_config(tmp_path, MINIMAL))
    assert not config.image_allowed("busybox")


def test_relative_paths_are_relative_to_the_config_folder(tmp_path: Path) -> None:
    text = MINIMAL.replace("/srv/registry.git", "../registry.git") + (
        "workdir: work\nsigning_key: keys/site\nmounts: [{source: ./data, target: /data}]\n"
        "sftp_targets: {ttp: {host: h, user: u, key: ../ttp_key, host_key: 'ssh-ed25519 AAAA'}}\n"
    )
    config = load_site_config(write_config(tmp_path, text))
    etc = tmp_path / "etc"
    assert config.registry.url == str(tmp_path / "registry.git")
    assert config.workdir == etc / "work" and config.signing_key == etc / "keys" / "site"
    assert config.mounts[0].source == etc / "data"
    assert config.sftp_targets["ttp"].key == tmp_path / "ttp_key"


@pytest.mark.parametrize(
    "url",
    [
        "ssh://git@host/r.git",
        "https://git.example/r.git",
        "file:///srv/r.git",
        "git@host:r.git",
        "host:path/r.git",
    ],
)
def test_remote_urls_are_kept(tmp_path: Path, url: str) -> None:
    text = MINIMAL.replace("/srv/registry.git", f"'{url}'")
    assert load_site_config(write_config(tmp_path, text)).registry.url == url


def test_relative_file_url_is_refused(tmp_path: Path) -> None:
    path = write_config(tmp_path, MINIMAL.replace("/srv/registry.git", "file://registry.git"))
    with pytest.raises(ConfigError) as caught:
        load_site_config(path)
    assert str(caught.value) == (
        f"{path}: registry.url: 'file://registry.git': a file:// URL must be absolute [url]"
    )


def test_bad_regex_names_file_field_and_error(tmp_path: Path) -> None:
    text = MINIMAL.replace("policy: {", "policy: {allowed_images: ['busybox:.*', 'a(b'], ")
    path = write_config(tmp_path, text)
    with pytest.raises(ConfigError) as caught:
        load_site_config(path)
    assert str(caught.value) == (
        f"{path}: policy.allowed_images[1]: 'a(b' is not a valid regular expression: "
        "missing ), unterminated subpattern at position 1 [regex]"
    )


def test_schema_problems_are_invalid_documents(tmp_path: Path) -> None:
    path = write_config(tmp_path, MINIMAL + "polcy: {}\nlimits: {cpus: 0}\n")
    with pytest.raises(InvalidDocument) as caught:
        load_site_config(path)
    assert [str(p) for p in caught.value.problems] == [
        f"{path}: (top level): unknown key 'polcy' (did you mean 'policy'?) [additionalProperties]",
        f"{path}: limits.cpus: must be greater than 0, found 0 [exclusiveMinimum]",
    ]


def test_image_allowed_uses_full_matches_and_exact_digests(tmp_path: Path) -> None:
    digest = f"trusted/tool@sha256:{SHA}"
    text = MINIMAL.replace(
        "policy: {", f"policy: {{allowed_images: ['myconsortium/.*:.*', '{digest}'], "
    )
    config = load_site_config(write_config(tmp_path, text))
    assert config.image_allowed("myconsortium/age-stats:1.2")
    assert not config.image_allowed("evil/myconsortium/x:1")  # a search would find it
    assert not config.image_allowed("myconsortium/x:1\n")
    assert not config.image_allowed("myconsortium/x")
    assert config.image_allowed(digest)
    assert not config.image_allowed(f"trusted/tool:1@sha256:{SHA}")
    assert not config.image_allowed("trusted/tool")
    assert config.policy.allowed_images[1] == ImageRule(digest, None)


@pytest.mark.parametrize(
    ("target", "reason"),
    [
        ("/ptm", "overlaps /ptm, where containers find their task files"),
        ("/ptm/output", "overlaps /ptm, where containers find their task files"),
        ("/", "overlaps /ptm, where containers find their task files"),
        ("//ptm/", "overlaps /ptm, where containers find their task files"),
        ("/data/../ptm", "must not contain . or .. parts"),
        ("/./data", "must not contain . or .. parts"),
        ("/data", "is already the target of another mount"),
        ("/data/", "is already the target of another mount"),
    ],
)
def test_bad_mount_targets(tmp_path: Path, target: str, reason: str) -> None:
    text = (
        MINIMAL
        + f"mounts: [{{source: /srv/a, target: /data}}, {{source: /srv/b, target: '{target}'}}]\n"
    )
    path = write_config(tmp_path, text)
    with pytest.raises(ConfigError) as caught:
        load_site_config(path)
    assert str(caught.value) == f"{path}: mounts[1].target: {target!r} {reason} [mount-target]"


def test_good_mount_targets(tmp_path: Path) -> None:
    text = (
        MINIMAL + "mounts: [{source: /srv/a, target: /data}, {source: /srv/b, target: /ptmdata}]\n"
    )
    assert [m.target for m in load_site_config(write_config(tmp_path, text)).mounts] == [
        "/data",
        "/ptmdata",
    ]


@pytest.mark.parametrize("user", ["0", "0:0", "00:1000"])
def test_root_needs_allow_root(tmp_path: Path, user: str) -> None:
    path = write_config(tmp_path, MINIMAL + f"runtime: {{user: '{user}'}}\n")
    with pytest.raises(ConfigError, match=r"runtime.user: runs containers as root.*\[allow_root\]"):
        load_site_config(path)
    allowed = write_config(
        tmp_path, MINIMAL + f"runtime: {{user: '{user}', allow_root: true}}\n", "b.yaml"
    )
    assert load_site_config(allowed).runtime.user == user


def test_host_network_is_refused(tmp_path: Path) -> None:
    path = write_config(tmp_path, MINIMAL + "runtime: {network: host}\n")
    with pytest.raises(ConfigError, match=r"runtime.network: would give containers"):
        load_site_config(path)
    other = write_config(tmp_path, MINIMAL + "runtime: {network: ptm-sparql}\n", "b.yaml")
    assert load_site_config(other).runtime.network == "ptm-sparql"


def test_signed_tasks_need_allowed_signers(tmp_path: Path) -> None:
    path = write_config(tmp_path, "site: a\nregistry: {url: /r}\n")
    with pytest.raises(ConfigError) as caught:
        load_site_config(path)
    assert str(caught.value) == (
        f"{path}: policy.allowed_signers: must be set while policy.require_signed_tasks is true "
        "[required]"
    )


def test_every_semantic_problem_is_reported_at_once(tmp_path: Path) -> None:
    text = MINIMAL.replace("policy: {", "policy: {allowed_images: ['('], ") + (
        "runtime: {user: '0', network: host}\nmounts: [{source: /a, target: /ptm}]\n"
    )
    with pytest.raises(ConfigError) as caught:
        load_site_config(write_config(tmp_path, text))
    assert [line.rsplit("[", 1)[1] for line in str(caught.value).splitlines()] == [
        "regex]",
        "allow_root]",
        "network]",
        "mount-target]",
    ]


@pytest.mark.parametrize("name", ["PTM_OUTPUT", "PTM_", "1ABC", "A-B", "A B", "A\n", "ÄRGER", ""])
def test_environment_names(tmp_path: Path, name: str) -> None:
    path = write_config(tmp_path, MINIMAL + f"environment: {{{name!r}: x}}\n".replace("'", '"'))
    with pytest.raises(InvalidDocument) as caught:
        load_site_config(path)
    assert [(p.path, p.rule) for p in caught.value.problems] == [("environment", "pattern")]


def test_environment_is_read_only(tmp_path: Path) -> None:
    config = load_site_config(
        write_config(tmp_path, MINIMAL + "environment: {ptm_lower: ok, _X: y}\n")
    )
    assert dict(config.environment) == {"ptm_lower": "ok", "_X": "y"}
    with pytest.raises(TypeError):
        config.environment["PTM_X"] = "1"  # type: ignore[index]  # proving it fails at runtime


@pytest.mark.parametrize("site", ["../x", "Hospital", "x\n", "hospit\u0430l", ""])
def test_site_name_is_checked(tmp_path: Path, site: str) -> None:
    path = write_config(
        tmp_path, MINIMAL.replace("site: hospital-a", f"site: {site!r}".replace("'", '"'))
    )
    with pytest.raises(InvalidDocument) as caught:
        load_site_config(path)
    assert [(p.path, p.rule) for p in caught.value.problems] == [("site", "pattern")]


def test_from_document_builds_without_a_file(tmp_path: Path) -> None:
    document = {"site": "a", "registry": {"url": "reg"}, "policy": {"require_signed_tasks": False}}
    config = SiteConfig.from_document(document, source="inline", base_dir=tmp_path)
    assert config.registry.url == str(tmp_path / "reg") and config.source is None


def test_symlinked_config_is_refused(tmp_path: Path) -> None:
    real = write_config(tmp_path, MINIMAL)
    link = tmp_path / "link.yaml"
    link.symlink_to(real)
    with pytest.raises(InvalidDocument, match=r"\[symlink\]"):
        load_site_config(link)


def test_config_is_frozen(tmp_path: Path) -> None:
    config = load_site_config(write_config(tmp_path, DESIGN_SITE_YAML))
    with pytest.raises(AttributeError):
        config.limits.timeout = 1  # type: ignore[misc]  # proving it fails at runtime
    assert hash(config) == hash(
        load_site_config(write_config(tmp_path, DESIGN_SITE_YAML, "b.yaml"))
    )


def test_trusted_cancellers_load_and_default_to_none(tmp_path: Path) -> None:
    assert load_site_config(write_config(tmp_path, MINIMAL)).policy.trusted_cancellers == ()
    text = MINIMAL.replace("false}", "false, trusted_cancellers: [ops@hospital-a.example]}")
    config = load_site_config(write_config(tmp_path, text, "with.yaml"))
    assert config.policy.trusted_cancellers == ("ops@hospital-a.example",)
