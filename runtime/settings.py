"""One settings mechanism: a frozen dataclass whose fields carry their default and help.

After CleanRL's `Args`: each setting is written once, as a field made with
`setting(default, help, ...)`. Everything else is generated from the class:

- the command line flags (`--buffer-size`, also spelled `--buffer_size`, plus
  any aliases such as `--total-timesteps`);
- the environment variables (`REWIND_BUFFER_SIZE`);
- the config-file keys (TOML or YAML; a class may place fields in TOML tables,
  as the buffer service keeps the seed's `[config]` table);
- range and choice checks, and the `--print-config` files (TOML for the services, YAML for the trainer).

Precedence, lowest first: the default, the config file, the environment, the
command line (or keyword arguments from Python). `load()` also returns which
names were given explicitly, because a resumed training run applies only those.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import tomllib
import types
import typing
import weakref
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

from rewind.errors import InvalidArgument
from rewind.security import ENV

ENV_PREFIX = "REWIND_"
# Variables read directly by the code rather than settings: a child process
# (or any command) may see them without being refused.
NOT_SETTINGS = frozenset({"REWIND_S3_ADDRESSING_STYLE", *ENV.values()})  # ENV: rewind.security's client variables
CONFIG_FILE_ENV = ENV_PREFIX + "CONFIG"
_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off"}


def setting(default: Any = dataclasses.MISSING, help: str = "", *, aliases: Iterable[str] = (),
            choices: Iterable[Any] | None = None, minimum: float | None = None, maximum: float | None = None,
            above: float | None = None, factory: Any = dataclasses.MISSING, metavar: str | None = None) -> Any:
    """A settings field: its default, its help text and its checks, in one place.

    Args:
        default: the default value (use `factory` for mutable ones).
        help: one line for `--help`, the generated config file and the README.
        aliases: other names (flags, variables, file keys, keyword arguments).
        choices: the allowed values.
        minimum: the smallest allowed value (numbers).
        maximum: the largest allowed value (numbers).
        above: values must be greater than this (numbers; 0 for "positive").
        factory: a callable making the default.
        metavar: the placeholder shown in `--help`.
    """
    metadata = {"help": help, "aliases": tuple(aliases), "choices": tuple(choices) if choices is not None else None,
                "minimum": minimum, "maximum": maximum, "above": above, "metavar": metavar}
    if factory is not dataclasses.MISSING:
        return field(default_factory=factory, metadata=metadata)
    return field(default=default, metadata=metadata)


@dataclass(frozen=True)
class Spec:
    """What the mechanism knows about one field."""

    name: str
    kind: type            # int, float, str, bool, tuple or dict
    default: Any
    help: str
    aliases: tuple[str, ...]
    choices: tuple[Any, ...] | None
    minimum: float | None
    maximum: float | None
    above: float | None
    metavar: str | None

    @property
    def names(self) -> tuple[str, ...]:
        return (self.name, *self.aliases)

    @property
    def env(self) -> str:
        return env_name(self.name)


def without_settings(environ: Mapping[str, str]) -> dict[str, str]:
    """The environment minus settings variables, for a child process that gets its own flags.

    A trainer started with REWIND_PORT must not hand it to the buffer service
    it starts with --local-services.
    """
    return {k: v for k, v in environ.items() if not k.startswith(ENV_PREFIX) or k in NOT_SETTINGS}


def env_name(name: str) -> str:
    """The variable of a setting: buffer_address -> REWIND_BUFFER_ADDRESS."""
    return ENV_PREFIX + name.upper()


def _kind(annotation: Any) -> type:
    origin = typing.get_origin(annotation) or annotation
    if origin in (types.UnionType, typing.Union):
        args = [a for a in typing.get_args(annotation) if a is not type(None)]
        return _kind(args[0])
    if origin in (int, float, str, bool, tuple, dict):
        return origin
    raise TypeError(f"settings fields must be int, float, str, bool, tuple or dict, not {annotation!r}")


def specs(cls: type) -> list[Spec]:
    """The settings fields of a settings dataclass, in declaration order."""
    hints = typing.get_type_hints(cls)
    out = []
    for f in dataclasses.fields(cls):
        m = f.metadata
        default = f.default if f.default is not dataclasses.MISSING else f.default_factory()
        out.append(Spec(f.name, _kind(hints[f.name]), default, m.get("help", ""), m.get("aliases", ()),
                        m.get("choices"), m.get("minimum"), m.get("maximum"), m.get("above"), m.get("metavar")))
    return out


def _by_name(cls: type) -> dict[str, Spec]:
    """Every accepted name (field names and aliases) -> its field."""
    return {name: spec for spec in specs(cls) for name in spec.names}


# -- values ------------------------------------------------------------------


def parse_text(spec: Spec, text: str) -> Any:
    """A value from a string (a flag or an environment variable).

    Raises:
        ValueError: the text is not a value of the field's type.
    """
    text = text.strip()
    if spec.kind is bool:
        if text.lower() in _TRUE | _FALSE:
            return text.lower() in _TRUE
        raise ValueError(f"expected one of {', '.join(sorted(_TRUE | _FALSE))}")
    if spec.kind is int:
        return int(text)
    if spec.kind is float:
        return float(text)
    if spec.kind is tuple:
        return tuple(part.strip() for part in text.split(",") if part.strip())
    if spec.kind is dict:
        if text.startswith("{"):
            value = json.loads(text)
            if not isinstance(value, dict):
                raise ValueError("expected a JSON object")
            return value
        return dict(parse_pair(item) for item in text.split(",") if item.strip())
    return text


def parse_pair(text: str) -> tuple[str, Any]:
    """KEY=VALUE, the value read as JSON when it is JSON (numbers, booleans), else as text."""
    key, sep, value = text.strip().partition("=")
    if not sep or not key:
        raise ValueError(f"expected KEY=VALUE, got {text!r}")
    try:
        return key.strip().replace("-", "_"), json.loads(value)
    except json.JSONDecodeError:
        return key.strip().replace("-", "_"), value


def coerce(spec: Spec, value: Any) -> Any:
    """A value from a config file or a keyword argument, checked against the field's type.

    Raises:
        ValueError: the value has the wrong type.
    """
    if isinstance(value, str) and spec.kind is not str:
        return parse_text(spec, value)
    if spec.kind is bool:
        ok = isinstance(value, bool)
    elif spec.kind is int:
        ok = isinstance(value, int) and not isinstance(value, bool)
    elif spec.kind is float:
        ok = isinstance(value, (int, float)) and not isinstance(value, bool)
        value = float(value) if ok else value
    elif spec.kind is tuple:
        ok = isinstance(value, (list, tuple)) and all(isinstance(v, str) for v in value)
        value = tuple(value) if ok else value
    elif spec.kind is dict:
        ok = isinstance(value, Mapping)
        value = {str(k).replace("-", "_"): v for k, v in value.items()} if ok else value
    else:
        ok = isinstance(value, str)
    if not ok:
        raise ValueError(f"expected {_type_word(spec)}, got {value!r}")
    return value


def _type_word(spec: Spec) -> str:
    return {bool: "true or false", int: "an integer", float: "a number", tuple: "a list of names",
            dict: "a mapping of KEY: VALUE", str: "text"}[spec.kind]


def check_value(spec: Spec, value: Any) -> None:
    """A value against the field's choices and range.

    Raises:
        ValueError: the rule it breaks, e.g. "must be zero or more, got -3".
    """
    if spec.choices is not None and value not in spec.choices:
        raise ValueError(f"choose from {', '.join(map(str, spec.choices))}")
    if spec.kind not in (int, float) or isinstance(value, bool):
        return
    if spec.minimum is not None and value < spec.minimum:
        raise ValueError(f"must be {_at_least(spec)}, got {value}")
    if spec.maximum is not None and value > spec.maximum:
        raise ValueError(f"must be at most {spec.maximum:g}, got {value}")
    if spec.above is not None and not value > spec.above:
        raise ValueError(f"must be {'positive' if spec.above == 0 else f'above {spec.above:g}'}, got {value}")


def check(settings: Any) -> None:
    """Check every field's choices and range (settings classes call it after construction).

    Raises:
        InvalidArgument: naming the field, the rule and the value.
    """
    for spec in specs(type(settings)):
        try:
            check_value(spec, getattr(settings, spec.name))
        except ValueError as exc:
            shown = f" {getattr(settings, spec.name)!r} is not allowed;" if spec.choices is not None else ""
            raise InvalidArgument(f"{spec.name}:{shown} {exc}") from None


def _at_least(spec: Spec) -> str:
    if spec.minimum == 0:
        return "zero or more"
    if spec.minimum == 1 and spec.kind is int:
        return "a positive integer"
    return f"at least {spec.minimum:g}"


# -- sources -----------------------------------------------------------------


# Every settings class defined so far (each Settings subclass adds itself): the commands' settings, for
# telling another command's variable from a typo. The CLI imports every command's class to build its parser.
_SETTINGS_CLASSES: weakref.WeakSet[type] = weakref.WeakSet()


def known_variables() -> frozenset[str]:
    """Every REWIND_* variable some command reads: the settings of every settings class, and the clients' own."""
    names = {env_name(name) for cls in list(_SETTINGS_CLASSES) for name in _by_name(cls)}
    return frozenset({*names, *NOT_SETTINGS, CONFIG_FILE_ENV})


