"""Start reloc_node with config/reloc.yaml, and RViz with config/reloc.rviz on request.

    ros2 launch agnostic_reloc reloc.launch.py [config:=FILE] [device:=cuda] [weights:=FILE]
        [map_path:=FILE] [namespace:=NS] [rviz:=true] [<role>_topic:=/your/topic ...]

Empty device/weights/map_path keep the values of the config file. `<role>_topic` remaps an input of the message
contract onto your ORB-SLAM3 wrapper's topic, one argument per role of `agnostic_reloc.io.contract.INPUT_TOPICS`
(keyframe_keypoints_topic, keyframe_pose_topic, image_topic, camera_info_topic, frame_keypoints_topic,
tracking_state_topic; empty = the contract's name). rviz:=true starts `rviz2 -d
<share>/config/reloc.rviz` where rviz2 is installed, else logs that it is not and how to get it.

`launch` and `launch_ros` are imported inside the functions that use them, so `rviz_action` can be
imported (and tested) where they are not installed (the pip path has no wheels for them).
"""

import os
import shutil

from ament_index_python.packages import get_package_share_directory

# Contract inputs a launch argument can remap (the node's private ~/query/image is remapped like any ROS name).
REMAPPABLE = {
    "keyframe_keypoints": "/orb_slam3/keyframe/keypoints",
    "keyframe_pose": "/orb_slam3/keyframe/pose",
    "image": "/camera/image_raw",
    "camera_info": "/camera/camera_info",
    "frame_keypoints": "/orb_slam3/frame/keypoints",
    "tracking_state": "/orb_slam3/tracking_state",
}
_TOPIC_CHARS = set("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_/~")

RVIZ_INSTALL_HINT = ("sudo apt install ros-$ROS_DISTRO-rviz2 on this machine, or run `rviz2 -d {config}` on "
                     "another machine on the same ROS_DOMAIN_ID")


def rviz_action(wanted: str, config: str, which=None) -> tuple[list[str] | None, str | None]:
    """What rviz:=<wanted> does: (command to start, None), or (None, message to log), or (None, None) for false.

    wanted: the launch argument ("true" / "false", also 1/0, yes/no, on/off); config: the .rviz file;
    which: looks rviz2 up on PATH (default shutil.which). ValueError for any other value of `wanted`.
    """
    value = str(wanted).strip().lower()
    if value in ("false", "0", "no", "off", ""):
        return None, None
    if value not in ("true", "1", "yes", "on"):
        raise ValueError(f"rviz:={wanted}: expected true or false")
    exe = (which or shutil.which)("rviz2")
    if exe is None:
        return None, ("rviz:=true, but rviz2 is not installed, so RViz was not started (reloc_node runs without "
                      "it): " + RVIZ_INSTALL_HINT.format(config=config))
    return [exe, "-d", config], None


def topic_remappings(values: dict[str, str]) -> list[tuple[str, str]]:
    """(contract topic, your topic) pairs from the `<role>_topic` launch arguments (role -> value; empty = keep).

    ValueError naming the argument for an unknown role or a value that is not a ROS topic name.
    """
    out = []
    for role, topic in values.items():
        if role not in REMAPPABLE:
            raise ValueError(f"{role}_topic: unknown contract input; remappable: "
                             + ", ".join(f"{r}_topic" for r in REMAPPABLE))
        topic = str(topic).strip()
        if not topic or topic == REMAPPABLE[role]:
            continue
        if not set(topic) <= _TOPIC_CHARS or topic[0].isdigit() or "//" in topic or topic.endswith("/"):
            raise ValueError(f"{role}_topic:={topic} is not a valid ROS topic name")
        out.append((REMAPPABLE[role], topic))
    return out


def _node(context, *args, **kwargs):
    from launch.actions import ExecuteProcess, LogInfo
    from launch.substitutions import LaunchConfiguration
    from launch_ros.actions import Node

    get = lambda name: LaunchConfiguration(name).perform(context)  # noqa: E731
    overrides = {}
    for arg, param in (("device", "engine.device"), ("weights", "engine.matcher.weights"), ("map_path", "map_path")):
        if get(arg):
            overrides[param] = get(arg)
    remappings = topic_remappings({role: get(f"{role}_topic") for role in REMAPPABLE})
    actions = [Node(package="agnostic_reloc", executable="reloc_node", name="reloc_node",
                    namespace=get("namespace"), parameters=[get("config"), overrides], remappings=remappings,
                    output="screen", emulate_tty=True)]
    if remappings:
        actions.append(LogInfo(msg="reloc_node inputs remapped: " + ", ".join(f"{a} -> {b}" for a, b in remappings)))
    cmd, message = rviz_action(get("rviz"), get("rviz_config"))
    if cmd:
        actions.append(ExecuteProcess(cmd=cmd, name="rviz2", output="screen"))
    elif message:
        actions.append(LogInfo(msg=message))
    return actions


def generate_launch_description():
    from launch.actions import DeclareLaunchArgument, OpaqueFunction

    from launch import LaunchDescription

    share = get_package_share_directory("agnostic_reloc")
    return LaunchDescription([
        DeclareLaunchArgument("config", default_value=os.path.join(share, "config", "reloc.yaml"),
                              description="ROS parameter file of reloc_node"),
        DeclareLaunchArgument("device", default_value="", description="cpu | cuda | auto (empty: from config)"),
        DeclareLaunchArgument("weights", default_value="",
                              description="LightGlue checkpoint (empty: from config, i.e. official weights)"),
        DeclareLaunchArgument("map_path", default_value="", description="keyframe map file (empty: from config)"),
        DeclareLaunchArgument("namespace", default_value="", description="namespace of the node"),
        DeclareLaunchArgument("rviz", default_value="false",
                              description="true: start rviz2 with rviz_config (logged and skipped if not installed)"),
        DeclareLaunchArgument("rviz_config", default_value=os.path.join(share, "config", "reloc.rviz"),
                              description="RViz2 config (topics of /reloc_node, fixed frame map)"),
        *[DeclareLaunchArgument(f"{role}_topic", default_value="",
                                description=f"your topic for the contract's {topic} (empty: {topic})")
          for role, topic in REMAPPABLE.items()],
        OpaqueFunction(function=_node),
    ])
