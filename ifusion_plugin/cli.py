"""Command line: ``python -m ifusion_plugin.cli {fit,validate,test,predict} --config recipes/twin.yaml``,
and ``python -m ifusion_plugin.cli export --ckpt ...`` (serving files, see
:mod:`ifusion_plugin.export_command`).

A thin :class:`~lightning.pytorch.cli.LightningCLI`: the model is a :class:`~ifusion_plugin.task.CTRTask`
whose host (and the host's fusion layer) is a ``class_path`` in YAML, the data any subclass of
``CTRDataModule``. The datamodule's ``feature_spec`` is linked to the task once the datamodule
exists, so vocabulary sizes are never written by hand.

Differences from a plain ``LightningCLI``:

- ``fit --run_test true`` tests after training, on the **best** checkpoint of the trainer's
  ``ModelCheckpoint`` (``ckpt_path="best"``; the recipes monitor ``val_auc``), or on the final
  weights when no checkpoint was written (checkpointing turned off);
- logs (CSV by default), checkpoints and the resolved ``config.yaml`` go under ``logs/``, never
  into the working directory, where the config would overwrite a user's own file;
- after ``fit``, ``validate`` and ``test`` a table of the final epoch metrics is printed;
- ``predict`` scores the split ``--predict_split`` (default ``test``) and writes one
  ``row, user, target_item, label, prob, user_id, item_id`` row per sample to
  ``--predictions_path``: Parquet when the path ends in ``.parquet``, else CSV (default
  ``logs/predictions.csv``). ``row`` is the sample's index in the split (for a prepared-sample
  table, its row in that split's file); ``user`` and ``target_item`` are the encoded ids of the
  batch layout (0 padding, 1 out-of-vocabulary); ``user_id`` and ``item_id`` are the same
  sample's ids as the source data spells them (ints, or strings where the source has string ids;
  an out-of-vocabulary item keeps its true id), from
  :meth:`~ifusion_plugin.data.CTRDataModule.raw_ids`. Every built-in datamodule provides them;
  with a datamodule that does not (``has_raw_ids`` false, or not a ``CTRDataModule``) the file
  has the first five columns only and a ``UserWarning`` says so. An existing file is replaced
  only with ``--overwrite_predictions true``. Under DDP every process scores its batches and
  rank 0 writes the one file, rows in split order
  (:class:`~ifusion_plugin.prediction_writer.PredictionsFileWriter`).
"""

from __future__ import annotations

import json
import logging
import os
import sys
import warnings
import zipfile
from typing import Any, Optional

import torch

try:
    from jsonargparse import ArgumentParser, Namespace
    from lightning.pytorch import LightningDataModule
    from lightning.pytorch.callbacks import ModelCheckpoint
    from lightning.pytorch.cli import LightningArgumentParser, LightningCLI
    from lightning.pytorch.utilities import rank_zero_only
except ImportError as _missing:  # the core (fusion layers, hosts) needs torch alone
    _HINT = f'the command line needs the lightning extra ({_missing}): pip install "ifusion-plugin[lightning]"'
    if __name__ == "__main__":
        sys.exit(f"error: {_HINT}")
    raise ImportError(_HINT) from _missing

from .batch import FIRST_ID, FeatureSpec
from .cli_errors import short_error
from .prediction_writer import PredictionsFileWriter, write_predictions
from .recipes import resolve_recipe_paths
from .run_config import run_config_of
from .task import CTRTask, HostFactory


__all__ = [
    "CTRLightningCLI",
    "check_model_config",
    "checkpoint_problem",
    "config_beside_checkpoint",
    "finished_run_message",
    "format_summary",
    "write_metrics",
    "main",
    "run",
    "write_predictions",
]

#: ``python -m ifusion_plugin.cli --help``: every command, one line each.
COMMANDS = {
    "fit": "train a recipe (`--run_test true` tests the best checkpoint afterwards)",
    "validate": "score the validation split with a checkpoint (`--ckpt_path`)",
    "test": "score the test split with a checkpoint (`--ckpt_path`)",
    "predict": "write one probability per sample of a split (`--ckpt_path`, `--predictions_path`)",
    "export": "write serving files (torch.export program, ONNX) from a checkpoint (`--ckpt`)",
    "recipes": "list the packaged recipes, or `recipes copy [DEST]` them out for editing",
}
#: ``--ckpt_path`` values Lightning resolves itself (not files).
CKPT_KEYWORDS = ("best", "last", "hpc", "registry")

