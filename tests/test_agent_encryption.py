"""Encrypted results end to end: a real agent, Docker, signed tasks, ptm results and age."""

from __future__ import annotations

import hashlib
import io
import json
import subprocess
import tarfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from ptm.api import Registry
from ptm.main import main
from tests.agent_support import Researcher, remote_status, site_agent, states_in_history
from tests.fixtures_git import SigningKey, git, make_signing_key, write_allowed_signers
from tests.test_agent_delivery import sftp_targets
from tests.test_delivery import Ttp, start_ttp

pytestmark = pytest.mark.docker
SECRET = "diagnosis,count\nrare-disease,1\n"
SCRIPT = f"echo computing-the-counts; printf '{SECRET}' > /ptm/output/rare-disease-counts.csv"


@pytest.fixture
def bob(tmp_path: Path) -> SigningKey:
    return make_signing_key(tmp_path / "keys", "bob@uni.example")


@pytest.fixture
def auditor(tmp_path: Path) -> SigningKey:
    return make_signing_key(tmp_path / "keys", "auditor@ttp.example")


def fingerprint(key: SigningKey) -> str:
    public = f"{key.private}.pub"
    done = subprocess.run(["ssh-keygen", "-lf", public], capture_output=True, text=True)
    return done.stdout.split()[1]


def branch_files(registry: Path, site: str = "hospital-a") -> list[str]:
    return git(registry, "ls-tree", "-r", "--name-only", f"results/{site}").split()


def branch_bytes(registry: Path, path: str, site: str = "hospital-a") -> bytes:
    ref = f"results/{site}:{path}"
    return subprocess.run(["git", "show", ref], cwd=registry, capture_output=True).stdout


def age_unpack(identity: Path, sealed: bytes) -> dict[str, bytes]:
    """Decrypt with Debian's age tool and read the tar inside, as a researcher without ptm."""
    done = subprocess.run(
        ["age", "-d", "-i", str(identity)], input=sealed, capture_output=True, check=True
    )
    files = {}
    with tarfile.open(fileobj=io.BytesIO(done.stdout)) as archive:
        for member in archive.getmembers():
            handle = archive.extractfile(member)
            assert handle is not None and member.isreg()
            files[member.name] = handle.read()
    return files


def signers_file(tmp_path: Path, *keys: SigningKey) -> str:
    return str(write_allowed_signers(tmp_path / "allowed_signers", *keys))


