"""ament_python package; also a plain pip package (see README: the pip path needs no ROS distro)."""

from glob import glob

from setuptools import find_packages, setup

package_name = "agnostic_reloc"

setup(
    name=package_name,
    version="0.1.0",
    packages=find_packages(include=[package_name, f"{package_name}.*"]),
    package_data={f"{package_name}.weights": ["*.pth", "*.json"]},  # shipped fine-tuned LightGlue weights
    data_files=[
        ("share/ament_index/resource_index/packages", [f"resource/{package_name}"]),
        (f"share/{package_name}", ["package.xml"]),
        (f"share/{package_name}/config", glob("config/*.yaml") + glob("config/*.rviz")),
        (f"share/{package_name}/launch", glob("launch/*.py")),
    ],
    install_requires=["setuptools"],
    zip_safe=False,  # weights are read as files
    maintainer="agnostic_reloc maintainers",
    description="Detector-agnostic loop closure and relocalization for ORB-SLAM3 (ALIKED + LightGlue).",
    license="Apache-2.0",
    python_requires=">=3.10",
    entry_points={
        "console_scripts": [
            "agnostic-reloc = agnostic_reloc.cli:main",
            "reloc_node = agnostic_reloc.ros.node:main",
            "orbslam3_bridge = agnostic_reloc.ros.orbslam3_node:main",
        ],
    },
)
