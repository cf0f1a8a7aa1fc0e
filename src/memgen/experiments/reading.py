"""Reading a config file onto frozen dataclasses with OmegaConf, strictly.

OmegaConf's structured configs do the typing (unknown keys with a suggestion, wrong types,
``1e-3`` as a float, a key given twice refused); this module turns its errors into one line
naming the key, and refuses the conversions it would make silently: a number or a bool for
a text field, anything but true/false for a flag, ``${...}`` interpolations, dotted keys in
a file.
"""

from __future__ import annotations

import dataclasses
import re
import types
import typing
from dataclasses import fields
from pathlib import Path

import yaml
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import ConfigKeyError, MissingMandatoryValue, OmegaConfBaseException

from memgen.errors import UserError


def read_tree(path: str | Path, overrides: typing.Sequence[str], extra: dict | None,
              cls) -> dict:
    """The YAML file at ``path`` with the ``key=value`` overrides and the nested dict
    ``extra`` merged over it, as a plain dict whose scalars fit dataclass ``cls``."""
    path = Path(path)
    if path.is_dir():
        raise UserError(f"{path} is a folder; give a YAML sweep config file")
    if not path.is_file():
        raise UserError(f"no such config file: {path}")
    try:
        text = path.read_text()
        tree = OmegaConf.create(text) if text.strip() else OmegaConf.create({})
    except UnicodeDecodeError:
        raise UserError(f"{path}: not a text file (a YAML sweep config is text)") from None
    except yaml.YAMLError as err:
        raise UserError(f"{path}: not valid YAML ({_yaml_error(err)})") from None
    if not isinstance(tree, DictConfig):
        raise UserError(f"{path}: the top level must be a mapping")
    if not tree:
        raise UserError(f"{path}: the config is empty (see configs/ for examples)")
    _check_keys(OmegaConf.to_container(tree), str(path))
    try:
        given = OmegaConf.merge(tree, *(_dotlist(item) for item in overrides),
                                OmegaConf.create(extra or {}))
    except (OmegaConfBaseException, TypeError) as err:  # --set Ks[0]=5: a list's item
        raise UserError(f"--set: {str(err).splitlines()[0]} (set a list whole, "
                        "e.g. --set 'Ks=[2,4]')") from None
    raw = OmegaConf.to_container(given)
    _check_scalars(cls, raw)
    return raw


def _check_keys(tree: dict, where: str) -> None:
    """No dotted key in the file: OmegaConf would merge ``measure.delta_m: 0.2`` into the
    measure section, beside (and over or under) a ``measure: {delta_m: ...}``."""
    for key, value in tree.items():
        if isinstance(key, str) and "." in key:
            raise UserError(f"{where}: the key {key!r} has a dot; nest it "
                            f"({key.split('.')[0]}: {{{key.partition('.')[2]}: ...}})")
        if isinstance(value, dict):
            _check_keys(value, where)


def _check_scalars(cls, raw: dict) -> None:
    """What OmegaConf would convert silently: a number or a bool for a text field
    (``name: yes`` → 'True'), anything but true/false for a flag (2 → True), and the
    ``${...}`` interpolations it would try to resolve (a sweep config holds values)."""
    for key, value in _leaves(raw):
        if isinstance(value, str) and "${" in value:
            raise UserError(f"{key}: ${{...}} interpolations are not read in a sweep "
                            f"config; give the value itself, got {value!r}")
        if value is None:
            continue
        hint = _hint(cls, key)
        options = set(typing.get_args(hint) if _is_union(hint) else (hint,)) - {type(None)}
        if options == {bool} and not isinstance(value, bool):
            raise UserError(f"{key}: expected true or false, got {value!r}")
        if options == {str} and not isinstance(value, str):
            raise UserError(f"{key}: expected text, got {value!r} (quote it to keep it as text)")


