"""Serving export: torch.export and ONNX programs give the eager predictions on real batches,
for any batch size; the export command writes them from a checkpoint and never overwrites."""

from __future__ import annotations

import functools
import json
import os
from pathlib import Path

import pytest
import torch

from ifusion_plugin.batch import CTRBatch, FeatureSpec
from ifusion_plugin.cli import run as cli_run
from ifusion_plugin.data import AmazonGroceryDataModule
from ifusion_plugin.export_command import main as export_main
from ifusion_plugin.fusion import ConcatFusion, InterestFusion
from ifusion_plugin.hosts import DIN, SIM, TWIN
from ifusion_plugin.serving import ServingModel, dynamic_shapes, export_onnx, export_program, load_program
from ifusion_plugin.task import CTRTask

from test_cli import in_tmp  # noqa: F401  (fixture: a run in tmp_path as working directory)
from test_cli import run as run_cli
from test_task import SPEC

ort = pytest.importorskip("onnxruntime")

GROCERY_SLICE = Path(__file__).resolve().parent / "fixtures" / "amazon-grocery-slice"


@pytest.fixture(scope="module")
def grocery(tmp_path_factory) -> AmazonGroceryDataModule:
    data = AmazonGroceryDataModule(
        root=str(GROCERY_SLICE), long_len=20, batch_size=16, eval_batch_size=80, cache_dir=str(tmp_path_factory.mktemp("cache"))
    )
    data.prepare_data()
    data.setup("test")
    return data


def real_batches(data: AmazonGroceryDataModule, sizes: tuple[int, ...]) -> list[CTRBatch]:
    """Test rows cut into batches of the given sizes (the batch dimension must be dynamic)."""
    rows = next(iter(data.test_dataloader()))
    full = CTRBatch(**{k: getattr(rows, k) for k in ("user", "target_item", "target_cate", "long_items",
                                                       "long_cates", "session_items", "session_cates", "label")})
    out, start = [], 0
    for size in sizes:
        assert start + size <= len(full), "the slice's test split is smaller than the test needs"
        out.append(full.slice(slice(start, start + size)))
        start += size
    return out


def onnx_predict(path: str, inputs: tuple[torch.Tensor, ...]) -> torch.Tensor:
    session = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
    feed = {i.name: t.numpy() for i, t in zip(session.get_inputs(), inputs)}
    return torch.from_numpy(session.run(None, feed)[0])


@pytest.mark.parametrize("host_class", [TWIN, SIM, DIN], ids=["twin", "sim", "din"])
def test_exported_programs_match_eager_on_real_batches(grocery, host_class, tmp_path) -> None:
    torch.manual_seed(0)
    host = host_class(grocery.feature_spec, embed_dim=8, head_dims=(16,), fusion=functools.partial(InterestFusion, fusion_dim=16))
    model = ServingModel(host, grocery.feature_spec)
    batches = real_batches(grocery, (1, 5, 16))
    example = model.inputs_from_batch(batches[2])
    export_program(model, str(tmp_path / "m.pt2"), example)
    export_onnx(model, str(tmp_path / "m.onnx"), example)
    program = load_program(str(tmp_path / "m.pt2"))
    for batch in batches:
        inputs = model.inputs_from_batch(batch)
        with torch.no_grad():
            eager = model(*inputs)
            # The serving model is the host's eval output, as probabilities.
            torch.testing.assert_close(eager, torch.sigmoid(host.eval()(batch).logits))
            torch.testing.assert_close(program(*inputs), eager, rtol=0, atol=1e-5)
        torch.testing.assert_close(onnx_predict(str(tmp_path / "m.onnx"), inputs), eager, rtol=0, atol=1e-5)
        assert eager.shape == (len(batch),)


def test_context_columns_are_an_input() -> None:
    spec = FeatureSpec(num_users=9, num_items=20, num_cates=5, long_len=6, num_sessions=2, session_len=3,
                       context_cardinalities=(4, 7))
    model = ServingModel(DIN(spec, embed_dim=8, head_dims=(8,), fusion=ConcatFusion), spec)
    assert model.input_names[-1] == "context"
    inputs = model.example_inputs(5)
    assert inputs[-1].shape == (5, 2) and int(inputs[-1][:, 1].max()) < 7
    program = torch.export.export(model, inputs, dynamic_shapes=dynamic_shapes(model))
    other = model.example_inputs(3, seed=4)
    torch.testing.assert_close(program.module()(*other), model(*other))
    with pytest.raises(ValueError, match=r"expected 1 input\(s\) after session_cates \(context"):
        model(*inputs[:-1])


def test_behaviour_types_are_an_input_after_context() -> None:
    spec = FeatureSpec(num_users=9, num_items=20, num_cates=5, long_len=6, num_sessions=2, session_len=3,
                       context_cardinalities=(4,), num_behaviors=5)
    model = ServingModel(TWIN(spec, embed_dim=8, head_dims=(8,), fusion=ConcatFusion), spec)
    assert model.input_names[-2:] == ("context", "session_behaviors")
    inputs = model.example_inputs(5)
    behaviors, sessions = inputs[-1], inputs[model.input_names.index("session_items")]
    assert behaviors.shape == sessions.shape and ((behaviors == 0) == (sessions == 0)).all() and int(behaviors.max()) < 5
    program = torch.export.export(model, inputs, dynamic_shapes=dynamic_shapes(model))
    other = model.example_inputs(3, seed=4)
    torch.testing.assert_close(program.module()(*other), model(*other))
    # The types reach the output: other types, other probabilities.
    changed = other[:-1] + (torch.where(other[-1] > 0, (other[-1] - 1) % 3 + 2, other[-1]),)
    assert not torch.allclose(model(*changed), model(*other))
    with pytest.raises(ValueError, match="session_behaviors"):
        model(*inputs[:-1])


