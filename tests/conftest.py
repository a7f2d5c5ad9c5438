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


@pytest.fixture(scope="module")
def pipe(tmp_path_factory):
    """The untrained tiny SD (the shipped config, seed 0): capture tests' model."""
    import torch

    from pipeline.models import build_tiny_stable_diffusion, load_tiny_sd_config

    torch.set_num_threads(1)
    return build_tiny_stable_diffusion(load_tiny_sd_config(), tmp_path_factory.mktemp("tok"), seed=0)


@pytest.fixture(scope="module")
def inputs(pipe):
    """Two seeded 16x16 latents (64 px images) and the empty prompt's text embedding."""
    import torch

    from pipeline.diffusion.sd_input import encode_prompt

    latents = torch.randn(2, 4, 16, 16, generator=torch.Generator().manual_seed(0))
    return latents, encode_prompt(pipe, "")


@pytest.fixture(scope="module", autouse=True)
def nothing_written_into_the_checkout():
    """Tests write into their own temporary folders: a stage run that forgot a path option would write its
    default path under the checkout's artifacts/ (and hide there between runs)."""
    from pathlib import Path

    artifacts = Path(__file__).resolve().parent.parent / "artifacts"
    before = sorted(p.relative_to(artifacts).as_posix() for p in artifacts.rglob("*")) if artifacts.exists() else []
    yield
    after = sorted(p.relative_to(artifacts).as_posix() for p in artifacts.rglob("*")) if artifacts.exists() else []
    assert after == before, f"a test wrote into the checkout's artifacts/: {sorted(set(after) - set(before))[:5]}"
