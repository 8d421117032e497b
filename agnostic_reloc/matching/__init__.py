"""Descriptor matching: classic nearest-neighbour baselines and LightGlue."""
