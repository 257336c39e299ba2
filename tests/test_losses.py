"""The ranking losses against values computed by hand."""

import math

import torch

from model.losses import ranking_loss


def test_ranking_losses_by_hand():
    pos = torch.tensor([2.0, 0.0])
    neg = torch.tensor([[1.0, 3.0], [0.0, -1.0]])
    sp = lambda x: math.log1p(math.exp(x))  # noqa: E731
    bpr = (sp(1 - 2) + sp(3 - 2) + sp(0 - 0) + sp(-1 - 0)) / 4
    hard = (sp(3 - 2) + sp(0 - 0)) / 2  # each row's highest-scoring negative
    soft = (-math.log(math.exp(2) / (math.exp(2) + math.exp(1) + math.exp(3)))
            - math.log(1 / (1 + 1 + math.exp(-1)))) / 2
    assert abs(float(ranking_loss(pos, neg, "bpr")) - bpr) < 1e-6
    assert abs(float(ranking_loss(pos, neg, "hard")) - hard) < 1e-6
    assert abs(float(ranking_loss(pos, neg, "softmax")) - soft) < 1e-6
    # one negative per row: all three BPR forms agree with the plain BPR
    one = torch.tensor([1.0, 0.5])
    assert abs(float(ranking_loss(pos, one, "hard")) - float(ranking_loss(pos, one, "bpr"))) < 1e-7
