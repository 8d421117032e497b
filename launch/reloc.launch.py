"""Start reloc_node with config/reloc.yaml.

    ros2 launch agnostic_reloc reloc.launch.py [config:=FILE] [device:=cuda] [weights:=FILE]
        [map_path:=FILE] [namespace:=NS]

Empty device/weights/map_path keep the values of the config file.
"""

import os

from ament_index_python.packages import get_package_share_directory
from launch import LaunchDescription
from launch.actions import DeclareLaunchArgument, OpaqueFunction
from launch.substitutions import LaunchConfiguration
from launch_ros.actions import Node


def _node(context, *args, **kwargs):
    get = lambda name: LaunchConfiguration(name).perform(context)  # noqa: E731
    overrides = {}
    for arg, param in (("device", "engine.device"), ("weights", "engine.weights"), ("map_path", "map_path")):
        if get(arg):
            overrides[param] = get(arg)
    return [Node(package="agnostic_reloc", executable="reloc_node", name="reloc_node",
                 namespace=get("namespace"), parameters=[get("config"), overrides], output="screen",
                 emulate_tty=True)]


def generate_launch_description():
    share = get_package_share_directory("agnostic_reloc")
    return LaunchDescription([
        DeclareLaunchArgument("config", default_value=os.path.join(share, "config", "reloc.yaml"),
                              description="ROS parameter file of reloc_node"),
        DeclareLaunchArgument("device", default_value="", description="cpu | cuda | auto (empty: from config)"),
        DeclareLaunchArgument("weights", default_value="",
                              description="LightGlue checkpoint (empty: from config, i.e. official weights)"),
        DeclareLaunchArgument("map_path", default_value="", description="keyframe map file (empty: from config)"),
        DeclareLaunchArgument("namespace", default_value="", description="namespace of the node"),
        OpaqueFunction(function=_node),
    ])
