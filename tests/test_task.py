from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from ptm.errors import InvalidDocument
from ptm.schema import dump_yaml, load_yaml_text
from ptm.task import (
    CANCEL_FILE,
    TASK_FILE,
    Cancellation,
    Task,
    load_cancel,
    load_task,
    parse_memory,
)
from tests.test_schema import DESIGN_CANCEL_YAML, DESIGN_TASK_YAML, SHA


def design_task() -> dict[str, Any]:
    return load_yaml_text(DESIGN_TASK_YAML, source="task.yaml")


def write_task(root: Path, task_id: str, text: str = DESIGN_TASK_YAML) -> Path:
    task_dir = root / "tasks" / task_id
    task_dir.mkdir(parents=True)
    (task_dir / TASK_FILE).write_text(text, encoding="utf-8")
    return task_dir


def test_design_example_becomes_a_task() -> None:
    task = Task.from_document("age-stats", design_task())
    assert task == Task(
        id="age-stats",
        image="myconsortium/age-stats:1.2",
        sites=("hospital-a", "hospital-b"),
        command=("sh", "/app/run.sh"),
        config={"column": "age"},
        timeout=600,
        memory_bytes=512 * 1024**2,
        cpus=1.0,
        deliver_sftp="ttp",
        description="Mean age per site",
    )
    assert isinstance(task.cpus, float)


def test_minimal_task_has_no_optional_values() -> None:
    task = Task.from_document("t", {"ptm": 1, "image": "busybox", "sites": ["*"]})
    assert (task.command, task.timeout, task.memory_bytes, task.cpus) == (None, None, None, None)
    assert (task.deliver_sftp, task.description, dict(task.config)) == (None, None, {})


def test_targets_by_name_or_star() -> None:
    task = Task.from_document("t", design_task())
    assert task.targets("hospital-a") and not task.targets("hospital-c")
    assert Task("t", "busybox", ("*",)).targets("anywhere")


@pytest.mark.parametrize(
    ("image", "pinned"),
    [
        ("busybox", False),
        ("busybox:1", False),
        (f"busybox@sha256:{SHA}", True),
        (f"reg.example:5000/a/b:1@sha256:{SHA}", True),
    ],
)
def test_pinned_images(image: str, pinned: bool) -> None:
    assert Task("t", image, ("a",)).is_pinned is pinned


def test_config_is_read_only_all_the_way_down() -> None:
    document = design_task()
    document["config"] = {"columns": ["age", "sex"], "nested": {"x": [1, {"y": 2}]}}
    task = Task.from_document("t", document)
    with pytest.raises(TypeError):
        task.config["new"] = 1  # type: ignore[index]  # proving it fails at runtime
    with pytest.raises(TypeError):
        task.config["nested"]["x"] = 1
    assert task.config["columns"] == ("age", "sex")
    document["config"]["columns"].append("leak")
    assert task.config["columns"] == ("age", "sex")
    assert load_yaml_text(dump_yaml(task.config), source="c") == {
        "columns": ["age", "sex"],
        "nested": {"x": [1, {"y": 2}]},
    }
    assert load_yaml_text(dump_yaml(dict(task.config)), source="c")["nested"] == {
        "x": [1, {"y": 2}]
    }


def test_task_is_frozen_and_hashable() -> None:
    task = Task.from_document("t", design_task())
    with pytest.raises(AttributeError):
        task.image = "evil"  # type: ignore[misc]  # proving it fails at runtime
    assert {task: 1}[Task.from_document("t", design_task())] == 1


@pytest.mark.parametrize(
    ("text", "size"),
    [
        ("1", 1),
        ("1048576", 1048576),
        ("1024k", 1024**2),
        ("1024K", 1024**2),
        ("512m", 512 * 1024**2),
        ("512M", 512 * 1024**2),
        ("2g", 2 * 1024**3),
        ("2G", 2 * 1024**3),
    ],
)
def test_parse_memory(text: str, size: int) -> None:
    assert parse_memory(text) == size


@pytest.mark.parametrize(
    "text", ["", "0", "0k", "-1", "1.5g", "1t", "1kb", "1 g", "g", "1g\n", "512\u212a", "1" * 16]
)
def test_parse_memory_refuses_what_the_schema_refuses(text: str) -> None:
    with pytest.raises(ValueError, match="is not a memory size"):
        parse_memory(text)


