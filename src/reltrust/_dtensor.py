"""DTensor (FSDP2) helpers shared by the optimisers (`reltrust.optim`) and the trust toolkit
(`reltrust.trust`): recognise a DTensor without importing `torch.distributed.tensor`, take its local
shard, gather its full logical tensor, and reduce per-shard norms to norms of the whole tensors."""
from __future__ import annotations

import sys
from collections.abc import Sequence

import torch
import torch.distributed as dist


def is_dtensor(t: torch.Tensor) -> bool:
    """True for a DTensor. Importing `torch.distributed.tensor` costs seconds, and a DTensor can only
    exist once it is imported, so the check looks the module up instead of importing it."""
    module = sys.modules.get("torch.distributed.tensor")
    return module is not None and isinstance(t, module.DTensor)


def local(t: torch.Tensor) -> torch.Tensor:
    """The local shard of a DTensor (a view sharing its storage); a plain tensor unchanged."""
    return t.to_local() if is_dtensor(t) else t


def full(t: torch.Tensor) -> torch.Tensor:
    """Gather a DTensor to its full logical tensor; plain tensors pass through."""
    return t.full_tensor() if is_dtensor(t) else t


def shards(t: torch.Tensor, who: str) -> list[tuple[int, object]]:
    """(mesh dim, Shard placement) of each mesh dimension a DTensor is sharded over; a Partial
    placement is refused (`who`: what needs whole tensors, for the message)."""
    out = []
    for d, placement in enumerate(t.placements):
        if placement.is_partial():
            raise NotImplementedError(f"{who}; a parameter or gradient with a Partial placement ({t.placements}) "
                                      "must be reduced first")
        if placement.is_shard():
            out.append((d, placement))
    return out


def _sharded_groups(like: Sequence[torch.Tensor]) -> dict[tuple, list[int]]:
    """Indices of the DTensors in `like`, keyed by (mesh, mesh dims they are sharded over)."""
    groups: dict[tuple, list[int]] = {}
    for i, t in enumerate(like):
        if not is_dtensor(t):
            continue
        dims = [d for d, _ in shards(t, "reltrust optimisers take the norm of whole tensors")]
        if dims:
            groups.setdefault((t.device_mesh, tuple(dims)), []).append(i)
    return groups


def sharded_indices(like: Sequence[torch.Tensor]) -> set[int]:
    """Indices of the tensors in `like` whose norms `reduce_norms` combines across shards."""
    return {i for idx in _sharded_groups(like).values() for i in idx}


def reduce_norms(local_norms: torch.Tensor, like: Sequence[torch.Tensor]) -> torch.Tensor:
    """Turn a vector of norms of local shards into norms of the whole logical tensors, in place.

    Entry i is combined across the mesh dimensions over which `like[i]` (a DTensor) is sharded:
    ‖W‖ = √(Σ_shards ‖W_shard‖²), one all-reduce per (mesh, sharded dims). Plain tensors: unchanged.
    """
    for (mesh, dims), idx in _sharded_groups(like).items():
        index = torch.tensor(idx, device=local_norms.device)
        squares = local_norms.index_select(0, index).square_()
        for d in dims:
            dist.all_reduce(squares, group=mesh.get_group(d))
        local_norms.index_copy_(0, index, squares.sqrt_())
    return local_norms
