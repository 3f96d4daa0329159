"""The admin key in force from start to start: generated once, chosen, replaced, reset; only hashes stored."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

from thinktank.accounts.admin_key import AdminKey, AdminKeyStatus, reset
from thinktank.config import Settings
from thinktank.errors import ConfigError

CHOSEN = "sk-chosen-admin-key-0123456789"
OTHER = "sk-another-admin-key-9876543210"


def start(data: Path, key: str | None = None) -> tuple[AdminKey, AdminKeyStatus]:
    return AdminKey.from_settings(Settings(data_dir=data, admin_key=key))


def stored_lines(data: Path) -> list[str]:
    return (data / "admin_key.sha256").read_text().splitlines()


def test_generated_at_first_start_then_kept(tmp_path: Path) -> None:
    key, status = start(tmp_path)
    assert status.how == "generated" and status.key is not None and status.key.startswith("tt-admin-")
    assert key.verify(status.key)
    assert stored_lines(tmp_path) == [hashlib.sha256(status.key.encode()).hexdigest(), status.key[:13]]
    assert status.key in status.describe() and "admin-key reset" in status.describe()
    again, status2 = start(tmp_path)
    assert again.verify(status.key) and status2.how == "stored" and status2.key is None
    line = status2.describe()
    assert line == f"admin key: the one stored in {tmp_path / 'admin_key.sha256'} ({status.key[:13]}…)"
    assert status.key not in line


def test_a_chosen_key_stays_in_force_when_the_variable_is_dropped(tmp_path: Path) -> None:
    key, status = start(tmp_path, CHOSEN)
    assert status.how == "saved" and key.verify(CHOSEN) and status.key is None
    assert "sk-cho…" in status.describe() and CHOSEN not in status.describe()
    assert "stays in force when the variable is not set" in status.describe()
    later, status2 = start(tmp_path)  # no THINKTANK_ADMIN_KEY: the chosen key, not a new one
    assert status2.how == "stored" and status2.key is None
    assert later.verify(CHOSEN)
    same, status3 = start(tmp_path, CHOSEN)
    assert status3.how == "environment" and same.verify(CHOSEN)
    assert status3.describe().startswith("admin key: THINKTANK_ADMIN_KEY (sk-cho…), the one stored in ")


def test_a_different_key_replaces_the_stored_one_and_says_so(tmp_path: Path) -> None:
    _, first = start(tmp_path)
    assert first.key is not None
    key, status = start(tmp_path, OTHER)
    assert status.how == "replaced" and key.verify(OTHER) and not key.verify(first.key)
    assert "replaces the one stored in" in status.describe() and "no longer works" in status.describe()
    later, _ = start(tmp_path)
    assert later.verify(OTHER) and not later.verify(first.key)


def test_reset_makes_a_new_key_the_old_one_stops(tmp_path: Path) -> None:
    start(tmp_path, CHOSEN)
    new = reset(tmp_path)
    assert new.startswith("tt-admin-") and new != CHOSEN
    key, status = start(tmp_path)
    assert status.how == "stored" and key.verify(new) and not key.verify(CHOSEN)
    assert new not in (tmp_path / "admin_key.sha256").read_text()


def test_short_keys_show_nothing_of_themselves(tmp_path: Path) -> None:
    _, status = start(tmp_path, "sk-x")
    assert status.prefix is None and "sk-x" not in status.describe()
    _, status2 = start(tmp_path)
    assert "sk-x" not in status2.describe() and "printed at the first start" in status2.describe()


def test_a_hash_only_file_from_before_still_works(tmp_path: Path) -> None:
    (tmp_path / "admin_key.sha256").write_text(hashlib.sha256(b"old-key").hexdigest() + "\n")
    key, status = start(tmp_path)
    assert status.how == "stored" and key.verify("old-key") and status.prefix is None


def test_a_damaged_file_is_a_clear_error(tmp_path: Path) -> None:
    (tmp_path / "admin_key.sha256").write_text("not a hash\n")
    with pytest.raises(ConfigError, match=r"admin_key\.sha256: not a stored admin key; .*admin-key reset"):
        start(tmp_path)


def test_a_data_directory_that_cannot_be_written(tmp_path: Path) -> None:
    (tmp_path / "file").write_text("")
    data = tmp_path / "file" / "data"  # below a file: never a directory, whoever runs the test
    key, status = start(data, CHOSEN)  # the variable still says which key it is
    assert status.how == "unstored" and key.verify(CHOSEN)
    assert status.describe().startswith("admin key: THINKTANK_ADMIN_KEY (sk-cho…), in force while the variable is set")
    with pytest.raises(ConfigError, match=r"cannot store a new admin key .*THINKTANK_ADMIN_KEY"):
        start(data)