def test_from_document_validates_and_reports_every_problem() -> None:
    document = design_task()
    document.update(timeout=0, sites=["A"], extra=True)
    with pytest.raises(InvalidDocument) as caught:
        Task.from_document("t", document)
    assert [(p.source, p.path, p.rule) for p in caught.value.problems] == [
        ("tasks/t/task.yaml", "(top level)", "additionalProperties"),
        ("tasks/t/task.yaml", "sites[0]", "pattern"),
        ("tasks/t/task.yaml", "timeout", "minimum"),
    ]


@pytest.mark.parametrize(
    "task_id", ["../x", "a/b", "/abs", "x\n", "hospit\u0430l", "\uff41", "A", "", "a" * 64, ".."]
)
def test_hostile_task_ids_are_refused(task_id: str) -> None:
    with pytest.raises(InvalidDocument) as caught:
        Task.from_document(task_id, design_task())
    assert caught.value.problems[0].rule == "name"


def test_load_task_names_the_file_in_registry_terms(tmp_path: Path) -> None:
    task_dir = write_task(
        tmp_path, "age-stats", DESIGN_TASK_YAML.replace("timeout: 600", "timeout: -1")
    )
    with pytest.raises(InvalidDocument) as caught:
        load_task(task_dir)
    assert str(caught.value) == (
        "tasks/age-stats/task.yaml: timeout: must be at least 1, found -1 [minimum]"
    )


def test_load_task(tmp_path: Path) -> None:
    task = load_task(write_task(tmp_path, "age-stats"))
    assert task.id == "age-stats" and task.deliver_sftp == "ttp"
    assert load_task(tmp_path / "tasks" / "age-stats", task_id="renamed").id == "renamed"


def test_load_task_refuses_a_hostile_folder_name_before_reading(tmp_path: Path) -> None:
    task_dir = tmp_path / "Evil"
    with pytest.raises(InvalidDocument) as caught:
        load_task(task_dir)  # does not exist: the name is checked first
    assert [(p.source, p.rule) for p in caught.value.problems] == [("tasks/Evil/task.yaml", "name")]


def test_symlinked_task_file_is_refused(tmp_path: Path) -> None:
    secret = tmp_path / "secret.yaml"
    secret.write_text(DESIGN_TASK_YAML)
    task_dir = tmp_path / "tasks" / "t"
    task_dir.mkdir(parents=True)
    (task_dir / TASK_FILE).symlink_to(secret)
    with pytest.raises(InvalidDocument) as caught:
        load_task(task_dir)
    assert str(caught.value) == (
        "tasks/t/task.yaml: (file): is a symbolic link; only regular files are read [symlink]"
    )


def test_symlinked_task_folder_is_refused(tmp_path: Path) -> None:
    real = write_task(tmp_path, "real")
    link = tmp_path / "tasks" / "link"
    link.symlink_to(real, target_is_directory=True)
    with pytest.raises(InvalidDocument) as caught:
        load_task(link)
    assert [(p.source, p.rule) for p in caught.value.problems] == [
        ("tasks/link/task.yaml", "symlink")
    ]


def test_missing_task_file(tmp_path: Path) -> None:
    task_dir = tmp_path / "t"
    task_dir.mkdir()
    with pytest.raises(InvalidDocument) as caught:
        load_task(task_dir)
    assert str(caught.value) == "tasks/t/task.yaml: (file): file not found [exists]"
    with pytest.raises(InvalidDocument, match=r"task folder not found \[exists\]"):
        load_task(tmp_path / "gone")


def test_cancel_file(tmp_path: Path) -> None:
    task_dir = write_task(tmp_path, "t")
    assert load_cancel(task_dir) is None
    (task_dir / CANCEL_FILE).write_text(DESIGN_CANCEL_YAML)
    assert load_cancel(task_dir) == Cancellation("t", "wrong column", "alice@uni.example")
    (task_dir / CANCEL_FILE).write_text("ptm: 1\nreason: ''\n")
    with pytest.raises(InvalidDocument) as caught:
        load_cancel(task_dir)
    assert str(caught.value) == "tasks/t/cancel.yaml: reason: must not be empty [minLength]"


def test_symlinked_cancel_file_is_refused(tmp_path: Path) -> None:
    task_dir = write_task(tmp_path, "t")
    (task_dir / CANCEL_FILE).symlink_to(tmp_path / "nowhere")
    with pytest.raises(InvalidDocument, match=r"\[symlink\]"):
        load_cancel(task_dir)
