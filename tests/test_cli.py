"""End-to-end CLI runs: every host x fusion recipe, checkpoint round trip, predict, W&B offline.

Each run happens in ``tmp_path`` as the working directory, so logs land there and never in the
repository; the recipes are read from the repository by absolute path.
"""

from __future__ import annotations

import csv
import glob
import json
import os
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pyarrow.parquet as pq
import pytest
import yaml
import torch
from lightning.pytorch import LightningDataModule

from ifusion_plugin.batch import FIRST_ID, OOV_ID
from ifusion_plugin.cli import CTRLightningCLI, main
from ifusion_plugin.prediction_writer import PredictionsFileWriter
from ifusion_plugin.task import CTRTask

RECIPES = Path(__file__).resolve().parents[1] / "recipes"
HOSTS = ("avgpool", "din", "sim", "twin")
FUSIONS = ("", "_concat", "_gate")

# A few steps of a small model: the recipes' structure is under test, not their accuracy.
QUICK = [
    "--trainer.limit_train_batches=3",
    "--trainer.limit_val_batches=2",
    "--trainer.limit_test_batches=2",
    "--trainer.limit_predict_batches=2",
    "--trainer.enable_model_summary=false",
    "--model.init_args.host.init_args.embed_dim=8",
    "--model.init_args.host.init_args.head_dims=[16]",
]


GROCERY_SLICE = Path(__file__).resolve().parent / "fixtures" / "amazon-grocery-slice"


def _data_args(data: str = "synthetic") -> tuple[list[str], dict]:
    """The recipes' own SyntheticDataModule, shrunk so that building it takes a moment, or the
    committed slice of real Amazon Grocery logs through its data recipe."""
    if data == "grocery-slice":
        return [
            f"--config={RECIPES / 'data' / 'amazon-grocery.yaml'}",
            f"--data.init_args.root={GROCERY_SLICE}",
            "--data.init_args.batch_size=32",
        ], {}
    small = ["num_users=60", "num_items=80", "history_len=30", "train_per_user=2", "long_len=20", "batch_size=32"]
    return [f"--data.init_args.{option}" for option in small], {}


@pytest.fixture
def in_tmp(tmp_path, monkeypatch) -> Path:
    monkeypatch.chdir(tmp_path)
    # LightningCLI warns when both `args` and pytest's own argv are present.
    monkeypatch.setattr("sys.argv", ["ifusion_plugin.cli"])
    return tmp_path


def run(subcommand: str, recipe: str, *extra: str, data: str = "synthetic") -> CTRLightningCLI:
    data_args, kwargs = _data_args(data)
    args = [subcommand, f"--config={RECIPES / recipe}", *data_args, *QUICK, *extra]
    return main(args, **kwargs)


def metrics_of(cli: CTRLightningCLI, prefix: str) -> dict[str, float]:
    return {k: float(v) for k, v in cli.trainer.callback_metrics.items() if k.startswith(prefix)}


@pytest.mark.slow
@pytest.mark.parametrize("fusion", FUSIONS, ids=["ifusion", "concat", "gate"])
@pytest.mark.parametrize("host", HOSTS)
@pytest.mark.parametrize("data", ["synthetic", "grocery-slice"])
def test_fit_then_test_from_checkpoint(in_tmp: Path, host: str, fusion: str, data: str, capsys) -> None:
    cli = run("fit", f"{host}{fusion}.yaml", "--run_test=true", "--metrics_path=out/metrics.json", data=data)
    assert type(cli.model.host).__name__.lower().startswith(host)
    expected_fusion = {"": "InterestFusion", "_concat": "ConcatFusion", "_gate": "GateFusion"}[fusion]
    assert type(cli.model.host.fusion).__name__ == expected_fusion
    after_fit = metrics_of(cli, "test_")
    assert set(after_fit) == {"test_loss", "test_auc", "test_gauc", "test_logloss"}
    best = cli.trainer.checkpoint_callback.best_model_path
    assert best and os.path.isfile(best)
    output = capsys.readouterr().out
    assert "test (best checkpoint)" in output and "test_gauc" in output

    # No config.yaml or lightning_logs/ in the working directory (data_cache/ is the data's).
    assert not {"config.yaml", "lightning_logs", "checkpoints"} & set(os.listdir(in_tmp))
    assert glob.glob("logs/lightning_logs/version_*/config.yaml")
    assert glob.glob("logs/lightning_logs/version_*/metrics.csv")

    # --metrics_path: the summaries' metrics and the tested checkpoint, for scripts.
    written = json.loads((in_tmp / "out" / "metrics.json").read_text())
    assert {k: written[k] for k in after_fit} == pytest.approx(after_fit) and "val_auc" in written and "train_epoch_s" in written
    assert written["tested_checkpoint"] == os.path.abspath(best)

    again = run("test", f"{host}{fusion}.yaml", f"--ckpt_path={best}", "--metrics_path=out/metrics.json", data=data)
    assert metrics_of(again, "test_") == pytest.approx(after_fit, rel=1e-6)
    # A new command replaces the file: no fit metrics left over from the earlier one.
    assert set(json.loads((in_tmp / "out" / "metrics.json").read_text())) == set(after_fit)


