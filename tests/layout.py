"""Where the package's code lives: one import namespace, ``tandem``, over the repository's folders.

setup.cfg's ``package_dir`` is the one list: ``tandem.edge_agent = edge_agent`` and so on, so a wheel
installs a single top-level name while the folders stay where the project's design puts them. Tests read
the mapping from here. mypy cannot follow setuptools' editable finder, so ``make lint`` first runs::

    python -m tests.layout typecheck-tree build/typecheck

which lays the folders out as one ``tandem`` tree of symbolic links for mypy (pyproject.toml's
``mypy_path``).
"""

from __future__ import annotations

import configparser
import os
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
NAMESPACE = "tandem"


def package_dirs(setup_cfg: Path = ROOT / "setup.cfg") -> dict[str, str]:
    """setup.cfg's ``[options] package_dir``: import name -> repository folder."""
    parser = configparser.ConfigParser(interpolation=None)
    parser.read(setup_cfg, encoding="utf-8")
    lines = parser.get("options", "package_dir", fallback="").strip().splitlines()
    pairs = (line.partition("=") for line in lines if line.strip())
    mapping = {name.strip(): folder.strip() for name, _, folder in pairs}
    if mapping.get(NAMESPACE) != NAMESPACE:
        raise ValueError(f"{setup_cfg}: [options] package_dir must map {NAMESPACE} = {NAMESPACE}, got {mapping}")
    return mapping


def source_folders() -> list[str]:
    """The repository folders a build needs (each holds part of the ``tandem`` package)."""
    return sorted(set(package_dirs().values()))


def copy_sources(dest: Path) -> Path:
    """What ``pip wheel`` needs to build the package, copied to ``dest``."""
    for name in ("setup.cfg", "pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, dest / name)
    for folder in source_folders():
        shutil.copytree(ROOT / folder, dest / folder, ignore=shutil.ignore_patterns("__pycache__"))
    return dest


def build_wheel(src: Path, out: Path) -> Path:
    """A wheel (no deps, no build isolation) built from a copy of the sources in ``src``, written to ``out``."""
    copy_sources(src)
    command = [sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "--no-build-isolation", str(src)]
    subprocess.run([*command, "-w", str(out)], check=True, cwd=src, capture_output=True, timeout=120)
    return next(out.glob("*.whl"))


def typecheck_tree(dest: Path) -> Path:
    """``dest/tandem``: links to tandem/'s entries and to each mapped folder, as the installed package is laid out."""
    if dest.is_symlink() or dest.is_file():
        dest.unlink()
    elif dest.exists():
        shutil.rmtree(dest)
    top = dest / NAMESPACE
    top.mkdir(parents=True)
    for entry in sorted((ROOT / NAMESPACE).iterdir()):
        if entry.name != "__pycache__":
            (top / entry.name).symlink_to(os.path.relpath(entry, top))
    for name, folder in package_dirs().items():
        if name == NAMESPACE:
            continue
        sub = name.removeprefix(f"{NAMESPACE}.")
        if "." in sub or (top / sub).exists():
            raise ValueError(f"setup.cfg: package_dir {name} = {folder} is not a direct child of {NAMESPACE}/")
        (top / sub).symlink_to(os.path.relpath(ROOT / folder, top))
    return top


def main(argv: list[str]) -> int:
    if len(argv) != 2 or argv[0] != "typecheck-tree":
        print("usage: python -m tests.layout typecheck-tree DEST", file=sys.stderr)
        return 2
    print(f"mypy tree: {typecheck_tree(Path(argv[1]))}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
