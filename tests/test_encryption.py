"""Encryption to SSH keys with real keys from ssh-keygen, pyrage, and Debian's age tool."""

from __future__ import annotations

import hashlib
import io
import subprocess
import tarfile
from dataclasses import dataclass
from pathlib import Path

import pytest

from ptm.encryption import (
    EncryptionError,
    decrypt,
    encrypt,
    load_private_key,
    parse_allowed_signers,
    parse_public_key,
    private_key_fingerprint,
    signer_keys,
)
from ptm.errors import ConfigError
from ptm.schema import dump_yaml, load_yaml_text
from ptm.sealed import (
    SEALED_FILE,
    public_view,
    seal,
    signing_key_path,
    unseal_collected,
    unseal_folder,
    write_archive,
)
from ptm.siteconfig import SiteConfig, load_site_config
from ptm.status import StatusRecord
from tests.agent_support import write_site_config

COMMIT = "3f2c" + "0" * 36


@dataclass(frozen=True)
class Key:
    private: Path
    line: str  # "TYPE BASE64"

    @property
    def public(self) -> Path:
        return self.private.with_name(self.private.name + ".pub")


def keygen(folder: Path, name: str, kind: str, *extra: str) -> Key:
    folder.mkdir(parents=True, exist_ok=True)
    private = folder / name
    command = ["ssh-keygen", "-q", "-t", kind, "-N", "", "-C", f"{name}@test", "-f", str(private)]
    subprocess.run([*command, *extra], check=True)
    fields = private.with_name(name + ".pub").read_text().split()
    return Key(private, f"{fields[0]} {fields[1]}")


def ssh_fingerprint(path: Path) -> str:
    done = subprocess.run(["ssh-keygen", "-l", "-f", str(path)], capture_output=True, text=True)
    return done.stdout.split()[1]


def age_decrypt(identity: Path, data: bytes) -> bytes:
    """The reference tool, from Debian's age package (scripts/engine packages installs it)."""
    done = subprocess.run(
        ["age", "--decrypt", "--identity", str(identity)], input=data, capture_output=True
    )
    assert done.returncode == 0, done.stderr
    return done.stdout


@pytest.fixture(scope="module")
def keys(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Key]:
    """Made once for this module: an RSA key takes ssh-keygen a while."""
    folder = tmp_path_factory.mktemp("keys")
    return {
        "alice": keygen(folder, "alice", "ed25519"),
        "alice_rsa": keygen(folder, "alice_rsa", "rsa", "-b", "3072"),
        "bob": keygen(folder, "bob", "ed25519"),
        "carol_ecdsa": keygen(folder, "carol", "ecdsa"),
    }


@pytest.fixture
def allowed_signers(tmp_path: Path, keys: dict[str, Key]) -> Path:
    path = tmp_path / "allowed_signers"
    path.write_text(
        "# who may sign tasks\n"
        f'alice@uni.example namespaces="git" {keys["alice"].line}\n'
        f'alice@uni.example,al@old.example namespaces="git,file" {keys["alice_rsa"].line} rsa\n'
        f"bob@uni.example {keys['bob'].line}\n"
        f"alice@uni.example cert-authority {keys['bob'].line}\n"
        f'carol@uni.example namespaces="git" {keys["carol_ecdsa"].line}\n'
    )
    return path


# ---- keys ------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["alice", "alice_rsa"])
def test_fingerprints_are_the_ones_ssh_keygen_prints(keys: dict[str, Key], name: str) -> None:
    key = keys[name]
    expected = ssh_fingerprint(key.public)
    assert parse_public_key(key.line, source="x").fingerprint == expected
    assert private_key_fingerprint(key.private.read_bytes()) == expected
    assert load_private_key(key.private).fingerprint == expected


def test_a_key_age_cannot_encrypt_to_is_refused_naming_its_type(keys: dict[str, Key]) -> None:
    with pytest.raises(EncryptionError) as caught:
        parse_public_key(keys["carol_ecdsa"].line, source="policy.encrypt_to[0]")
    message = str(caught.value)
    assert message.startswith("policy.encrypt_to[0]: ")
    assert "ecdsa-sha2-nistp256" in message and "ssh-ed25519" in message


@pytest.mark.parametrize(
    ("text", "words"),
    [
        ("ssh-ed25519", "not an SSH public key line"),
        ("ssh-ed25519 AAAA!!!", "base64"),
        ("ssh-ed25519 AAAAB3NzaC1yc2EAAAADAQAB", "does not hold a ssh-ed25519 key"),
    ],
)
def test_a_damaged_key_line_is_refused(text: str, words: str) -> None:
    with pytest.raises(EncryptionError, match=words):
        parse_public_key(text, source="k")


