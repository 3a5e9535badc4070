"""How a shard set's bytes are encoded: the members of a sample and the .npz side-car files.

A sample's members (shards/README.md): ``<group>.npy`` (float32, 1-D, written without pickle),
``surv.json`` and ``mask.json`` (compact JSON, sorted keys: the same record gives the same
bytes), the image (png / jpg). A side-car (`omics.npz`, `rna_emb.npz`) is a zip of .npy members
stored uncompressed with fixed timestamps: the same arrays give the same bytes. Nothing here
unpickles. Every writer and reader of the format encodes and decodes through these functions; ``patient_of_key`` maps a sample key to its patient.
"""

from __future__ import annotations

import functools
import hashlib
import io
import json
import zipfile
from collections.abc import Mapping
from pathlib import Path

import numpy as np

MANIFEST = "manifest.json"
_ZIP_TIME = (1980, 1, 1, 0, 0, 0)  # fixed member timestamps of a side-car
# Tar member metadata fixed for reproducible shards (webdataset's TarWriter options).
TAR_OPTIONS = {
    "mtime": 0,
    "user": "hpc_pgo",
    "group": "hpc_pgo",
    "mode": 0o444,
    "format": "PAX_FORMAT",
}  # PAX: no 100-character limit on member names


def sha256_file(path: Path, chunk: int = 1 << 20) -> str:
    """Hex SHA-256 of a file's bytes."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def npy_bytes(array: np.ndarray, dtype: np.dtype | type = np.float32) -> bytes:
    """An array as .npy bytes of `dtype` (float32: an omics vector; numpy.save, no pickle)."""
    buf = io.BytesIO()
    np.save(buf, np.ascontiguousarray(array, dtype=dtype), allow_pickle=False)
    return buf.getvalue()


def json_bytes(value: Mapping) -> bytes:
    """Compact JSON with sorted keys (the same record gives the same bytes)."""
    return json.dumps(value, sort_keys=True, separators=(",", ":")).encode()


def load_npy(data: bytes) -> np.ndarray:
    """A .npy member, never unpickling."""
    return np.load(io.BytesIO(data), allow_pickle=False)


@functools.lru_cache(maxsize=4096)
def load_vector(data: bytes) -> np.ndarray:
    """A .npy member as a read-only array, cached on the bytes: every unit of a patient carries
    the same omics vectors, and parsing a .npy header costs more than hashing it."""
    vector = load_npy(data)
    vector.flags.writeable = False
    return vector


def npz_bytes(arrays: Mapping[str, np.ndarray]) -> bytes:
    """Arrays as a side-car's bytes: an .npz (zip of .npy, members sorted by name, stored,
    fixed timestamps) that np.load(allow_pickle=False) reads."""
    archive = io.BytesIO()
    with zipfile.ZipFile(archive, "w", compression=zipfile.ZIP_STORED) as zf:
        for name in sorted(arrays):
            buffer = io.BytesIO()
            np.lib.format.write_array(
                buffer, np.ascontiguousarray(arrays[name]), allow_pickle=False
            )
            zf.writestr(zipfile.ZipInfo(f"{name}.npy", date_time=_ZIP_TIME), buffer.getvalue())
    return archive.getvalue()


def load_npz(path: Path) -> dict[str, np.ndarray]:
    """Every array of an .npz, never unpickling; OSError, ValueError or zipfile.BadZipFile when
    the file is not one."""
    with np.load(path, allow_pickle=False) as npz:
        return {name: npz[name] for name in npz.files}


def patient_of_key(key: str, patients: Mapping[str, object]) -> str | None:
    """The patient of a key `<patient>__<unit>` (or `<patient>` alone), or None if none matches.

    Patient ids may themselves contain '__': every split point is tried, left to right.
    """
    if key in patients:
        return key
    cut = key.find("__")
    while cut > 0:
        if key[:cut] in patients:
            return key[:cut]
        cut = key.find("__", cut + 1)
    return None
