"""The generated reference: the command line and the settings, from the parser `rewind` itself builds.

Nothing here names a flag. Every command, argument, default, choice, help text and example comes
from walking the argparse tree of `rewind_cli.main.build_parser()`, the client flags written by hand
in `cli/` included. Every setting comes from the settings dataclass a command declares
(`set_defaults(settings_class=...)`, in `rewind_cli.serving`) through the one settings mechanism,
`rewind_runtime.settings`: its flags, `REWIND_*` variables, config keys, defaults, ranges and help.

`mkdocs_hooks.py` puts this Markdown into the pages at build time; tests/unit/test_docs_site.py
walks the same tree and checks that the built pages hold all of it.
"""

from __future__ import annotations

import argparse
import html
import json
import re
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from rewind_runtime import settings as mechanism

# Usage lines longer than this are folded away (a serve command's usage lists every setting).
_USAGE_LINES_SHOWN = 8
_USAGE_WIDTH = 100


@dataclass(frozen=True)
class Command:
    """One command of the tree: `rewind`, `rewind buffer`, `rewind buffer serve`, ..."""

    words: tuple[str, ...]
    parser: argparse.ArgumentParser
    aliases: tuple[str, ...] = ()
    summary: str = ""  # the one-line help its parent lists it with

    @property
    def name(self) -> str:
        return " ".join(self.words)

    @property
    def anchor(self) -> str:
        return "-".join(self.words)

    @property
    def settings_class(self) -> type | None:
        """The settings dataclass whose fields are this command's flags, variables and config keys."""
        return self.parser.get_default("settings_class")

    @property
    def subcommands(self) -> bool:
        return any(isinstance(a, argparse._SubParsersAction) for a in self.parser._actions)


def build_parser() -> argparse.ArgumentParser:
    from rewind_cli.main import build_parser as build

    return build()


def commands(parser: argparse.ArgumentParser | None = None) -> list[Command]:
    """Every command of the tree, depth first in the order `--help` lists them; aliases kept with the command."""
    parser = parser or build_parser()
    return list(_walk(Command(tuple(parser.prog.split()), parser, summary=parser.description or "")))


def _walk(command: Command) -> Iterator[Command]:
    yield command
    for action in command.parser._actions:
        if not isinstance(action, argparse._SubParsersAction):
            continue
        summaries = {choice.dest: choice.help or "" for choice in action._choices_actions}
        names: dict[int, list[str]] = {}
        for name, sub in action.choices.items():
            names.setdefault(id(sub), []).append(name)
        for name, sub in action.choices.items():
            first, *aliases = names[id(sub)]
            if name != first:
                continue
            yield from _walk(Command((*command.words, name), sub, tuple(aliases), summaries.get(name, "")))


def arguments(parser: argparse.ArgumentParser) -> list[argparse.Action]:
    """The arguments a command takes: every action but --help and the sub-command choice."""
    return [a for a in parser._actions
            if not isinstance(a, (argparse._HelpAction, argparse._SubParsersAction))]


def setting_flags(parser: argparse.ArgumentParser, cls: type) -> dict[str, list[str]]:
    """Setting name -> the flags the parser accepts for it (spellings, aliases, --no- forms)."""
    names = {spec.name for spec in mechanism.specs(cls)}
    return {a.dest: list(a.option_strings) for a in parser._actions if a.dest in names}


def config_key(cls: type, spec: mechanism.Spec) -> str:
    """Where a setting sits in the config file: `[table] key` for a class that places fields in TOML tables."""
    table = next((t for t, fields in getattr(cls, "FILE_TABLES", {}).items() if spec.name in fields),
                 getattr(cls, "DEFAULT_TABLE", None))
    return f"[{table}] {spec.name}" if table else spec.name


def show_default(value: Any) -> str:
    """A default as a config file would hold it (JSON values are YAML and, but for tables, TOML)."""
    return json.dumps(list(value) if isinstance(value, tuple) else value)


def allowed(spec: mechanism.Spec) -> str:
    """The range or the choices a setting is checked against, in words ("" when anything of its type goes)."""
    if spec.choices is not None:
        return "one of " + ", ".join(str(c) for c in spec.choices)
    parts = []
    if spec.minimum is not None:
        parts.append(f">= {spec.minimum:g}")
    if spec.above is not None:
        parts.append(f"> {spec.above:g}")
    if spec.maximum is not None:
        parts.append(f"<= {spec.maximum:g}")
    return ", ".join(parts)


# -- Markdown -------------------------------------------------------------------------------------


def code(text: str) -> str:
    """A code span that survives any content (backticks, pipes in a table)."""
    text = str(text).replace("|", "\\|")
    if not text:
        return ""
    fence = "``" if "`" in text else "`"
    pad = " " if fence == "``" or text.startswith("`") else ""
    return f"{fence}{pad}{text}{pad}{fence}"


def prose(text: str) -> str:
    """Plain text for a table cell: literal everywhere, `backticked` parts shown as code."""
    out = []
    for i, part in enumerate(re.split(r"(`[^`]+`)", text or "")):
        if i % 2:
            out.append(code(part[1:-1]))
        else:
            out.append(re.sub(r"([\\*_\[\]|{}#])", r"\\\1", html.escape(part, quote=False)))
    return "".join(out).replace("\n", " ")


