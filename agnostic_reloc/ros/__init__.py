"""Thin rclpy adapters around the ROS-free core (the only place that imports rclpy)."""
