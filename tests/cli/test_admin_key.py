"""The admin key across starts of ``thinktank serve`` (real processes), and ``thinktank admin-key``."""

from __future__ import annotations

from pathlib import Path

import httpx

from ..fakes.process import Server, clean_env
from .helpers import cli, ok

FIRST = "sk-first-admin-key-0123456789"
SECOND = "sk-second-admin-key-987654321"


def works(server: Server, key: str) -> bool:
    return httpx.get(server.url + "/v1/models", headers={"Authorization": f"Bearer {key}"}).status_code == 200


def test_the_admin_key_in_force_across_starts_and_reset(server: type[Server], local_env: Path,
                                                        tmp_path: Path) -> None:
    stored = local_env / "admin_key.sha256"
    env = clean_env(tmp_path)
    s = server(["--demo"], {**env, "THINKTANK_ADMIN_KEY": FIRST})
    assert works(s, FIRST)
    said = s.stop()
    assert f"admin key: THINKTANK_ADMIN_KEY (sk-fir…), now stored (hashed) in {stored}" in said and FIRST not in said

    # Started again without the variable: the same key, not a new one.
    s = server(["--demo"], env)
    assert works(s, FIRST)
    said = s.stop()
    assert f"admin key: the one stored in {stored} (sk-fir…)" in said
    assert "tt-admin-" not in said and "generated" not in said

    assert ok(cli("admin-key", "status")) == f"admin key: the one stored in {stored} (sk-fir…)\n"
    r = cli("admin-key", "reset", stdin="n\n")
    assert r.exit_code == 1 and works_offline(stored, FIRST)  # not confirmed: nothing changed
    r = cli("admin-key", "reset", "--yes")
    new = ok(r).strip()
    assert new.startswith("tt-admin-") and "shown only this once" in r.stderr and new not in stored.read_text()
    assert works_offline(stored, new) and not works_offline(stored, FIRST)

    # A different THINKTANK_ADMIN_KEY replaces the stored key, and the start says so.
    s = server(["--demo"], {**env, "THINKTANK_ADMIN_KEY": SECOND})
    assert works(s, SECOND) and not works(s, new) and not works(s, FIRST)
    said = s.stop()
    assert f"admin key: THINKTANK_ADMIN_KEY (sk-sec…) replaces the one stored in {stored}" in said
    assert SECOND not in said


def test_admin_key_status_before_any_start_and_with_the_variable(local_env: Path) -> None:
    stored = local_env / "admin_key.sha256"
    assert ok(cli("admin-key", "status")) == (
        f"no admin key is stored in {stored} yet: the first start of `thinktank serve` generates one and prints it "
        "once\n")
    ok(cli("admin-key", "reset", "--yes", env={"THINKTANK_ADMIN_KEY": FIRST}))  # warns: the variable would win
    out = ok(cli("admin-key", "status", env={"THINKTANK_ADMIN_KEY": FIRST}))
    assert out.splitlines()[1] == ("THINKTANK_ADMIN_KEY is set here to another key: a server started with it "
                                   "replaces the stored one")
    r = cli("admin-key", "reset", "--yes", env={"THINKTANK_ADMIN_KEY": FIRST})
    assert "warning: THINKTANK_ADMIN_KEY is set here" in r.stderr


def works_offline(stored: Path, key: str) -> bool:
    """Whether ``key`` is the stored one (as the next start will read it)."""
    from thinktank.accounts.admin_key import AdminKey, read_stored

    found = read_stored(stored)
    return found is not None and AdminKey(found.digest).verify(key)
