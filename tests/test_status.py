from __future__ import annotations

from dataclasses import replace
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest

from ptm.errors import InvalidDocument
from ptm.schema import dump_yaml, load_schema, load_yaml_text
from ptm.status import (
    AGENT,
    FINAL_STATES,
    OPEN_STATES,
    STATES,
    StatusRecord,
    is_final,
    load_status,
    utc_now_text,
)
from tests.test_schema import COMMIT, DESIGN_STATUS_YAML, SHA

DESIGN_KEY_ORDER = [
    *("ptm", "task", "site", "state", "reason", "task_commit", "submitted_by"),
    *("image", "image_id", "image_digest", "exit_code", "received_at", "started_at"),
    *("finished_at", "outputs", "agent"),
]


def received() -> StatusRecord:
    return StatusRecord(
        task="age-stats",
        site="hospital-a",
        state="received",
        task_commit=COMMIT,
        received_at="2026-11-29T10:00:00Z",
    )


def test_design_example_round_trips() -> None:
    document = load_yaml_text(DESIGN_STATUS_YAML, source="status.yaml")
    record = StatusRecord.from_document(document)
    assert record.state == "completed" and record.exit_code == 0 and record.is_final
    assert record.outputs == ({"path": "output/summary.csv", "bytes": 120, "sha256": SHA},)
    assert record.submitted_by == "alice@uni.example" and record.decided_by is None
    again = record.to_document()
    assert again == {**document, "decided_by": None, "skipped": [], "delivered_to": None}
    assert [key for key in again if key in DESIGN_KEY_ORDER] == DESIGN_KEY_ORDER


def test_new_record_is_valid_and_complete() -> None:
    document = received().to_document()
    assert document["state"] == "received" and document["agent"] == AGENT
    assert document["outputs"] == [] and document["reason"] is None
    assert StatusRecord.from_document(load_yaml_text(dump_yaml(document), source="s")) == received()


def test_states_match_the_schema() -> None:
    assert list(STATES) == load_schema("status")["properties"]["state"]["enum"]
    assert set(STATES) == FINAL_STATES | OPEN_STATES and not FINAL_STATES & OPEN_STATES
    assert {
        "rejected",
        "denied",
        "completed",
        "failed",
        "timed_out",
        "cancelled",
        "crashed",
    } == FINAL_STATES
    assert is_final("completed") and not is_final("running") and not is_final("reviewing")


def test_replace_with_a_plain_state_string_prints_as_itself() -> None:
    record = replace(received(), state="running", started_at=utc_now_text())
    assert f"{record.state}" == "running" and record.to_document()["state"] == "running"


def test_invalid_record_is_never_written() -> None:
    record = replace(received(), state="done")  # type: ignore[arg-type]  # what a bug would do
    with pytest.raises(InvalidDocument) as caught:
        record.to_document(source="results/age-stats/hospital-a/status.yaml")
    assert str(caught.value).startswith(
        "results/age-stats/hospital-a/status.yaml: state: 'done' is not one of"
    )
    with pytest.raises(InvalidDocument, match=r"started_at: .* \[pattern\]"):
        replace(received(), started_at="yesterday").to_document()


def test_outputs_are_read_only_copies() -> None:
    entry = {"path": "output/a.csv", "bytes": 3, "sha256": SHA}
    record = replace(
        received(), outputs=(entry,), skipped=({"path": "output/l", "reason": "symlink"},)
    )
    entry["bytes"] = 999
    assert record.outputs[0]["bytes"] == 3
    with pytest.raises(TypeError):
        record.outputs[0]["bytes"] = 1  # type: ignore[index]  # proving it fails at runtime
    assert record.to_document()["skipped"] == [{"path": "output/l", "reason": "symlink"}]
    assert hash(record) == hash(replace(record))


@pytest.mark.parametrize(
    "path", ["../x", "/etc/passwd", "output/../../x", "output//x", "output/", "output/\n"]
)
def test_output_paths_stay_inside_the_result(path: str) -> None:
    record = replace(received(), outputs=({"path": path, "bytes": 1, "sha256": SHA},))
    with pytest.raises(InvalidDocument, match=r"outputs\[0\]\.path"):
        record.to_document()


def test_load_status(tmp_path: Path) -> None:
    path = tmp_path / "status.yaml"
    path.write_text(DESIGN_STATUS_YAML)
    assert load_status(path).image_id == f"sha256:{SHA}"
    path.write_text(DESIGN_STATUS_YAML.replace("state: completed", "state: finished"))
    with pytest.raises(InvalidDocument) as caught:
        load_status(path, source="results/age-stats/hospital-a/status.yaml")
    assert caught.value.problems[0].path == "state"
    assert caught.value.problems[0].source == "results/age-stats/hospital-a/status.yaml"


def test_utc_now_text() -> None:
    moment = datetime(2026, 11, 29, 11, 0, 0, 123456, tzinfo=timezone(timedelta(hours=1)))
    assert utc_now_text(moment) == "2026-11-29T10:00:00Z"
    now = utc_now_text()
    assert len(now) == 20 and now.endswith("Z")
    assert (
        StatusRecord.from_document({**received().to_document(), "received_at": now}).received_at
        == now
    )
    with pytest.raises(ValueError, match="aware"):
        utc_now_text(datetime(2026, 11, 29))  # naive on purpose
