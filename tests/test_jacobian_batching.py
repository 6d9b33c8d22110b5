"""JacobianOperator's batching setting and its out-of-memory rule (simulated OOM)."""

from __future__ import annotations

import warnings

import pytest
import torch

import lsr_scale as ls
from lsr_scale.operators import JacobianOperator
from lsr_scale.operators._double_vjp import DoubleVJPBackend
from lsr_scale.operators._forward import ForwardBackend
from lsr_scale.operators._products import is_out_of_memory, resolve_batching

F64 = torch.float64

pytestmark = pytest.mark.filterwarnings("ignore:.*torch.jit.script.*:DeprecationWarning")


def mlp(sizes, seed=0):
    torch.manual_seed(seed)
    layers = []
    for a, b in zip(sizes[:-1], sizes[1:]):
        layers += [torch.nn.Linear(a, b), torch.nn.Tanh()]
    return torch.nn.Sequential(*layers[:-1]).to(F64)


@pytest.fixture
def problem():
    gen = torch.Generator().manual_seed(3)
    X = torch.rand(40, 2, dtype=F64, generator=gen)
    Y = torch.rand(40, 1, dtype=F64, generator=gen)
    return mlp([2, 5, 5, 1]), X, Y


# ---------------------------------------------------------------------- the batching rule
def test_auto_rule_reads_only_device_and_dtypes():
    cpu, gpu = torch.device("cpu"), torch.device("cuda", 0)
    assert resolve_batching("auto", cpu, has_complex=False) == "loop"
    assert resolve_batching("auto", cpu, has_complex=True) == "loop"
    assert resolve_batching("auto", gpu, has_complex=False) == "vmap"
    assert resolve_batching("auto", gpu, has_complex=True) == "loop"
    for explicit in ("vmap", "loop"):
        assert resolve_batching(explicit, cpu, True) == explicit
        assert resolve_batching(explicit, gpu, False) == explicit


def test_batching_setting(problem, generator):
    model, X, Y = problem
    J = JacobianOperator.from_module(model, X, Y)
    assert J.batching == "loop"  # CPU
    Jd = J.to_dense()
    V = torch.randn(J.shape[1], 7, dtype=F64, generator=generator)
    W = torch.randn(J.shape[0], 7, dtype=F64, generator=generator)
    for batching in ("vmap", "loop"):
        for jvp in ("forward", "double_vjp"):
            Jb = JacobianOperator.from_module(
                model, X, Y, batching=batching, batch_size=3, jvp=jvp, chunk_size=15
            )
            assert Jb.batching == batching and Jb._backend.batching == batching
            torch.testing.assert_close(Jb.matmat(V), Jd @ V)
            torch.testing.assert_close(Jb.rmatmat(W), Jd.T @ W)
    with pytest.raises(ValueError, match="batching: expected one of"):
        JacobianOperator.from_module(model, X, Y, batching="chunk")


def test_products_batching_field(problem):
    model, X, Y = problem
    assert ls.Products().batching == "auto"
    assert ls.Products(batching="vmap").jacobian(model, X, Y).batching == "vmap"
    with pytest.raises(ValueError, match="Products.batching"):
        ls.Products(batching="fast")


def test_loop_never_calls_vmap(problem, generator, monkeypatch):
    model, X, Y = problem
    J = JacobianOperator.from_module(model, X, Y, batching="loop", batch_size=8)

    def no_vmap(*args, **kwargs):
        raise AssertionError("vmap called with batching='loop'")

    monkeypatch.setattr(torch.func, "vmap", no_vmap)
    V = torch.randn(J.shape[1], 5, dtype=F64, generator=generator)
    assert J.matmat(V).shape == (40, 5)
    assert J.rmatmat(torch.ones(40, 5, dtype=F64)).shape == (J.shape[1], 5)


# ---------------------------------------------------------------------- out of memory
def simulate_oom(monkeypatch, budget):
    """Make every back end's products raise ``torch.OutOfMemoryError`` when the columns taken
    at once times the block's data rows exceed ``budget`` (the shape of real memory use)."""
    calls = []
    for cls in (ForwardBackend, DoubleVJPBackend):
        for name in ("matmat", "rmatmat"):
            original = getattr(cls, name)

            def product(self, i, X, groups, _original=original, _name=name):
                width = max(g.stop - g.start for g in groups)
                at_once = width if self.batching == "vmap" and self.vmap_error is None else 1
                rows = self.block_shapes[i][0]
                calls.append((_name, at_once, rows))
                if at_once * rows > budget:
                    raise torch.OutOfMemoryError(
                        f"simulated: {at_once} columns x {rows} rows > {budget}"
                    )
                return _original(self, i, X, groups)

            monkeypatch.setattr(cls, name, product)
    return calls


def messages(record):
    return [str(w.message) for w in record if issubclass(w.category, RuntimeWarning)]


