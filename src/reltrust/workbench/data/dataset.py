"""The record every loader returns, the "not installed" error, and the small helpers all loaders share:
argument checks, read-only cached arrays and tensors that own their memory."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch


class DatasetNotInstalledError(FileNotFoundError):
    """The data set's files or package are not installed; the message says how to get them."""


@dataclass(frozen=True, eq=False, repr=False)
class Dataset:
    """One loaded data set: tensors for train / val / (test), and what they are.

    ``x_*`` are float32 with per-example shape ``input_shape`` (images keep (C, H, W); a model
    flattens) and ``y_*`` int64 class labels; for text, ``x_*`` are 1-D int64 character ids,
    ``y_*`` are None and ``vocab`` maps ids to characters (``num_classes == len(vocab)``,
    ``input_shape == ()``: a stream, the model picks its block size). ``x_test``/``y_test`` are
    None when the source has no test split and none was carved. An empty val split (val_fraction=0)
    is an empty tensor, not None.
    """

    name: str
    x_train: torch.Tensor
    y_train: torch.Tensor | None
    x_val: torch.Tensor
    y_val: torch.Tensor | None
    x_test: torch.Tensor | None
    y_test: torch.Tensor | None
    num_classes: int
    input_shape: tuple[int, ...]
    kind: str  # "image" | "vector" | "text"
    source: str
    vocab: list[str] | None = None
    class_names: tuple[str, ...] | None = None
    normalization: str = ""
    seed: int = 0
    load_seconds: float = field(default=0.0)

    @property
    def sizes(self) -> dict[str, int]:
        """Number of examples (characters for text) in each split; test is 0 when absent."""
        return {
            "train": int(self.x_train.shape[0]),
            "val": int(self.x_val.shape[0]),
            "test": 0 if self.x_test is None else int(self.x_test.shape[0]),
        }

    def encode(self, text: str) -> torch.Tensor:
        """Character ids of ``text`` (text data sets only); unknown characters raise ValueError."""
        if self.vocab is None:
            raise ValueError(f"encode: data set {self.name!r} is not a text corpus")
        index = {ch: i for i, ch in enumerate(self.vocab)}
        unknown = sorted({ch for ch in text if ch not in index})
        if unknown:
            raise ValueError(f"encode: characters not in the vocabulary: {unknown!r}")
        return torch.tensor([index[ch] for ch in text], dtype=torch.int64)

    def decode(self, tokens) -> str:
        """The text for a sequence of character ids (text data sets only)."""
        if self.vocab is None:
            raise ValueError(f"decode: data set {self.name!r} is not a text corpus")
        ids = torch.as_tensor(tokens).reshape(-1).numpy()
        codes = np.array([ord(ch) for ch in self.vocab], dtype="<u4")[ids]
        return codes.tobytes().decode("utf-32-le")

    def __repr__(self) -> str:
        s = self.sizes
        return (
            f"Dataset(name={self.name!r}, kind={self.kind!r}, input_shape={self.input_shape}, "
            f"num_classes={self.num_classes}, train={s['train']}, val={s['val']}, test={s['test']}, "
            f"source={self.source!r})"
        )


# --------------------------------------------------------------------------------------------
# Argument checks


def check_fraction(name: str, value) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not (0.0 <= float(value) < 1.0):
        raise ValueError(f"{name} must be a float in [0, 1), got {value!r}")
    return float(value)


def check_int(name: str, value, lo: int, hi: int | None = None) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise ValueError(f"{name} must be an int in [{lo}, {hi if hi is not None else 'inf'}], got {value!r}")
    v = int(value)
    if v < lo or (hi is not None and v > hi):
        raise ValueError(f"{name} must be an int in [{lo}, {hi if hi is not None else 'inf'}], got {value!r}")
    return v


# --------------------------------------------------------------------------------------------
# Arrays: the raw loaders cache read-only numpy arrays; a Dataset gets tensors of its own


def readonly(a: np.ndarray) -> np.ndarray:
    a = np.ascontiguousarray(a)
    a.setflags(write=False)
    return a


def owned_tensor(a: np.ndarray) -> torch.Tensor:
    """A tensor owning a writable copy (the cached arrays are read-only)."""
    return torch.from_numpy(np.array(a, copy=True))
