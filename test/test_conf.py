"""The one conf merge: defaults, unknown keys named, sub-confs merged key by key or handed over whole."""

from __future__ import annotations

import pytest

from agnostic_reloc.conf import deep_update, flatten, merge_conf, option_defaults, unflatten
from agnostic_reloc.loop.engine import check_conf

DEFAULTS = {"a": 1, "section": {"b": 2, "c": 3}, "free": {"x": 0}}


def test_merge_nested_and_free_sections():
    out = merge_conf(DEFAULTS, {"section": {"b": 5}, "free": {"y": 1}}, "test options", free=["free"])
    assert out == {"a": 1, "section": {"b": 5, "c": 3}, "free": {"y": 1}}
    assert DEFAULTS["section"]["b"] == 2  # defaults are never mutated
    with pytest.raises(ValueError, match=r"unknown test options \['z'\]; known: a, section, free"):
        merge_conf(DEFAULTS, {"z": 1}, "test options")
    with pytest.raises(ValueError, match=r"unknown section conf keys \['d'\]"):
        merge_conf(DEFAULTS, {"section": {"d": 1}}, "test options")


def test_a_section_given_as_a_value_is_a_clear_error():
    with pytest.raises(ValueError, match="'section' must be a dict, got int"):
        merge_conf(DEFAULTS, {"section": 4}, "test options")
    with pytest.raises(ValueError, match="test options must be a dict, got list"):
        merge_conf(DEFAULTS, [1], "test options")
    with pytest.raises(ValueError, match="'loop' must be a dict, got str"):  # flat names mixed with a bad section
        with pytest.warns(FutureWarning):
            check_conf({"min_inliers": 30, "loop": "strict"})


def test_option_tables_and_flat_names():
    table = {"a": (1, "an option", (0, 9)), "s": {"b": (None, "another", None)}}
    assert option_defaults(table) == {"a": 1, "s": {"b": None}}
    assert flatten({"a": 1, "s": {"b": 2}}) == {"a": 1, "s.b": 2}
    assert unflatten({"a": 1, "s.b": 2}) == {"a": 1, "s": {"b": 2}}
    assert deep_update({"s": {"b": 2, "c": 3}}, {"s": {"b": 4}}) == {"s": {"b": 4, "c": 3}}
