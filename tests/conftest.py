"""Shared pytest fixtures."""

from __future__ import annotations

import pytest


@pytest.fixture(scope="session")
def _ifusion_cache_root(tmp_path_factory) -> str:
    return str(tmp_path_factory.mktemp("ifusion-cache"))


@pytest.fixture(autouse=True)
def _isolated_data_cache(_ifusion_cache_root: str, monkeypatch) -> None:
    """Datamodules built without an explicit ``cache_dir`` cache under a pytest tmp dir, never
    in ``~/.cache/ifusion-plugin`` (the default when ``IFUSION_CACHE_DIR`` is unset)."""
    monkeypatch.setenv("IFUSION_CACHE_DIR", _ifusion_cache_root)
