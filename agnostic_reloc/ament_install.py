"""Make a pip/venv install look like a colcon install to launch_ros and ament_index.

`pip install -e .` installs neither data_files nor scripts under lib/<package>/, but launch_ros finds a
package through `<prefix>/share/ament_index/resource_index/packages/<name>` and its executables under
`<prefix>/lib/<name>/`. This writes both into a prefix (the venv), linking to the source tree's
package.xml, config/ and launch/ so edits stay live. Then `AMENT_PREFIX_PATH=<prefix>` finds the package.

    python -m agnostic_reloc.ament_install --prefix .venv
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
from pathlib import Path

PACKAGE = "agnostic_reloc"
EXECUTABLES = ("reloc_node", "orbslam3_bridge", "agnostic-reloc")


def _link(src: Path, dst: Path) -> None:
    if dst.is_symlink() or dst.exists():
        if dst.is_dir() and not dst.is_symlink():
            shutil.rmtree(dst)
        else:
            dst.unlink()
    dst.parent.mkdir(parents=True, exist_ok=True)
    os.symlink(src.resolve(), dst)


def install(prefix: str | os.PathLike, source: str | os.PathLike | None = None) -> list[Path]:
    """Write the ament marker, share/<pkg>/{package.xml,config,launch} and lib/<pkg>/<executables> into prefix."""
    prefix = Path(prefix).resolve()
    source = Path(source or Path(__file__).resolve().parent.parent)
    if not (source / "package.xml").is_file():
        raise SystemExit(f"{source} is not the {PACKAGE} source tree (no package.xml)")
    written = []
    marker = prefix / "share/ament_index/resource_index/packages" / PACKAGE
    marker.parent.mkdir(parents=True, exist_ok=True)
    marker.write_text("")
    written.append(marker)
    share = prefix / "share" / PACKAGE
    for name in ("package.xml", "config", "launch"):
        if (source / name).exists():
            _link(source / name, share / name)
            written.append(share / name)
    bindir = Path(sys.executable).parent if (prefix / "bin").resolve() != prefix / "bin" else prefix / "bin"
    for exe in EXECUTABLES:
        src = prefix / "bin" / exe
        if not src.exists():
            src = bindir / exe
        if not src.exists():
            raise SystemExit(f"console script {exe} not found in {prefix / 'bin'}: install the package first")
        _link(src, prefix / "lib" / PACKAGE / exe)
        written.append(prefix / "lib" / PACKAGE / exe)
    return written


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--prefix", default=sys.prefix, help="install prefix (default: this Python's prefix)")
    args = ap.parse_args(argv)
    for p in install(args.prefix):
        print(p)
    return 0


if __name__ == "__main__":
    sys.exit(main())
