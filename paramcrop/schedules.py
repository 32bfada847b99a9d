"""Learning-rate schedules shared by the trainer, the adversary and the fine-tuning protocol."""
from __future__ import annotations

import math


def warmup_cosine(step: int, warmup_steps: int, total_steps: int, min_ratio: float = 0.0) -> float:
    """The learning-rate factor at ``step`` (0-based): ``(step + 1) / warmup_steps`` during the warm-up,
    then a cosine from 1 down to ``min_ratio`` at ``total_steps`` (held there after)."""
    if step < warmup_steps:
        return (step + 1) / warmup_steps
    progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
    return min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))
