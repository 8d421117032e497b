"""Detector-agnostic loop closure and relocalization for ORB-SLAM3."""

__version__ = "0.1.0"
