"""DNA as a one-shot ranking estimator on the cell201 space: blockwise distillation, then a score per candidate.

Li et al., "Blockwisely Supervised Neural Architecture Search with Knowledge
Distillation" (DNA), CVPR 2020. `core.oneshot.dna` searches DNA's own space;
this module applies the same method (`core.distill.blockwise`) to a list of
cell201 candidates, so that its ranking can be compared with SPOS and DC-NAS
against the tabular benchmark (`benchmarks/ranking.py`).

- Teacher (`train_teacher`): DNA assumes a trained teacher; here a
  `SmallCNN` whose two stages have the shapes of the cell201 skeleton's two
  stages (C x 8 x 8, 2C x 4 x 4), trained with the task's loss. Each stage has
  `convs_per_stage` conv-BN-ReLU layers (4): deeper than any path of the
  student block it supervises, as DNA's teacher is (EfficientNet-B7, whose
  stages have 7/7/10/10/13/4 layers against the student blocks' 2/4/4/4/4/1,
  official `searching/train.py`). Its stage outputs are taken before the last
  ReLU (`SmallCNN.preactivation_paths`): a cell201 cell outputs
  pre-activation sums, like DNA's MBConv blocks and EfficientNet stages,
  which end in a linear projection.
- Student blocks (`student_blocks`): block 0 = stem + the N cells at C,
  block 1 = the residual reduction + the N cells at 2C, of a fresh cell201
  supernet with affine BN in the search cells (the space's own supernet has
  NAS-Bench-201's non-affine search-cell BN, whose conv paths always output
  unit variance and so cannot match a teacher feature's scale), each block
  ending in an affine BatchNorm (see `student_blocks`).
- Training: one uniformly sampled path per step, Adam lr 0.005, weight decay
  1e-4, lr x 0.9 per epoch (`core.oneshot.dna`'s recipe), `steps_per_block`
  steps per block.
- Score: the sum over blocks of DNA's `cl_loss` on `data.val` after BN
  recalibration on the first `recal_batches` training batch(es) (DNA's reset
  batch); lower is better, and `dna_scores` returns it negated.
"""

from __future__ import annotations

import random
import time
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader

from core.distill.blockwise import score_archs, teacher_features, train_block
from core.distill.teachers import SmallCNN, StagedTeacher
from core.engine.data import DataSplits
from core.task import Task
from core.zoo.cell201 import Cell201Space, CellNetwork, SearchCell

#: the batch of teacher training, block training and scoring
BATCH = 64


def train_teacher(data: DataSplits, task: Task, C: int, epochs: int, seed: int, convs_per_stage: int = 4,
                  batch_size: int = BATCH) -> tuple[SmallCNN, float]:
    """A `SmallCNN` with stages shaped like the cell201 skeleton's (C x 8 x 8, 2C x 4 x 4), trained with
    `task.loss` (SGD lr 0.05, Nesterov momentum 0.9, weight decay 5e-4, cosine per step); returns it in eval
    mode with its validation score (the task's primary metric)."""
    torch.manual_seed(seed)
    teacher = SmallCNN(widths=(C, 2 * C), strides=(1, 2), in_channels=data.input_shape[0],
                       num_classes=data.num_classes, stem_channels=C, convs_per_stage=convs_per_stage)
    opt = torch.optim.SGD(teacher.parameters(), lr=0.05, momentum=0.9, weight_decay=5e-4, nesterov=True)
    loader = task.loader(data.train, batch_size, shuffle=True, seed=seed)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, epochs * len(loader))
    for _ in range(epochs):
        teacher.train()
        for batch in loader:
            loss, _ = task.loss(teacher, batch)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
    teacher.eval()
    score = task.score(teacher, task.loader(data.val, len(data.val)))[task.primary_metric]
    return teacher, float(score)


def student_blocks(supernet: nn.Module, N: int, C: int, output_bn: bool = True) -> list[nn.Module]:
    """Block 0: stem + the N cells at C; block 1: the reduction block + the N cells at 2C.

    With `output_bn` each block ends in an affine BatchNorm of its width (C, 2C), as every DNA student block
    does: its last layer is an MBConv whose input and output widths differ, so it has no residual and ends in
    the projection conv's affine BN (official `searching/dna/student_supernet.py` `block_cfgs`, last layer
    `hidden_outc -> outc`; timm `InvertedResidual.bn3`). A cell201 cell instead ends in an unnormalised sum of
    paths whose scale depends on the candidate (how many conv paths and identities reach the output), which
    the BN recalibration of the paths' own BNs cannot undo; the block-output BN, recalibrated per candidate
    like every other BN, gives each candidate's output the learned per-channel scale, as in DNA. Without it a
    disconnected cell (a zero output) beat most connected cells on cl_loss.
    """
    cells = list(supernet.cells)
    blocks = [nn.Sequential(supernet.stem, *cells[:N]), nn.Sequential(*cells[N:])]
    if output_bn:
        blocks = [nn.Sequential(block, nn.BatchNorm2d(width)) for block, width in zip(blocks, (C, 2 * C))]
    return blocks


def dna_scores(space: Cell201Space, data: DataSplits, archs: Sequence[Mapping[str, Any]], steps_per_block: int,
               teacher_epochs: int, seed: int, recal_batches: int = 1, teacher_convs: int = 4,
               output_bn: bool = True, *, task: Task) -> tuple[np.ndarray, dict[str, Any]]:
    """DNA's score of every arch in `archs` (higher is better: the negated summed cl_loss) and what the run did:
    the teacher's validation score, each block's (first, last-epoch mean) MSE, and training/scoring seconds."""
    teacher, teacher_score = train_teacher(data, task, space.C, teacher_epochs, seed, teacher_convs)
    staged = StagedTeacher(teacher, teacher.preactivation_paths())
    torch.manual_seed(seed)
    supernet = CellNetwork(lambda width: SearchCell(space.ops, width, affine=True), C=space.C, N=space.N,
                           num_classes=space.num_classes, in_channels=space.in_channels)
    blocks = student_blocks(supernet, space.N, space.C, output_bn)
    loader = DataLoader(data.train, batch_size=BATCH, shuffle=True, drop_last=True,
                        generator=torch.Generator().manual_seed(seed))
    histories = []
    started = time.perf_counter()
    for i, block in enumerate(blocks):
        rng = random.Random(f"{seed}-dna-block{i}")
        opt = torch.optim.Adam([p for p in block.parameters() if p.requires_grad], lr=0.005, weight_decay=1e-4)
        epochs = train_block(block, i, staged, loader, lambda: space.sample(rng), opt, steps_per_block,
                             len(loader), lr_decay=0.9)
        losses = [loss for epoch in epochs for loss, _ in epoch]
        histories.append((losses[0], float(np.mean(losses[-len(loader):]))))
    train_seconds = time.perf_counter() - started

    started = time.perf_counter()
    reset = DataLoader(data.train, batch_size=BATCH, shuffle=True, generator=torch.Generator().manual_seed(seed + 1))
    recal = teacher_features(staged, (batch for _, batch in zip(range(recal_batches), reset)))
    val = teacher_features(staged, DataLoader(data.val, batch_size=BATCH, shuffle=False))
    scores = score_archs(blocks, archs, recal, val)
    return -np.array(scores), {"teacher_val_acc": teacher_score, "block_mse_first_last": histories,
                               "train_s": train_seconds, "score_s": time.perf_counter() - started}


__all__ = ["dna_scores", "student_blocks", "train_teacher"]
