"""Character-level text: a corpus as int64 character ids, and batches of windows for next-character
training (random windows) and evaluation (consecutive windows covering the corpus)."""

from __future__ import annotations

from typing import Iterator

import numpy as np
import torch

from reltrust.workbench.data.dataset import check_int, readonly


def tokenize(text: str) -> tuple[np.ndarray, tuple[str, ...]]:
    """(ids, vocab): ``text`` as read-only int64 ids over ``vocab``, the sorted set of its characters."""
    vocab = tuple(sorted(set(text)))
    lut = np.full(max(map(ord, vocab)) + 1, -1, dtype=np.int64)
    lut[[ord(c) for c in vocab]] = np.arange(len(vocab))
    codes = np.frombuffer(text.encode("utf-32-le"), dtype="<u4")
    return readonly(lut[codes]), vocab


def _check_tokens(tokens: torch.Tensor, block_size: int) -> None:
    if not isinstance(tokens, torch.Tensor) or tokens.dim() != 1 or tokens.dtype != torch.int64:
        raise ValueError("tokens must be a 1-D int64 tensor of character ids")
    if tokens.shape[0] < block_size + 1:
        raise ValueError(
            f"block_size must be < len(tokens) = {tokens.shape[0]} (need block_size + 1 tokens), got {block_size}"
        )


def text_batches(
    tokens: torch.Tensor, block_size: int, batch_size: int, generator: torch.Generator | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """One random batch for next-character training: ``x`` (batch_size, block_size) and ``y`` the
    same windows shifted by one character. Window starts are uniform over all valid positions,
    drawn from ``generator`` (pass a seeded torch.Generator for reproducibility)."""
    block_size = check_int("block_size", block_size, 1)
    batch_size = check_int("batch_size", batch_size, 1)
    _check_tokens(tokens, block_size)
    starts = torch.randint(0, tokens.shape[0] - block_size, (batch_size,), generator=generator)
    idx = starts[:, None] + torch.arange(block_size)[None, :]
    return tokens[idx], tokens[idx + 1]


def iter_text_blocks(
    tokens: torch.Tensor, block_size: int, batch_size: int
) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Deterministic evaluation batches: consecutive non-overlapping windows covering the corpus
    (the last partial window dropped), ``batch_size`` windows per batch (the last batch may be smaller)."""
    block_size = check_int("block_size", block_size, 1)
    batch_size = check_int("batch_size", batch_size, 1)
    _check_tokens(tokens, block_size)
    n_blocks = (tokens.shape[0] - 1) // block_size
    starts = torch.arange(n_blocks) * block_size
    offsets = torch.arange(block_size)[None, :]
    for i in range(0, n_blocks, batch_size):
        idx = starts[i : i + batch_size, None] + offsets
        yield tokens[idx], tokens[idx + 1]
