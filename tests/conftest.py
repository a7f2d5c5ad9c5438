"""Shared test settings."""

import pytest


@pytest.fixture(scope="module", autouse=True)
def one_torch_thread():
    """Two cores are shared by the test run and its dask workers: keep torch to one thread."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
