"""Mixup (``--mixup``): the step trains on mixed pairs and mixed losses, reproducibly, and in step across ranks."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn as nn

from medcls.errors import MedclsError
from medcls.train.augment import Augment, Share, mixup_pairs
from medcls.train.config import TrainConfig
from medcls.train.engine import train_step


def test_the_draws_are_a_beta_weight_and_a_permutation_reproducible_from_the_generator():
    lams = []
    for seed in range(200):
        g = torch.Generator().manual_seed(seed)
        lam, perm = mixup_pairs(0.4, g, Share(16, slice(0, 16)))
        assert sorted(perm.tolist()) == list(range(16))
        lams.append(lam)
        again = mixup_pairs(0.4, torch.Generator().manual_seed(seed), Share(16, slice(0, 16)))
        assert again[0] == lam and torch.equal(again[1], perm)
    lams = np.array(lams)
    assert ((lams >= 0) & (lams <= 1)).all()
    # Beta(0.4, 0.4) is U-shaped: most weights lie near 0 or 1, its mean is 1/2
    assert abs(lams.mean() - 0.5) < 0.08 and ((lams < 0.2) | (lams > 0.8)).mean() > 0.5


def test_ranks_mix_within_their_block_and_their_generators_stay_in_step():
    states = []
    for part in (slice(0, 5), slice(5, 9)):  # blocks of unequal size, as the last batch of an epoch gives
        g = torch.Generator().manual_seed(7)
        lam, perm = mixup_pairs(1.0, g, Share(9, part))
        assert sorted(perm.tolist()) == list(range(part.stop - part.start))
        states.append((lam, g.get_state()))
    assert states[0][0] == states[1][0], "every rank mixes with the same weight"
    assert torch.equal(states[0][1], states[1][1]), "and draws as much from its generator"


class _Mean(nn.Module):
    """A linear classifier that records the batch it was given."""

    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(16, 2)
        self.seen = None

    def forward(self, x):
        self.seen = x.detach().clone()
        return self.fc(x.flatten(1))


def test_the_step_mixes_items_and_losses_as_the_draws_say():
    torch.manual_seed(0)
    rng = np.random.default_rng(0)
    x = rng.integers(0, 256, (8, 1, 4, 4), dtype=np.uint8)
    y = np.array([0, 1] * 4)
    model = _Mean()
    opt = torch.optim.SGD(model.parameters(), lr=0.0)  # the weights stay put, so the loss can be recomputed
    crit = nn.CrossEntropyLoss(weight=torch.tensor([1.0, 3.0]))
    scaler = torch.amp.GradScaler("cpu", enabled=False)
    idx = np.arange(8)
    loss = train_step(model, opt, None, scaler, crit, lambda t: t, Augment("none"), x, y, idx, torch.device("cpu"),
                      False, torch.Generator().manual_seed(3), mixup=0.4)
    lam, perm = mixup_pairs(0.4, torch.Generator().manual_seed(3), Share(8, slice(0, 8)))
    assert 0 < lam < 1 and not torch.equal(perm, torch.arange(8))
    xf = torch.from_numpy(x).float() / 255
    torch.testing.assert_close(model.seen, xf * lam + xf[perm] * (1 - lam))
    with torch.no_grad():
        out = model.fc(model.seen.flatten(1))
        yt = torch.from_numpy(y)
        want = lam * crit(out, yt) + (1 - lam) * crit(out, yt[perm])
    torch.testing.assert_close(loss, want)
    plain = train_step(model, opt, None, scaler, crit, lambda t: t, Augment("none"), x, y, idx, torch.device("cpu"),
                       False, torch.Generator().manual_seed(3))
    torch.testing.assert_close(model.seen, xf)
    assert not torch.isclose(plain, loss), "without mixup the step sees the items as they are"


@pytest.mark.parametrize("bad", [-0.1, 11.0, float("nan")])
def test_a_bad_mixup_strength_is_refused(bad):
    with pytest.raises(MedclsError, match="--mixup"):
        TrainConfig(data="breastmnist", mixup=bad)