PREDICT_SPLITS = ("train", "valid", "test")
#: Defaults every run gets unless the YAML or the command line says otherwise.
TRAINER_DEFAULTS: dict[str, Any] = {
    "max_epochs": 1,
    "default_root_dir": "logs",
    "logger": {"class_path": "lightning.pytorch.loggers.CSVLogger", "init_args": {"save_dir": "logs"}},
}


def format_summary(metrics: dict[str, float], title: str) -> str:
    """A two-column text table of ``metrics`` (sorted by name) under ``title``."""
    if not metrics:
        return f"{title}: no metrics logged"
    width = max(len(name) for name in metrics)
    rule = "-" * (width + 14)
    rows = [f"{name:<{width}}  {value:>12.6f}" for name, value in sorted(metrics.items())]
    return "\n".join([rule, title, rule, *rows, rule])


def write_metrics(path: str, metrics: dict[str, Any], *, merge: bool) -> None:
    """Write ``metrics`` as a JSON object to ``path`` (its directory created), merged into the
    object already there when ``merge``; written to a temporary file and renamed, so a reader
    never sees half a file."""
    merged: dict[str, Any] = {}
    if merge and os.path.exists(path):
        with open(path, encoding="utf-8") as handle:
            merged = json.load(handle)
    merged.update(metrics)
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    partial = f"{path}.tmp-{os.getpid()}"
    with open(partial, "w", encoding="utf-8") as handle:
        json.dump(merged, handle, indent=1, sort_keys=True)
    os.replace(partial, path)


def check_model_config(model: Any, data: Any) -> None:
    """Build the configured host on a placeholder :class:`FeatureSpec` shaped like the data
    config (sequence lengths, context columns), so constructor errors of the host and its fusion
    layer (dimensions, heads, options) surface before the datamodule reads any file.

    Nothing is checked when the model config has no ``host`` block (a built module).
    """
    host = getattr(getattr(model, "init_args", None), "host", None)
    if not (isinstance(host, Namespace) and "class_path" in host):
        return
    options = vars(getattr(data, "init_args", None) or Namespace())
    context = options.get("context_columns") or []
    spec = FeatureSpec(
        num_users=FIRST_ID + 2, num_items=FIRST_ID + 2, num_cates=FIRST_ID + 2,
        long_len=int(options.get("long_len") or 100), num_sessions=int(options.get("num_sessions") or 4),
        session_len=int(options.get("session_len") or 5), context_cardinalities=tuple(FIRST_ID + 2 for _ in context),
    )
    # jsonargparse builds the factory as LightningCLI will (class_path/init_args, nested fusion).
    parser = ArgumentParser(exit_on_error=False)
    parser.add_argument("--host", type=HostFactory)
    config = parser.parse_object({"host": host.as_dict()})
    with warnings.catch_warnings():  # instantiate_classes is deprecated in newer jsonargparse
        warnings.simplefilter("ignore", DeprecationWarning)
        build = getattr(parser, "instantiate", None) or parser.instantiate_classes
        build(config).host(spec)


def finished_run_message(ckpt_path: Optional[str], max_epochs: Optional[int], max_steps: int) -> Optional[str]:
    """What to say when resuming ``ckpt_path`` would train nothing, else ``None``.

    A checkpoint whose run completed ``max_epochs`` epochs (or ``max_steps`` steps) resumes
    into an immediate stop; saying so beats an empty run directory and "no metrics logged".
    """
    if not ckpt_path or ckpt_path in CKPT_KEYWORDS or not os.path.isfile(ckpt_path):
        return None
    state = torch.load(ckpt_path, map_location="cpu", weights_only=True)
    # "processed", not "completed": ModelCheckpoint saves at validation end, before the epoch is
    # marked completed, and Lightning's fit loop stops on processed epochs.
    epochs = state.get("loops", {}).get("fit_loop", {}).get("epoch_progress", {}).get("current", {}).get("processed")
    steps = int(state.get("global_step", 0))
    if max_steps is not None and max_steps > 0 and steps >= max_steps:
        done, extend = f"{steps} steps (--trainer.max_steps {max_steps})", f"--trainer.max_steps {steps + max_steps}"
    elif epochs is not None and max_epochs is not None and max_epochs >= 0 and epochs >= max_epochs:
        done, extend = f"{epochs} epoch(s) (--trainer.max_epochs {max_epochs})", f"--trainer.max_epochs {epochs + 1}"
    else:
        return None
    return (f"{ckpt_path} already finished its run: {done}; nothing to train.\n"
            f"To train further, resume with a larger limit, e.g. {extend}.")


