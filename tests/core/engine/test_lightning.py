"""Helpers for distributed final training: reassembling what each process saw of a validation set."""

import pytest
import torch
from torch.utils.data import DistributedSampler

from core.engine.lightning import all_ranks, interleave_ranks


@pytest.mark.parametrize("n, world", [(10, 2), (11, 2), (7, 3), (5, 1), (3, 4)])
def test_interleave_ranks_undoes_an_unshuffled_distributed_sampler(n, world):
    items = torch.arange(n) * 10
    parts = [items[list(DistributedSampler(range(n), num_replicas=world, rank=r, shuffle=False))]
             for r in range(world)]
    assert interleave_ranks(parts, n).tolist() == items.tolist()


def test_all_ranks_outside_a_distributed_run_is_just_this_process():
    assert all_ranks({"a": 1}) == [{"a": 1}]
