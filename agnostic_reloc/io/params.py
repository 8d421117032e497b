"""The node's parameters in one place (ROS-free): names, defaults, descriptions, ranges; parameter files.

Engine options are the node parameters `engine.<section>.<name>`, from the engine's option table
(`loop.engine.OPTIONS`); `None` defaults are the empty string on the ROS side. `config/reloc.yaml` is generated
from the same table (`render_yaml`) and holds the values a user edits; the replay tool reads it with
`load_params`, so node and replay run the same engine configuration. The flat names of earlier releases
(`engine.min_inliers`) are still read, with a warning naming the new ones.
"""

from __future__ import annotations

import os
from typing import Any, Iterable

import yaml

from ..conf import flatten, unflatten
from ..loop.engine import LEGACY_KEYS, upgrade_conf
from ..loop.engine import OPTIONS as ENGINE_OPTIONS
from ..loop.engine import default_conf as engine_defaults
from .contract import CONTRACT_TOPICS

NODE_NAME = "reloc_node"

# name: (default, description, (min, max) or None)
NODE_PARAMS: dict[str, tuple[Any, str, tuple | None]] = {
    "map_path": ("", "keyframe map file: loaded at start when it exists, written by ~/save_map and on shutdown", None),
    "load_map_on_start": (True, "load map_path at start when the file exists", None),
    "save_map_on_shutdown": (True, "write map_path when the node shuts down (if map_path is set)", None),
    "map_frame": ("map", "frame id of the SLAM map (relocalization and marker frames)", None),
    "corrected_frame": ("map_corrected", "frame id of the loop-corrected map: parent of map_frame in the "
                        "correction transform (like map -> odom in REP 105); frame of ~/corrected_path and "
                        "~/corrected_pose", None),
    "corrected_path_every_kf": (10, "republish ~/corrected_path every this many keyframes (and whenever a loop is "
                                "accepted); the path holds every keyframe, so it costs O(map size)", (1, 100000)),
    "correction_tf_period_s": (0.1, "with tf2_ros: re-broadcast the latest correction on /tf at this period, "
                               "stamped now, so lookups at the current time find it (0: only on keyframes and "
                               "loops)", (0.0, 60.0)),
    "publish_initialpose": (False, "also publish each relocalization on /initialpose", None),
    "query_queue_size": (2, "relocalization queries waiting for the worker; older ones are dropped and counted",
                         (1, 100)),
    "keyframe_backlog_warn": (20, "warn when this many keyframes wait for extraction (they are never dropped)",
                              (1, 100000)),
    "sync_queue_size": (30, "messages per input kept while waiting for the other inputs of the same stamp",
                        (1, 10000)),
    "sync_slop_s": (0.0, "stamp tolerance between keypoints, pose and image (0: equal stamps)", (0.0, 1.0)),
    "image_queue_depth": (30, "QoS depth of the image subscription (images are buffered for synchronisation)",
                          (1, 1000)),
    "diagnostics_period_s": (1.0, "period of /diagnostics", (0.1, 60.0)),
    "status_period_s": (10.0, "log a one-line status (map size, backlog, loops accepted/refused and the commonest "
                        "refusal, relocalizations, device, latency) at this period; 0 = off", (0.0, 3600.0)),
    "warn_throttle_s": (5.0, "minimum period between repeated warnings of the same kind", (0.0, 3600.0)),
    "matches_image_max_width": (1280, "width limit of ~/matches_image (both images side by side)", (64, 8192)),
    "nice": (10, "lower the worker threads' CPU priority by this much (Linux, 0-19), so that ORB-SLAM3's tracking on "
             "the same cores goes first (0: equal priority)", (0, 19)),
    "threads": (0, "CPU threads of the networks (torch and the inference runtime) in each of the worker's two stages "
                "(keyframes; loop checks and queries), which run side by side; 0 = half the cores, at least one",
                (0, 256)),
}

def ros_value(value: Any) -> Any:
    """Engine default -> ROS parameter value (None -> '', tuples -> lists)."""
    if value is None:
        return ""
    if isinstance(value, tuple):
        return list(value)
    return value


def engine_param_defaults() -> dict[str, Any]:
    """`engine.<section>.<name>` -> ROS default value for every engine option."""
    return {f"engine.{k}": ros_value(v) for k, v in flatten(engine_defaults).items()}


def _engine_table() -> dict[str, tuple[Any, str, tuple | None]]:
    leaves = flatten(ENGINE_OPTIONS, "engine.")
    # flatten() stops at the (default, description, range) tuples of the option table
    return {name: (ros_value(v[0]), v[1], v[2]) for name, v in leaves.items()}


def param_table() -> dict[str, tuple[Any, str, tuple | None]]:
    """Every node parameter, the node's own and `engine.<section>.<name>`: name -> (ROS default, description,
    range)."""
    return {**NODE_PARAMS, **_engine_table()}


def legacy_param_names() -> dict[str, str]:
    """Flat engine parameter names of earlier releases -> their current name (accepted with a warning)."""
    return {f"engine.{old}": f"engine.{new}" for old, new in LEGACY_KEYS.items()}


def yaml_value(value: Any) -> str:
    """A parameter value as config/reloc.yaml writes it."""
    if isinstance(value, str):
        return f'"{value}"'
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, list):
        return "[" + ", ".join(yaml_value(v) for v in value) + "]"
    return repr(value)