def _table(header: tuple[str, ...], rows: list[tuple[str, ...]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + " --- |" * len(header)]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return [*lines, ""]


def _fenced(text: str, indent: str = "") -> list[str]:
    body = [indent + line if line else "" for line in text.rstrip("\n").splitlines()]
    return [f"{indent}```text", *body, f"{indent}```", ""]


def usage(parser: argparse.ArgumentParser) -> str:
    """The usage line `--help` prints, at a fixed width so the page does not depend on the terminal."""
    formatter = parser.formatter_class(prog=parser.prog, width=_USAGE_WIDTH)
    formatter.add_usage(parser.usage, parser._actions, parser._mutually_exclusive_groups)
    return formatter.format_help().strip()


def help_text(parser: argparse.ArgumentParser, action: argparse.Action) -> str:
    """An argument's help as `--help` prints it (%(default)s and the like expanded)."""
    if not action.help or action.help == argparse.SUPPRESS:
        return ""
    return parser._get_formatter()._expand_help(action)


def argument_default(action: argparse.Action, spec: mechanism.Spec | None) -> str:
    if spec is not None:
        return code(show_default(spec.default))
    if action.required:
        return "required"
    if action.default in (None, argparse.SUPPRESS) or action.nargs == 0 and action.default is False:
        return ""
    return code(str(action.default))


def argument_name(action: argparse.Action) -> str:
    """The argument as typed: its name, or each flag, the first with its value (choices spelt out)."""
    if not action.option_strings:
        return code(action.metavar or action.dest)
    if action.nargs == 0:
        return ", ".join(code(o) for o in action.option_strings)
    metavar = action.metavar or ("{" + ",".join(map(str, action.choices)) + "}" if action.choices
                                 else action.dest.upper())
    first, *others = action.option_strings
    return ", ".join([code(f"{first} {metavar}"), *(code(o) for o in others)])


def _argument_tables(command: Command) -> list[str]:
    """A table per argument group (options, the client's connection flags, ...), as `--help` groups them."""
    cls = command.settings_class
    by_name = {spec.name: spec for spec in mechanism.specs(cls)} if cls else {}
    taken = arguments(command.parser)
    lines: list[str] = []
    for group in command.parser._action_groups:
        rows = []
        for action in (a for a in group._group_actions if a in taken):
            spec = by_name.get(action.dest) if action.default is argparse.SUPPRESS else None
            # A setting's --help line ends in "(default: ...; env ...)": here the default has its column.
            helptext = f"{prose(spec.help)} ({code(spec.env)})" if spec else prose(help_text(command.parser, action))
            rows.append((argument_name(action), argument_default(action, spec), helptext))
        if rows:
            lines += [f"**{prose(group.title)}**", "", *_table(("argument", "default", "help"), rows)]
    return lines


def cli_markdown(parser: argparse.ArgumentParser | None = None) -> str:
    """The command-line reference: every command with its usage, description, arguments and examples."""
    lines: list[str] = []
    for command in commands(parser):
        level = "#" * min(len(command.words) + 1, 4)
        lines += [f"{level} {command.name} {{#{command.anchor}}}", ""]
        if command.aliases:
            spellings = (code(" ".join((*command.words[:-1], alias))) for alias in command.aliases)
            lines += ["Also spelt " + ", ".join(spellings) + ".", ""]
        about = command.parser.description or command.summary
        if about:
            lines += [prose(about), ""]
        if command.settings_class is not None:
            lines += [f"Each setting is also a `REWIND_*` variable and a config key: see "
                      f"[Settings: {command.name}](settings.md#{command.anchor}).", ""]
        text = usage(command.parser)
        if len(text.splitlines()) > _USAGE_LINES_SHOWN:
            lines += ['??? note "usage"', "", *_fenced(text, "    ")]
        else:
            lines += _fenced(text)
        lines += _argument_tables(command)
        if command.parser.epilog:
            lines += _fenced(command.parser.epilog)
    return "\n".join(lines)


def settings_markdown(parser: argparse.ArgumentParser | None = None) -> str:
    """A table per command that has settings: each one's flags, variables, config key, default, range and help.

    The underscore spelling every flag also takes (`--buffer_size`) is left to the command-line page.
    """
    lines: list[str] = []
    for command in commands(parser):
        cls = command.settings_class
        if cls is None:
            continue
        flags = setting_flags(command.parser, cls)
        summary = prose(cls.__doc__.strip().splitlines()[0]) if cls.__doc__ else ""
        lines += [f"## {command.name} {{#{command.anchor}}}", "",
                  f"{summary} From {code(cls.__module__ + '.' + cls.__qualname__)}; every argument of the "
                  f"command: [{command.name}](cli.md#{command.anchor}).", ""]
        rows = []
        for spec in mechanism.specs(cls):
            shown = [f for f in flags.get(spec.name, []) if "_" not in f]
            names = [*(code(f) for f in shown), *(code(mechanism.env_name(n)) for n in spec.names),
                     code(config_key(cls, spec)), *(code(alias) for alias in spec.aliases)]
            rule = allowed(spec)
            rows.append(("<br>".join(names), code(show_default(spec.default)),
                         prose(spec.help) + (f" (allowed: {prose(rule)})" if rule else "")))
        lines += _table(("flags, variable, config key", "default", "help"), rows)
    return "\n".join(lines)


def client_variables_markdown(parser: argparse.ArgumentParser | None = None) -> str:
    """The client's token and TLS flags (`rewind_cli.security`) with the variable each one sets."""
    from rewind_cli.security import FLAGS

    parser = parser or build_parser()
    rows = [(code(action.option_strings[0]), code(FLAGS[action.option_strings[0]]), prose(help_text(parser, action)))
            for action in arguments(parser) if action.option_strings and action.option_strings[0] in FLAGS]
    return "\n".join(_table(("flag", "variable", "help"), rows))


GENERATED = {
    "cli": cli_markdown,
    "settings": settings_markdown,
    "client-variables": client_variables_markdown,
}
