import os

os.environ.setdefault("ARCHFORGE_NO_PROGRESS", "1")
os.environ.setdefault("MPLBACKEND", "Agg")

import pytest
import torch

# tiny test networks run faster on one thread, and a busy second core then cannot stall them
torch.set_num_threads(1)


@pytest.fixture
def onemax_space():
    """20 choices of 4 options; the hidden target is option i % 4 for choice i (`core.testing.onemax`)."""
    from core.testing import onemax_space

    return onemax_space()
