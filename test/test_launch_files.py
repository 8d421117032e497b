"""launch/reloc.launch.py's rviz:=true|false and topic remapping without launch_ros (the pip path has no wheels).

What rviz:=true and `<role>_topic:=` do is decided by `rviz_action` and `topic_remappings`, pure functions of the
launch file; the launch actions they become are checked only where launch/launch_ros are importable.
"""

from __future__ import annotations

import importlib.util
import shutil
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parent.parent
RVIZ = ROOT / "config/reloc.rviz"


def load_launch_file():
    pytest.importorskip("ament_index_python", reason="ament_index_python is not installed (requirements-ros.txt)")
    spec = importlib.util.spec_from_file_location("reloc_launch", ROOT / "launch/reloc.launch.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)  # launch and launch_ros are only imported when a launch runs
    return module


def test_rviz_true_without_rviz2_says_why_it_is_not_started():
    launch = load_launch_file()
    cmd, message = launch.rviz_action("true", str(RVIZ), which=lambda name: None)
    assert cmd is None
    assert "rviz2 is not installed" in message and "apt install ros-$ROS_DISTRO-rviz2" in message
    assert str(RVIZ) in message  # and how to watch from another machine


def test_rviz_true_with_rviz2_starts_it_with_our_config():
    launch = load_launch_file()
    cmd, message = launch.rviz_action("true", str(RVIZ), which=lambda name: f"/opt/ros/kilted/bin/{name}")
    assert cmd == ["/opt/ros/kilted/bin/rviz2", "-d", str(RVIZ)] and message is None
    assert launch.rviz_action("false", str(RVIZ)) == (None, None)  # the default: nothing, not even a message
    with pytest.raises(ValueError, match="expected true or false"):
        launch.rviz_action("maybe", str(RVIZ))
    # on this machine: started exactly when rviz2 is on PATH
    cmd, message = launch.rviz_action("true", str(RVIZ))
    assert (cmd is not None) == (shutil.which("rviz2") is not None) and (message is None) == (cmd is not None)


def test_rviz_config_shows_the_node_outputs_in_map():
    from agnostic_reloc.io.contract import OUTPUT_TOPICS

    conf = yaml.safe_load(RVIZ.read_text())
    manager = conf["Visualization Manager"]
    assert manager["Global Options"]["Fixed Frame"] == "map"
    displays = {d["Class"]: d for d in manager["Displays"]}
    topic = {cls: d["Topic"]["Value"] for cls, d in displays.items() if "Topic" in d}
    node = "/reloc_node/"
    assert topic["rviz_default_plugins/MarkerArray"] == OUTPUT_TOPICS["loop_edges"].replace("~/", node)
    assert topic["rviz_default_plugins/Path"] == OUTPUT_TOPICS["corrected_path"].replace("~/", node)
    assert topic["rviz_default_plugins/Image"] == OUTPUT_TOPICS["matches_image"].replace("~/", node)
    assert topic["rviz_default_plugins/PoseWithCovariance"] == OUTPUT_TOPICS["relocalization"].replace("~/", node)
    assert "rviz_default_plugins/TF" in displays
    # latched outputs (transient local): RViz must ask for the same durability to get them when it joins late
    for cls in ("rviz_default_plugins/MarkerArray", "rviz_default_plugins/Path"):
        assert displays[cls]["Topic"]["Durability Policy"] == "Transient Local"


def test_launch_file_logs_why_rviz_did_not_start(monkeypatch):
    try:
        import launch_ros  # noqa: F401
        from launch.actions import ExecuteProcess, LogInfo
        from launch.utilities import perform_substitutions

        from launch import LaunchContext
    except ImportError as exc:
        pytest.skip(f"launch/launch_ros not importable ({exc}); on the pip path they have no wheels")
    launch = load_launch_file()
    monkeypatch.setattr(shutil, "which", lambda name: None)
    context = LaunchContext()
    context.launch_configurations.update({"config": str(ROOT / "config/reloc.yaml"), "device": "", "weights": "",
                                          "map_path": "", "namespace": "", "rviz": "true",
                                          "rviz_config": str(RVIZ)})
    actions = launch._node(context)
    assert not any(isinstance(a, ExecuteProcess) and "rviz2" in str(a.name) for a in actions)
    logs = [perform_substitutions(context, a.msg) for a in actions if isinstance(a, LogInfo)]
    assert any("rviz2 is not installed" in text for text in logs), logs


def test_topic_arguments_remap_the_contract_inputs():
    from agnostic_reloc.io.contract import INPUT_TOPICS

    launch = load_launch_file()
    # every contract input except the node's private query image has an argument, with the contract's name
    assert launch.REMAPPABLE == {k: v for k, v in INPUT_TOPICS.items() if not v.startswith("~")}
    got = launch.topic_remappings({"image": "/cam0/image_raw", "camera_info": " /cam0/camera_info ",
                                   "keyframe_pose": "", "tracking_state": "/orb_slam3/tracking_state"})
    assert got == [("/camera/image_raw", "/cam0/image_raw"), ("/camera/camera_info", "/cam0/camera_info")]
    with pytest.raises(ValueError, match="depth_topic: unknown contract input; remappable: keyframe_keypoints_topic"):
        launch.topic_remappings({"depth": "/cam0/depth"})
    with pytest.raises(ValueError, match="image_topic:=/cam 0/image is not a valid ROS topic name"):
        launch.topic_remappings({"image": "/cam 0/image"})
