from __future__ import annotations

from pathlib import Path

import pytest

from tests.compressors.weights_support import make_weights

PASSAGE = (
    "The committee met on Tuesday to review the budget for the coming year. Members discussed the "
    "rising cost of maintenance for the old library building, which has needed repairs to its roof "
    "and heating system for several winters. After a long debate, they agreed to ask the city council "
    "for additional funding, and to postpone the purchase of new furniture until the repairs are done. "
    "The chair thanked the volunteers who organised the book sale, which raised more money than expected, "
    "and reminded everyone that the next meeting would focus on the summer reading programme for children. "
)


@pytest.fixture(scope="session")
def weights(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_weights(tmp_path_factory.mktemp("weights") / "test-keep")


@pytest.fixture(scope="session")
def exact(weights: Path):
    from thrifty.compressors.lingua import Compressor

    return Compressor.load(mode="exact", model=str(weights))


@pytest.fixture(scope="session")
def fast(weights: Path):
    from thrifty.compressors.lingua import Compressor

    return Compressor.load(mode="fast", model=str(weights))