@pytest.mark.slow
def test_validate_and_predict_from_checkpoint(in_tmp: Path, capsys) -> None:
    cli = run("fit", "din_concat.yaml")
    best = cli.trainer.checkpoint_callback.best_model_path
    # A CLI checkpoint rebuilds its task in Python alone (host config and spec in hparams),
    # with torch.load's default weights_only=True.
    restored = CTRTask.load_from_checkpoint(best)
    assert type(restored.host).__name__ == "DIN" and type(restored.host.fusion).__name__ == "ConcatFusion"
    assert restored.feature_spec == cli.datamodule.feature_spec
    saved = torch.load(best, weights_only=True)["state_dict"]
    assert all(torch.equal(value, saved[key]) for key, value in restored.state_dict().items())
    validated = run("validate", "din_concat.yaml", f"--ckpt_path={best}")
    assert metrics_of(validated, "val_auc") == pytest.approx(metrics_of(cli, "val_auc"), rel=1e-6)
    assert "validate" in capsys.readouterr().out

    run("predict", "din_concat.yaml", f"--ckpt_path={best}", "--predictions_path=out/preds.csv")
    with open("out/preds.csv") as handle:
        rows = list(csv.DictReader(handle))
    # limit_predict_batches=2 batches of eval_batch_size rows of the test split.
    assert len(rows) == min(2 * cli.datamodule.eval_batch_size, len(cli.datamodule.split("test")))
    assert list(rows[0]) == ["row", "user", "target_item", "label", "prob", "user_id", "item_id"]
    assert [int(r["row"]) for r in rows] == list(range(len(rows)))
    probs = torch.tensor([float(r["prob"]) for r in rows])
    assert bool(((probs > 0) & (probs < 1)).all())
    assert all(int(r["user"]) >= 2 and int(r["target_item"]) >= 2 for r in rows)

    # Parquet, another split; the rows are the split's own, in order, with their labels.
    run("predict", "din_concat.yaml", f"--ckpt_path={best}", "--predictions_path=out/valid.parquet",
        "--predict_split=valid", "--trainer.limit_predict_batches=1.0")
    table = pq.read_table("out/valid.parquet").to_pydict()
    valid = cli.datamodule.split("valid")
    assert table["row"] == list(range(len(valid)))
    assert table["user"] == list(valid["user"]) and table["target_item"] == list(valid["target_item"])
    assert table["label"] == [float(v) for v in valid["label"]]
    assert all(0 < p < 1 for p in table["prob"])
    # Synthetic raw ids are the generator's, from 0: the encoded ids shifted past pad and OOV.
    assert [u + FIRST_ID for u in table["user_id"]] == table["user"]
    assert [i + FIRST_ID for i in table["item_id"]] == table["target_item"]

    # An existing predictions file is kept unless --overwrite_predictions true.
    before = Path("out/preds.csv").read_bytes()
    with pytest.raises(FileExistsError, match="out/preds.csv exists"):
        run("predict", "din_concat.yaml", f"--ckpt_path={best}", "--predictions_path=out/preds.csv")
    assert Path("out/preds.csv").read_bytes() == before
    run("predict", "din_concat.yaml", f"--ckpt_path={best}", "--predictions_path=out/preds.csv",
        "--overwrite_predictions=true", "--predict_split=train")
    assert Path("out/preds.csv").read_bytes() != before
    with pytest.raises(ValueError, match="--predict_split must be one of"):
        run("predict", "din_concat.yaml", f"--ckpt_path={best}", "--predictions_path=out/x.csv", "--predict_split=dev")


PREDICTION_HEADER = ["row", "user", "target_item", "label", "prob", "user_id", "item_id"]


