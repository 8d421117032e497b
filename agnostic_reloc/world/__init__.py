"""Ground-truth world generator: a textured room, exact rendering, trajectories and simulated ORB-SLAM3 output."""

from agnostic_reloc.world.render import default_K, render
from agnostic_reloc.world.scene import Plane, Scene, make_scene
from agnostic_reloc.world.sequence import Frame, Sequence, gt_revisits, load_sequence, make_sequence, save_sequence
from agnostic_reloc.world.trajectory import NIGHT_LIGHTING, Trajectory, make_trajectory

__all__ = ["make_sequence", "Sequence", "Frame", "save_sequence", "load_sequence", "make_scene", "render",
           "Scene", "Plane", "default_K", "gt_revisits", "Trajectory", "make_trajectory",
           "NIGHT_LIGHTING"]
