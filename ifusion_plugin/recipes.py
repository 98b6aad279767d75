"""The recipes that ship inside the package: where they are, which exist, copying them out for
editing, and resolving ``recipes/...`` paths on a command line to them.

A pip user has no ``recipes/`` directory, yet every example says
``python -m ifusion_plugin.cli fit --config recipes/twin.yaml``. So a path starting with
``recipes/`` that does not exist under the working directory is read from the packaged copy, and
the run says which file it used. A ``recipes/`` directory of one's own (for instance from
``python -m ifusion_plugin.cli recipes copy``) always wins, so edited copies are never shadowed.

``python -m ifusion_plugin.cli recipes`` lists the packaged recipes;
``python -m ifusion_plugin.cli recipes copy [DEST]`` copies them to ``DEST`` (default ``./recipes``).
"""

from __future__ import annotations

import argparse
import shutil
import sys
from pathlib import Path
from typing import Optional

__all__ = ["RECIPES_PREFIX", "copy_recipes", "list_recipes", "main", "recipes_dir", "resolve_recipe_paths"]

#: Command-line values starting with this prefix may name a packaged recipe.
RECIPES_PREFIX = "recipes/"


def recipes_dir() -> Path:
    """The directory of the packaged recipes: ``ifusion_plugin/recipes`` in an installed wheel,
    the repository's top-level ``recipes/`` in a source checkout (editable install).

    Raises:
        FileNotFoundError: neither exists (a broken installation).
    """
    package = Path(__file__).resolve().parent
    for candidate in (package / "recipes", package.parent / "recipes"):
        if (candidate / "twin.yaml").is_file():
            return candidate
    raise FileNotFoundError(
        f"the packaged recipes are missing (looked in {package / 'recipes'}); reinstall ifusion-plugin"
    )


def list_recipes() -> list[str]:
    """Every packaged recipe as a ``recipes/...`` path (posix, sorted), as a command line names it."""
    root = recipes_dir()
    return sorted(RECIPES_PREFIX + path.relative_to(root).as_posix() for path in root.rglob("*.yaml"))


def copy_recipes(dest: str | Path, overwrite: bool = False) -> list[Path]:
    """Copy the packaged recipes to ``dest``, keeping their layout (the recipes refer to each
    other by relative paths, so the copy works as is).

    Args:
        dest: target directory (created if missing).
        overwrite: replace files that already exist at ``dest``.

    Returns:
        The written files.

    Raises:
        FileExistsError: some target files exist and ``overwrite`` is false; nothing is written
            then, so no edited recipe is lost.
    """
    root, dest = recipes_dir(), Path(dest)
    pairs = [(path, dest / path.relative_to(root)) for path in sorted(root.rglob("*.yaml"))]
    existing = [str(target) for _, target in pairs if target.exists()]
    if existing and not overwrite:
        shown = ", ".join(existing[:3]) + (f" and {len(existing) - 3} more" if len(existing) > 3 else "")
        raise FileExistsError(f"{shown} already exist; pass --force to replace them")
    for source, target in pairs:
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(source, target)
    return [target for _, target in pairs]


def _packaged(value: str) -> Optional[Path]:
    """The packaged file for a ``recipes/...`` value that does not exist locally, else ``None``."""
    if not value.startswith(RECIPES_PREFIX) or Path(value).exists():
        return None
    candidate = recipes_dir() / value[len(RECIPES_PREFIX):]
    return candidate if candidate.is_file() else None


def resolve_recipe_paths(argv: list[str]) -> tuple[list[str], list[str]]:
    """Replace each command-line value ``recipes/...`` that does not exist under the working
    directory by the packaged recipe of that name (``--config recipes/twin.yaml``,
    ``--config=recipes/twin.yaml``, or any option whose value is such a path).

    Args:
        argv: the command line, without the program name.

    Returns:
        ``(argv, notes)``: the rewritten command line, and one line per replaced value saying
        which file is used. Values without a packaged match are left alone, so the parser
        reports them as missing files.
    """
    out, notes = [], []
    for word in argv:
        option, equals, value = word.partition("=") if word.startswith("-") else ("", "", word)
        packaged = _packaged(value) if (equals or not option) else None
        if packaged is None:
            out.append(word)
            continue
        notes.append(f"{value} is not under {Path.cwd()}: using the packaged recipe {packaged}")
        out.append(f"{option}={packaged}" if equals else str(packaged))
    return out, notes


def main(argv: Optional[list[str]] = None) -> int:
    """``python -m ifusion_plugin.cli recipes [copy [DEST] [--force]]``."""
    parser = argparse.ArgumentParser(
        prog="python -m ifusion_plugin.cli recipes",
        description="List the packaged recipes, or copy them out for editing.",
    )
    sub = parser.add_subparsers(dest="action")
    sub.add_parser("list", help="list the packaged recipes (the default)")
    copy = sub.add_parser("copy", help="copy the packaged recipes to DEST for editing")
    copy.add_argument("dest", nargs="?", default="recipes", help="target directory (default ./recipes)")
    copy.add_argument("--force", action="store_true", help="replace recipes that already exist there")
    args = parser.parse_args(argv)
    if args.action == "copy":
        try:
            written = copy_recipes(args.dest, overwrite=args.force)
        except FileExistsError as error:
            print(f"error: {error}", file=sys.stderr)
            return 2
        print(f"copied {len(written)} recipes to {Path(args.dest).resolve()}; "
              f"a local {args.dest}/ is read before the packaged one")
        return 0
    print(f"packaged recipes ({recipes_dir()}):")
    for name in list_recipes():
        print(f"  {name}")
    print("use one as `--config recipes/<name>`; `recipes copy [DEST]` copies them out for editing")
    return 0
