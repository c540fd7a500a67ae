"""Every test runs in its own empty working directory, so nothing a test writes by default (the call records
database ``rtvoice.sqlite3``, benchmark output folders) lands in the checkout or leaks into another test."""

from __future__ import annotations

from pathlib import Path

import pytest


@pytest.fixture(autouse=True)
def _isolated_cwd(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
