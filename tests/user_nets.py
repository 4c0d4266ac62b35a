"""Model factories as a user would write them, for `rurk audit --arch` (tests/test_audit_user.py)."""

from torch import nn

NOT_CALLABLE = 3


def make_net():
    return nn.Sequential(nn.Flatten(), nn.Linear(64, 32), nn.ReLU(), nn.Linear(32, 5))


def make_other_net():
    return nn.Sequential(nn.Flatten(), nn.Linear(64, 16), nn.ReLU(), nn.Linear(16, 5))


def not_a_module():
    return 42


def broken():
    raise RuntimeError("no weights today")
