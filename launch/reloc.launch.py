"""Start reloc_node with config/reloc.yaml, and RViz with config/reloc.rviz on request.

    ros2 launch agnostic_reloc reloc.launch.py [config:=FILE] [device:=cuda] [weights:=FILE]
        [map_path:=FILE] [namespace:=NS] [rviz:=true]

Empty device/weights/map_path keep the values of the config file. rviz:=true starts `rviz2 -d
<share>/config/reloc.rviz` where rviz2 is installed, else logs that it is not and how to get it.

`launch` and `launch_ros` are imported inside the functions that use them, so `rviz_action` can be
imported (and tested) where they are not installed (the pip path has no wheels for them).
"""

import os
import shutil

from ament_index_python.packages import get_package_share_directory

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


def _node(context, *args, **kwargs):
    from launch.actions import ExecuteProcess, LogInfo
    from launch.substitutions import LaunchConfiguration
    from launch_ros.actions import Node

    get = lambda name: LaunchConfiguration(name).perform(context)  # noqa: E731
    overrides = {}
    for arg, param in (("device", "engine.device"), ("weights", "engine.matcher.weights"), ("map_path", "map_path")):
        if get(arg):
            overrides[param] = get(arg)
    actions = [Node(package="agnostic_reloc", executable="reloc_node", name="reloc_node",
                    namespace=get("namespace"), parameters=[get("config"), overrides], output="screen",
                    emulate_tty=True)]
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
        OpaqueFunction(function=_node),
    ])