def test_allowed_signers_give_every_usable_key_of_the_principal(
    allowed_signers: Path, keys: dict[str, Key]
) -> None:
    found = signer_keys(allowed_signers, "alice@uni.example")
    assert [k.line for k in found] == [keys["alice"].line, keys["alice_rsa"].line]
    assert [k.line for k in signer_keys(allowed_signers, "al@old.example")] == [
        keys["alice_rsa"].line
    ]
    lines = parse_allowed_signers(allowed_signers.read_text())
    assert lines[1].options == ('namespaces="git,file"',)
    assert lines[3].is_cert_authority


@pytest.mark.parametrize(
    ("principal", "words"),
    [
        ("mallory@evil.example", "no key for them"),
        ("carol@uni.example", "only ecdsa-sha2-nistp256 keys"),
        ("alice", "no key for them"),  # principals match whole, never as a prefix
    ],
)
def test_a_principal_without_a_usable_key_gets_a_clear_reason(
    allowed_signers: Path, principal: str, words: str
) -> None:
    with pytest.raises(EncryptionError, match=words) as caught:
        signer_keys(allowed_signers, principal)
    assert principal in str(caught.value) and "\n" not in str(caught.value)


# ---- encrypting and decrypting -----------------------------------------------------------------


@pytest.mark.parametrize("name", ["alice", "alice_rsa"])
def test_ptm_encrypts_what_the_age_tool_decrypts(keys: dict[str, Key], name: str) -> None:
    recipients = [parse_public_key(keys[n].line, source=n) for n in ("alice", "alice_rsa")]
    plaintext = b"count,42\n" * 1000
    ciphertext = encrypt(plaintext, recipients)
    assert plaintext not in ciphertext and ciphertext.startswith(b"age-encryption.org/v1\n")
    assert age_decrypt(keys[name].private, ciphertext) == plaintext
    key = load_private_key(keys[name].private)
    assert decrypt(ciphertext, key, source="f", recipients=()) == plaintext


def test_ptm_decrypts_what_the_age_tool_encrypts(keys: dict[str, Key], tmp_path: Path) -> None:
    done = subprocess.run(
        ["age", "--encrypt", "--recipients-file", str(keys["alice"].public)],
        input=b"from age\n",
        capture_output=True,
        check=True,
    )
    key = load_private_key(keys["alice"].private)
    assert decrypt(done.stdout, key, source="f", recipients=()) == b"from age\n"


def test_a_key_it_is_not_encrypted_to_gets_one_clear_line(keys: dict[str, Key]) -> None:
    alice = parse_public_key(keys["alice"].line, source="a")
    ciphertext = encrypt(b"secret", [alice])
    bob = load_private_key(keys["bob"].private)
    with pytest.raises(EncryptionError) as caught:
        decrypt(ciphertext, bob, source="hospital-a/result.age", recipients=[alice.fingerprint])
    message = str(caught.value)
    assert "\n" not in message and "secret" not in message
    assert message.startswith("hospital-a/result.age: not encrypted to your key ")
    assert str(bob.fingerprint) in message and alice.fingerprint in message


def test_a_changed_ciphertext_fails_the_integrity_check(keys: dict[str, Key]) -> None:
    alice = parse_public_key(keys["alice"].line, source="a")
    ciphertext = bytearray(encrypt(b"secret " * 100, [alice]))
    ciphertext[-20] ^= 1
    key = load_private_key(keys["alice"].private)
    with pytest.raises(EncryptionError, match="integrity check failed"):
        decrypt(bytes(ciphertext), key, source="f", recipients=())


def test_unusable_private_keys_say_why(keys: dict[str, Key], tmp_path: Path) -> None:
    locked = keygen(tmp_path / "more", "locked", "ed25519")
    subprocess.run(
        ["ssh-keygen", "-q", "-p", "-N", "pass", "-f", str(locked.private)],
        check=True,
        capture_output=True,
    )
    with pytest.raises(EncryptionError, match="passphrase"):
        load_private_key(locked.private)
    with pytest.raises(EncryptionError, match="not an OpenSSH private key"):
        load_private_key(keys["alice"].public)
    with pytest.raises(EncryptionError, match="cannot read"):
        load_private_key(tmp_path / "missing")


def test_the_default_identity_is_the_git_signing_key_without_pub(tmp_path: Path) -> None:
    assert signing_key_path("/k/id_ed25519.pub") == Path("/k/id_ed25519")
    assert signing_key_path("/k/id_ed25519") == Path("/k/id_ed25519")
    assert signing_key_path("~/id.pub") == Path.home() / "id"
    assert signing_key_path("key::ssh-ed25519 AAAA") is None
    assert signing_key_path(None) is None