def _read_predictions(path: str) -> dict[str, list]:
    """The predictions file as columns (CSV values stay strings)."""
    if path.endswith(".parquet"):
        return pq.read_table(path).to_pydict()
    with open(path, newline="") as handle:
        rows = list(csv.DictReader(handle))
    return {name: [row[name] for row in rows] for name in rows[0]}


def _grocery_sequences() -> dict[int, list[int]]:
    """Raw item ids per raw user of the slice's interactions.tsv, oldest first (file order breaks ties)."""
    with open(GROCERY_SLICE / "interactions.tsv", newline="") as handle:
        rows = sorted((int(r["user_id"]), int(r["time"]), line, int(r["item_id"]))
                      for line, r in enumerate(csv.DictReader(handle, delimiter="\t")))
    sequences: dict[int, list[int]] = {}
    for user, _, _, item in rows:
        sequences.setdefault(user, []).append(item)
    return sequences


@pytest.mark.parametrize("suffix", ["parquet", "csv"])
def test_predict_writes_raw_ids_of_the_grocery_slice(in_tmp: Path, suffix: str) -> None:
    # Untrained weights: the ids are under test, not the scores. The CSV run writes 2 batches of
    # 16, a prefix of the split, so the raw ids must be joined by row, not taken whole.
    limit = ["--trainer.limit_predict_batches=1.0"] if suffix == "parquet" else ["--data.init_args.eval_batch_size=16"]
    cli = run("predict", "din_concat.yaml", f"--predictions_path=out/test.{suffix}", *limit, data="grocery-slice")
    written = _read_predictions(f"out/test.{suffix}")
    assert list(written) == PREDICTION_HEADER
    rows, users, items, encoded_users, encoded_items = (
        [int(v) for v in written[name]] for name in ("row", "user_id", "item_id", "user", "target_item"))
    labels = [float(v) for v in written["label"]]
    assert rows == list(range(len(cli.datamodule.split("test")) if suffix == "parquet" else 32))
    sequences = _grocery_sequences()
    for user, item, label in zip(users, items, labels):
        # The protocol's test positive is the user's latest interaction; a negative one never rated.
        assert (item == sequences[user][-1]) if label == 1 else (item not in sequences[user])
    # Users are all encoded, in sorted raw-id order from FIRST_ID.
    user_index = {user: i + FIRST_ID for i, user in enumerate(sorted(sequences))}
    assert encoded_users == [user_index[user] for user in users]
    # Out-of-vocabulary rows keep their true raw id: an item no train-visible history holds.
    seen_in_train_histories = {item for seq in sequences.values() for item in seq[:-2]}
    oov_items = [item for item, encoded in zip(items, encoded_items) if encoded == OOV_ID]
    assert oov_items and not set(oov_items) & seen_in_train_histories
    # Known items: one encoded id per raw id, in the raw ids' sorted order.
    known = sorted({(item, encoded) for item, encoded in zip(items, encoded_items) if encoded != OOV_ID})
    assert all(a[1] < b[1] for a, b in zip(known, known[1:]))


def _write_string_id_table(root: Path) -> list[tuple[str, str]]:
    """A CSV table with string user and item ids; returns the test file's (user_id, item_id) rows."""
    root.mkdir()
    header = "user_id,item_id,label,item_history\n"
    train = [(f"u{u}", f"i{(u + k) % 7}", k % 2, " ".join(f"i{(u + j) % 7}" for j in range(k))) for u in range(6) for k in range(4)]
    (root / "train.csv").write_text(header + "".join(f"{u},{i},{y},{h}\n" for u, i, y, h in train))
    (root / "valid.csv").write_text(header + "u1,i3,1,i1 i2\nu2,i4,0,i2\n")
    # u9 is an unseen user and i99, 'i,42' (quoted: a comma inside the id) unseen items: all OOV.
    test = [("u3", "i5", 1, "i3 i4"), ("u9", "i99", 0, "i1"), ("u0", "i,42", 1, ""), ("u5", "i0", 0, "i5 i6 i0")]
    (root / "test.csv").write_text(header + "".join(f'{u},"{i}",{y},{h}\n' for u, i, y, h in test))
    return [(u, i) for u, i, _, _ in test]