def test_export_refuses_to_overwrite(tmp_path) -> None:
    model = ServingModel(DIN(SPEC, embed_dim=8, head_dims=(8,), fusion=ConcatFusion), SPEC)
    target = tmp_path / "m.pt2"
    target.write_bytes(b"a user's file")
    with pytest.raises(FileExistsError, match="m.pt2 exists"):
        export_program(model, str(target))
    assert target.read_bytes() == b"a user's file"
    with pytest.raises(ValueError, match="example batch size must be at least 2"):
        export_program(model, str(tmp_path / "n.pt2"), model.example_inputs(1))


@pytest.fixture
def checkpoint(in_tmp: Path) -> str:
    """The best checkpoint of a few steps of the TWIN + iFusion recipe, written by the CLI."""
    cli = run_cli("fit", "twin.yaml")
    return cli.trainer.checkpoint_callback.best_model_path


@pytest.mark.slow
def test_export_command_from_checkpoint(checkpoint, in_tmp, capsys, monkeypatch) -> None:
    out = in_tmp / "export"
    assert cli_run(["export", "--ckpt", checkpoint, "--out_dir", str(out)]) == 0
    manifest = json.loads((out / "serving.json").read_text())
    assert manifest["host"] == "TWIN" and manifest["fusion"] == "InterestFusion"
    assert set(manifest["parity_max_abs_diff"]) == {"pt2", "onnx", "request.pt2", "request.onnx"}
    assert manifest["request_vs_rows_max_abs_diff"] <= 1e-5
    assert [i["shape"][0] for i in manifest["request_inputs"]][:6] == [1, 1, 1, 1, 1, "C"]
    assert max(manifest["parity_max_abs_diff"].values()) <= 1e-5
    assert [i["name"] for i in manifest["inputs"]][:2] == ["user", "target_item"]
    assert manifest["inputs"][3]["shape"] == ["B", manifest["feature_spec"]["long_len"]]
    # The files serve the checkpoint's model.
    task = CTRTask.load_from_checkpoint(checkpoint, map_location="cpu")
    model = ServingModel(task.host, task.host.spec)
    inputs = model.example_inputs(6, seed=9)
    with torch.no_grad():
        torch.testing.assert_close(load_program(str(out / "model.pt2"))(*inputs), model(*inputs), rtol=0, atol=1e-5)
    torch.testing.assert_close(onnx_predict(str(out / "model.onnx"), inputs), model(*inputs).detach(), rtol=0, atol=1e-5)

    # A second export into the same directory keeps what is there unless --overwrite.
    before = {p.name: p.stat().st_mtime_ns for p in out.iterdir()}
    with pytest.raises(SystemExit):
        export_main(["--ckpt", checkpoint, "--out_dir", str(out), "--format", "pt2"])
    assert "exists; pass --overwrite" in capsys.readouterr().err
    assert {p.name: p.stat().st_mtime_ns for p in out.iterdir()} == before
    assert export_main(["--ckpt", checkpoint, "--out_dir", str(out), "--format", "pt2", "--overwrite"]) == 0
    assert not any(".partial" in name or name.startswith(".export-") for name in os.listdir(out))
    assert json.loads((out / "serving.json").read_text())["passed"] is True

    # An export that fails parity leaves nothing a server could pick up: no model file under
    # the final names, and its record (tolerance, error, passed false) in serving.rejected.json.
    fresh = in_tmp / "rejected"
    monkeypatch.setattr("ifusion_plugin.export_command.max_difference", lambda model, runner: 3e-3)
    assert export_main(["--ckpt", checkpoint, "--out_dir", str(fresh), "--format", "pt2"]) == 1
    assert sorted(os.listdir(fresh)) == ["serving.rejected.json"]
    record = json.loads((fresh / "serving.rejected.json").read_text())
    assert record["passed"] is False and record["tolerance"] == 1e-5
    assert record["parity_max_abs_diff"] == {"pt2": 3e-3, "request.pt2": 3e-3}
    # ...and a previous passing export in the same directory stays as it was.
    def files(directory: Path) -> dict[str, bytes]:
        return {str(p.relative_to(directory)): p.read_bytes() for p in directory.rglob("*") if p.is_file()}

    before = files(out)
    assert "vocab/vocabularies.json" in before  # the run's config.yaml gave the vocabularies
    assert export_main(["--ckpt", checkpoint, "--out_dir", str(out), "--format", "pt2", "--overwrite"]) == 1
    assert {name: data for name, data in files(out).items() if name != "serving.rejected.json"} == before


def test_export_command_missing_checkpoint(tmp_path) -> None:
    with pytest.raises(FileNotFoundError, match="--ckpt: no such file"):
        export_main(["--ckpt", str(tmp_path / "nope.ckpt"), "--out_dir", str(tmp_path)])