# ---- site config -------------------------------------------------------------------------------


def site_config(tmp_path: Path, allowed_signers: Path, **policy: object) -> SiteConfig:
    registry = tmp_path / "registry.git"
    path = write_site_config(
        tmp_path, "hospital-a", registry, policy={"allowed_signers": str(allowed_signers), **policy}
    )
    return load_site_config(path)


def test_site_config_takes_extra_recipients_as_lines_or_files(
    tmp_path: Path, allowed_signers: Path, keys: dict[str, Key]
) -> None:
    (tmp_path / "auditor.pub").write_text(keys["alice_rsa"].public.read_text())
    config = site_config(
        tmp_path,
        allowed_signers,
        require_encryption=True,
        encrypt_to=[keys["bob"].line + " auditor", "auditor.pub"],
    )
    assert config.policy.require_encryption
    assert [k.line for k in config.policy.encrypt_to] == [keys["bob"].line, keys["alice_rsa"].line]


def test_site_config_refuses_an_extra_recipient_it_cannot_encrypt_to(
    tmp_path: Path, allowed_signers: Path, keys: dict[str, Key]
) -> None:
    ecdsa = keys["carol_ecdsa"].public
    with pytest.raises(ConfigError) as caught:
        site_config(tmp_path, allowed_signers, encrypt_to=[keys["alice"].line, str(ecdsa)])
    message = str(caught.value)
    assert "policy.encrypt_to[1]: " in message and "ecdsa-sha2-nistp256" in message
    assert message.endswith("[public-key]")


def test_requiring_encryption_needs_allowed_signers(tmp_path: Path) -> None:
    path = write_site_config(
        tmp_path, "hospital-a", tmp_path / "r.git", policy={"require_encryption": True}
    )
    with pytest.raises(
        ConfigError, match=r"policy\.allowed_signers: must be set while policy\.require_encryption"
    ):
        load_site_config(path)


# ---- sealed results ----------------------------------------------------------------------------


def finished_record(outputs: dict[str, bytes]) -> StatusRecord:
    return StatusRecord(
        task="t1",
        site="hospital-a",
        state="completed",
        task_commit=COMMIT,
        received_at="2026-12-01T10:00:00Z",
        finished_at="2026-12-01T10:00:09Z",
        submitted_by="alice@uni.example",
        exit_code=0,
        outputs=tuple(
            {"path": f"output/{n}", "bytes": len(d), "sha256": hashlib.sha256(d).hexdigest()}
            for n, d in outputs.items()
        ),
        skipped=({"path": "output/secret-link", "reason": "symbolic link, not followed"},),
    )


def collected_folder(tmp_path: Path, outputs: dict[str, bytes]) -> Path:
    folder = tmp_path / "collected"
    for name, data in outputs.items():
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        (folder / name).write_bytes(data)
    return folder


def publish_like_the_ledger(folder: Path, public: StatusRecord, sealed: bytes) -> Path:
    folder.mkdir(parents=True)
    (folder / "status.yaml").write_text(dump_yaml(public.to_document()))
    (folder / SEALED_FILE).write_bytes(sealed)
    return folder


OUTPUTS = {"counts-by-diagnosis.csv": b"diabetes,3\n", "plots/age.txt": b"40-50: 2\n"}