@pytest.mark.parametrize("jvp", ["forward", "double_vjp"])
def test_oom_halves_the_batch_and_keeps_it(problem, generator, monkeypatch, jvp):
    model, X, Y = problem
    ref = JacobianOperator.from_module(model, X, Y, jvp=jvp)
    V = torch.randn(ref.shape[1], 16, dtype=F64, generator=generator)
    W = torch.randn(ref.shape[0], 16, dtype=F64, generator=generator)
    expected_jv, expected_jtw = ref.matmat(V), ref.rmatmat(W)

    J = JacobianOperator.from_module(model, X, Y, jvp=jvp, batching="vmap", batch_size=16)
    simulate_oom(monkeypatch, budget=4 * 40)  # 4 columns of the 40-row block fit
    with pytest.warns(RuntimeWarning) as record:
        out = J.matmat(V)
    assert messages(record) == [
        "JacobianOperator: out of memory in a batch of 16 JVP columns; retrying with 8 "
        "(batch_size is now 8)",
        "JacobianOperator: out of memory in a batch of 8 JVP columns; retrying with 4 "
        "(batch_size is now 4)",
    ]
    torch.testing.assert_close(out, expected_jv, rtol=1e-12, atol=1e-12)
    assert J.batch_size == 4 and J.num_blocks == 1
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the smaller batch is kept: no more retries
        torch.testing.assert_close(J.rmatmat(W), expected_jtw, rtol=1e-12, atol=1e-12)
        torch.testing.assert_close(J.matmat(V), expected_jv, rtol=1e-12, atol=1e-12)
    assert J.num_matvecs == 32 and J.num_rmatvecs == 16


@pytest.mark.parametrize("batching", ["vmap", "loop"])
@pytest.mark.parametrize("jvp,cache", [("forward", True), ("forward", False), ("double_vjp", True)])
def test_oom_then_halves_the_row_chunk(problem, generator, monkeypatch, batching, jvp, cache):
    model, X, Y = problem
    ref = JacobianOperator.from_module(model, X, Y, jvp=jvp)
    V = torch.randn(ref.shape[1], 6, dtype=F64, generator=generator)
    W = torch.randn(ref.shape[0], 6, dtype=F64, generator=generator)
    expected_jv, expected_jtw = ref.matmat(V), ref.rmatmat(W)

    J = JacobianOperator.from_module(
        model, X, Y, jvp=jvp, cache=cache, batching=batching, batch_size=2
    )
    simulate_oom(monkeypatch, budget=12)  # one column of 10 rows fits, of 20 does not
    with pytest.warns(RuntimeWarning) as record:
        out = J.rmatmat(W)
    got = messages(record)
    if batching == "vmap":
        assert got[0] == (
            "JacobianOperator: out of memory in a batch of 2 VJP columns; retrying with 1 "
            "(batch_size is now 1)"
        )
        got = got[1:]
    assert got == [
        "JacobianOperator: out of memory in one VJP column of a row block of 40 data rows; "
        "halving the row chunk to 20 rows (2 row blocks now) and retrying",
        "JacobianOperator: out of memory in one VJP column of a row block of 20 data rows; "
        "halving the row chunk to 10 rows (4 row blocks now) and retrying",
    ]
    torch.testing.assert_close(out, expected_jtw, rtol=1e-12, atol=1e-12)
    assert J.num_blocks == 4 and J.chunk_size == 10
    assert J.row_slices == [slice(0, 10), slice(10, 20), slice(20, 30), slice(30, 40)]
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        torch.testing.assert_close(J.matmat(V), expected_jv, rtol=1e-12, atol=1e-12)
        pieces = list(J.matmat_blocks(V))
    assert [rows for rows, _ in pieces] == J.row_slices
    torch.testing.assert_close(torch.cat([p for _, p in pieces]), expected_jv)


def test_oom_split_in_the_middle_of_matmat_blocks(problem, generator, monkeypatch):
    model, X, Y = problem
    ref = JacobianOperator.from_module(model, X, Y, chunk_size=16)  # blocks 16, 16, 8
    V = torch.randn(ref.shape[1], 3, dtype=F64, generator=generator)
    expected = ref.matmat(V)
    J = JacobianOperator.from_module(model, X, Y, chunk_size=16, batching="loop")
    simulate_oom(monkeypatch, budget=12)
    with pytest.warns(RuntimeWarning, match="halving the row chunk to 8 rows"):
        pieces = list(J.matmat_blocks(V))
    assert [rows for rows, _ in pieces] == [slice(s, s + 8) for s in range(0, 40, 8)]
    torch.testing.assert_close(torch.cat([p for _, p in pieces]), expected)
    assert J.num_matvecs == 3


def test_oom_with_a_residual_fn_says_how_to_split(generator, monkeypatch):
    A = torch.randn(30, 4, dtype=F64, generator=generator)
    params = {"x": torch.randn(4, dtype=F64, generator=generator)}
    J = JacobianOperator(lambda p: torch.tanh(A @ p["x"]), params, batching="loop")
    simulate_oom(monkeypatch, budget=10)
    with pytest.raises(torch.OutOfMemoryError) as info:
        J.matvec(torch.ones(4, dtype=F64))
    assert "more row blocks" in "\n".join(getattr(info.value, "__notes__", []))


def test_only_out_of_memory_is_retried(problem, monkeypatch):
    model, X, Y = problem
    J = JacobianOperator.from_module(model, X, Y, batching="vmap", batch_size=4)

    def broken(self, i, V, groups):
        raise RuntimeError("a bug in the residual")

    monkeypatch.setattr(ForwardBackend, "matmat", broken)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with pytest.raises(RuntimeError, match="a bug in the residual"):
            J.matmat(torch.ones(J.shape[1], 4, dtype=F64))
    assert J.batch_size == 4


def test_is_out_of_memory():
    assert is_out_of_memory(torch.OutOfMemoryError("CUDA out of memory"))
    assert is_out_of_memory(
        RuntimeError("DefaultCPUAllocator: can't allocate memory: you tried to allocate 8 GB")
    )
    assert not is_out_of_memory(RuntimeError("vmap: batching rule not implemented"))
    assert not is_out_of_memory(ValueError("can't allocate memory"))
