"""Start real ORB-SLAM3 (orbslam3_bridge) and reloc_node together, each with its config file.

    ros2 launch agnostic_reloc orbslam3_reloc.launch.py [vocabulary:=ORBvoc.txt] [sensor:=rgbd]
        [bridge_config:=FILE] [config:=FILE] [device:=cuda] [map_path:=FILE]

The bridge publishes reloc_node's inputs from the camera topics and anchors new ORB-SLAM3 maps with
reloc_node's relocalizations (/reloc_node/relocalization). Empty arguments keep the config files' values.
"""

import os

from ament_index_python.packages import get_package_share_directory
from launch import LaunchDescription
from launch.actions import DeclareLaunchArgument, OpaqueFunction
from launch.substitutions import LaunchConfiguration
from launch_ros.actions import Node


def _nodes(context, *args, **kwargs):
    get = lambda name: LaunchConfiguration(name).perform(context)  # noqa: E731
    bridge = {p: get(p) for p in ("vocabulary", "sensor") if get(p)}
    reloc = {param: get(arg) for arg, param in (("device", "engine.device"), ("map_path", "map_path")) if get(arg)}
    return [Node(package="agnostic_reloc", executable="orbslam3_bridge", name="orbslam3_bridge",
                 parameters=[get("bridge_config"), bridge], output="screen", emulate_tty=True),
            Node(package="agnostic_reloc", executable="reloc_node", name="reloc_node",
                 parameters=[get("config"), reloc], output="screen", emulate_tty=True)]


def generate_launch_description():
    share = get_package_share_directory("agnostic_reloc")
    return LaunchDescription([
        DeclareLaunchArgument("bridge_config", default_value=os.path.join(share, "config", "orbslam3_bridge.yaml"),
                              description="ROS parameter file of orbslam3_bridge"),
        DeclareLaunchArgument("config", default_value=os.path.join(share, "config", "reloc.yaml"),
                              description="ROS parameter file of reloc_node"),
        DeclareLaunchArgument("vocabulary", default_value="", description="ORBvoc.txt (empty: from the config)"),
        DeclareLaunchArgument("sensor", default_value="", description="auto | rgbd | monocular (empty: config)"),
        DeclareLaunchArgument("device", default_value="", description="cpu | cuda | auto (empty: from config)"),
        DeclareLaunchArgument("map_path", default_value="", description="keyframe map file (empty: from config)"),
        OpaqueFunction(function=_nodes),
    ])
