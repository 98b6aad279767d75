"""Errors of ``python -m ifusion_plugin.cli`` in a few lines a person reads.

jsonargparse reports a typo deep in a recipe as a 15-line nest of union subtypes, and a Lightning
run ends an error in a 60-line traceback. :func:`short_error` turns both into at most
:data:`MAX_LINES` lines: what is wrong, where (the option, or the file and line of the YAML key),
and what would be valid (the closest key, or the available classes or values). ``--verbose`` (or
``IFUSION_VERBOSE=1``) gives the full traceback instead.
"""

from __future__ import annotations

import difflib
import importlib
import inspect
import re
from pathlib import Path
from typing import Callable, Iterable, Optional

__all__ = ["MAX_LINES", "config_files", "short_error", "top_level_keys"]

#: No error message is longer than this.
MAX_LINES = 5

#: Trainer-method arguments that LightningCLI fills itself, never a user.
_SKIPPED = {"self", "model", "datamodule", "train_dataloaders", "val_dataloaders", "dataloaders"}
#: Options our CLI adds to every subcommand (see ``CTRLightningCLI.add_arguments_to_parser``).
_OURS = ("run_test", "predictions_path", "predict_split", "overwrite_predictions")


def config_files(argv: Iterable[str]) -> list[str]:
    """The ``--config`` / ``-c`` files of a command line, in order."""
    words, files = list(argv), []
    for i, word in enumerate(words):
        if word in ("--config", "-c") and i + 1 < len(words):
            files.append(words[i + 1])
        elif word.startswith("--config="):
            files.append(word.split("=", 1)[1])
    return files


def top_level_keys(subcommand: str) -> list[str]:
    """The keys a config of ``subcommand`` may have at its top level."""
    from lightning.pytorch import Trainer

    method = getattr(Trainer, subcommand, None)
    own = [p for p in inspect.signature(method).parameters if p not in _SKIPPED] if method else []
    return sorted({"seed_everything", "trainer", "model", "data", *_OURS, *own})


def _closest(word: str, choices: Iterable[str]) -> str:
    """``"; did you mean 'x'?"`` for the closest of ``choices``, or ``""``."""
    match = difflib.get_close_matches(word, list(choices), n=1, cutoff=0.5)
    return f"; did you mean '{match[0]}'?" if match else ""


def _listing(choices: Iterable[str], limit: int = 12) -> str:
    items = list(choices)
    return ", ".join(items[:limit]) + (f", ... ({len(items)} in all)" if len(items) > limit else "")


def _first_line(files: Iterable[str], matches: Callable[[str], object]) -> Optional[str]:
    """``"file:line"`` of the first line of ``files`` that ``matches``, or ``None``."""
    for path in files:
        try:
            lines = Path(path).read_text().splitlines()
        except OSError:
            continue
        for number, line in enumerate(lines, start=1):
            if matches(line):
                return f"{path}:{number}"
    return None


def _yaml_location(key: str, files: Iterable[str]) -> Optional[str]:
    """Where ``key:`` is first set in one of the YAML ``files``."""
    return _first_line(files, re.compile(rf"^\s*-?\s*{re.escape(key)}\s*:").match)


def _text_location(text: str, files: Iterable[str]) -> Optional[str]:
    """Where ``text`` first occurs in one of ``files``."""
    return _first_line(files, lambda line: text in line)


def _where(key: str, argv: list[str]) -> str:
    """Where a key was set: the command-line flag, or the YAML file and line."""
    for word in argv:
        if word.startswith("--") and word.split("=", 1)[0].rsplit(".", 1)[-1] == key:
            return f"option {word.split('=', 1)[0]}"
    location = _yaml_location(key, config_files(argv))
    return location if location else "the config"


def _class_options(class_path: str) -> list[str]:
    try:
        module, _, name = class_path.rpartition(".")
        cls = getattr(importlib.import_module(module), name)
        return [p for p in inspect.signature(cls).parameters if p not in ("self", "args", "kwargs", "feature_spec", "spec")]
    except Exception:  # a broken class path is reported by its own message
        return []


def _module_classes(module_name: str) -> list[str]:
    try:
        module = importlib.import_module(module_name)
    except Exception:
        return []
    names = getattr(module, "__all__", None) or [n for n in dir(module) if not n.startswith("_")]
    return sorted(n for n in names if inspect.isclass(getattr(module, n, None)))


