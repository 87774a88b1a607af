"""The IDX format (LeCun's MNIST files) and finding the four standard IDX files of a data set.

An IDX file is magic = 0x00 0x00 <type code> <ndim>, then ndim big-endian uint32 sizes, then the
data, big-endian. Images: 16-byte header, labels: 8-byte header. MNIST and Fashion-MNIST ship as four
such files (train/t10k x images/labels), raw or gzip-compressed, under the standard names or the
common dotted variant (``train-images.idx3-ubyte``).
"""

from __future__ import annotations

import functools
import gzip
import os
import re
from pathlib import Path

import numpy as np

from reltrust.workbench.data.dataset import readonly


class IDXFormatError(ValueError):
    """A file is not a valid IDX file (bad magic number, unknown type code, truncated data)."""


_IDX_TYPES = {
    0x08: np.dtype("u1"),
    0x09: np.dtype("i1"),
    0x0B: np.dtype(">i2"),
    0x0C: np.dtype(">i4"),
    0x0D: np.dtype(">f4"),
    0x0E: np.dtype(">f8"),
}

IDX_FILES = {
    "train_images": "train-images-idx3-ubyte",
    "train_labels": "train-labels-idx1-ubyte",
    "test_images": "t10k-images-idx3-ubyte",
    "test_labels": "t10k-labels-idx1-ubyte",
}


def read_idx(path: str | os.PathLike, *, expected_ndim: int | None = None) -> np.ndarray:
    """Read an IDX file (raw, or gzip-compressed: detected by its content, not its name).

    Returns an array of the file's shape and type (uint8 for MNIST). Raises :class:`IDXFormatError`
    naming the file when the magic number is wrong, the type code is unknown, the number of
    dimensions differs from ``expected_ndim``, or the data is shorter or longer than the header says.
    """
    path = Path(path)
    with open(path, "rb") as fh:
        head = fh.read(2)
    opener = gzip.open if head == b"\x1f\x8b" else open
    try:
        with opener(path, "rb") as fh:
            buf = fh.read()
    except (OSError, EOFError) as err:  # corrupt gzip stream
        raise IDXFormatError(f"{path}: cannot decompress ({err})") from err
    if len(buf) < 4:
        raise IDXFormatError(f"{path}: too short for an IDX header ({len(buf)} bytes)")
    if buf[0] != 0 or buf[1] != 0:
        raise IDXFormatError(
            f"{path}: bad IDX magic number 0x{buf[:4].hex()} (the first two bytes must be 0x0000; "
            "image files start 0x00000803, label files 0x00000801)"
        )
    code, ndim = buf[2], buf[3]
    if code not in _IDX_TYPES:
        raise IDXFormatError(
            f"{path}: bad IDX magic number 0x{buf[:4].hex()}: unknown type code 0x{code:02x} "
            f"(known: {', '.join(f'0x{c:02x}' for c in _IDX_TYPES)})"
        )
    if ndim == 0:
        raise IDXFormatError(f"{path}: bad IDX magic number 0x{buf[:4].hex()}: 0 dimensions")
    if expected_ndim is not None and ndim != expected_ndim:
        raise IDXFormatError(
            f"{path}: IDX file has {ndim} dimension(s), expected {expected_ndim} "
            f"(magic 0x{buf[:4].hex()}; images are 0x00000803, labels 0x00000801)"
        )
    header = 4 + 4 * ndim
    if len(buf) < header:
        raise IDXFormatError(f"{path}: truncated IDX header ({len(buf)} bytes, need {header})")
    shape = tuple(int(s) for s in np.frombuffer(buf, dtype=">u4", count=ndim, offset=4))
    dtype = _IDX_TYPES[code]
    expected = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    got = len(buf) - header
    if got != expected:
        raise IDXFormatError(
            f"{path}: IDX data is {got} bytes but the header's shape {shape} needs {expected}"
        )
    arr = np.frombuffer(buf, dtype=dtype, offset=header).reshape(shape)
    return arr.astype(dtype.newbyteorder("="), copy=False) if dtype.byteorder == ">" else arr


# --------------------------------------------------------------------------------------------
# Finding the four files


def find_idx_file(directory: Path, stem: str) -> Path | None:
    """``directory``'s file for ``stem``: the standard name (train-images-idx3-ubyte) or the common
    dotted variant (train-images.idx3-ubyte), each raw or .gz."""
    dotted = re.sub(r"-(idx\d)", r".\1", stem)
    for name in (stem, stem + ".gz", dotted, dotted + ".gz"):
        p = directory / name
        if p.is_file():
            return p
    return None


def _idx_files(directory: Path) -> dict[str, Path] | None:
    found = {key: find_idx_file(directory, stem) for key, stem in IDX_FILES.items()}
    return found if all(found.values()) else None


def resolve_idx_dir(
    data_dir: str | os.PathLike | None, name: str, system_dir: str | None = None
) -> Path | None:
    """A directory holding the four IDX files: data_dir itself or data_dir/<name>; without a
    data_dir, ``system_dir`` (where a system package installs them), if any."""
    candidates: list[Path] = []
    if data_dir is not None:
        d = Path(data_dir).expanduser()
        candidates += [d, d / name]
    elif system_dir is not None:
        candidates.append(Path(system_dir))
    for c in candidates:
        if c.is_dir() and _idx_files(c) is not None:
            return c
    return None


@functools.lru_cache(maxsize=4)
def read_idx_dir(directory: str) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(train images, train labels, test images, test labels) of a directory that
    :func:`resolve_idx_dir` found, checked for matching counts, labels 0..9 and equal image shapes;
    read-only and cached per process (keyed by the resolved path)."""
    files = _idx_files(Path(directory))
    assert files is not None
    xtr = read_idx(files["train_images"], expected_ndim=3)
    ytr = read_idx(files["train_labels"], expected_ndim=1)
    xte = read_idx(files["test_images"], expected_ndim=3)
    yte = read_idx(files["test_labels"], expected_ndim=1)
    for xs, ys, split in ((xtr, ytr, "train"), (xte, yte, "t10k")):
        if xs.shape[0] != ys.shape[0]:
            raise IDXFormatError(
                f"{directory}: {split} has {xs.shape[0]} images but {ys.shape[0]} labels"
            )
        if ys.size and (ys.min() < 0 or ys.max() > 9):
            raise IDXFormatError(f"{directory}: {split} labels outside 0..9")
    if xtr.shape[1:] != xte.shape[1:]:
        raise IDXFormatError(f"{directory}: train images {xtr.shape[1:]} but test images {xte.shape[1:]}")
    return readonly(xtr), readonly(ytr.astype(np.int64)), readonly(xte), readonly(yte.astype(np.int64))