@pytest.mark.parametrize("suffix", ["parquet", "csv"])
def test_predict_writes_string_raw_ids_of_a_table(in_tmp: Path, suffix: str) -> None:
    expected = _write_string_id_table(in_tmp / "table")
    main(["predict", f"--config={RECIPES / 'din_concat.yaml'}", f"--config={RECIPES / 'data' / 'table.yaml'}",
          f"--data.init_args.root={in_tmp / 'table'}", "--data.init_args.long_len=4", *QUICK,
          f"--predictions_path=out/test.{suffix}"])
    written = _read_predictions(f"out/test.{suffix}")
    assert list(written) == PREDICTION_HEADER
    assert list(zip(written["user_id"], written["item_id"])) == expected
    assert [int(v) for v in written["target_item"]][1:3] == [OOV_ID, OOV_ID]  # i99, 'i,42'
    assert int(written["user"][1]) == OOV_ID  # u9


def test_predictions_without_raw_ids_keep_the_encoded_columns_and_warn() -> None:
    rows = np.arange(3)
    for datamodule, reason in ((None, "there is no datamodule"), (LightningDataModule(), "LightningDataModule keeps no raw ids")):
        with pytest.warns(UserWarning, match=f"no user_id/item_id columns: {reason}"):
            writer = PredictionsFileWriter("unused.csv", "test")
            assert writer._raw_id_columns(SimpleNamespace(datamodule=datamodule), rows) == {}


@pytest.mark.slow
def test_wandb_offline_run(in_tmp: Path, monkeypatch) -> None:
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    run("fit", "avgpool_concat.yaml", f"--config={RECIPES / 'wandb.yaml'}")
    runs = glob.glob("logs/wandb/offline-run-*")
    assert len(runs) == 1 and glob.glob(f"{runs[0]}/*.wandb")
    assert not os.path.exists("wandb") and not os.path.exists("config.yaml")
    # The CSV logger stays first: config.yaml beside its metrics.
    assert glob.glob("logs/lightning_logs/version_*/config.yaml")


def test_recipes_resolve(in_tmp: Path) -> None:
    """--print_config resolves every recipe (nested fusion files included) without running."""
    for recipe in sorted(RECIPES.glob("*.yaml")):
        if recipe.name in ("wandb.yaml", "gpu.yaml"):
            continue
        data_args, kwargs = _data_args()
        with pytest.raises(SystemExit) as exit_info:
            main(["fit", f"--config={recipe}", *data_args, "--print_config"], **kwargs)
        assert exit_info.value.code == 0, recipe.name
    assert "config.yaml" not in os.listdir(in_tmp)


def test_fusion_variants_differ_only_in_fusion() -> None:
    assert sorted(p.stem for p in RECIPES.glob("*.yaml") if "_" not in p.stem and p.stem in HOSTS) == sorted(HOSTS)
    for host in HOSTS:
        texts = {f: (RECIPES / f"{host}{f}.yaml").read_text().splitlines() for f in FUSIONS}
        base = texts[""]
        for fusion in ("_concat", "_gate"):
            diff = [(a, b) for a, b in zip(base, texts[fusion]) if a != b]
            assert len(base) == len(texts[fusion])
            # Comment lines name the variant; the only setting that differs is the fusion file.
            settings = [(a, b) for a, b in diff if not a.lstrip().startswith("#")]
            assert settings == [("        fusion: fusion/ifusion.yaml", f"        fusion: fusion/{fusion[1:]}.yaml")]


@pytest.mark.parametrize("data_recipe", sorted(p.name for p in (RECIPES / "data").glob("*.yaml")))
def test_data_recipe_sets_its_own_batch(data_recipe: str, capsys) -> None:
    # jsonargparse keeps the synthetic default's init_args that the new data class also accepts:
    # each data recipe must set the batch itself, not inherit the quick start's batch of 32.
    with pytest.raises(SystemExit):
        main(["fit", f"--config={RECIPES / 'twin.yaml'}", f"--config={RECIPES / 'data' / data_recipe}", "--print_config"])
    data = yaml.safe_load(capsys.readouterr().out)["data"]
    written = yaml.safe_load((RECIPES / "data" / data_recipe).read_text())["data"]["init_args"]
    assert data["init_args"]["batch_size"] == written["batch_size"] >= 256
    assert data["init_args"]["eval_batch_size"] == written["eval_batch_size"]
    assert "num_users" not in data["init_args"]