def test_an_encrypted_task_publishes_ciphertext_only_its_submitter_and_auditor_read(
    bare_registry: Path,
    tmp_path: Path,
    alice: SigningKey,
    bob: SigningKey,
    auditor: SigningKey,
    docker_client: object,
    capsys: pytest.CaptureFixture[str],
) -> None:
    researcher = Researcher(bare_registry, tmp_path / "alice", key=alice)
    researcher.submit("sealed", SCRIPT, encrypt=True)
    policy = {
        "require_signed_tasks": True,
        "allowed_signers": signers_file(tmp_path, alice, bob),
        "encrypt_to": [auditor.public_line + " auditor"],
    }
    site_agent(tmp_path, "hospital-a", bare_registry, policy=policy).once()

    status = remote_status(bare_registry, "sealed")
    assert status is not None and status["state"] == "completed", status
    assert status["exit_code"] == 0 and status["image_id"].startswith("sha256:")
    assert status["submitted_by"] == alice.principal
    assert status["encrypted_to"] == [fingerprint(alice), fingerprint(auditor)]
    assert (status["output_count"], status["output_bytes"]) == (1, len(SECRET))
    folder = "results/sealed/hospital-a"
    assert branch_files(bare_registry) == [f"{folder}/result.age", f"{folder}/status.yaml"]
    history = git(bare_registry, "log", "-p", "--all", "--", "results/")
    for secret in (
        "rare-disease",
        "computing-the-counts",
        hashlib.sha256(SECRET.encode()).hexdigest(),
    ):
        assert secret not in history
    sealed = branch_bytes(bare_registry, f"{folder}/result.age")
    assert status["outputs"] == [
        {"path": "result.age", "bytes": len(sealed), "sha256": hashlib.sha256(sealed).hexdigest()}
    ]

    out = tmp_path / "collected"
    args = ["results", "sealed", "--url", str(bare_registry), "--out", str(out)]
    assert main([*args, "--identity", str(alice.private)]) == 0
    site_folder = out / "hospital-a"
    assert (site_folder / "output" / "rare-disease-counts.csv").read_text() == SECRET
    assert "computing-the-counts" in (site_folder / "log.txt").read_text()
    assert not (site_folder / "result.age").exists()
    assert "rare-disease-counts.csv" in (site_folder / "status.yaml").read_text()

    by_age = age_unpack(alice.private, sealed)
    assert by_age["output/rare-disease-counts.csv"] == SECRET.encode()
    assert b"computing-the-counts" in by_age["log.txt"]
    assert age_unpack(auditor.private, sealed)["output/rare-disease-counts.csv"] == SECRET.encode()

    capsys.readouterr()
    other = tmp_path / "bob-collected"
    bobs = ["results", "sealed", "--url", str(bare_registry), "--out", str(other)]
    assert main([*bobs, "--identity", str(bob.private)]) == 1
    error = capsys.readouterr().err.strip()
    assert len(error.splitlines()) == 1 and "not encrypted to your key" in error
    assert fingerprint(bob) in error and fingerprint(alice) in error
    assert not (other / "hospital-a" / "output").exists()
    denied = subprocess.run(
        ["age", "-d", "-i", str(bob.private)], input=sealed, capture_output=True
    )
    assert denied.returncode != 0 and SECRET.encode() not in denied.stdout

    capsys.readouterr()
    assert main(["status", "sealed", "--url", str(bare_registry)]) == 0
    shown = capsys.readouterr().out
    assert f"encrypted to {fingerprint(alice)}, {fingerprint(auditor)}" in " ".join(shown.split())
    assert f"1 file(s), {len(SECRET)} bytes, encrypted" in shown and "rare-disease" not in shown

    audit = ["audit", "--url", str(bare_registry), "--json"]
    main(audit)
    report = json.loads(capsys.readouterr().out)
    (task,) = [t for t in report["tasks"] if t["task"] == "sealed"]
    assert task["sites"][0]["encrypted_to"] == [fingerprint(alice), fingerprint(auditor)]
    assert not [f for f in report["findings"] if f["rule"] == "plaintext-result"]

    leak = tmp_path / "leak"
    git(tmp_path, "clone", "-q", "--branch", "results/hospital-a", str(bare_registry), str(leak))
    (leak / folder / "output").mkdir()
    (leak / folder / "output" / "rows.csv").write_text(SECRET)
    git(leak, "add", "-A")
    git(leak, "commit", "-q", "-m", "publish in the clear")
    git(leak, "push", "-q", "origin", "HEAD:results/hospital-a")
    main(audit)
    report = json.loads(capsys.readouterr().out)
    leaks = [f for f in report["findings"] if f["rule"] == "plaintext-result"]
    assert [(f["task"], f["site"]) for f in leaks] == [("sealed", "hospital-a")]
    main(audit[:-1])
    assert fingerprint(alice)[:19] in capsys.readouterr().out  # the ENCRYPTED TO column


def test_the_python_api_decrypts_with_the_key_git_signs_with(
    bare_registry: Path, tmp_path: Path, alice: SigningKey, docker_client: object
) -> None:
    researcher = Researcher(bare_registry, tmp_path / "alice", key=alice)
    researcher.submit("sealed-api", SCRIPT, encrypt=True)
    policy = {"allowed_signers": signers_file(tmp_path, alice)}  # signatures not required
    site_agent(tmp_path, "hospital-a", bare_registry, policy=policy).once()
    git(researcher.work, "config", "user.signingkey", f"{alice.private}.pub")

    results = Registry.open(researcher.work).results("sealed-api", tmp_path / "out")

    result = results["hospital-a"]
    assert result.state == "completed"
    assert result.output_files == ("rare-disease-counts.csv",)
    assert result.read_text("rare-disease-counts.csv") == SECRET
    assert result.log is not None and "computing-the-counts" in result.log