def config_beside_checkpoint(argv: list[str]) -> tuple[list[str], Optional[str]]:
    """``validate``/``test``/``predict --ckpt_path <run>/checkpoints/x.ckpt`` without ``--config``:
    add the run's saved ``<run>/config.yaml`` (written by ``fit``) as the config.

    Returns:
        ``(argv, path)``: the command line, with ``--config <path>`` added after the subcommand
        when one was found (``path`` is then that file, else ``None``).
    """
    if not argv or argv[0] not in ("validate", "test", "predict"):
        return argv, None
    if any(w in ("--config", "-c") or w.startswith("--config=") for w in argv):
        return argv, None
    ckpt = _option_value(argv, "--ckpt_path")
    if not ckpt or ckpt in CKPT_KEYWORDS:
        return argv, None
    config = run_config_of(ckpt)
    return ([argv[0], "--config", config, *argv[1:]], config) if config else (argv, None)


def checkpoint_problem(path: str) -> Optional[str]:
    """Why ``path`` cannot be a checkpoint (missing, or not a complete torch archive), else ``None``.

    ``torch.save`` writes a zip archive whose directory is at the end: a copy cut short (a full
    disk, an interrupted transfer) has none, and torch would fail with an unnamed I/O error.
    """
    if not os.path.isfile(path):
        return f"no such checkpoint: {path}"
    if not zipfile.is_zipfile(path):
        return f"checkpoint {path} is truncated or not a checkpoint ({os.path.getsize(path):,} bytes, no complete torch archive)"
    return None


def _option_value(argv: list[str], name: str) -> Optional[str]:
    """The value of ``name`` (``--name value`` or ``--name=value``) in ``argv``; the last wins."""
    value = None
    for i, word in enumerate(argv):
        if word == name and i + 1 < len(argv):
            value = argv[i + 1]
        elif word.startswith(name + "="):
            value = word.split("=", 1)[1]
    return value


