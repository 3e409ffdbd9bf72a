"""Command-line options made from the run config's fields, so each option's help text is written once, beside its field.

A command names the options it takes (`@config_options("backbone", "epochs", ...)`). Each name becomes a typer
option: the field's type made optional with default None (an option not given leaves the YAML value or the
default alone), `--name-with-dashes`, a bool as a plain `--switch`, a list as comma-separated names. The command
receives the values as one dict, and `build_run_config` routes each value to the section of the run config whose
dataclass owns the field.
"""

from __future__ import annotations

import dataclasses
import functools
import inspect
import types
import typing
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any, NamedTuple

import typer

from transferlab.config import RunConfig, comma_list, load_run_config
from transferlab.settings import ForgettingConfig, TrainingConfig

# The run config's sections, by the dataclass whose fields they are.
SECTIONS: dict[str, type] = {"run": RunConfig, "training": TrainingConfig, "forgetting": ForgettingConfig}

# Settings of the strategies rather than of the run: each goes to every chosen strategy that has it
# (`config.apply_to_strategies`), so no dataclass of the run config holds them.
STRATEGY_WIDE: dict[str, tuple[type, str]] = {
    "freeze_below": (int, "partial fine-tuning: layer groups frozen from the bottom"),
    "layer_decay": (float, "discriminative learning rates: eta in lr * eta^(L - l) for every strategy that trains layers"),
}


class Option(NamedTuple):
    """One generated option: where its value goes, its command-line type, help and flag."""

    name: str
    section: str  # run, training, forgetting, strategy_wide, or command (not part of the run config)
    type: type
    help: str
    flag: str
    is_list: bool = False  # the field is a list: the option takes comma-separated names, "none" for an empty list


# Where a run is written and what it starts from: options of the command, not fields of the run config.
COMMAND_OPTIONS: dict[str, Option] = {
    "config": Option("config", "command", Path, "YAML run config; command-line options override it", "--config"),
    "out_dir": Option("out_dir", "command", Path, "run folder [default: runs/<command>-<time>]", "--out"),
    "resume": Option(
        "resume",
        "command",
        bool,
        "--resume: carry on the unfinished run in --out (the default when its config is the same); --restart: discard it",
        "--resume/--restart",
    ),
}


def _command_line_type(hint: Any) -> tuple[type, bool]:
    """The option's type for a field's type hint, and whether the field is a list (`list[str] | None` -> str, True)."""
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        (hint,) = [arg for arg in typing.get_args(hint) if arg is not type(None)]
    if typing.get_origin(hint) is list:
        return str, True
    return hint, False


def _owners(name: str) -> list[Option]:
    """Every place that declares an option of this name (a well-formed name has exactly one)."""
    found = [COMMAND_OPTIONS[name]] if name in COMMAND_OPTIONS else []
    if name in STRATEGY_WIDE:
        kind, help_text = STRATEGY_WIDE[name]
        found.append(Option(name, "strategy_wide", kind, help_text, "--" + name.replace("_", "-")))
    for section, cls in SECTIONS.items():
        for f in dataclasses.fields(cls):
            if f.name == name:
                kind, is_list = _command_line_type(typing.get_type_hints(cls)[name])
                flag = f.metadata.get("flag", "--" + name.replace("_", "-"))
                found.append(Option(name, section, kind, f.metadata.get("help", ""), flag, is_list))
    return found


@functools.cache
def option(name: str) -> Option:
    """The option a command names: declared exactly once, with help text."""
    owners = _owners(name)
    if len(owners) != 1:
        where = ", ".join(o.section for o in owners) or "nowhere"
        raise LookupError(f"option '{name}' must be declared exactly once, found in: {where}")
    if not owners[0].help:
        raise LookupError(f"option '{name}' has no help text (metadata={{'help': ...}} on its field)")
    return owners[0]


def _annotation(spec: Option, help_text: str | None) -> Any:
    return Annotated[spec.type | None, typer.Option(spec.flag, help=help_text or spec.help)]


def _value(spec: Option, value: Any) -> Any:
    if spec.is_list and value is not None:
        return comma_list(value)
    return value


def config_options(*names: str, help: dict[str, str] | None = None) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Give a command the named options in place of its keyword-only `options` parameter.

    Typer reads a command's parameters from `inspect.signature` and its type hints, so the generated options go
    into both `__signature__` and `__annotations__`; the command is called with them gathered in `options`
    (already parsed: a list field's names split). `help` replaces an option's help text for this command only.
    """
    specs = {name: option(name) for name in names}
    overrides = help or {}
    unknown = set(overrides) - set(specs)
    if unknown:
        raise LookupError(f"help given for options the command does not take: {', '.join(sorted(unknown))}")

    def decorate(command: Callable[..., Any]) -> Callable[..., Any]:
        signature = inspect.signature(command, eval_str=True)
        params = list(signature.parameters.values())
        at = [p.name for p in params].index("options")
        kind = params[at].kind
        generated = [inspect.Parameter(n, kind, default=None, annotation=_annotation(s, overrides.get(n))) for n, s in specs.items()]
        params[at : at + 1] = generated

        @functools.wraps(command)
        def with_options(**kwargs: Any) -> Any:
            options = {name: _value(spec, kwargs.pop(name)) for name, spec in specs.items()}
            return command(**kwargs, options=options)

        with_options.__signature__ = signature.replace(parameters=params)  # type: ignore[attr-defined]
        with_options.__annotations__ = {p.name: p.annotation for p in params} | {"return": signature.return_annotation}
        with_options.option_names = tuple(names)  # type: ignore[attr-defined]
        return with_options

    return decorate


def build_run_config(
    options: dict[str, Any], strategies: list[str] | None = None, default_strategies: list[str] | None = None
) -> RunConfig:
    """The --config YAML (if any) with the options given on the command line on top, each in its section;
    `default_strategies` where neither names strategies (the command's own default)."""
    sections: dict[str, dict[str, Any]] = {"run": {}, "training": {}, "forgetting": {}, "strategy_wide": {}, "command": {}}
    for name, value in options.items():
        sections[option(name).section][name] = value
    return load_run_config(
        options.get("config"),
        strategy_wide=sections["strategy_wide"],
        default_strategies=default_strategies,
        strategies=strategies,
        training=sections["training"],
        forgetting=sections["forgetting"],
        **sections["run"],
    )
