import os

from ifusion_plugin.data import SyntheticDataModule
from ifusion_plugin.data.datamodule import default_cache_dir


def test_default_cache_dir_env_and_home(tmp_path, monkeypatch):
    monkeypatch.setenv("IFUSION_CACHE_DIR", str(tmp_path / "env"))
    assert SyntheticDataModule().cache_dir == str(tmp_path / "env")
    monkeypatch.delenv("IFUSION_CACHE_DIR")
    assert default_cache_dir() == os.path.expanduser(os.path.join("~", ".cache", "ifusion-plugin"))
    assert SyntheticDataModule(cache_dir="~/x").cache_dir == os.path.expanduser("~/x")
    assert SyntheticDataModule(cache_dir=str(tmp_path / "c")).cache_dir == str(tmp_path / "c")
