"""The examples end to end: images built offline from busybox-static, a real bare registry, three
real agents (watch loops in threads) with their synthetic data mounted at /data, and the central
side talking to the registry through ptm.api only."""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import docker
import docker.errors
import pytest
import yaml

from examples.central import EVERY_SITE, Federation
from examples.federated_logistic import LogisticFit, run_federated_logistic
from examples.federated_mean import run_federated_mean
from examples.images import EXAMPLES_DIR, ImageBuildError, build_example_image, import_settings
from examples.pooled import design, pooled_logistic_fit, pooled_mean
from examples.synthetic import OUTCOME, PREDICTORS, write_site_data
from ptm.agent import Agent
from ptm.api import Registry
from ptm.runtimes.docker import DockerRuntime
from ptm.siteconfig import load_site_config
from ptm.watch import run_until_stopped
from tests.agent_support import write_site_config
from tests.fixtures_git import SigningKey, git, write_allowed_signers

SITES = ("hospital-a", "hospital-b", "hospital-c")
MEAN_IMAGE = "ptm-examples/federated-mean:test"
LOGISTIC_IMAGE = "ptm-examples/iterative:test"
IMAGES = {"federated-mean": MEAN_IMAGE, "iterative": LOGISTIC_IMAGE}
ROUNDS_AT_MOST = 6  # Newton-Raphson converges in 5 rounds on this data
COEFFICIENT_TOLERANCE = 1e-6  # federated vs pooled, largest absolute difference


@dataclass(frozen=True)
class RunningFederation:
    federation: Federation
    data: dict[str, Path]  # site → its patients.csv (mounted at /data at that site)


@pytest.fixture(scope="session")
def example_images(docker_client: docker.DockerClient) -> Iterator[dict[str, str]]:
    for example, tag in IMAGES.items():
        build_example_image(example, tag, docker_host=None)
    yield IMAGES
    for tag in IMAGES.values():
        with contextlib.suppress(docker.errors.APIError):
            docker_client.images.remove(tag, force=True)


@pytest.fixture
def federation(
    tmp_path: Path,
    bare_registry: Path,
    example_images: dict[str, str],
    test_labels: dict[str, str],
    alice: SigningKey,
) -> Iterator[RunningFederation]:
    """Sites that run only tasks alice signed, as a registry made by 'ptm registry init' says
    (require_signed_tasks), and a central side that signs with her key."""
    data = write_site_data(tmp_path / "data", SITES, rows_per_site=120, seed=7)
    signers = write_allowed_signers(tmp_path / "allowed_signers", alice)
    trust_alice = {
        "require_signed_tasks": True,
        "allowed_signers": str(signers),
        "trusted_submitters": [alice.principal],
    }
    stop = threading.Event()
    threads = []
    for site in SITES:
        config_file = write_site_config(
            tmp_path,
            site,
            bare_registry,
            policy={"allowed_images": ["ptm-examples/.*:.*"], **trust_alice},
            mounts=[{"source": str(data[site].parent), "target": "/data"}],
        )
        agent = Agent(load_site_config(config_file), DockerRuntime(None, labels=test_labels))
        thread = threading.Thread(target=run_until_stopped, args=(agent, stop), daemon=True)
        thread.start()
        threads.append(thread)
    registry = Registry.open(bare_registry, cache_dir=tmp_path / "cache")
    try:
        yield RunningFederation(
            Federation(
                registry, sites=SITES, sign_key=alice.private, timeout=90, poll_interval=0.2
            ),
            data,
        )
    finally:
        stop.set()
        for thread in threads:
            thread.join(timeout=60)
    assert not any(t.is_alive() for t in threads), "an agent did not stop"


@pytest.mark.docker
def test_federated_mean_equals_the_mean_of_all_rows(federation: RunningFederation) -> None:
    result = run_federated_mean(
        federation.federation, column="age", task_id="mean-age", image=MEAN_IMAGE
    )

    assert result.failures == ()
    assert [s.site for s in result.summaries] == list(SITES)
    assert result.mean == pytest.approx(pooled_mean(federation.data.values(), "age"), rel=1e-12)
    for summary in result.summaries:
        assert summary.mean == pytest.approx(pooled_mean([federation.data[summary.site]], "age"))
    rows = sum(len(p.read_text().splitlines()) - 1 for p in federation.data.values())
    assert result.count == rows  # age is never missing in the synthetic data
    status = federation.federation.registry.status("mean-age")
    assert {s.record.image for s in status.sites if s.record} == {MEAN_IMAGE}
    assert {s.record.submitted_by for s in status.sites if s.record} == {"alice@uni.example"}


