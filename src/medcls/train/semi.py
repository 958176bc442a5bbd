"""Semi-supervised pieces: which labels are kept, pseudo-labels, consistency losses, the mean teacher.

``pseudo`` adds confident unlabelled items with the labels the validated weights
give them; ``fixmatch`` (Sohn et al. 2020) and ``meanteacher`` (Tarvainen &
Valpola 2017) add a consistency loss on unlabelled batches.
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["SEMI_METHODS", "labelled_subset", "pseudo_labels", "teacher_update", "consistency_loss"]

SEMI_METHODS = ("pseudo", "fixmatch", "meanteacher")
CONFIDENT = 0.95  # the probability above which a prediction counts as a label (FixMatch's threshold)


def labelled_subset(y: np.ndarray, sample: np.ndarray, fraction: float, seed: int) -> np.ndarray:
    """Boolean mask of items whose sample's label is kept (stratified by class)."""
    if fraction >= 1:
        return np.ones(len(y), bool)
    rng = np.random.default_rng(seed + 7)
    uniq, first = np.unique(sample, return_index=True)
    ys = y[first] if y.ndim == 1 else y[first].argmax(1)
    keep = []
    for c in np.unique(ys):
        members = uniq[ys == c]
        n = max(1, int(round(fraction * len(members))))
        keep.extend(rng.choice(members, n, replace=False))
    return np.isin(sample, np.array(keep))


def pseudo_labels(probs: np.ndarray, prior: np.ndarray, threshold: float = CONFIDENT) -> tuple[np.ndarray, np.ndarray]:
    """Confident unlabelled items and their labels, in the labelled set's class ratio.

    Taking every prediction above ``threshold`` lets an early model that favours
    the majority class label the whole unlabelled set with it and then learn its
    own mistake, ending as a majority-class predictor. Each class instead gets
    its share (``prior``) of a total bounded by the class with the fewest
    confident items; within a class the most confident go first. A class the
    model is never confident about means no pseudo-labels yet.
    """
    conf, lab = probs.max(1), probs.argmax(1)
    ok = conf >= threshold
    counts = np.bincount(lab[ok], minlength=len(prior))
    present = prior > 0
    total = float(np.min(counts[present] / prior[present])) if present.any() else 0.0
    pick = []
    for c in np.flatnonzero(present):
        members = np.flatnonzero(ok & (lab == c))
        n_c = int(np.floor(total * prior[c] + 1e-9))
        pick.append(members[np.argsort(-conf[members], kind="stable")[:n_c]])
    pick = np.sort(np.concatenate(pick)) if pick else np.zeros(0, int)
    return pick, lab[pick]


@torch.no_grad()
def teacher_update(teacher: nn.Module, student: nn.Module, step: int, decay: float) -> None:
    """Mean-teacher update after optimiser step ``step`` (1, 2, ...): EMA with ``min(1 - 1/(step+1), decay)``.

    The warm-up is Tarvainen & Valpola's own code. ``decay`` is medcls's
    two-epoch time constant rather than the paper's fixed 0.99, which assumes
    thousands of steps: with 0.99 over the hundred or so steps of a small
    labelled set, the teacher (which is validated and kept) would still hold a
    third of its random initial weights when training ends.
    """
    decay = min(1.0 - 1.0 / (step + 1), decay)
    for t, s in zip(teacher.parameters(), student.parameters()):
        t.mul_(decay).add_(s.detach(), alpha=1 - decay)
    for t, s in zip(teacher.buffers(), student.buffers()):
        t.copy_(s)


def consistency_loss(method: str, model: nn.Module, teacher: nn.Module | None, unlabelled: torch.Tensor, norm,
                     weak, strong, gen: torch.Generator, step: int, total_steps: int, share=None) -> torch.Tensor:
    """FixMatch or mean-teacher loss on an unlabelled batch (float, [0, 1], on the device).

    FixMatch: the model's confident predictions on weakly augmented images are
    the targets for strongly augmented ones. Mean teacher: the student's
    probabilities should match the teacher's under different noise, weighted by
    the authors' sigmoid ramp-up over the first 30 % of training. ``share``:
    the batch is this process's block of a larger one (see :class:`~medcls.train.augment.Augment`).
    """
    from medcls.models import AuxOutputs

    def logits(m, x):
        out = m(x)
        return out.logits if isinstance(out, AuxOutputs) else out

    if method == "fixmatch":
        with torch.no_grad():
            p = torch.softmax(logits(model, norm(weak(unlabelled, gen, share))).float(), 1)
            conf, pseudo = p.max(1)
            mask = (conf >= CONFIDENT).float()
        ls = F.cross_entropy(logits(model, norm(strong(unlabelled, gen, share))).float(), pseudo, reduction="none")
        return (ls * mask).mean()
    ramp = math.exp(-5 * (1 - min(1.0, step / max(1, 0.3 * total_steps))) ** 2)
    with torch.no_grad():
        pt = torch.softmax(logits(teacher.train(), norm(weak(unlabelled, gen, share))).float(), 1)
    ps = torch.softmax(logits(model, norm(weak(unlabelled, gen, share))).float(), 1)
    return 10.0 * ramp * F.mse_loss(ps, pt)