class EnvironmentSettingError(InvalidArgument):
    """A REWIND_* variable that is no setting of the command, or has a bad value (a usage error)."""


def read_environ(cls: type, environ: Mapping[str, str] | None = None) -> dict[str, Any]:
    """The settings given as REWIND_<NAME> variables; those of other commands are left alone.

    Raises:
        InvalidArgument: a variable that no command's settings class knows (a typo), or a bad value; the
            message names it.
    """
    environ = os.environ if environ is None else environ
    by_env = {env_name(name): spec for name, spec in _by_name(cls).items()}
    # Another command's variable (REWIND_BUFFER_ADDRESS, exported for the trainer) is left for that command;
    # only a name that no command knows is a typo.
    known = known_variables() | by_env.keys()
    unknown = sorted(k for k in environ if k.startswith(ENV_PREFIX) and k not in known)
    if unknown:
        raise EnvironmentSettingError(f"{', '.join(unknown)}: not a setting of this command, nor of any other "
                                      "rewind command; remove it (see --help for the settings and their variables)")
    values: dict[str, Any] = {}
    for name, spec in by_env.items():
        text = environ.get(name, "")
        if not text.strip():
            continue
        if spec.name in values:
            raise EnvironmentSettingError(f"{name}: {spec.env} is set too; give one of them")
        try:
            values[spec.name] = parse_text(spec, text)
            check_value(spec, values[spec.name])
        except ValueError as exc:
            raise EnvironmentSettingError(f"{name}={text!r}: {exc}") from None
    return values


