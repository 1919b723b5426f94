"""The command line, derived from the settings structs: one option per `Flag`-annotated field."""

from __future__ import annotations

import argparse
import os
import types
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import (
    Annotated,
    Any,
    Final,
    Literal,
    NamedTuple,
    TypeVar,
    Union,
    get_args,
    get_origin,
    get_type_hints,
)

import msgspec

from ...core.config import GROUPS, Flag, Settings

S = TypeVar("S", bound=msgspec.Struct)

NONE_WORDS: Final = frozenset({"", "off"})
"""What an optional option accepts to mean "none": an empty value, or ``off``."""
ENV_PREFIX: Final = "INDEXTTS_SERVER_"
"""Every option also reads ``ENV_PREFIX`` + its name (``--model-dir``: ``INDEXTTS_SERVER_MODEL_DIR``)."""
TRUE_WORDS: Final = frozenset({"1", "true", "yes", "on"})
FALSE_WORDS: Final = frozenset({"0", "false", "no", "off"})
ENVIRONMENT_HELP: Final = (
    "Every option can also be set in the environment, for containers and service managers: "
    f"{ENV_PREFIX} + the option's name in capitals, - as _ ({ENV_PREFIX}DEVICE=cuda:1, "
    f"{ENV_PREFIX}MODEL_DIR=/models/IndexTTS-2, {ENV_PREFIX}DOWNLOAD=1). The command line wins; "
    "an empty variable counts as unset; a switch takes 1/0, true/false, yes/no or on/off; "
    "a repeatable option takes a comma list."
)


class Option(NamedTuple):
    """One settings field on the command line."""

    dest: str
    """The field's dotted path from `Settings` (``server.max_queue``), used as the argparse dest."""
    flag: Flag
    kind: Any
    """The type of one value, bounds included (``Annotated[int, Meta(ge=1)]``), ``None`` taken out."""
    optional: bool
    many: bool
    """A tuple field: repeated, or split at ``flag.split``."""
    default: Any

    @property
    def name(self) -> str:
        return self.flag.name or "--" + self.dest.rsplit(".", 1)[-1].replace("_", "-")

    @property
    def env(self) -> str:
        """The environment variable that sets this option when the command line does not."""
        return ENV_PREFIX + self.name.lstrip("-").replace("-", "_").upper()


def options(cls: type[msgspec.Struct] = Settings, prefix: str = "") -> Iterator[Option]:
    """Every `Flag`-annotated field of ``cls`` and of the structs it holds, in declaration order."""
    hints = get_type_hints(cls, include_extras=True)
    for field in msgspec.structs.fields(cls):
        hint, dest = hints[field.name], prefix + field.name
        flags = [extra for extra in getattr(hint, "__metadata__", ()) if isinstance(extra, Flag)]
        if not flags:
            if _is_struct(hint):
                yield from options(hint, dest + ".")
            continue
        kind, optional = _split_optional(hint)
        many = get_origin(_bare(kind)) is tuple
        if many:
            kind = get_args(_bare(kind))[0]
        yield Option(dest, flags[0], kind, optional, many, field.default)


def parser(prog: str, description: str) -> argparse.ArgumentParser:
    """The parser for `Settings`: groups in `GROUPS` order, defaults and help from the fields."""
    p = argparse.ArgumentParser(
        prog=prog, description=description, epilog=ENVIRONMENT_HELP, formatter_class=_Help
    )
    groups = {name: p.add_argument_group(name) for name in GROUPS}
    for option in options():
        group, flag = groups[option.flag.group], option.flag
        if _bare(option.kind) is bool:
            group.add_argument(option.name, dest=option.dest, action="store_true", help=flag.help)
            continue
        arguments: dict[str, Any] = {"dest": option.dest, "help": flag.help}
        if get_origin(_bare(option.kind)) is Literal:
            group.add_argument(
                option.name, choices=get_args(_bare(option.kind)), default=option.default, **arguments
            )
            continue
        arguments["metavar"] = flag.metavar or option.name.lstrip("-").replace("-", "_").upper()
        if option.many and flag.split is None:
            # Repeated; the field's default applies only when the option is never given.
            arguments.update(action=_Repeated, type=_parse_one(option), default=None)
        elif option.many:
            # argparse parses a string default with ``type``, so the default shows as typed.
            assert flag.split is not None
            arguments.update(type=_parse(option), default=flag.split.join(option.default))
        else:
            arguments.update(type=_parse(option), default=option.default)
        group.add_argument(option.name, **arguments)
    return p


class _Repeated(argparse.Action):
    """A repeatable option: its values on the command line replace those from the environment."""

    def __call__(
        self,
        parser: argparse.ArgumentParser,
        namespace: argparse.Namespace,
        values: Any,
        option_string: str | None = None,
    ) -> None:
        given = getattr(namespace, self.dest, None)
        setattr(namespace, self.dest, [*(given if isinstance(given, list) else ()), values])


