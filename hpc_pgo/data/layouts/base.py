"""The interface of an image layout: one value of a cohort spec's `images.kind`.

A layout says everything that depends on how a cohort's images are laid out: which keys of the
`images` section it takes (its own option section, e.g. images.tile or images.slides), which
files of images.dir are its images (suffixes; skip_reason, skipped_entries, find_files), the
cohort's image field format, the manifest's `image.kind`, the unit size, and how one file
becomes units (file_units). The spec, the build and the command line ask the layout of a
cohort (hpc_pgo.data.layouts.LAYOUTS) and never test the kind's name.

A layout is stateless: methods that need the options take the resolved `images` section
(hpc_pgo.data.cohort.resolve_spec: kind, dir, patient_regex and one key per layout's section,
None unless it is the cohort's own).
"""

from __future__ import annotations

import re
from abc import ABC, abstractmethod
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any, ClassVar

from hpc_pgo.data.images import Unit
from hpc_pgo.errors import PgoError


def set_given(section: dict, key: str, value: Any) -> None:
    """section[key] = value unless value is None (a flag not given)."""
    if value is not None:
        section[key] = value


class Layout(ABC):
    """How one `images.kind` reads a cohort's image folder and cuts its files into units."""

    kind: ClassVar[str]  # its images.kind value, the key it is registered under
    section: ClassVar[str]  # the key of its options in `images` (images.<section>)
    suffixes: ClassVar[tuple[str, ...]]  # lower-case file suffixes of its images, e.g. ".png"

    def __repr__(self) -> str:
        return f"<{type(self).__name__} images.kind: {self.kind}>"

    # ---------------------------------------------------------------- spec

    @abstractmethod
    def resolve_section(self, images: Mapping) -> dict | None:
        """Its resolved option section from a raw `images` mapping (keys given as None already
        removed): checked, defaults filled; None when the cohort gives none and it needs none.
        Raises PgoError naming the key. The spec refuses another layout's section after this
        ("images.<section>: only valid with images.kind: <kind>"); a layout may refuse one
        earlier itself, with a hint."""

    @abstractmethod
    def apply_flags(self, images: dict, flags: Mapping[str, Any]) -> None:
        """Lay the build command's image flags (argparse dests: tile_size, tile_stride,
        magnification, max_tiles, tissue_threshold; None = not given) over a raw `images`
        section, in place; flags that are not its own are ignored."""

    # ---------------------------------------------------------------- files

    def skip_reason(self, path: Path) -> str | None:
        """Why an entry of the image folder is not an image file of this layout, or None when
        it is one: a folder (not searched), a hidden file (.DS_Store, macOS '._' copies of
        images), a suffix that is not an image's (notes.txt), something that is not a regular
        file."""
        if path.is_dir():
            return "a folder (images.dir is not searched recursively)"
        if not path.is_file():
            return "not a regular file (e.g. a broken link)"
        if path.name.startswith("."):
            return "a hidden file (name starts with '.')"
        if path.suffix.lower() not in self.suffixes:
            return (
                f"suffix {path.suffix or '(none)'!r} is not an image suffix of a {self.kind} "
                f"cohort ({', '.join(self.suffixes)})"
            )
        return None

    def skipped_entries(self, directory: str | Path) -> list[tuple[Path, str]]:
        """(path, why) of every entry of `directory` that find_files leaves out, by name; the
        build lists each in the manifest's `dropped`, so that no file is skipped unseen."""
        entries = sorted(Path(directory).iterdir())
        return [(path, why) for path in entries if (why := self.skip_reason(path))]

    def find_files(self, directory: str | Path, patient_regex: str) -> dict[str, list[Path]]:
        """Image files of `directory` (not recursive) grouped by patient, each list sorted by
        name.

        `patient_regex` is searched in the file name and must have a named group `patient`.
        A file with an image suffix that the regex does not match is an error naming it;
        entries that are no image file (skip_reason) are left out (skipped_entries lists them).
        """
        directory = Path(directory)
        if not directory.is_dir():
            raise PgoError(f"images.dir {directory}: not a directory")
        pattern = re.compile(patient_regex)
        found: dict[str, list[Path]] = {}
        for path in sorted(directory.iterdir()):
            if self.skip_reason(path):
                continue
            match = pattern.search(path.name)
            if match is None or not match.group("patient"):
                raise PgoError(
                    f"image {path}: file name does not match images.patient_regex {patient_regex!r}"
                )
            found.setdefault(match.group("patient"), []).append(path)
        if not found:
            raise PgoError(
                f"images.dir {directory}: no {self.kind} file ({', '.join(self.suffixes)})"
            )
        return found

    # ---------------------------------------------------------------- units

    def image_format(self, images: Mapping, files: Iterable[Path]) -> str:
        """The cohort's one image field ("png" | "jpg") given all its image files: "png"
        unless the layout keeps files of another format as they are."""
        return "png"

    @abstractmethod
    def manifest_kind(self, images: Mapping) -> str:
        """The manifest's `image.kind`: what one unit is (e.g. rois, tiles, slides)."""

    @abstractmethod
    def unit_size(self, images: Mapping, first_file: Path) -> tuple[int, int]:
        """(height, width) of the cohort's units (the placeholder image's size under missing:
        mask), given its first image file."""

    @abstractmethod
    def file_units(self, path: Path, images: Mapping, fmt: str) -> tuple[list[Unit], str | None]:
        """The units of one image file in the cohort's format `fmt`, and a reason when it
        yields none (the build drops the file with it)."""
