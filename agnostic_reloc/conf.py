"""One way to merge confs: defaults updated by the user's values, unknown keys named, sub-confs handed down whole.

Every component keeps a `default_conf` dict (one entry per option, a comment saying what it does) and calls
`merge_conf(default_conf, conf, "<what> options")`. A default that is itself a dict is a sub-conf (hloc style:
`Model(conf["model"])`): the user's dict for it is merged recursively, with the same checks.
"""

from __future__ import annotations

import copy
from typing import Iterable


def merge_conf(defaults: dict, conf: dict | None, what: str, free: Iterable[str] = ()) -> dict:
    """A deep copy of `defaults` updated with `conf`.

    Args:
        defaults: the component's default_conf; dict values are sub-confs.
        conf: the user's values (None: defaults only).
        what: how errors name this conf, e.g. "engine options" -> "unknown engine options ['x']; known: ...";
            a sub-conf `key` is named "<key> conf keys".
        free: keys whose dict values are taken as given (checked by the component they are handed to).
    Raises:
        ValueError naming unknown keys (and the known ones), or a sub-conf given as a non-dict.
    """
    conf = conf or {}
    if not isinstance(conf, dict):
        raise ValueError(f"{what} must be a dict, got {type(conf).__name__}")
    unknown = sorted(set(conf) - set(defaults))
    if unknown:
        raise ValueError(f"unknown {what} {unknown}; known: {', '.join(map(str, defaults))}")
    out = copy.deepcopy(defaults)
    free = set(free)
    for key, value in conf.items():
        if isinstance(defaults[key], dict) and key not in free:
            if not isinstance(value, dict):
                raise ValueError(f"{what}: '{key}' must be a dict, got {type(value).__name__}")
            out[key] = merge_conf(defaults[key], value, f"{key} conf keys")
        else:
            out[key] = copy.deepcopy(value)
    return out


def option_defaults(options: dict) -> dict:
    """A nested option table -> its default conf.

    An option table maps a name to `(default, description, (min, max) or None)`, or a section name to a nested
    table. It is the one source for a surface's defaults, the ROS parameter descriptions and ranges, and the YAML
    file generated from it (see io.params).
    """
    return {k: option_defaults(v) if isinstance(v, dict) else v[0] for k, v in options.items()}


def flatten(tree: dict, prefix: str = "") -> dict:
    """{"a": {"b": 1}} -> {"a.b": 1} (leaves are anything but dicts)."""
    out = {}
    for k, v in tree.items():
        if isinstance(v, dict):
            out.update(flatten(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def unflatten(flat: dict) -> dict:
    """{"a.b": 1} -> {"a": {"b": 1}}."""
    out: dict = {}
    for name, value in flat.items():
        *path, leaf = name.split(".")
        node = out
        for p in path:
            node = node.setdefault(p, {})
        node[leaf] = value
    return out


def deep_update(base: dict, update: dict | None) -> dict:
    """A copy of `base` with the leaves of `update` written over it (sections merged, not replaced)."""
    out = copy.deepcopy(base)
    for k, v in (update or {}).items():
        out[k] = deep_update(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else copy.deepcopy(v)
    return out