class _Help(argparse.ArgumentDefaultsHelpFormatter):
    """Shows each option's default, unless it is "none" or "off" (then the help says what that means)."""

    def _get_help_string(self, action: argparse.Action) -> str:
        if action.default is None or action.default is False:
            return action.help or ""
        return super()._get_help_string(action) or ""


def settings_from(args: argparse.Namespace, cls: type[S], prefix: str = "") -> S:
    """The ``cls`` that parsed ``args`` describe; a field without an option keeps its default."""
    by_dest = {option.dest: option for option in options(cls, prefix)}
    hints = get_type_hints(cls, include_extras=True)
    values: dict[str, Any] = {}
    for field in msgspec.structs.fields(cls):
        dest = prefix + field.name
        option = by_dest.get(dest)
        if option is None:
            if _is_struct(hints[field.name]):
                values[field.name] = settings_from(args, hints[field.name], dest + ".")
            continue
        value = getattr(args, dest)
        if option.many:
            value = option.default if value is None else tuple(value)
        values[field.name] = value
    return cls(**values)


def parse(
    argv: Sequence[str] | None, prog: str, description: str, environ: Mapping[str, str] | None = None
) -> Settings:
    """The settings from the command line, then the environment (`ENV_PREFIX`), then the defaults."""
    p = parser(prog, description)
    return settings_from(p.parse_args(argv, namespace=_from_environment(p, environ)), Settings)


def _from_environment(p: argparse.ArgumentParser, environ: Mapping[str, str] | None) -> argparse.Namespace:
    """The options set in the environment, as parsed values; the command line parsed into it wins.

    Values are read after ``p`` is built, so that ``--help`` shows the built-in defaults and never
    a secret (``INDEXTTS_SERVER_AUTH_TOKEN``). A bad value exits like a bad flag, naming the variable.
    """
    env = os.environ if environ is None else environ
    preset = argparse.Namespace()
    for option in options():
        text = env.get(option.env, "").strip()
        if not text:
            continue
        try:
            setattr(preset, option.dest, _parse_env(option, text))
        except argparse.ArgumentTypeError as error:
            p.error(f"environment variable {option.env}={text!r}: {error}")
    return preset


def _parse_env(option: Option, text: str) -> Any:
    """One environment variable's text as the option's value (a tuple for a repeatable option)."""
    kind = _bare(option.kind)
    if kind is bool:
        word = text.lower()
        if word not in TRUE_WORDS | FALSE_WORDS:
            raise argparse.ArgumentTypeError("expected 1/0, true/false, yes/no or on/off")
        return word in TRUE_WORDS
    if get_origin(kind) is Literal:
        if text not in get_args(kind):
            choices = ", ".join(repr(choice) for choice in get_args(kind))
            raise argparse.ArgumentTypeError(f"invalid choice: {text!r} (choose from {choices})")
        return text
    if option.many and option.flag.split is None:
        values = tuple(_parse_one(option)(part.strip()) for part in text.split(",") if part.strip())
        if not values:
            raise argparse.ArgumentTypeError("needs at least one value")
        return values
    return _parse(option)(text)


def _parse(option: Option) -> Callable[[str], Any]:
    """Text to value for a whole option: ``None`` words, the split list, or one value."""
    one = _parse_one(option)

    def parse(text: str) -> Any:
        if option.optional and text.strip().lower() in NONE_WORDS:
            return None
        if option.flag.split is None:
            return one(text)
        values = tuple(one(part.strip()) for part in text.split(option.flag.split) if part.strip())
        if not values:
            raise argparse.ArgumentTypeError("needs at least one value")
        return values

    return parse


def _parse_one(option: Option) -> Callable[[str], Any]:
    strict = _bare(option.kind) is str  # a number's text is converted, a string's only checked

    def parse(text: str) -> Any:
        try:
            return msgspec.convert(text, option.kind, strict=strict)
        except msgspec.ValidationError as error:
            raise argparse.ArgumentTypeError(str(error).replace(", got `str`", "")) from None

    parse.__name__ = _bare(option.kind).__name__ if isinstance(_bare(option.kind), type) else "value"
    return parse


def _split_optional(hint: Any) -> tuple[Any, bool]:
    """``hint`` without its `Flag` and without ``| None``; and whether ``None`` was allowed."""
    base, extras = hint, ()
    if get_origin(hint) is Annotated:
        base, *rest = get_args(hint)
        extras = tuple(extra for extra in rest if not isinstance(extra, Flag))
    optional = False
    if get_origin(base) in (Union, types.UnionType):
        arms = [arm for arm in get_args(base) if arm is not type(None)]
        optional = len(arms) < len(get_args(base))
        base = arms[0] if len(arms) == 1 else Union[tuple(arms)]  # noqa: UP007
    return (Annotated[(base, *extras)] if extras else base), optional


def _bare(kind: Any) -> Any:
    """The type under any ``Annotated``."""
    while get_origin(kind) is Annotated:
        kind = get_args(kind)[0]
    return kind


def _is_struct(hint: Any) -> bool:
    return isinstance(hint, type) and issubclass(hint, msgspec.Struct)