def render_yaml(node_name: str = NODE_NAME) -> str:
    """The text of config/reloc.yaml, generated from the parameter table (defaults and descriptions).

    `python -m agnostic_reloc.io.params > config/reloc.yaml` rewrites the file; a test compares the two.
    """
    lines = [f"# Parameters of {node_name} (agnostic_reloc), generated from the parameter table "
             f"(python -m agnostic_reloc.io.params).",
             "# Every parameter is declared by the node with this default, a description and a range",
             f"# (`ros2 param describe /{node_name} <name>`). Engine options: engine.<section>.<name>.",
             f"{node_name}:", "  ros__parameters:"]
    for name, (value, text, _) in NODE_PARAMS.items():
        lines.append(f"    {name}: {yaml_value(value)}  # {text}")

    def section(table: dict, indent: str) -> None:
        for name, entry in table.items():
            if isinstance(entry, dict):
                lines.append(f"{indent}{name}:")
                section(entry, indent + "  ")
            else:
                lines.append(f"{indent}{name}: {yaml_value(ros_value(entry[0]))}  # {entry[1]}")

    lines.append("    engine:")
    section(ENGINE_OPTIONS, "      ")
    return "\n".join(lines) + "\n"


def engine_conf(params: dict[str, Any]) -> dict:
    """Node parameters (`engine.<section>.<name>`, nested `engine` dicts, or the flat names of earlier releases)
    -> the nested engine conf ('' -> None, lists -> tuples); ValueError naming an unknown parameter."""
    flat = {k: v for k, v in params.items() if k.startswith("engine.") or k == "engine"}
    flat = flatten(flat)
    known = flatten(engine_defaults)
    legacy = {}
    conf = {}
    for name, value in flat.items():
        key = name[len("engine."):]
        if key in LEGACY_KEYS and key not in known:
            legacy[key] = value
            key = LEGACY_KEYS[key]
        elif key not in known:
            raise ValueError(f"unknown engine parameter '{name}' (known: {', '.join(sorted(known))})")
        default = known[key]
        if value == "" and default is None:
            value = None
        elif isinstance(default, tuple):
            value = tuple(value)
        conf[key] = value
    if legacy:  # one warning naming the new names; the values are already in place
        upgrade_conf(legacy)
    return unflatten(conf)


def load_params(path: str | os.PathLike, node_name: str = NODE_NAME) -> dict[str, Any]:
    """Read a ROS 2 parameter file (`<node>: {ros__parameters: {...}}`, also `/**`); nested dicts are
    flattened to dotted names. ValueError naming the problem for a missing or malformed file."""
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise ValueError(f"parameter file {path} does not exist")
    with open(path) as f:
        try:
            doc = yaml.safe_load(f) or {}
        except yaml.YAMLError as exc:
            raise ValueError(f"parameter file {path} is not valid YAML: {exc}") from None
    section = None
    for key in (node_name, f"/{node_name}", "/**"):
        if isinstance(doc.get(key), dict) and "ros__parameters" in doc[key]:
            section = doc[key]["ros__parameters"]
            break
    if section is None:
        raise ValueError(f"parameter file {path} has no '{node_name}: ros__parameters:' section")

    params = flatten(section)
    known = set(NODE_PARAMS) | set(engine_param_defaults()) | set(legacy_param_names())
    unknown = sorted(set(params) - known)
    if unknown:
        raise ValueError(f"parameter file {path}: unknown parameters {unknown}")
    return params


# names a --remap may use for the node's private query topic, besides the role name and ~/query/image
_QUERY_ALIASES = (f"/{NODE_NAME}/query/image", "query/image")


def load_node_config(path: str | os.PathLike) -> tuple[dict, dict]:
    """(engine conf, replay conf) from the node's parameter file (`config/reloc.yaml`), read exactly as the
    node reads it (`node_params.load_params`: unknown parameters are an error naming them). The replay conf
    takes the node's sync_queue_size / sync_slop_s. ValueError for a missing or malformed file."""
    params = load_params(path)
    replay = {k: params[k] for k in ("sync_queue_size", "sync_slop_s") if k in params}
    return engine_conf(params), replay


def load_engine_conf(path: str | os.PathLike) -> dict:
    """Engine conf from the node's parameter file (see `load_node_config`)."""
    return load_node_config(path)[0]


def parse_remaps(items: Iterable[str] | None) -> dict[str, str]:
    """`from:=to` items -> {role: bag topic}. `from` is a role (INPUT_TOPICS key, ground_truth, depth) or its
    contract topic name; ValueError for anything else."""
    out: dict[str, str] = {}
    for item in items or ():
        src, sep, dst = item.partition(":=")
        if not sep or not src or not dst:
            raise ValueError(f"--remap '{item}' is not of the form from:=to")
        role = next((r for r, t in CONTRACT_TOPICS.items() if src in (r, t)), None)
        if role is None and src in _QUERY_ALIASES:
            role = "query_image"
        if role is None:
            raise ValueError(f"--remap '{item}': '{src}' is no contract topic (known: "
                             f"{', '.join(sorted(CONTRACT_TOPICS.values()))})")
        out[role] = dst
    return out


def resolve_topics(remaps: dict[str, str] | None = None) -> dict[str, str]:
    """Role -> bag topic after remapping; the query image only when remapped (bags do not carry it)."""
    remaps = remaps or {}
    topics = {r: remaps.get(r, t) for r, t in CONTRACT_TOPICS.items() if r != "query_image" or r in remaps}
    seen: dict[str, str] = {}
    for role, topic in topics.items():
        if topic in seen:
            raise ValueError(f"topic {topic} is mapped to both {seen[topic]} and {role}")
        seen[topic] = role
    return topics


if __name__ == "__main__":
    print(render_yaml(), end="")