def read_file(cls: type, path: str | os.PathLike) -> dict[str, Any]:
    """The settings in a TOML (.toml) or YAML (any other name) file.

    A class may put fields in TOML tables: `FILE_TABLES` maps a table name to
    its fields, and `DEFAULT_TABLE` holds the others (None: top level).

    Raises:
        InvalidArgument: unreadable, not a mapping, an unknown key or a bad value, naming the file and key.
    """
    try:
        text = Path(path).read_text()
    except OSError as exc:
        raise InvalidArgument(f"config: cannot read {path}: {exc.strerror}") from None
    if str(path).endswith(".toml"):
        try:
            data = tomllib.loads(text)
        except tomllib.TOMLDecodeError as exc:
            raise InvalidArgument(f"config: {path} is not valid TOML: {exc}") from None
        return from_mapping(cls, _untable(cls, data, str(path)), f"config {path}")
    import yaml

    try:
        data = yaml.safe_load(text) or {}
    except yaml.YAMLError as exc:
        raise InvalidArgument(f"config: {path} is not valid YAML ({str(exc).splitlines()[0]})") from None
    if not isinstance(data, dict):
        raise InvalidArgument(f"config: {path} must hold a mapping of settings, found {type(data).__name__}")
    return from_mapping(cls, data, f"config {path}")


def _tables(cls: type) -> dict[str | None, set[str]]:
    """Table name (None: top level) -> the fields it holds."""
    tables: dict[str | None, set[str]] = {name: set(fields) for name, fields in getattr(cls, "FILE_TABLES", {}).items()}
    placed = set().union(*tables.values()) if tables else set()
    rest = {spec.name for spec in specs(cls)} - placed
    tables.setdefault(getattr(cls, "DEFAULT_TABLE", None), set()).update(rest)
    return tables