@pytest.mark.parametrize(
    "options, message",
    [
        (["--model.init_args.host.init_args.fusion.init_args.num_heads=5"], "num_heads must be a positive divisor of fusion_dim=64"),
        (["--model.init_args.host.init_args.fusion.init_args.fusion_dim=-8"], "fusion_dim"),
        (["--model.init_args.host.init_args.top_k=0"], "top_k must be a positive int, got 0"),
        (["--data.init_args.num_sessions=0"], "num_sessions must be a positive int, got 0"),
        (["--model.init_args.host.init_args.fusion.init_args.guidance=dcfgx"], "guidance"),
    ],
    ids=["heads", "fusion-dim", "top-k", "zero-sessions", "guidance-name"],
)
def test_bad_config_fails_before_any_data_is_read(in_tmp: Path, options: list[str], message: str, capsys) -> None:
    # The data root does not exist: reaching the data would raise FileNotFoundError instead.
    args = ["fit", f"--config={RECIPES / 'twin.yaml'}", f"--config={RECIPES / 'data' / 'movielens-1m.yaml'}",
            "--data.init_args.root=does/not/exist", *options]
    with pytest.raises((ValueError, SystemExit)) as error:
        main(args)
    text = str(error.value) + capsys.readouterr().err
    assert message in text
    assert not isinstance(error.value, FileNotFoundError) and "expected file" not in text


def test_unknown_host_or_fusion_class_is_named(in_tmp: Path, capsys) -> None:
    for key, value in (("model.init_args.host.class_path", "ifusion_plugin.hosts.NoSuchHost"),
                       ("model.init_args.host.init_args.fusion.class_path", "ifusion_plugin.fusion.NoSuchFusion")):
        with pytest.raises(SystemExit):
            main(["fit", f"--config={RECIPES / 'twin.yaml'}", f"--{key}={value}"])
        assert f"has no attribute '{value.rsplit('.', 1)[1]}'" in capsys.readouterr().err


@pytest.mark.slow
@pytest.mark.parametrize("precision", ["bf16-mixed", "32-true"])
def test_cpu_precisions_stay_finite(in_tmp: Path, precision: str) -> None:
    # Over the run iFusion draws steps up to both ends of the cosine schedule (t = 0 and
    # t = T - 1, where abar is about 1 and 0); no loss, metric or weight may turn NaN. A full
    # MovieLens-1M epoch in bf16-mixed on CPU is in BENCHMARKS.md.
    cli = run("fit", "twin.yaml", f"--trainer.precision={precision}", "--run_test=true",
              "--trainer.limit_train_batches=20")
    metrics = metrics_of(cli, "")
    assert metrics and all(torch.isfinite(torch.tensor(v)) for v in metrics.values()), metrics
    assert all(torch.isfinite(p).all() for p in cli.model.parameters())


def test_plain_concat_recipe_builds_a_concat_without_projection(capsys) -> None:
    """recipes/fusion/concat-plain.yaml in a host's fusion slot: fusion_dim null reaches the class."""
    with pytest.raises(SystemExit):
        main(["fit", f"--config={RECIPES / 'twin_concat.yaml'}",
              f"--model.init_args.host.init_args.fusion={RECIPES / 'fusion' / 'concat-plain.yaml'}", "--print_config"])
    fusion = yaml.safe_load(capsys.readouterr().out)["model"]["init_args"]["host"]["init_args"]["fusion"]
    assert fusion["class_path"].endswith("ConcatFusion") and fusion["init_args"]["fusion_dim"] is None


@pytest.mark.slow
def test_serving_settings_change_at_test_time_from_the_command_line(in_tmp: Path) -> None:
    """`test --ckpt_path` with other iFusion serving settings: the weights are the checkpoint's,
    the eval path uses the settings given, and the metrics follow them."""
    cli = run("fit", "twin.yaml")
    best = cli.trainer.checkpoint_callback.best_model_path
    fusion_option = "--model.init_args.host.init_args.fusion.init_args"
    tested = {}
    for t_start in (300, 1000):
        again = run("test", "twin.yaml", f"--ckpt_path={best}", f"{fusion_option}.t_start={t_start}",
                    f"{fusion_option}.gamma_cp=2.0", f"{fusion_option}.gamma_tf=1.0")
        fusion = again.model.host.fusion
        assert fusion.serving_settings.t_start == t_start and fusion.serving_settings.gamma_cp == 2.0
        # ...and nothing else of the command line or the recipe was reset on the way.
        assert again.trainer.limit_test_batches == 2 and again.model.host.embed_dim == 8
        assert again.datamodule.batch_size == 32
        saved = torch.load(best, weights_only=True)["state_dict"]
        assert torch.equal(again.model.state_dict()["host.fusion.skip_gate"], saved["host.fusion.skip_gate"])
        tested[t_start] = metrics_of(again, "test_logloss")["test_logloss"]
    assert tested[300] != tested[1000]  # the setting reached the eval path
