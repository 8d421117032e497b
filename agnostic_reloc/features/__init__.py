"""Keypoint detectors, the shared keypoint container and keypoint suppression."""