def test_a_sealed_result_shows_only_metadata_and_unseals_to_the_plain_layout(
    tmp_path: Path, allowed_signers: Path, keys: dict[str, Key]
) -> None:
    config = site_config(tmp_path, allowed_signers, encrypt_to=[keys["bob"].line])
    record = finished_record(OUTPUTS)
    target = tmp_path / "sealed" / SEALED_FILE
    target.parent.mkdir()
    public = seal(record, config, b"the log\n", collected_folder(tmp_path, OUTPUTS), target)
    sealed = target.read_bytes()
    assert sorted(p.name for p in target.parent.iterdir()) == [SEALED_FILE]  # no plain tar left

    shown = dump_yaml(public.to_document())
    for secret in ("counts-by-diagnosis", "plots", "secret-link", "the log"):
        assert secret not in shown and secret.encode() not in sealed
    for entry in record.outputs:
        assert entry["sha256"] not in shown
    assert public.output_count == 2 and public.output_bytes == 20 and public.skipped == ()
    assert public.encrypted_to == tuple(
        ssh_fingerprint(keys[n].public) for n in ("alice", "alice_rsa", "bob")
    )
    assert [dict(o) for o in public.outputs] == [
        {"path": SEALED_FILE, "bytes": len(sealed), "sha256": hashlib.sha256(sealed).hexdigest()}
    ]
    assert (public.exit_code, public.state, public.finished_at) == (
        0,
        "completed",
        record.finished_at,
    )

    folder = publish_like_the_ledger(tmp_path / "out" / "hospital-a", public, sealed)
    files = unseal_folder(folder, load_private_key(keys["alice_rsa"].private))
    assert files == (
        "log.txt",
        "output/counts-by-diagnosis.csv",
        "output/plots/age.txt",
        "status.yaml",
    )
    assert (folder / "output/counts-by-diagnosis.csv").read_bytes() == b"diabetes,3\n"
    assert (folder / "log.txt").read_bytes() == b"the log\n"
    inner = load_yaml_text((folder / "status.yaml").read_bytes(), source="s")
    assert inner["outputs"] == [dict(o) for o in record.outputs]
    assert inner["skipped"] == [dict(s) for s in record.skipped]

    with tarfile.open(fileobj=io.BytesIO(age_decrypt(keys["bob"].private, sealed))) as archive:
        names = archive.getnames()
    assert sorted(names) == sorted(
        ["status.yaml", "log.txt", "output/counts-by-diagnosis.csv", "output/plots/age.txt"]
    )


def test_a_reason_that_names_an_output_is_kept_inside(
    tmp_path: Path, allowed_signers: Path
) -> None:
    config = site_config(tmp_path, allowed_signers)
    reason = "output refused, nothing of it was published: output file 'hiv+.csv' refused: x"
    record = StatusRecord(
        task="t1",
        site="hospital-a",
        state="failed",
        task_commit=COMMIT,
        received_at="2026-12-01T10:00:00Z",
        submitted_by="alice@uni.example",
        reason=reason,
    )
    public = seal(record, config, b"", None, tmp_path / SEALED_FILE)
    assert public.reason is not None and "hiv" not in public.reason
    assert public.output_count == 0 and public.state == "failed"


def test_sealing_without_a_verified_submitter_refuses(
    tmp_path: Path, allowed_signers: Path
) -> None:
    config = site_config(tmp_path, allowed_signers)
    unsigned = StatusRecord("t1", "hospital-a", "completed", COMMIT, "2026-12-01T10:00:00Z")
    with pytest.raises(EncryptionError, match="no verified submitter"):
        seal(unsigned, config, b"log", None, tmp_path / SEALED_FILE)
    assert not (tmp_path / SEALED_FILE).exists()  # nothing written


def sealed_folder(
    tmp_path: Path, keys: dict[str, Key], members: list[tuple[str, bytes]], *, raw: bytes = b""
) -> Path:
    """A site folder whose result.age holds exactly ``members`` (or the tar bytes ``raw``)."""
    alice = parse_public_key(keys["alice"].line, source="a")
    sealed = encrypt(raw or archive_bytes(members), [alice])
    record = finished_record({})
    digest = hashlib.sha256(sealed).hexdigest()
    return publish_like_the_ledger(
        tmp_path / "out" / "hospital-a", public_view(record, len(sealed), digest), sealed
    )


def archive_bytes(members: list[tuple[str, bytes]]) -> bytes:
    buffer = io.BytesIO()
    write_archive(buffer, members, mtime=0)
    return buffer.getvalue()


def inner_status(outputs: dict[str, bytes], **changes: object) -> bytes:
    document = finished_record(outputs).to_document()
    document.update(changes)
    return dump_yaml(document).encode()


def hostile_tar(kind: str) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=tarfile.PAX_FORMAT) as archive:
        status = inner_status({})
        info = tarfile.TarInfo("status.yaml")
        info.size = len(status)
        archive.addfile(info, io.BytesIO(status))
        link = tarfile.TarInfo("output/escape")
        link.type = tarfile.SYMTYPE if kind == "symlink" else tarfile.LNKTYPE
        link.linkname = "/etc/passwd" if kind == "symlink" else "status.yaml"
        archive.addfile(link)
    return buffer.getvalue()


