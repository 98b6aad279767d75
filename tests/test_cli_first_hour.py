"""The pip user's first hour with ``python -m ifusion_plugin.cli``: packaged recipes from any
directory, outputs where asked, and every error in at most five lines that name the file, line or
option and the valid choices.

Each test runs in ``tmp_path`` with no ``recipes/`` directory, as a pip user's working directory.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tomllib
from fnmatch import fnmatch
from pathlib import Path

import pytest

from ifusion_plugin.cli import checkpoint_problem, run
from ifusion_plugin.cli_errors import MAX_LINES
from ifusion_plugin.recipes import copy_recipes, list_recipes, recipes_dir, resolve_recipe_paths

ROOT = Path(__file__).resolve().parents[1]
# A few steps of a small model on a small synthetic set (the recipes' default data).
QUICK = [
    "--trainer.limit_train_batches=3", "--trainer.limit_val_batches=2", "--trainer.limit_test_batches=2",
    "--trainer.limit_predict_batches=2", "--trainer.enable_model_summary=false",
    "--model.init_args.host.init_args.embed_dim=8", "--model.init_args.host.init_args.head_dims=[16]",
    "--data.init_args.num_users=60", "--data.init_args.num_items=80", "--data.init_args.history_len=30",
    "--data.init_args.train_per_user=2", "--data.init_args.long_len=20", "--data.init_args.batch_size=32",
]


@pytest.fixture
def elsewhere(tmp_path: Path, monkeypatch) -> Path:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr("sys.argv", ["ifusion_plugin.cli"])
    monkeypatch.delenv("IFUSION_VERBOSE", raising=False)
    return tmp_path


def error_of(capsys, *argv: str) -> str:
    """Run the CLI expecting an error; return its message (checked to be short)."""
    assert run(list(argv)) == 2
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.strip()]
    error_lines = lines[next(i for i, line in enumerate(lines) if line.startswith("error:")):]
    assert len(error_lines) <= MAX_LINES, err
    assert "Traceback" not in err and "usage:" not in err
    return "\n".join(error_lines)


# --- 1. recipes shipped in the package ---------------------------------------------------------
def test_every_package_and_recipe_is_in_the_distribution() -> None:
    """pyproject lists packages by hand (recipes/ is mapped in): none may be forgotten."""
    setuptools = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    on_disk = {".".join(p.parent.relative_to(ROOT).parts) for p in (ROOT / "ifusion_plugin").rglob("__init__.py")}
    assert on_disk | {"ifusion_plugin.recipes"} == set(setuptools["packages"])
    assert setuptools["package-dir"] == {"ifusion_plugin.recipes": "recipes"}
    globs = setuptools["package-data"]["ifusion_plugin.recipes"]
    recipes = [p.relative_to(ROOT / "recipes").as_posix() for p in (ROOT / "recipes").rglob("*.yaml")]
    assert len(recipes) > 20 and all(any(fnmatch(r, g) and r.count("/") == g.count("/") for g in globs) for r in recipes)


def test_recipes_are_listed_copied_and_resolved(elsewhere: Path, capsys) -> None:
    names = list_recipes()
    assert "recipes/twin.yaml" in names and "recipes/data/movielens-1m.yaml" in names
    assert run(["recipes"]) == 0 and "recipes/fusion/ifusion.yaml" in capsys.readouterr().out
    argv, notes = resolve_recipe_paths(["fit", "--config", "recipes/twin.yaml", "--config=recipes/data/movielens-1m.yaml"])
    assert argv[2] == str(recipes_dir() / "twin.yaml") and argv[3] == f"--config={recipes_dir() / 'data' / 'movielens-1m.yaml'}"
    assert len(notes) == 2 and "packaged recipe" in notes[0]
    # A local copy wins over the packaged one, and copying never replaces an edited file.
    assert run(["recipes", "copy"]) == 0
    assert (elsewhere / "recipes" / "common" / "trainer.yaml").is_file()
    assert resolve_recipe_paths(["--config", "recipes/twin.yaml"]) == (["--config", "recipes/twin.yaml"], [])
    (elsewhere / "recipes" / "twin.yaml").write_text("# edited\n")
    with pytest.raises(FileExistsError, match=r"and \d+ more already exist"):
        copy_recipes(elsewhere / "recipes")
    assert (elsewhere / "recipes" / "twin.yaml").read_text() == "# edited\n"
    assert run(["recipes", "copy"]) == 2 and "--force" in capsys.readouterr().err


def test_help_lists_every_command_on_one_line(capsys) -> None:
    assert run(["--help"]) == 0
    out = capsys.readouterr().out
    for command in ("fit", "validate", "test", "predict", "export", "recipes"):
        assert sum(line.strip().startswith(command + " ") for line in out.splitlines()) == 1, command


# --- 2. outputs where asked: one fit, then everything that reads its run ---------------------
@pytest.mark.slow
def test_the_mission_command_from_anywhere_and_its_run(elsewhere: Path, capsys) -> None:
    assert run(["fit", "--config", "recipes/twin.yaml", *QUICK, "--trainer.default_root_dir", "runs"]) == 0
    out, err = capsys.readouterr()
    assert f"using the packaged recipe {recipes_dir() / 'twin.yaml'}" in err
    assert "Tip:" not in out + err and "Unable to serialize" not in out + err and "\x1b[" not in out + err
    run_dir = elsewhere / "runs" / "lightning_logs" / "version_0"
    assert not (elsewhere / "logs").exists(), "default_root_dir ignored"
    assert (run_dir / "config.yaml").is_file() and (run_dir / "metrics.csv").is_file()
    last = run_dir / "checkpoints" / "last.ckpt"
    assert "run directory: runs/lightning_logs/version_0" in out and "last checkpoint: runs/lightning_logs/version_0/checkpoints/last.ckpt" in out
    assert "best checkpoint: runs/lightning_logs/version_0/checkpoints/epoch=0" in out and last.is_file()

    # test / predict with --ckpt_path alone: the run's config is found; no new run directory.
    assert run(["test", "--ckpt_path", str(last)]) == 0
    out, err = capsys.readouterr()
    assert f"using the run's config {run_dir / 'config.yaml'}" in err
    assert sum("test_auc" in line for line in out.splitlines()) == 1, out  # printed once
    assert run(["predict", "--ckpt_path", str(last), "--predictions_path", "p.csv"]) == 0
    assert (elsewhere / "p.csv").read_text().startswith("row,user,target_item,label,prob")
    assert sorted(p.name for p in (elsewhere / "runs" / "lightning_logs").iterdir()) == ["version_0"]

    # Resuming a finished run trains nothing and says how to extend it.
    capsys.readouterr()
    assert run(["fit", "--config", str(run_dir / "config.yaml"), "--ckpt_path", str(last)]) == 0
    out = capsys.readouterr().out
    assert "already finished its run: 1 epoch(s)" in out and "--trainer.max_epochs 2" in out
    assert sorted(p.name for p in (elsewhere / "runs" / "lightning_logs").iterdir()) == ["version_0"]

    # A checkpoint of another data set (other vocabulary) is named, with what differs.
    message = error_of(capsys, "test", "--ckpt_path", str(last), "--data.init_args.num_items=100")
    assert f"checkpoint {last} does not fit this model or data" in message and "[82, 8] in the checkpoint" in message


# --- 3. errors a person reads: one test per case ----------------------------------------------
def test_yaml_key_typo_names_file_line_and_closest_key(elsewhere: Path, capsys) -> None:
    (elsewhere / "mine.yaml").write_text("model:\n  init_args:\n    host:\n      init_args:\n        embed_dimm: 16\n")
    message = error_of(capsys, "fit", "--config", "recipes/twin.yaml", "--config", "mine.yaml")
    assert "mine.yaml:5" in message and "TWIN has no option 'embed_dimm'; did you mean 'embed_dim'?" in message


def test_top_level_yaml_key_typo(elsewhere: Path, capsys) -> None:
    (elsewhere / "mine.yaml").write_text("seed_everything: 1\ntrainr:\n  max_epochs: 2\n")
    message = error_of(capsys, "fit", "--config", "recipes/twin.yaml", "--config", "mine.yaml")
    assert "mine.yaml:2: unknown key 'trainr'; did you mean 'trainer'?" in message


def test_flag_typo_suggests_the_option(elsewhere: Path, capsys) -> None:
    message = error_of(capsys, "fit", "--config", "recipes/twin.yaml", "--trainer.max_epocs", "2")
    assert "unknown option --trainer.max_epocs; did you mean 'max_epochs'?" in message


@pytest.mark.parametrize("key, value, listed", [
    ("model.init_args.host", "ifusion_plugin.hosts.TWINN", ("did you mean 'TWIN'?", "AvgPoolDNN, CTRHost, DIN")),
    ("model.init_args.host.init_args.fusion.class_path", "ifusion_plugin.fusion.Concat",
     ("did you mean 'ConcatFusion'?", "GateFusion", "InterestFusion")),
], ids=["host", "fusion"])
def test_unknown_class_lists_the_available_ones(elsewhere: Path, capsys, key: str, value: str, listed: tuple) -> None:
    message = error_of(capsys, "fit", "--config", "recipes/twin.yaml", f"--{key}", value)
    assert f"no class {value}" in message and all(text in message for text in listed)


def test_unknown_class_in_yaml_names_file_and_line(elsewhere: Path, capsys) -> None:
    (elsewhere / "mine.yaml").write_text("model:\n  init_args:\n    host:\n      class_path: ifusion_plugin.hosts.TWINN\n")
    message = error_of(capsys, "fit", "--config", "recipes/twin.yaml", "--config", "mine.yaml")
    assert "mine.yaml:4: no class ifusion_plugin.hosts.TWINN; did you mean 'TWIN'?" in message


@pytest.mark.parametrize("option, expected", [
    ("schedule=quadratic", "schedule = 'quadratic'", ),
    ("gamma_cpp=2", "InterestFusion has no option 'gamma_cpp'; did you mean 'gamma_cp'?"),
    ("num_heads=5", "num_heads must be a positive divisor of fusion_dim=64"),
], ids=["value", "name", "constraint"])
def test_invalid_fusion_option(elsewhere: Path, capsys, option: str, expected: str) -> None:
    message = error_of(capsys, "fit", "--config", "recipes/twin.yaml", f"--model.init_args.host.init_args.fusion.init_args.{option}")
    assert expected in message
    if option.startswith("schedule"):
        assert "valid: cosine, linear" in message


def _table(root: Path, train: str) -> list[str]:
    header = "user_id,item_id,cate_id,label,item_history,cate_history\n"
    root.mkdir()
    (root / "train.csv").write_text(header + train)
    for split in ("valid", "test"):
        (root / f"{split}.csv").write_text(header + "u1,i1,c1,1,i2,c2\n")
    return ["fit", "--config", "recipes/twin_concat.yaml", "--config", "recipes/data/table.yaml", f"--data.init_args.root={root}"]


def test_table_missing_a_column(elsewhere: Path, capsys) -> None:
    root = elsewhere / "t"
    argv = _table(root, "u1,i1,c1,1,i2,c2\n")
    (root / "valid.csv").write_text("user_id,cate_id,label,item_history,cate_history\nu1,c1,1,i2,c2\n")
    message = error_of(capsys, *argv)
    assert "valid.csv: missing required column(s) ['item_id']" in message


def test_table_with_string_labels(elsewhere: Path, capsys) -> None:
    message = error_of(capsys, *_table(elsewhere / "t", "u1,i1,c1,yes,i2,c2\nu2,i3,c1,no,i2,c2\n"))
    assert "train.csv: column 'label' must be 0/1 numbers or booleans, got type string" in message


def test_broken_csv_line_names_file_and_line(elsewhere: Path, capsys) -> None:
    message = error_of(capsys, *_table(elsewhere / "t", "u1,i1,c1,1,i2,c2\nu2,i3,c1,0,i2\nu3,i4,c1,1,i2,c2\n"))
    assert "train.csv, line 3: expected 6 fields separated by ',', got 5: 'u2,i3,c1,0,i2'" in message


def test_missing_data_root_says_where_to_get_the_data(elsewhere: Path, capsys) -> None:
    message = error_of(capsys, "fit", "--config", "recipes/twin.yaml", "--config", "recipes/data/movielens-1m.yaml")
    assert "expected file 'sequences.tsv'" in message and "sequences.tsv, movies.dat" in message
    assert "get the data: movies.dat is in https://files.grouplens.org/datasets/movielens/ml-1m.zip" in message


def test_missing_config_suggests_a_recipe(elsewhere: Path, capsys) -> None:
    message = error_of(capsys, "fit", "--config", "recipes/twinn.yaml")
    assert "no such file" in message and "twinn.yaml" in message and "did you mean 'recipes/twin.yaml'?" in message


def test_missing_checkpoint(elsewhere: Path, capsys) -> None:
    assert error_of(capsys, "test", "--config", "recipes/twin.yaml", "--ckpt_path", "gone.ckpt") == "error: no such checkpoint: gone.ckpt"


def test_truncated_checkpoint_is_named(elsewhere: Path, capsys) -> None:
    (elsewhere / "cut.ckpt").write_bytes(b"PK\x03\x04" + bytes(5000))
    message = error_of(capsys, "test", "--config", "recipes/twin.yaml", "--ckpt_path", "cut.ckpt")
    assert message.startswith("error: checkpoint cut.ckpt is truncated or not a checkpoint (5,004 bytes")
    assert checkpoint_problem("cut.ckpt") in message


def test_missing_lightning_extra_gives_the_pip_command(tmp_path: Path) -> None:
    # Block the extra's imports, as in an install without [lightning].
    code = ("import sys, runpy; sys.modules['lightning'] = None; sys.modules['lightning.pytorch'] = None; "
            "sys.argv = ['cli', 'fit']; runpy.run_module('ifusion_plugin.cli', run_name='__main__')")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=tmp_path,
                            env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert result.returncode != 0
    lines = result.stderr.strip().splitlines()
    assert len(lines) <= MAX_LINES and 'pip install "ifusion-plugin[lightning]"' in lines[-1], result.stderr


def test_verbose_gives_the_traceback(elsewhere: Path) -> None:
    from jsonargparse import ArgumentError

    with pytest.raises(ArgumentError):
        run(["fit", "--config", "recipes/twin.yaml", "--trainer.max_epocs", "2", "--verbose"])
