"""YAML configs: load, override from the command line, save.

A config is a nested dict with the top-level sections ``seed``, ``data``, ``model``,
``diffusion`` and ``train``. ``configs/defaults.yaml`` holds every key with its default; a config
file holds what differs (``configs/ddpm_cifar10.yaml``: the dataset), and :func:`load_config` lays
it over the defaults. Any leaf can be overridden on the command line by its dotted key:
``--train.lr 1e-4``, ``--model.params.dim_mults [1,2,2]``, ``--train.resume=~``. Values are parsed
as YAML and checked against the type of the value they replace, so a typo fails at once with one
line saying what to fix.
"""
import argparse
import copy
import difflib
import os

import yaml

from utils.errors import UserError
from utils.files import atomic_write


def read_yaml(path) -> dict:
    """Read a YAML config file into a dict; any problem is a :class:`UserError` naming ``path``."""
    try:
        with open(path, "r", encoding="utf-8") as f:
            cfg = yaml.safe_load(f)
    except FileNotFoundError:
        raise UserError(f"config file '{path}' not found; pass an existing YAML file with -c "
                        f"(e.g. -c configs/ddpm_cifar10.yaml)") from None
    except IsADirectoryError:
        raise UserError(f"config path '{path}' is a folder; pass a YAML file with -c") from None
    except OSError as e:
        raise UserError(f"cannot read config file '{path}': {e.strerror}") from None
    except yaml.YAMLError as e:
        raise UserError(f"config file '{path}' is not valid YAML: {_yaml_problem(e)}") from None
    if not isinstance(cfg, dict):
        raise UserError(f"config file '{path}' must hold a mapping at the top level "
                        f"(seed, data, model, diffusion, train), got {_type_name(cfg)}")
    return cfg


DEFAULTS = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "configs", "defaults.yaml")


def load_config(path, defaults=DEFAULTS) -> dict:
    """The config in ``path`` laid over ``defaults`` (a file holding every key; None: the file alone).

    A key of ``path`` that ``defaults`` lacks is a one-line UserError naming the closest valid key: a typo, or a
    key an older version of this repo had. ``model.params`` is left to build_model, which checks the network's
    own arguments.
    """
    cfg = read_yaml(path)
    if defaults is None:
        return cfg
    base = read_yaml(defaults)
    check_keys(cfg, path, base)
    return merge(base, cfg)


def merge(base: dict, over: dict) -> dict:
    """A deep copy of ``base`` with the leaves of ``over`` put in (sections merged key by key)."""
    out = copy.deepcopy(base)
    for k, v in over.items():
        out[k] = merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else copy.deepcopy(v)
    return out


def save_config(cfg: dict, path) -> None:
    """Write ``cfg`` as YAML (keys in their order) atomically."""
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    atomic_write(path, lambda f: yaml.safe_dump(cfg, f, sort_keys=False, default_flow_style=None), mode="w")


class ArgumentParser(argparse.ArgumentParser):
    """argparse whose errors are one-line UserErrors (exit 2 through run_main) instead of usage dumps."""

    def error(self, message):
        raise UserError(f"{message} (see python {self.prog} --help)")


def parse_args(parser: argparse.ArgumentParser, argv=None, defaults=DEFAULTS):
    """Parse ``argv`` with ``parser`` (which has ``-c/--config``) plus dotted config overrides.

    Returns ``(args, cfg)``: the known arguments, and the config loaded from ``args.config`` (laid over
    ``defaults``, see :func:`load_config`) with the leftover ``--key value`` / ``--key=value`` pairs applied.
    """
    args, rest = parser.parse_known_args(argv)
    if getattr(args, "config", None) is None:
        raise UserError("no config given; pass one with -c, e.g. -c configs/ddpm_cifar10.yaml")
    return args, apply_overrides(load_config(args.config, defaults), rest)


def check_keys(cfg: dict, path, defaults: dict) -> None:
    """A UserError if ``cfg`` (read from ``path``) has a key that ``defaults`` lacks (``model.params`` aside)."""
    want = set(_leaf_keys(defaults)) | set(_section_keys(defaults))
    unknown = sorted(k for k in _leaf_keys(cfg) if k not in want and not k.startswith("model.params."))
    if unknown:
        section = unknown[0].split(".")[0]
        same = sorted(k for k in _leaf_keys(defaults) if k.split(".")[0] == section and not
                      k.startswith("model.params."))
        close = difflib.get_close_matches(unknown[0], same, n=1, cutoff=0.5)
        hint = f"did you mean {close[0]}?" if close else "the valid keys are those of configs/defaults.yaml"
        raise UserError(f"config '{path}' has unknown key(s) {', '.join(unknown)}; {hint}")


def _section_keys(node: dict, prefix: str = ""):
    """Yield the dotted key of every section (a dict value), so an empty section in a file is not unknown."""
    for k, v in node.items():
        if isinstance(v, dict):
            yield f"{prefix}{k}"
            yield from _section_keys(v, f"{prefix}{k}.")


