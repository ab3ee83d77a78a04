"""kd_loss against a hand computation in float64."""

import math

import torch

from vbp.workflows.distill import kd_loss


def hand_kd(s, t, labels, alpha, temp, smoothing):
    total = 0.0
    for i in range(s.shape[0]):
        row, trow, n = s[i].tolist(), t[i].tolist(), s.shape[1]
        log_z = math.log(sum(math.exp(v) for v in row))
        log_p = [v - log_z for v in row]
        target = [smoothing / n + (1 - smoothing) * (j == labels[i]) for j in range(n)]
        ce = -sum(q * lp for q, lp in zip(target, log_p))
        ps = [math.exp(v / temp) for v in row]
        pt = [math.exp(v / temp) for v in trow]
        ps = [v / sum(ps) for v in ps]
        pt = [v / sum(pt) for v in pt]
        kl = sum(b * math.log(b / a) for a, b in zip(ps, pt))
        total += (1 - alpha) * ce + alpha * temp * temp * kl
    return total / s.shape[0]


def test_kd_loss_matches_hand_computation():
    g = torch.Generator().manual_seed(0)
    s, t = torch.randn(5, 7, generator=g, dtype=torch.float64), torch.randn(5, 7, generator=g, dtype=torch.float64)
    labels = torch.tensor([0, 3, 6, 2, 2])
    for alpha, temp, smoothing in [(0.5, 2.0, 0.1), (1.0, 4.0, 0.0), (0.0, 1.0, 0.1), (0.3, 1.0, 0.0)]:
        got = kd_loss(s, t, labels, alpha, temp, smoothing).item()
        assert abs(got - hand_kd(s, t, labels.tolist(), alpha, temp, smoothing)) < 1e-12


def test_kd_term_vanishes_when_student_equals_teacher():
    logits = torch.randn(4, 10, dtype=torch.float64)
    labels = torch.tensor([1, 2, 3, 4])
    assert abs(kd_loss(logits, logits, labels, 1.0, 3.0).item()) < 1e-12
