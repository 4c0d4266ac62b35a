"""Shared test fixtures. Tiny models run much faster on one intra-op thread on this 2-core machine."""

import os

import pytest
import torch

os.environ.setdefault("RURK_PROGRESS", "0")  # no progress bars in test output
os.environ.setdefault("RURK_THREADS", "1")  # commands run through rurk.cli.main keep the tests' one thread


@pytest.fixture(autouse=True, scope="session")
def _one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
