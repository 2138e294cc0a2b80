from pathlib import Path

import pytest

from kiln.errors import KilnError
from kiln.settings import Settings


def test_environment_overrides_with_types():
    s = Settings.from_env({"KILN_PROJECT_ROOT": "/p", "KILN_PACKER_TIMEOUT": "60", "KILN_IMAGE_REPO": "x"})
    assert s.project_root == Path("/p")
    assert s.state_dir == Path("/p/.kiln")
    assert s.packer_timeout == 60
    assert s.image_repo == "x"


def test_bad_value_names_the_variable():
    with pytest.raises(KilnError, match="KILN_PACKER_TIMEOUT='soon' is not a valid int"):
        Settings.from_env({"KILN_PACKER_TIMEOUT": "soon"})


def test_every_setting_is_described():
    assert all(help for _, _, help in Settings.describe())


def test_security_mirror_follows_the_mirror():
    s = Settings(mirror="http://snapshot.example/debian")
    assert s.resolved_security_mirror() == "http://snapshot.example/debian-security"


def test_readme_lists_every_setting():
    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text()
    missing = [name for name, _, _ in Settings.describe() if f"| `{name}` |" not in readme]
    assert not missing, f"README's settings table lacks {missing}"