def _untable(cls: type, data: dict[str, Any], source: str) -> dict[str, Any]:
    """A TOML document's keys, taken out of their tables (each key must be in its field's table)."""
    tables = _tables(cls)
    by_name = _by_name(cls)
    unknown_tables = sorted(k for k, v in data.items() if isinstance(v, dict) and k not in tables)
    if unknown_tables:
        named = ", ".join(f"[{t}]" for t in tables if t is not None) or "none"
        raise InvalidArgument(f"config: unknown table(s) {unknown_tables} in {source}; expected {named}")
    flat: dict[str, Any] = {}
    for table in {*tables, None}:
        items = data.get(table, {}) if table is not None else {k: v for k, v in data.items() if k not in tables}
        allowed = tables.get(table, set())
        unknown = sorted(k for k in items if getattr(by_name.get(k.replace("-", "_")), "name", None) not in allowed)
        if unknown:
            where = f" in [{table}]" if table is not None else ""
            raise InvalidArgument(f"config: unknown key(s) {unknown}{where} of {source}; allowed: {sorted(allowed)}")
        flat.update(items)
    return flat


def from_mapping(cls: type, values: Mapping[str, Any], source: str) -> dict[str, Any]:
    """Field values from a mapping keyed by names or aliases (a file, keyword arguments).

    Raises:
        InvalidArgument: an unknown name (every one is named), a name given twice, or a value of the wrong type.
    """
    by_name = _by_name(cls)
    unknown = sorted(str(k) for k in values if str(k).replace("-", "_") not in by_name)
    if unknown:
        raise InvalidArgument(f"{source}: unknown setting(s) {', '.join(unknown)}; see --help for the names")
    out: dict[str, Any] = {}
    for key, value in values.items():
        spec = by_name[str(key).replace("-", "_")]
        if spec.name in out:
            raise InvalidArgument(f"{source}: {key} and {spec.name} name the same setting; give one of them")
        try:
            out[spec.name] = coerce(spec, value)
        except ValueError as exc:
            raise InvalidArgument(f"{source}: {key}: {exc}") from None
    return out


# -- the command line ----------------------------------------------------------


def add_arguments(parser: argparse.ArgumentParser, cls: type) -> None:
    """Add a flag for every field of `cls` (default SUPPRESS, so `flags()` sees only what was given)."""
    for spec in sorted(specs(cls), key=lambda spec: _depth(cls, spec.name)):
        names = []
        for name in spec.names:
            for spelling in (name.replace("_", "-"), name):
                if f"--{spelling}" not in names:
                    names.append(f"--{spelling}")
        helptext = f"{spec.help} (default: {_show(spec.default)}; env {spec.env})"
        kwargs: dict[str, Any] = {"dest": spec.name, "default": argparse.SUPPRESS, "help": helptext}

        def convert(text: str, spec: Spec = spec) -> Any:
            return parse_text(spec, text)  # ranges are checked with the other sources, naming the field

        if spec.kind is bool:
            negatives = [f"--no-{n.removeprefix('--')}" for n in names if "_" not in n]
            parser.add_argument(*names, *negatives, action=_Switch, **kwargs)
            continue
        if spec.kind is dict:
            kwargs.update(action="append", type=_flag_type(parse_pair), metavar=spec.metavar or "KEY=VALUE")
        else:
            kwargs.update(type=_flag_type(convert), metavar=spec.metavar or _metavar(spec))
        parser.add_argument(*names, **kwargs)


def _depth(cls: type, name: str) -> int:
    """How far up the class hierarchy a field is declared (0: by `cls` itself): own fields are listed first."""
    return next(i for i, klass in enumerate(cls.__mro__) if name in klass.__dict__.get("__annotations__", {}))


class _Switch(argparse.Action):
    """--name / --no-name for a boolean setting."""

    def __init__(self, option_strings, dest, **kwargs) -> None:
        super().__init__(option_strings, dest, nargs=0, **kwargs)

    def __call__(self, parser, namespace, values, option_string=None) -> None:
        setattr(namespace, self.dest, not option_string.startswith("--no-"))

    def format_usage(self) -> str:
        return " | ".join(self.option_strings)


def _flag_type(fn):
    def convert(text: str):
        try:
            return fn(text)
        except (ValueError, json.JSONDecodeError) as exc:
            raise argparse.ArgumentTypeError(str(exc)) from None

    return convert


def _metavar(spec: Spec) -> str:
    if spec.choices is not None:
        return "{" + ",".join(map(str, spec.choices)) + "}"
    return {int: "N", float: "X", tuple: "A,B", str: "TEXT"}.get(spec.kind, "VALUE")


