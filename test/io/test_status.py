"""The node's one-line status, as reloc_node logs it every status_period_s."""

from __future__ import annotations

from collections import Counter

from agnostic_reloc.io.status import status_line


def test_status_line_says_what_the_node_is_doing():
    refused = Counter({"too few inliers": 80, "correction beyond the drift prior": 3})
    line = status_line(51, {"keyframes": 2, "verify": 1, "queries": 0},
                       {"keyframes": 53, "loops": 3, "relocalized": 4, "not_relocalized": 1, "errors": 0}, refused,
                       "cpu", {"aliked": "openvino", "matcher": "torch"},
                       {"keyframe": {"p50": 3412.4, "p90": 4000.0, "max": 5000.0}})
    assert line == ("status: 51 keyframes in map | backlog 2 keyframes, 1 to verify, 0 queries | loops 3 accepted, "
                    "83 refused (most: too few inliers x80) | relocalization 4 ok, 1 failed | cpu, aliked openvino, "
                    "matcher torch | keyframe p50 3412 ms")


def test_status_line_of_a_fresh_node():
    line = status_line(0, {"keyframes": 0, "verify": 0, "queries": 0}, {}, Counter(), "cuda:0",
                       {"aliked": "torch", "matcher": "torch"}, {})
    assert "0 keyframes in map" in line and "loops 0 accepted, 0 refused |" in line
    assert "keyframe p50 -" in line and "cuda:0" in line
