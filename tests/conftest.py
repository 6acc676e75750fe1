import os

os.environ.setdefault("ARCHFORGE_NO_PROGRESS", "1")
os.environ.setdefault("MPLBACKEND", "Agg")

import pytest
import torch

# tiny test networks run faster on one thread, and a busy second core then cannot stall them
torch.set_num_threads(1)


@pytest.fixture
def onemax_space():
    """20 choices of 4 options; the hidden target is option i % 4 for choice i."""
    from core.api import Choice, SearchSpace

    return SearchSpace([Choice(f"c{i}", (0, 1, 2, 3)) for i in range(20)])


def onemax(arch):
    return {"accuracy": float(sum(arch[f"c{i}"] == i % 4 for i in range(20))), "macs": 0.0, "params": 0.0}