def _show(value: Any) -> str:
    if isinstance(value, tuple):
        return ",".join(value) or "none"
    if value == "":
        return "none"
    return repr(value) if isinstance(value, dict) else str(value)


def flags(cls: type, args: argparse.Namespace) -> dict[str, Any]:
    """The fields given on the command line (dict fields merged from repeated KEY=VALUE flags)."""
    out = {}
    for spec in specs(cls):
        if hasattr(args, spec.name):
            value = getattr(args, spec.name)
            out[spec.name] = dict(value) if spec.kind is dict else value
    return out


# -- putting it together ------------------------------------------------------


@dataclass(frozen=True)
class Loaded:
    """Settings and where they came from."""

    settings: Any
    explicit: frozenset[str]            # the fields given by a file, a variable or a flag
    from_environment: frozenset[str]    # ... of which by a variable (and no flag)


def load(cls: type, *, file: str | None = None, environ: Mapping[str, str] | None = None,
         given: Mapping[str, Any] | None = None) -> Loaded:
    """Build settings: default < file < environment < given (flags or keyword arguments).

    Args:
        cls: the settings dataclass.
        file: a config file; None reads $REWIND_CONFIG if set.
        environ: the environment (default os.environ); {} ignores it.
        given: field values from the command line or Python.

    Raises:
        InvalidArgument: anything wrong in any source, naming the source and the field.
    """
    environ = os.environ if environ is None else environ
    file = file or environ.get(CONFIG_FILE_ENV) or None
    layers = [read_file(cls, file) if file else {}, read_environ(cls, environ), dict(given or {})]
    values: dict[str, Any] = {}
    for layer in layers:
        for name, value in layer.items():
            if isinstance(value, dict) and isinstance(values.get(name), dict):
                value = {**values[name], **value}  # dict settings merge key by key
            values[name] = value
    return Loaded(cls(**values), frozenset(values), frozenset(layers[1]) - frozenset(layers[2]))


def render_toml(cls: type, header: str = "") -> str:
    """A config file of every field at its default, each with its help, grouped by table."""
    lines = [f"# {line}" if line else "#" for line in header.splitlines()]
    by_spec = {spec.name: spec for spec in specs(cls)}
    tables = _tables(cls)
    # Top-level keys first (TOML puts them before any table), then the tables in declaration order.
    for table in sorted(tables, key=lambda t: t is not None):
        names = [s.name for s in specs(cls) if s.name in tables[table]]
        if table is not None:
            lines += ["", f"[{table}]"]
        assignments = [f"{name} = {_toml_value(by_spec[name].default)}" for name in names]
        width = max(map(len, assignments), default=0) + 2
        lines += [a.ljust(width) + f"# {by_spec[name].help}" for a, name in zip(assignments, names, strict=True)]
    return "\n".join(lines).lstrip("\n") + "\n"


def render_yaml(settings: Any) -> str:
    """A settings object as the YAML file --config takes: every field, its value and its help."""
    assignments = {spec.name: f"{spec.name}: {json.dumps(getattr(settings, spec.name))}"
                   for spec in specs(type(settings))}  # JSON values are YAML flow values
    width = max(map(len, assignments.values()), default=0) + 2
    return "".join(line.ljust(width) + f"# {spec.help}\n"
                   for spec, line in zip(specs(type(settings)), assignments.values(), strict=True))


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        # 1_000_000 reads as a count; a port such as 50051 does not.
        return f"{value:_}" if abs(value) >= 100_000 and value % 1000 == 0 else str(value)
    if isinstance(value, tuple):
        return "[" + ", ".join(json.dumps(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{ " + ", ".join(f"{k} = {_toml_value(v)}" for k, v in value.items()) + " }"
    return json.dumps(value)


class Settings:
    """Mixin for settings dataclasses: checks ranges and choices after construction."""

    FILE_TABLES: ClassVar[dict[str, tuple[str, ...]]] = {}
    DEFAULT_TABLE: ClassVar[str | None] = None

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        _SETTINGS_CLASSES.add(cls)  # its fields are read later, once @dataclass has made them

    def __post_init__(self) -> None:
        check(self)

    def replace(self, **changes: Any):
        """A copy with the non-None changes applied (and checked again)."""
        return dataclasses.replace(self, **{k: v for k, v in changes.items() if v is not None})

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)
