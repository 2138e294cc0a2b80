"""Bad input to the backup tasks: one line naming the problem, exit 2, nothing created."""

import pytest
from invoke import Exit, MockContext

import tasks
from kiln.backup.operations import backup_settings
from kiln.errors import KilnError


def run_task(task, *args, **kwargs) -> Exit:
    with pytest.raises(Exit) as exc:
        task(MockContext(), *args, **kwargs)
    return exc.value


def test_an_unknown_backup_type_is_refused_before_docker_is_asked(monkeypatch, project):
    monkeypatch.setenv("KILN_PROJECT_ROOT", str(project))
    monkeypatch.setenv("DOCKER_HOST", "unix:///nonexistent.sock")  # any engine call would fail otherwise
    exit_ = run_task(tasks.backup, "local", type="weekly")
    assert exit_.code == 2
    assert exit_.message == "kiln: --type 'weekly': use one of full, diff, incr"


@pytest.mark.parametrize(
    ("target", "message"),
    [
        ("yesterday", "not an ISO 8601 time"),
        ("2026-01-02T03:04:05", "add a zone"),
        ("2999-01-01T00:00:00Z", "is in the future"),
    ],
)
def test_a_bad_target_time_is_refused_before_anything_starts(monkeypatch, project, target, message):
    monkeypatch.setenv("KILN_PROJECT_ROOT", str(project))
    monkeypatch.setenv("DOCKER_HOST", "unix:///nonexistent.sock")
    exit_ = run_task(tasks.dr_drill, "local", target_time=target)
    assert exit_.code == 2
    assert message in exit_.message and "\n" not in exit_.message
    assert not (project / ".kiln" / "drills").exists()


def write_env(project, body: str) -> None:
    (project / "environments").mkdir(exist_ok=True)
    (project / "environments" / "shop.yml").write_text(
        "provider: local\nzones: [z0]\ninstances: {web: 1, db: 1}\nfrontend: {port: 0}\n" + body
    )


def test_backup_settings_come_from_the_environment_file(settings, project):
    write_env(project, "backup:\n  retention: {full: 5}\n  repository: volume\n")
    assert backup_settings(settings, "shop").retention.full == 5
    assert backup_settings(settings, "no-file").retention.full == 2  # started by other means: defaults


def test_an_environment_without_a_backup_section_says_how_to_turn_it_on(settings, project):
    write_env(project, "")
    with pytest.raises(
        KilnError, match=r"environments/shop.yml: field 'backup': missing.*add `backup: \{\}`"
    ):
        backup_settings(settings, "shop")


def test_a_misspelt_backup_field_names_file_and_field(settings, project):
    write_env(project, "backup:\n  retension: {full: 5}\n")
    with pytest.raises(
        KilnError,
        match=r"environments/shop.yml: field 'backup.retension': unknown field; "
        r"did you mean 'retention'\?",
    ):
        backup_settings(settings, "shop")