@pytest.mark.docker
def test_a_site_without_the_column_fails_and_says_why(federation: RunningFederation) -> None:
    lacking = federation.data["hospital-c"]
    lines = lacking.read_text().splitlines()  # hospital-c keeps no bmi: drop that column
    kept = [",".join(line.split(",")[::2]) for line in lines]
    lacking.write_text("".join(line + "\n" for line in kept))

    result = run_federated_mean(
        federation.federation, column="bmi", task_id="mean-bmi", image=MEAN_IMAGE
    )

    others = [federation.data["hospital-a"], federation.data["hospital-b"]]
    assert [s.site for s in result.summaries] == ["hospital-a", "hospital-b"]
    assert result.mean == pytest.approx(pooled_mean(others, "bmi"), rel=1e-12)
    assert sum(s.missing for s in result.summaries) > 0  # empty bmi values were skipped
    status = federation.federation.registry.status("mean-bmi").site("hospital-c")
    assert status is not None and status.state == "failed"
    [failure] = result.failures
    assert failure.site == "hospital-c" and failure.state == "failed"
    assert "column 'bmi' is not in /data/patients.csv (its columns: age, smoker)" in (
        failure.explanation
    )
    assert not any(row in failure.explanation for row in kept[1:])  # no data value in the log


@pytest.mark.docker
def test_iterative_newton_rounds_reach_the_pooled_fit(
    federation: RunningFederation, bare_registry: Path
) -> None:
    # '*' asks every site that accepts the task; round 1 waits for the three, later rounds
    # for whoever answered round 1.
    every_site = Federation(
        federation.federation.registry,
        sites=(EVERY_SITE,),
        wait_for=SITES,
        sign_key=federation.federation.sign_key,
        timeout=90,
        poll_interval=0.2,
    )
    fit = run_federated_logistic(
        every_site,
        prefix="logit",
        outcome=OUTCOME,
        predictors=PREDICTORS,
        image=LOGISTIC_IMAGE,
        tolerance=1e-8,
        max_rounds=10,
    )

    assert fit.converged
    assert len(fit.rounds) <= ROUNDS_AT_MOST
    pooled, pooled_errors = pooled_logistic_fit(federation.data.values(), OUTCOME, PREDICTORS)
    difference = max(abs(a - b) for a, b in zip(fit.coefficients, pooled, strict=True))
    assert difference < COEFFICIENT_TOLERANCE
    assert fit.standard_errors == pytest.approx(pooled_errors, rel=1e-6)
    complete_cases, _ = design(federation.data.values(), OUTCOME, PREDICTORS)
    assert fit.count == len(complete_cases)
    assert all(r.sites == SITES for r in fit.rounds)
    losses = [r.terms.loglik for r in fit.rounds]
    assert losses == sorted(losses)  # each Newton step raised the log-likelihood
    _assert_each_round_posted_the_previous_step(fit, bare_registry)


def _assert_each_round_posted_the_previous_step(fit: LogisticFit, registry: Path) -> None:
    """Round k is task logit-r<k>, whose config holds round k-1's coefficients plus its step."""
    for number, done in enumerate(fit.rounds, start=1):
        task = yaml.safe_load(git(registry, "show", f"main:tasks/logit-r{number}/task.yaml"))
        assert task["sites"] == [EVERY_SITE] and task["image"] == LOGISTIC_IMAGE
        assert task["config"]["round"] == number
        assert tuple(task["config"]["coefficients"]) == done.coefficients
        if number > 1:
            previous = fit.rounds[number - 2]
            steps = zip(previous.coefficients, previous.step, strict=True)
            assert done.coefficients == tuple(c + s for c, s in steps)
    assert fit.rounds[0].coefficients == (0.0,) * (len(PREDICTORS) + 1)


# -- the recipes, without an engine --------------------------------------------------------------


def test_the_two_examples_ship_the_same_config_reader() -> None:
    readers = [(EXAMPLES_DIR / e / "app" / "config.awk").read_text() for e in IMAGES]
    assert readers[0] == readers[1]


def test_offline_builds_take_the_dockerfiles_settings() -> None:
    for example in IMAGES:
        settings = import_settings(EXAMPLES_DIR / example / "Dockerfile")
        assert 'CMD ["sh", "/app/run.sh"]' in settings
        assert "USER 65534:65534" in settings


def test_a_dockerfile_step_import_cannot_do_is_refused(tmp_path: Path) -> None:
    dockerfile = tmp_path / "Dockerfile"
    dockerfile.write_text("FROM busybox\nCOPY app/ /app/\nRUN apk add python3\n")
    with pytest.raises(ImageBuildError, match="RUN apk add python3' cannot be built offline"):
        import_settings(dockerfile)


def test_an_unknown_example_is_refused() -> None:
    with pytest.raises(ImageBuildError, match="no example 'nope'"):
        build_example_image("nope", "x:1", docker_host=None)
