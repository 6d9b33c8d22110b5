"""Shared fixtures: devices, dtypes, tolerances and a seeded generator whose seed shows."""

from __future__ import annotations

import pytest
import torch

# One intra-op thread: the test problems are small, and on a busy 2-core machine torch's
# thread pool made a 1 s training loop take 47 s (measured). Set here for collection and
# again for every test module by the autouse fixture ``_one_thread`` below.
torch.set_num_threads(1)

DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])

# Relative tolerances for solution comparisons, by dtype.
RTOL = {torch.float64: 1e-8, torch.float32: 1e-4}


def pytest_collection_modifyitems(config, items):
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU")
    for item in items:
        if "cuda" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """One torch thread for each test module (its module-scoped fixtures included), restored
    afterwards, so a test that changes the thread count cannot slow the modules after it."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(params=DEVICES)
def device(request):
    return torch.device(request.param)


@pytest.fixture(params=[torch.float64, torch.float32], ids=["f64", "f32"])
def dtype(request):
    return request.param


@pytest.fixture
def rtol(dtype):
    return RTOL[dtype]


@pytest.fixture(params=[0])
def seed(request):
    return request.param


@pytest.fixture
def generator(seed):
    """A CPU torch.Generator seeded with ``seed`` (shown in the test id on failure)."""
    return torch.Generator().manual_seed(seed)


@pytest.fixture
def krylov_below_its_preconditioner():
    """``run(model, data)``: ``method="krylov"`` under a ``memory_budget=`` that even
    without the activation cache cannot hold the default Nystrom basis (the free plan's peak
    less half the basis). Checks that the plan drops the cache, lowers only the Nystrom rank
    and fits within its headroom, and that the refine warns and uses that rank; returns the
    refined model, whose loss the caller checks."""
    import lsr_scale as ls

    def run(model, data):
        least = ls.Products(cache=False, chunk_size=1, batch_size=1)
        free = ls.plan(model, data=data, method="krylov", memory_budget=1e12, products=least)
        tight = int(free.peak_bytes - 0.5 * free.parts["basis"])
        p = ls.plan(model, data=data, method="krylov", memory_budget=tight)
        assert p.products.cache is False and p.peak_bytes <= 0.95 * tight
        assert [c["setting"] for c in p.adapted] == ["Krylov.preconditioner.rank"]
        with pytest.warns(RuntimeWarning, match="adapted"):
            r = ls.refine(model, data=data, method="krylov", memory_budget=tight,
                          progress_bar=False)  # fmt: skip
        assert r.info["preconditioner"]["rank"] == p.method.preconditioner.rank
        return r

    return run
