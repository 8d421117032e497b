"""Offline fine-tuning of LightGlue to be detector-agnostic (keypoints from many detectors, one frozen ALIKED).

One concept per module: `forward` (deep-supervised forward), `losses`, `groundtruth` (correspondences),
`data` (datasets + collate), `trainer` (train / export), `evaluate` (zero-shot per-detector AUC), `cli`.
Import the submodules directly; this package imports nothing heavy.
"""