def _dotlist(item: str) -> DictConfig:
    """One ``--set key=value``, its value read as YAML (OmegaConf's dotlist)."""
    key, sep, _ = item.partition("=")
    if not sep or not key:
        raise UserError(f"--set expects key=value, got {item!r}")
    try:
        return OmegaConf.from_dotlist([item])
    except yaml.YAMLError as err:
        raise UserError(f"--set {key}: not a YAML value ({_yaml_error(err)})") from None


def _yaml_error(err: yaml.YAMLError) -> str:
    """The first line of a YAML error: its problem, with the line where the parser has one
    (a key given twice: OmegaConf's loader refuses it, "found duplicate key")."""
    problem = getattr(err, "problem", None)
    mark = getattr(err, "problem_mark", None)
    if problem and problem.startswith("found duplicate key "):
        problem = f"the key {problem.removeprefix('found duplicate key ')!r} is given twice"
    if problem and mark is not None and "line" not in problem:
        return f"{problem}, line {mark.line + 1}"
    return problem or str(err).splitlines()[0]


def structured(cls, raw: dict):
    """The frozen dataclass ``cls`` from a plain nested dict, through OmegaConf's structured
    config (``OmegaConf.structured(cls)`` merged with ``raw``, then ``to_object``). Its
    errors become one line naming the key: ``train.iterations: expected int, got 'many'``,
    ``train.lrr: unknown key (did you mean lr? known: ...)``."""
    base = OmegaConf.structured(cls)
    try:
        return OmegaConf.to_object(OmegaConf.merge(base, raw))
    except OmegaConfBaseException:
        pass
    merged = base  # again, one value at a time, to name the one that fails
    for key, value in _leaves(raw):
        try:
            merged = OmegaConf.merge(merged, _nested(key, value))
        except ConfigKeyError as err:
            raise UserError(_unknown_key(cls, err.full_key or key, str(err))) from None
        except OmegaConfBaseException:
            raise UserError(f"{key}: expected {_expected(cls, key)}, got {value!r}") from None
    try:
        return OmegaConf.to_object(merged)
    except MissingMandatoryValue as err:
        raise UserError(f"{err.full_key}: required") from None


def _leaves(tree: dict, where: str = ""):
    """(dotted key, value) of every value in a nested dict that is not itself a dict."""
    for name, value in tree.items():
        key = f"{where}.{name}" if where else str(name)
        if isinstance(value, dict) and value:
            yield from _leaves(value, key)
        else:
            yield key, value


def _nested(key: str, value) -> dict:
    for part in reversed(key.split(".")):
        value = {part: value}
    return value


def _hint(cls, key: str):
    """The annotation of a dotted key in dataclass ``cls`` (None for an unknown one)."""
    hint = cls
    for part in key.split("."):
        options = typing.get_args(hint) if _is_union(hint) else (hint,)
        classes = [o for o in options if dataclasses.is_dataclass(o)]
        if not classes or part not in typing.get_type_hints(classes[0]):
            return None
        hint = typing.get_type_hints(classes[0])[part]
    return hint


def _expected(cls, key: str) -> str:
    """What a key takes, in words: ``int``, ``float or null``, ``tuple``, ``a mapping``."""
    hint = _hint(cls, key)
    options = typing.get_args(hint) if _is_union(hint) else (hint,)
    return " or ".join("null" if o is type(None) else "a mapping" if dataclasses.is_dataclass(o)
                       else getattr(typing.get_origin(o) or o, "__name__", str(o))
                       for o in options)


def _unknown_key(cls, key: str, message: str) -> str:
    """An unknown key's line: the known ones, and OmegaConf's suggestion where it has one."""
    where, _, _ = key.rpartition(".")
    section = _hint(cls, where) if where else cls
    options = typing.get_args(section) if _is_union(section) else (section,)
    known = [f.name for o in options if dataclasses.is_dataclass(o) for f in fields(o)]
    guess = re.search(r"Did you mean: '(\w+)'", message)
    return (f"{key}: unknown key ({f'did you mean {guess[1]}? ' if guess else ''}"
            f"known: {', '.join(known)})")


def _is_union(hint) -> bool:
    return typing.get_origin(hint) in (typing.Union, types.UnionType)