class _NoTips(logging.Filter):
    """Drops Lightning's promotional tips (cloud logging, model registry)."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "Tip:" not in str(record.msg)


_NO_TIPS = _NoTips()


class CTRLightningCLI(LightningCLI):
    """LightningCLI with the ``data.feature_spec -> model.feature_spec`` link, ``--run_test`` and
    a final metrics summary. Construct it like ``LightningCLI``; :func:`main` does so for
    :class:`CTRTask` and ``CTRDataModule``.
    """

    def add_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
        # On instantiate: the spec is known only after the datamodule reads (or builds) its cache.
        parser.link_arguments("data.feature_spec", "model.init_args.feature_spec", apply_on="instantiate")
        # Added to every subcommand's parser (LightningCLI has no per-subcommand hook); only
        # `fit` reads it, and it never reaches the Trainer methods.
        parser.add_argument(
            "--run_test",
            type=bool,
            default=False,
            help="fit only: after training, run the test split on the best checkpoint "
            "(ckpt_path='best'), or on the final weights when no checkpoint was saved",
        )
        parser.add_argument(
            "--metrics_path",
            type=Optional[str],
            default=None,
            help="fit, validate, test: also write the summaries' metrics (and, after fit --run_test, the tested "
            "checkpoint as 'tested_checkpoint') to this JSON file, for scripts; replaced atomically",
        )
        parser.add_argument(
            "--predictions_path",
            type=str,
            default=os.path.join("logs", "predictions.csv"),
            help="predict only: file receiving one 'row, user, target_item, label, prob, user_id, item_id' row "
            "per sample (user_id/item_id: the raw ids of the source data); Parquet when it ends in .parquet, else CSV",
        )
        parser.add_argument(
            "--predict_split",
            type=str,
            default="test",
            help="predict only: the split to score, 'train', 'valid' or 'test'",
        )
        parser.add_argument(
            "--overwrite_predictions",
            type=bool,
            default=False,
            help="predict only: replace an existing --predictions_path",
        )

    def predict(self, **kwargs: Any) -> None:
        """``trainer.predict`` on ``--predict_split`` (LightningCLI calls this instead of it),
        then the predictions file."""
        path = self._get(self.config, "predictions_path")
        split = self._get(self.config, "predict_split", "test")
        if split not in PREDICT_SPLITS:
            raise ValueError(f"--predict_split must be one of {', '.join(PREDICT_SPLITS)}, got {split!r}")
        # Checked before predicting: an hour of scoring must not end on an existing file.
        if os.path.exists(path) and not self._get(self.config, "overwrite_predictions", False):
            raise FileExistsError(f"--predictions_path {path} exists; pass --overwrite_predictions true to replace it")
        if self.datamodule is not None:
            self.datamodule.predict_split = split
        # Lightning's prediction-writer callback places every prediction by its sample's row
        # (right under DDP too) and writes the file on rank 0.
        writer = PredictionsFileWriter(path, split)
        self.trainer.callbacks.append(writer)
        try:
            self.trainer.predict(**{**kwargs, "return_predictions": False})
        finally:
            self.trainer.callbacks.remove(writer)
        if self.trainer.is_global_zero:
            print(f"predictions for the {split} split written to {path}", flush=True)

    def parse_arguments(self, parser: Any, args: Any) -> None:
        """Keep the command line's ``--model...`` options: they must win over a checkpoint's
        hyperparameters (see :meth:`_parse_ckpt_path`)."""
        words = list(sys.argv[1:] if args is None else args) if not isinstance(args, dict) else []
        self._model_options: list[str] = []
        for i, word in enumerate(words):
            if word.startswith("--model.") or word.startswith("--model="):
                self._model_options.append(word)
                if "=" not in word and i + 1 < len(words):
                    self._model_options.append(words[i + 1])
        super().parse_arguments(parser, args)

    def _parse_ckpt_path(self) -> None:
        """Lightning puts a checkpoint's hyperparameters over the whole model config, which
        silently dropped what the command line set (e.g. ``test --ckpt_path ... --model...t_start
        100``, iFusion's serving settings). The checkpoint's values stay the defaults; the
        command line's ``--model...`` options are applied again on top."""
        super()._parse_ckpt_path()
        subcommand = self.config.get("subcommand")
        if subcommand and self._model_options and self.config[subcommand].get("ckpt_path"):
            self.config = self.parser.parse_args([subcommand, *self._model_options], namespace=self.config)

    def before_instantiate_classes(self) -> None:
        """Loggers left at the default directory follow ``--trainer.default_root_dir``, so the
        run (metrics, checkpoints, config.yaml) lands where the user asked."""
        trainer = self._get(self.config, "trainer")
        root, default = trainer.get("default_root_dir"), TRAINER_DEFAULTS["default_root_dir"]
        if not root or root == default:
            return
        loggers = trainer.get("logger")
        for logger in loggers if isinstance(loggers, list) else [loggers]:
            init_args = logger.get("init_args") if isinstance(logger, Namespace) else None
            if init_args is not None and init_args.get("save_dir") == default:
                init_args.save_dir = root

    def instantiate_classes(self) -> None:
        """Build the host (and its fusion layer) once on a placeholder spec before anything reads
        data, so a bad model setting fails in seconds, not after a dataset build."""
        check_model_config(self._get(self.config, "model"), self._get(self.config, "data"))
        super().instantiate_classes()

    def instantiate_trainer(self, **kwargs: Any) -> Any:
        """Only ``fit`` starts a run directory: validate, test and predict read a checkpoint and
        print their metrics, so they get no logger and no config copy (no empty version_N)."""
        if self.subcommand in (None, "fit"):
            return super().instantiate_trainer(**kwargs)
        kwargs.setdefault("logger", False)
        kwargs.setdefault("enable_checkpointing", False)
        trainer = self._get(self.config_init, "trainer", default={})
        # A checkpoint callback of the recipe would look for its directory in a run that is
        # not there (and warn); evaluation writes no checkpoints.
        trainer["callbacks"] = [c for c in trainer.get("callbacks") or [] if not isinstance(c, ModelCheckpoint)]
        # ...and Lightning then asks for that callback back, which only a resumed fit needs.
        warnings.filterwarnings("ignore", message=r"Be aware that when using `ckpt_path`, callbacks used to create")
        saved, self.save_config_callback = self.save_config_callback, None
        try:
            return super().instantiate_trainer(**kwargs)
        finally:
            self.save_config_callback = saved

    def fit(self, **kwargs: Any) -> None:
        """``trainer.fit``, unless ``--ckpt_path`` is a run that already reached its
        ``max_epochs``/``max_steps``: then say so and how to extend it, and start nothing."""
        finished = finished_run_message(kwargs.get("ckpt_path"), self.trainer.max_epochs, self.trainer.max_steps)
        self._fit_skipped = finished is not None
        if finished is not None:
            print(finished, flush=True)
            return
        self.trainer.fit(**kwargs)

    def validate(self, **kwargs: Any) -> None:
        # Our summary table is printed after it: Lightning's own would repeat the metrics.
        self.trainer.validate(**{**kwargs, "verbose": False})

    def test(self, **kwargs: Any) -> None:
        self.trainer.test(**{**kwargs, "verbose": False})

    def after_fit(self) -> None:
        if getattr(self, "_fit_skipped", False):
            return
        self._print_summary("fit (last validation)", prefixes=("val_", "train_"))
        self._print_outputs()
        if not self._get(self.config, "run_test", False):
            return
        callback = self.trainer.checkpoint_callback
        has_best = callback is not None and bool(getattr(callback, "best_model_path", ""))
        self.trainer.test(self.model, datamodule=self.datamodule, ckpt_path="best" if has_best else None, verbose=False)
        tested = os.path.abspath(callback.best_model_path) if has_best else None  # type: ignore[union-attr]
        self._print_summary("test (best checkpoint)" if has_best else "test (final weights)", prefixes=("test_",),
                            extra={"tested_checkpoint": tested})

    @rank_zero_only
    def _print_outputs(self) -> None:
        """Where the run went: its directory and the best and last checkpoints."""
        lines = [f"run directory: {self.trainer.log_dir}"]
        callback = self.trainer.checkpoint_callback
        for kind in ("best", "last"):
            path = getattr(callback, f"{kind}_model_path", "") if callback is not None else ""
            lines.append(f"{kind} checkpoint: {path or '(none written)'}")
        print("\n".join(lines), flush=True)

    def after_validate(self) -> None:
        self._print_summary("validate", prefixes=("val_",))

    def after_test(self) -> None:
        self._print_summary("test", prefixes=("test_",))

    @rank_zero_only
    def _print_summary(self, title: str, prefixes: tuple[str, ...], extra: Optional[dict[str, Any]] = None) -> None:
        metrics = {
            name: float(value)
            for name, value in self.trainer.callback_metrics.items()
            if name.startswith(prefixes) and getattr(value, "numel", lambda: 1)() == 1
        }
        print(format_summary(metrics, title), flush=True)
        path = self._get(self.config, "metrics_path", None)
        if path:
            # The first summary of this command replaces what an earlier command left there.
            write_metrics(path, {**metrics, **(extra or {})}, merge=getattr(self, "_metrics_written", False))
            self._metrics_written = True


def main(
    args: Optional[list[str]] = None,
    *,
    datamodule_class: Optional[type[LightningDataModule]] = None,
    exit_on_error: bool = True,
) -> CTRLightningCLI:
    """Run the CLI and return it (its ``trainer``, ``model`` and ``datamodule`` stay inspectable).

    Args:
        args: command-line arguments; ``None`` reads ``sys.argv[1:]``.
        datamodule_class: base class of the accepted datamodules; ``None`` means
            ``ifusion_plugin.data.CTRDataModule`` (any of its subclasses is accepted in YAML).
        exit_on_error: a bad command line prints usage and exits (jsonargparse's way); with
            false it raises ``jsonargparse.ArgumentError`` (what :func:`run` shortens).
    """
    if datamodule_class is None:
        from .data import CTRDataModule  # imported late: pulls in datasets/pyarrow

        datamodule_class = CTRDataModule
    logging.getLogger("lightning.pytorch.utilities.rank_zero").addFilter(_NO_TIPS)
    # The feature spec is linked from the data at instantiation; jsonargparse cannot write it
    # back into a config and says so on every run from a checkpoint. Nothing is lost: the
    # datamodule rebuilds it.
    warnings.filterwarnings("ignore", message=r"(?s).*Unable to serialize instance FeatureSpec")
    # Lightning 2.6 calls a torch pytree API that torch 2.13 deprecates: not ours to act on.
    warnings.filterwarnings("ignore", message=r".*isinstance\(treespec, LeafSpec\)")
    # Predictions are placed by the row each batch carries (CTRBatch.row), not by Lightning's
    # batch indices, which a loader of whole index batches cannot report.
    warnings.filterwarnings("ignore", message=r"Couldn't infer the batch indices fetched from your dataloader")
    # Progress bars in a log file are escape codes and carriage returns, not progress.
    interactive = sys.stderr.isatty()
    return CTRLightningCLI(
        CTRTask,
        datamodule_class,
        subclass_mode_model=True,
        subclass_mode_data=True,
        trainer_defaults={**TRAINER_DEFAULTS, "enable_progress_bar": interactive},
        parser_kwargs={"exit_on_error": exit_on_error},
        args=args,
        # config.yaml goes into the logger's directory under logs/; a rerun into an existing
        # version directory would otherwise refuse to start.
        save_config_kwargs={"overwrite": True},
        auto_configure_optimizers=False,
    )


def _help() -> str:
    width = max(len(name) for name in COMMANDS)
    rows = [f"  {name:<{width}}  {text}" for name, text in COMMANDS.items()]
    return "\n".join([
        "usage: python -m ifusion_plugin.cli COMMAND [options]   (`COMMAND --help` for its options)",
        "", "commands:", *rows, "",
        "e.g. python -m ifusion_plugin.cli fit --config recipes/twin.yaml --run_test true",
        "--verbose (any command): full tracebacks instead of short errors",
    ])


def run(argv: Optional[list[str]] = None) -> int:
    """Entry point of ``python -m ifusion_plugin.cli``: ``export``, ``recipes`` or a LightningCLI
    subcommand, with packaged recipes found from any directory, the run's config found beside its
    checkpoint, and errors in at most :data:`~ifusion_plugin.cli_errors.MAX_LINES` lines.

    Args:
        argv: the arguments; ``None`` reads ``sys.argv[1:]``.

    Returns:
        The exit status: 0, or 2 after an error was printed to stderr.
    """
    words = list(sys.argv[1:] if argv is None else argv)
    verbose = "--verbose" in words or os.environ.get("IFUSION_VERBOSE", "") not in ("", "0")
    words = [w for w in words if w != "--verbose"]
    if not words or words[0] in ("-h", "--help"):
        print(_help())
        return 0
    if words[0] == "recipes":
        from .recipes import main as recipes_main

        return recipes_main(words[1:])
    words, notes = resolve_recipe_paths(words)
    words, saved_config = config_beside_checkpoint(words)
    notes += [f"using the run's config {saved_config}"] if saved_config else []
    for note in notes:
        print(note, file=sys.stderr, flush=True)
    ckpt = _option_value(words, "--ckpt_path") or _option_value(words, "--ckpt")
    if ckpt and ckpt not in CKPT_KEYWORDS:
        problem = checkpoint_problem(ckpt)
        if problem:
            print(f"error: {problem}", file=sys.stderr)
            return 2
    if argv is None:
        # LightningCLI reads sys.argv itself and warns when given both; hand it the rewritten words there.
        sys.argv = [sys.argv[0], *words]
    try:
        if words[0] == "export":
            from .export_command import main as export_main

            return export_main(words[1:])
        main(None if argv is None else words, exit_on_error=False)
    except Exception as error:
        if verbose:
            raise
        print(short_error(error, words, ckpt), file=sys.stderr, flush=True)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(run())