def _parse_error(text: str, argv: list[str]) -> Optional[list[str]]:
    """Lines for a jsonargparse message, or ``None`` when it has no known form."""
    keys = re.findall(r'Parser key "([^"]+)"', text)
    path = ".init_args.".join(keys)
    missing = re.search(r"File does not exist: '([^']+)'", text)
    if missing:
        name = missing.group(1)
        lines = [f"error: no such file: {name}"]
        if "recipes/" in name:
            from .recipes import list_recipes

            tail = "recipes/" + name.split("recipes/", 1)[1]
            hint = _closest(tail, list_recipes())[2:]
            lines.append(f"{hint + ' ' if hint else ''}(`python -m ifusion_plugin.cli recipes` lists the packaged recipes)")
        return lines
    top = re.search(r"Subcommand '\w+' does not accept option '([^']+)'", text)
    if top:
        return _unknown_top_level(top.group(1).split(".")[0], argv)
    option = re.search(r"Option '([^']+)' is not accepted(?:\. Got value: .*?class_path='([^']+)')?", text)
    if option:
        key, class_path = option.group(1), option.group(2)
        if class_path is None:
            problem = re.findall(r"class_path '([^']+)'", text)
            class_path = problem[-1] if problem else ""
        if not class_path:  # not inside a class: an unknown top-level key of a config file
            return _unknown_top_level(key.split(".")[0], argv)
        valid = _class_options(class_path)
        owner = class_path.rsplit(".", 1)[-1] or "the class"
        return [f"error: {_where(key, argv)}: {owner} has no option '{key}'{_closest(key, valid)}",
                f"{owner} options: {_listing(valid)}" if valid else f"(setting {path or key})"]
    unknown = re.search(r"module '([\w.]+)' has no attribute '(\w+)'", text)
    if unknown:
        module, name = unknown.groups()
        classes = _module_classes(module)
        flag = next((w.split("=", 1)[0] for w in argv if w.startswith("--") and w.split("=", 1)[0].endswith(
            (".class_path", ".host", ".fusion"))), None)
        where = (f"option {flag}" if flag else None) or _text_location(f"{module}.{name}", config_files(argv)) or path
        return [f"error: {where}: no class {module}.{name}{_closest(name, classes)}",
                f"available in {module}: {_listing(classes)}"]
    literal = re.search(r"Expected a typing\.Literal\[(.*?)\]\. Got value: ([^\s.]+)", text)
    if literal:
        choices = literal.group(1).replace("'", "")
        return [f"error: {keys[-1] if keys else 'option'} = {literal.group(2)!r} ({_where(keys[-1], argv) if keys else path}) "
                f"is not a valid choice", f"valid: {choices}"]
    expected = re.search(r"Expected a <class '(\w+)'>", text)
    given = re.search(r"Given value: (.*)", text)
    if expected and keys and given:
        return [f"error: {keys[-1]}: expected {expected.group(1)}, got {given.group(1).strip()!r}"]
    unrecognized = re.match(r"unrecognized arguments: (.*)", text.strip())
    if unrecognized:
        return _unrecognized(unrecognized.group(1).split(), argv)
    return None


def _unknown_top_level(key: str, argv: list[str]) -> list[str]:
    valid = top_level_keys(next((w for w in argv if not w.startswith("-")), "fit"))
    return [f"error: {_yaml_location(key, config_files(argv)) or 'the config'}: unknown key '{key}'{_closest(key, valid)}",
            f"valid top-level keys: {_listing(valid)}"]


def _unrecognized(words: list[str], argv: list[str]) -> list[str]:
    """An unknown flag, or (jsonargparse then names only the subcommand) an unknown YAML key."""
    subcommand = next((w for w in argv if not w.startswith("-")), "fit")
    valid = top_level_keys(subcommand)
    flags = [w for w in words if w.startswith("--")]
    if flags:
        flag = flags[0].split("=", 1)[0]
        head, _, key = flag[2:].rpartition(".")
        if head == "trainer":
            from lightning.pytorch import Trainer

            choices = [p for p in inspect.signature(Trainer).parameters if p != "self"]
        else:
            choices = valid
            key = flag[2:]
        return [f"error: unknown option {flag}{_closest(key, choices)}",
                f"`python -m ifusion_plugin.cli {subcommand} --help` lists the options"]
    for path in config_files(argv):
        try:
            import yaml

            top = yaml.safe_load(Path(path).read_text()) or {}
        except Exception:
            continue
        bad = [k for k in top if isinstance(top, dict) and k not in valid]
        if bad:
            return _unknown_top_level(bad[0], ["--config", path])
    return [f"error: unrecognized arguments: {' '.join(words)}"]


def _checkpoint_error(error: BaseException, ckpt: Optional[str]) -> Optional[list[str]]:
    text = str(error)
    if ckpt and any(s in text for s in ("PytorchStreamReader", "zip archive", "Ran out of input", "unpickling")):
        return [f"error: checkpoint {ckpt} is truncated or not a checkpoint ({text.splitlines()[0][:120]})",
                "rerun fit, or pass another --ckpt_path"]
    if "Error(s) in loading state_dict" in text:
        mismatch = re.search(r"size mismatch for ([\w.]+): copying a param with shape torch\.Size\((\[[^\]]*\])\) from "
                             r"checkpoint, the shape in current model is torch\.Size\((\[[^\]]*\])\)", text)
        counts = {kind: len(re.findall(rf"{kind} key\(s\) in state_dict: (.*)", text)) for kind in ("Missing", "Unexpected")}
        first = (f"e.g. {mismatch.group(1)}: {mismatch.group(2)} in the checkpoint, {mismatch.group(3)} here"
                 if mismatch else ", ".join(f"{k.lower()} keys" for k, n in counts.items() if n))
        return [f"error: checkpoint {ckpt or ''} does not fit this model or data ({first})".replace("  ", " "),
                "use the config the run was trained with (its config.yaml, beside checkpoints/)"]
    return None


def short_error(error: BaseException, argv: list[str], ckpt: Optional[str] = None) -> str:
    """At most :data:`MAX_LINES` lines describing ``error`` raised by the CLI run with ``argv``.

    Args:
        error: the exception (a jsonargparse ``ArgumentError`` or anything the run raised).
        argv: the command line (without the program name), to name files, lines and options.
        ckpt: the run's ``--ckpt_path``, named when the checkpoint is the problem.
    """
    text = str(error).strip() or type(error).__name__
    lines = None
    if type(error).__name__ == "ArgumentError":
        lines = _parse_error(text, argv)
    if lines is None:
        lines = _checkpoint_error(error, ckpt)
    if lines is None:
        first = [line.strip() for line in text.splitlines() if line.strip()]
        kind = "" if isinstance(error, (ValueError, FileNotFoundError, FileExistsError)) else f"{type(error).__name__}: "
        lines = [f"error: {kind}{first[0]}", *first[1:MAX_LINES - 2]]
    lines = [line if len(line) <= 400 else line[:397] + "..." for line in lines[:MAX_LINES - 1]]
    return "\n".join([*lines, "(--verbose shows the full traceback)"])
