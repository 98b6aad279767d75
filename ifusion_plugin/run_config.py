"""The datamodule of a run's config file, outside a Lightning run.

``fit`` saves every option it ran with as ``<run>/config.yaml``; ``cli export`` (the
vocabularies of the serving bundle) and the benchmarks (evaluating checkpoints on their data)
need the run's datamodule again without starting a run. jsonargparse, which LightningCLI
parsed the file with, parses and instantiates the ``data`` section here too, so the same
options are accepted and the same errors named.
"""

from __future__ import annotations

import os
import warnings
from pathlib import Path
from typing import TYPE_CHECKING, Any, Mapping, Optional

import yaml
from jsonargparse import ArgumentParser

if TYPE_CHECKING:
    from .data import CTRDataModule

__all__ = ["datamodule_from_config", "datamodule_from_section", "run_config_of"]

#: Where ``fit`` saves a run's config, relative to its ``checkpoints/`` directory's parent.
RUN_CONFIG = "config.yaml"


def run_config_of(ckpt: str) -> Optional[str]:
    """The ``config.yaml`` that ``fit`` saved for the run of checkpoint ``ckpt`` (beside its
    ``checkpoints/`` directory, or beside the file itself), else ``None``."""
    for candidate in (Path(ckpt).parent.parent / RUN_CONFIG, Path(ckpt).parent / RUN_CONFIG):
        if candidate.is_file():
            return str(candidate)
    return None


def datamodule_from_section(
    section: Mapping[str, Any], *, source: str = "config", cwd: Optional[str] = None, overrides: Optional[Mapping[str, Any]] = None
) -> "CTRDataModule":
    """Instantiate a ``data`` section (``class_path`` + ``init_args``, a
    :class:`~ifusion_plugin.data.CTRDataModule` subclass).

    Args:
        section: the section.
        source: what to name in errors (the file).
        cwd: the directory a relative ``root`` is resolved from (the run's working directory;
            default: the current one).
        overrides: init_args replacing the section's (e.g. ``root``, ``eval_batch_size``).

    Raises:
        ValueError: the section does not describe a datamodule, or its options are not accepted
            (jsonargparse's message, prefixed with ``source``).
    """
    if not isinstance(section, Mapping) or "class_path" not in section:
        raise ValueError(f"{source}: the 'data' section must have a class_path (a CTRDataModule subclass), got {section!r}")
    init = {**(section.get("init_args") or {}), **(overrides or {})}
    if isinstance(init.get("root"), str) and not os.path.isabs(init["root"]):
        init["root"] = os.path.abspath(os.path.join(cwd or os.getcwd(), init["root"]))
    from .data import CTRDataModule  # imported here: finding a run's config needs no data stack

    parser = ArgumentParser(exit_on_error=False)
    parser.add_subclass_arguments(CTRDataModule, "data", required=True)
    try:
        config = parser.parse_object({"data": {"class_path": section["class_path"], "init_args": init}})
    except Exception as error:  # jsonargparse raises argparse.ArgumentError with the reason
        raise ValueError(f"{source}: data section: {error}") from None
    with warnings.catch_warnings():  # instantiate_classes is deprecated in newer jsonargparse
        warnings.simplefilter("ignore")
        build = getattr(parser, "instantiate", None) or parser.instantiate_classes
        return build(config).data


def datamodule_from_config(path: str, **kwargs: Any) -> "CTRDataModule":
    """The datamodule of the YAML config at ``path`` (its ``data`` section); keyword arguments as
    :func:`datamodule_from_section`.

    Raises:
        FileNotFoundError: no file at ``path``.
        ValueError: the file has no ``data`` section, or it is invalid.
    """
    if not os.path.isfile(path):
        raise FileNotFoundError(f"no config file at {path}")
    with open(path, encoding="utf-8") as handle:
        config = yaml.safe_load(handle) or {}
    if not isinstance(config, Mapping) or "data" not in config:
        raise ValueError(f"{path}: no 'data' section (found {sorted(config) if isinstance(config, Mapping) else type(config).__name__})")
    return datamodule_from_section(config["data"], source=path, **kwargs)