def apply_overrides(cfg: dict, overrides: list) -> dict:
    """Return a deep copy of ``cfg`` with the dotted overrides applied; ``cfg`` is not changed.

    ``overrides`` is a list of command-line tokens: ``['--train.lr', '1e-4', '--train.resume=~']``.
    """
    out = copy.deepcopy(cfg)
    for flag, key, text in _split_overrides(overrides):
        parent, leaf = _locate(out, key)
        parent[leaf] = _coerce(key, parent[leaf], text, flag)
    return out


def _split_overrides(tokens):
    """Yield ``(flag, dotted_key, value_text)`` from ``--k v`` and ``--k=v`` tokens."""
    tokens = list(tokens)
    i = 0
    while i < len(tokens):
        tok = tokens[i]
        if not tok.startswith("--") or tok == "--":
            raise UserError(f"unexpected argument '{tok}'; config overrides look like "
                            f"--section.key value (e.g. --train.lr 1e-4)")
        if "=" in tok:
            flag, text = tok.split("=", 1)
            i += 1
        else:
            flag = tok
            if i + 1 >= len(tokens) or tokens[i + 1].startswith("--"):
                raise UserError(f"override {flag} is missing its value; write {flag} VALUE "
                                f"or {flag}=VALUE")
            text = tokens[i + 1]
            i += 2
        key = flag[2:]
        if not key:
            raise UserError(f"override '{tok}' has no key; write --section.key value")
        yield flag, key, text


def _locate(cfg: dict, key: str):
    """Return ``(parent_dict, leaf_name)`` for an existing dotted leaf key, else a UserError."""
    parts = key.split(".")
    node = cfg
    for depth, part in enumerate(parts[:-1]):
        if not isinstance(node, dict) or part not in node:
            _unknown(cfg, key)
        node = node[part]
        if not isinstance(node, dict):
            where = ".".join(parts[:depth + 1])
            raise UserError(f"unknown config key '{key}': '{where}' holds a value "
                            f"({_type_name(node)}), not a section; override --{where} itself")
    if parts[-1] not in node:
        _unknown(cfg, key)
    if isinstance(node[parts[-1]], dict) and node[parts[-1]]:
        leaves = [k for k in _leaf_keys(node[parts[-1]], key + ".")][:4]
        raise UserError(f"config key '{key}' is a section, not a value; override its keys, "
                        f"e.g. {', '.join(leaves)}")
    return node, parts[-1]


def _unknown(cfg: dict, key: str):
    """Raise the 'unknown key' error with the closest valid dotted keys."""
    leaves = list(_leaf_keys(cfg))
    section, name = key.split(".")[0] + ".", key.split(".")[-1]
    initials = "".join(w[0] for w in name.split("_") if w)          # learning_rate -> lr
    close = [k for k in leaves if k.startswith(section) and len(initials) > 1 and k.split(".")[-1] == initials]
    close += [k for k in difflib.get_close_matches(key, leaves, n=3, cutoff=0.5) if k not in close]
    close = close[:3]
    if not close:  # fall back to keys of the same section
        close = [k for k in leaves if k.startswith(section)][:6] or leaves[:6]
    raise UserError(f"unknown config key '{key}'; closest valid keys: {', '.join(close)}")


def _leaf_keys(node: dict, prefix: str = ""):
    """Yield every dotted leaf key of a nested dict."""
    for k, v in node.items():
        if isinstance(v, dict) and v:
            yield from _leaf_keys(v, f"{prefix}{k}.")
        else:
            yield f"{prefix}{k}"


def _coerce(key: str, old, text: str, flag: str):
    """Parse ``text`` as YAML and check it against the type of ``old``; return the new value."""
    try:
        new = yaml.safe_load(text)
    except yaml.YAMLError:
        if isinstance(old, str) or old is None:
            return text
        raise UserError(f"config key '{key}' expects {_type_name(old)}, got unparsable "
                        f"value {text!r} (from {flag})") from None
    if old is None:
        return new
    if new is None:
        if isinstance(old, str):
            return None
        raise UserError(f"config key '{key}' expects {_type_name(old)}, got null "
                        f"(from {flag})")
    if isinstance(old, bool):
        ok = isinstance(new, bool)
    elif isinstance(old, int):
        ok = isinstance(new, int) and not isinstance(new, bool)
    elif isinstance(old, float):
        if isinstance(new, str):  # YAML 1.1 reads '1e-4' as a string
            try:
                new = float(new)
            except ValueError:
                pass
        ok = isinstance(new, (int, float)) and not isinstance(new, bool)
        if ok:
            new = float(new)
    elif isinstance(old, str):
        if not isinstance(new, str):  # a path or name that YAML read as a number/bool: keep text
            new = text
        ok = True
    elif isinstance(old, list):
        ok = isinstance(new, list)
    else:
        ok = isinstance(new, type(old))
    if not ok:
        raise UserError(f"config key '{key}' expects {_type_name(old)}, got "
                        f"{_type_name(new)} {new!r} (from {flag})")
    return new


def _type_name(value) -> str:
    """'int', 'float', 'str', 'list', 'dict', 'null', ... for error messages."""
    return "null" if value is None else type(value).__name__


def _yaml_problem(e: yaml.YAMLError) -> str:
    """One-line description of a YAML error, with its line number when known."""
    problem = getattr(e, "problem", None) or str(e)
    mark = getattr(e, "problem_mark", None)
    where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
    return " ".join(f"{problem}{where}".split())
