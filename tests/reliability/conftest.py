"""Fixtures for the reliability suite (tests/conftest.py provides pack, core, tiny, embeddings_dir)."""

from __future__ import annotations

import pytest
import torch


@pytest.fixture(autouse=True, scope="module")
def _one_cpu_thread():
    """The suite runs on shared, busy CPUs: one intra-op thread is ~10x faster there than oversubscribed
    OpenMP threads. Restored afterwards so other test folders keep their setting."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)
