"""Turn a frozen dataclass of documented fields into command-line options, and back.

Each field's ``metadata["help"]`` is its documentation; the CLI's ``--help`` shows it with
the default. ``run.py`` only parses and dispatches: the commands take these configs.
"""

from __future__ import annotations

import argparse
import dataclasses
import typing


class UserError(ValueError):
    """Bad input from the user: reported as one line, exit status 2."""


def run_script(main) -> None:
    """Run a script's ``main()`` as ``run.py`` runs a command: a :class:`UserError` is one
    line on stderr and exit status 2, Ctrl-C a line and status 130."""
    import sys

    try:
        main()
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        sys.exit(130)
    except UserError as exc:
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(2)


def doc(help_text: str, default=dataclasses.MISSING, **kwargs):
    """A dataclass field with a help text (and optional CLI flags via ``flags=``)."""
    metadata = {"help": help_text}
    if "flags" in kwargs:
        metadata["flags"] = kwargs.pop("flags")
    if "choices" in kwargs:
        metadata["choices"] = kwargs.pop("choices")
    if "positional" in kwargs:
        metadata["positional"] = kwargs.pop("positional")
    return dataclasses.field(default=default, metadata=metadata, **kwargs)


def add_config_arguments(parser: argparse.ArgumentParser, config_cls) -> None:
    hints = typing.get_type_hints(config_cls)
    for f in dataclasses.fields(config_cls):
        help_text = f.metadata.get("help", "")
        kind = hints[f.name]
        origin = typing.get_origin(kind)
        args = typing.get_args(kind)
        optional = origin is typing.Union and type(None) in args
        if optional:
            kind = next(a for a in args if a is not type(None))
        default = f.default if f.default is not dataclasses.MISSING else None
        if default is not None and default != "":
            help_text = f"{help_text} (default: {default})"
        if f.metadata.get("positional"):
            parser.add_argument(f.name, nargs="?", default=default, help=help_text)
            continue
        flags = f.metadata.get("flags") or ["--" + f.name.replace("_", "-")]
        if kind is bool:
            parser.add_argument(*flags, dest=f.name, action=argparse.BooleanOptionalAction,
                                default=default, help=help_text)
        else:
            parser.add_argument(*flags, dest=f.name, type=kind, default=default,
                                choices=f.metadata.get("choices"), help=help_text)


def config_from_args(config_cls, namespace: argparse.Namespace):
    values = {f.name: getattr(namespace, f.name) for f in dataclasses.fields(config_cls)}
    return config_cls(**values)
