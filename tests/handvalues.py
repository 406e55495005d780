"""Comparing a loss or metric with a value worked out by hand (in fp32, absolute tolerance)."""

from __future__ import annotations

import torch


def assert_near(actual, expected, tol=1e-5):
    torch.testing.assert_close(torch.as_tensor(actual, dtype=torch.float32),
                               torch.as_tensor(expected, dtype=torch.float32), rtol=0, atol=tol)