def test_a_site_that_requires_encryption_never_publishes_plaintext(
    bare_registry: Path, tmp_path: Path, alice: SigningKey, docker_client: object
) -> None:
    Researcher(bare_registry, tmp_path / "anon").submit("unsigned", SCRIPT)
    Researcher(bare_registry, tmp_path / "alice", key=alice).submit("signed", SCRIPT)
    policy = {
        "require_signed_tasks": False,
        "require_encryption": True,
        "allowed_signers": signers_file(tmp_path, alice),
    }
    site_agent(tmp_path, "hospital-a", bare_registry, policy=policy).once()

    refused = remote_status(bare_registry, "unsigned")
    assert refused is not None and refused["state"] == "failed"
    assert "no verified submitter" in refused["reason"]
    assert refused["started_at"] is None and refused["image_id"] is None  # never ran
    assert states_in_history(bare_registry, "unsigned") == ["accepted", "failed"]
    files = branch_files(bare_registry)
    assert [f for f in files if "/unsigned/" in f] == ["results/unsigned/hospital-a/status.yaml"]
    signed = remote_status(bare_registry, "signed")
    assert signed is not None and signed["state"] == "completed"  # encrypted though not asked
    assert "results/signed/hospital-a/result.age" in files
    assert "rare-disease" not in git(bare_registry, "log", "-p", "--all", "--", "results/")


@pytest.fixture
def ttp(tmp_path: Path) -> Iterator[Ttp]:
    yield from start_ttp(tmp_path / "ttp")


def test_a_delivered_file_can_be_encrypted_to_the_third_party(
    bare_registry: Path, tmp_path: Path, ttp: Ttp, auditor: SigningKey, docker_client: object
) -> None:
    Researcher(bare_registry, tmp_path / "r").submit("to-ttp", SCRIPT, deliver_sftp="ttp")
    targets = sftp_targets(ttp, encrypt_to=[auditor.public_line])
    site_agent(tmp_path, "hospital-a", bare_registry, sftp_targets=targets).once()

    status = remote_status(bare_registry, "to-ttp")
    assert status is not None and status["state"] == "completed", status
    delivered = ttp.jail() / "incoming" / "to-ttp" / "hospital-a"
    assert sorted(p.name for p in delivered.iterdir()) == ["rare-disease-counts.csv.age"]
    sealed = (delivered / "rare-disease-counts.csv.age").read_bytes()
    assert SECRET.encode() not in sealed
    done = subprocess.run(
        ["age", "-d", "-i", str(auditor.private)], input=sealed, capture_output=True, check=True
    )
    assert done.stdout == SECRET.encode()


def test_a_held_result_is_encrypted_when_the_admin_releases_it(
    bare_registry: Path, tmp_path: Path, alice: SigningKey, docker_client: object
) -> None:
    Researcher(bare_registry, tmp_path / "alice", key=alice).submit("held", SCRIPT, encrypt=True)
    policy = {"release": "manual", "allowed_signers": signers_file(tmp_path, alice)}
    agent = site_agent(tmp_path, "hospital-a", bare_registry, policy=policy)
    agent.once()
    waiting = remote_status(bare_registry, "held")
    assert waiting is not None and waiting["state"] == "reviewing"
    assert branch_files(bare_registry) == ["results/held/hospital-a/status.yaml"]
    assert "output_count" not in waiting and waiting["exit_code"] is None

    config = str(tmp_path / "hospital-a.yaml")
    assert main(["agent", "release", "held", "--config", config]) == 0
    agent.once()

    released = remote_status(bare_registry, "held")
    assert released is not None and released["state"] == "completed"
    assert released["encrypted_to"] == [fingerprint(alice)]
    assert branch_files(bare_registry) == [
        "results/held/hospital-a/result.age",
        "results/held/hospital-a/status.yaml",
    ]
    sealed = branch_bytes(bare_registry, "results/held/hospital-a/result.age")
    inner = age_unpack(alice.private, sealed)
    assert inner["output/rare-disease-counts.csv"] == SECRET.encode()
    assert b"decided_by" in inner["status.yaml"] and b"state: completed" in inner["status.yaml"]