HOSTILE = {
    "path outside": ([("status.yaml", inner_status({})), ("../../evil", b"x")], "may not have"),
    "absolute": ([("status.yaml", inner_status({})), ("/tmp/evil", b"x")], "may not have"),
    "git folder": ([("status.yaml", inner_status({})), ("output/.git/config", b"x")], "may not"),
    "dotdot in output": ([("output/../status.yaml", b"x")], "may not have"),
    "unknown top file": ([("status.yaml", inner_status({})), ("run.sh", b"x")], "may not have"),
    "twice": ([("status.yaml", inner_status({})), ("status.yaml", b"x")], "twice"),
    "no status": ([("log.txt", b"x")], "no status.yaml"),
    "other task": ([("status.yaml", inner_status({}, task="t2"))], "task t2"),
    "unlisted output": (
        [("status.yaml", inner_status({})), ("output/planted.csv", b"x")],
        "differ from the list",
    ),
    "changed output": (
        [("status.yaml", inner_status({"a.csv": b"1"})), ("output/a.csv", b"2")],
        "differs from the SHA-256",
    ),
    "file and folder": (
        [
            ("status.yaml", inner_status({"a": b"1", "a/b": b"2"})),
            ("output/a", b"1"),
            ("output/a/b", b"2"),
        ],
        "cannot be unpacked",
    ),
}


@pytest.mark.parametrize("case", sorted(HOSTILE))
def test_a_hostile_sealed_result_is_refused_and_nothing_is_written(
    tmp_path: Path, keys: dict[str, Key], case: str
) -> None:
    members, words = HOSTILE[case]
    folder = sealed_folder(tmp_path, keys, members)
    with pytest.raises(EncryptionError, match=words):
        unseal_folder(folder, load_private_key(keys["alice"].private))
    assert sorted(p.name for p in folder.iterdir()) == [SEALED_FILE, "status.yaml"]
    assert not (tmp_path / "evil").exists() and not (tmp_path.parent / "evil").exists()


def sparse_tar(tmp_path: Path, size: int) -> bytes:
    """A GNU tar (made by tar itself) of a status and one sparse output of ``size`` bytes: a
    few KiB of archive that unpacks to ``size`` bytes of disk."""
    folder = tmp_path / "sparse"
    (folder / "output").mkdir(parents=True)
    (folder / "status.yaml").write_bytes(inner_status({}))
    with (folder / "output" / "huge.csv").open("wb") as stream:
        stream.truncate(size)
    archive = tmp_path / "sparse.tar"
    names = ["status.yaml", "output/huge.csv"]  # no folder entries: only regular-looking files
    command = ["tar", "--sparse", "--format=gnu", "-cf", str(archive), *names]
    subprocess.run(command, cwd=folder, check=True)
    return archive.read_bytes()


def test_a_sparse_member_that_would_fill_the_disk_is_refused(
    tmp_path: Path, keys: dict[str, Key]
) -> None:
    raw = sparse_tar(tmp_path, 4 * 1024**3)
    assert len(raw) < 1024**2  # 4 GiB of "file" in a small archive
    folder = sealed_folder(tmp_path, keys, [], raw=raw)
    with pytest.raises(EncryptionError, match="not a regular file"):
        unseal_folder(folder, load_private_key(keys["alice"].private))
    assert sorted(p.name for p in folder.iterdir()) == [SEALED_FILE, "status.yaml"]


@pytest.mark.parametrize("kind", ["symlink", "hardlink"])
def test_links_inside_a_sealed_result_are_refused(
    tmp_path: Path, keys: dict[str, Key], kind: str
) -> None:
    folder = sealed_folder(tmp_path, keys, [], raw=hostile_tar(kind))
    with pytest.raises(EncryptionError, match="not a regular file"):
        unseal_folder(folder, load_private_key(keys["alice"].private))
    assert not (folder / "output").exists()


def test_a_ciphertext_that_does_not_match_its_status_is_not_decrypted(
    tmp_path: Path, keys: dict[str, Key]
) -> None:
    folder = sealed_folder(tmp_path, keys, [("status.yaml", inner_status({}))])
    alice = parse_public_key(keys["alice"].line, source="a")
    (folder / SEALED_FILE).write_bytes(encrypt(b"swapped in", [alice]))
    with pytest.raises(EncryptionError, match="does not match the size and SHA-256"):
        unseal_folder(folder, load_private_key(keys["alice"].private))


def test_collected_folders_without_an_encrypted_result_need_no_key(tmp_path: Path) -> None:
    plain = tmp_path / "plain"
    plain.mkdir()
    (plain / "status.yaml").write_text("x")
    asked: list[bool] = []
    assert unseal_collected([plain], None, configured=lambda: asked.append(True) or None) == {}
    assert asked == []


def test_an_encrypted_result_without_a_key_says_how_to_name_one(
    tmp_path: Path, keys: dict[str, Key]
) -> None:
    folder = sealed_folder(tmp_path, keys, [("status.yaml", inner_status({}))])
    with pytest.raises(EncryptionError, match="--identity KEY"):
        unseal_collected([folder], None, configured=lambda: None)
