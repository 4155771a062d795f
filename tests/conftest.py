"""Shared fixtures: tiny models, seeded generators, the optional ../shared/data folder."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data"


@pytest.fixture
def gen() -> torch.Generator:
    return torch.Generator("cpu").manual_seed(0)


@pytest.fixture
def shared_data() -> Path:
    if not SHARED_DATA.is_dir():
        pytest.skip(f"SKIPPED LOUDLY: real-image data not found at {SHARED_DATA} (../shared/data); "
                    "this test needs the shared training/validation images")
    return SHARED_DATA


@pytest.fixture
def tiny_pix():
    from gendr_core import build_model
    from gendr_core.config import tiny_gendr_pix_config

    torch.manual_seed(0)
    return build_model(tiny_gendr_pix_config()).eval()
