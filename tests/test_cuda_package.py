"""lsr_scale.cuda as a package: the registry against the .cu sources, the switch, the loader.

Runs on any machine: a GPU is never needed. Where a test needs the CUDA path to look available,
the ``fake_available`` fixture fills a fresh loader cache with a stand-in CuPy and compiled
modules (nothing is launched).
"""

from __future__ import annotations

import ast
import os
import re
import subprocess
import sys
import threading
import warnings
from pathlib import Path

import pytest
import torch

from lsr_scale import cuda as K
from lsr_scale.cuda import _loader, _registry, _switch, fwht, lowrank, sparse_sign

KERNEL_DIR = Path(__file__).resolve().parent.parent / "kernels"
CU_FILES = sorted(KERNEL_DIR.glob("*.cu"))


# ---------------------------------------------------------------------------------------------
# registry: the single source of entry-point names
# ---------------------------------------------------------------------------------------------

_GLOBAL = r'extern\s+"C"\s+__global__\s+void\s+'


def _cu_entries(path: Path) -> set[str]:
    """The ``extern "C" __global__`` names a .cu file defines, with its macros expanded.

    Direct definitions are read as they are; a ``#define M(P, ...)`` whose body defines
    ``prefix##P`` entries is expanded at each ``M(arg, ...)`` invocation.
    """
    text = re.sub(r"/\*.*?\*/", " ", path.read_text(), flags=re.S)
    text = re.sub(r"//[^\n]*", "", text).replace("\\\n", " ")
    names = set(re.findall(_GLOBAL + r"(\w+)\s*\(", text))
    for macro, params, body in re.findall(
        r"^[ \t]*#[ \t]*define[ \t]+(\w+)\(([^)]*)\)(.*)$", text, re.M
    ):
        templates = re.findall(_GLOBAL + r"([\w#]+)\s*\(", body)
        if not templates:
            continue
        params = [p.strip() for p in params.split(",")]
        calls = re.findall(rf"^[ \t]*{macro}\(([^)]*)\)", text, re.M)
        assert calls, f"{path.name}: macro {macro} defines entries but is never used"
        for call in calls:
            args = dict(zip(params, (a.strip() for a in call.split(","))))
            for tpl in templates:
                tokens = re.split(r"(\w+)", tpl)
                names.add("".join(args.get(t, t) for t in tokens).replace("##", ""))
    return names


def test_cu_parser_expands_macros(tmp_path):
    src = tmp_path / "k.cu"
    src.write_text(
        'extern "C" __global__ void plain_f32(float* x) {}\n'
        '// extern "C" __global__ void commented_out(float* x) {}\n'
        "#define TWO(NAME, T) \\\n"
        '    extern "C" __global__ void a_##NAME(T* x) {} \\\n'
        '    extern "C" __global__ void b_##NAME(T* x) {}\n'
        "TWO(f32, float)\nTWO(f64, double)\n"
    )
    assert _cu_entries(src) == {"plain_f32", "a_f32", "b_f32", "a_f64", "b_f64"}


def test_registry_is_the_source_of_entry_names():
    """Every entry a .cu file defines is registered, and every registered entry is defined."""
    assert set(_registry.ENTRIES) == {p.name for p in CU_FILES}
    for p in CU_FILES:
        defined = _cu_entries(p)
        registered = _registry.names(p.name)
        assert defined == registered, (
            f"{p.name}: defined but not registered {sorted(defined - registered)}, "
            f"registered but not defined {sorted(registered - defined)}"
        )
    assert set(_registry.KERNELS.values()) <= set(_registry.ENTRIES)
    assert _registry.names() == set().union(*(_registry.names(p.name) for p in CU_FILES))


def test_registry_entry_lookup():
    f32, f64, bf16, f16 = torch.float32, torch.float64, torch.bfloat16, torch.float16
    assert _registry.entry("fwht_pass", f64) == ("fwht.cu", "fwht_pass_f64")
    assert _registry.entry("sparse_sign_t", f32) == ("sparse_sign.cu", "sparse_sign_t_f32")
    assert _registry.entry("lowrank_zt", f32, store=bf16, paired=True).name == (
        "lowrank_zt_bf16x2_f32"
    )
    assert _registry.entry("lowrank_apply", f64, store=f16).name == "lowrank_apply_f16_f64"
    assert _registry.entry("lowrank_apply", f64, store=f64).name == "lowrank_apply_f64_f64"
    assert _registry.entry("lsmr_sqnorm_finish", f32).source == "lsmr_update.cu"
    with pytest.raises(ValueError, match="expected an operation in"):
        _registry.entry("fwht", f32)
    with pytest.raises(ValueError, match="expected a dtype in"):
        _registry.entry("fwht_pass", f16)
    with pytest.raises(ValueError, match="expected a storage dtype in"):
        _registry.entry("lowrank_zt", f32, store=f64)
    with pytest.raises(ValueError, match="expected a variant of 'lowrank_zt'"):
        _registry.entry("lowrank_zt", f32, store=f32, paired=True)
    with pytest.raises(ValueError, match="expected a source in"):
        _registry.names("nope.cu")
    with pytest.raises(ValueError, match="expected a kernel in"):
        _registry.status("nope")


def test_launch_sites_ask_the_registry():
    """No module but the registry spells an entry name or concatenates one from a prefix."""

    entries = _registry.names()

    def builds_entry(node) -> bool:
        v = node.value if isinstance(node, ast.Constant) else None
        return isinstance(v, str) and v != "" and any(e.startswith(v) for e in entries)

    pkg = Path(K.__file__).parent
    for path in sorted(pkg.glob("*.py")):
        if path.name == "_registry.py":
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Constant) and isinstance(node.value, str):
                assert node.value not in entries, f"{path.name} spells entry {node.value!r}"
            parts = []
            if isinstance(node, ast.JoinedStr):  # f"fwht_pass_{sfx}"
                parts = node.values
            elif isinstance(node, ast.BinOp) and isinstance(node.op, (ast.Add, ast.Mod)):
                parts = [node.left, node.right]  # "fwht_pass_" + sfx, "%s" % ...
            elif isinstance(node, ast.Call) and getattr(node.func, "attr", "") == "format":
                parts = [node.func.value]  # "fwht_pass_{}".format(sfx)
            for part in parts:
                if isinstance(part, ast.Constant) and isinstance(part.value, str):
                    head = part.value.split("{")[0]
                    assert not (head and builds_entry(ast.Constant(head))), (
                        f"{path.name}:{node.lineno} builds an entry name from {part.value!r}"
                    )


# ---------------------------------------------------------------------------------------------
# the switch: environment variable and disabled()
# ---------------------------------------------------------------------------------------------


class FakeCupy:
    __version__ = "0-test"


@pytest.fixture
def fresh_cache(monkeypatch):
    """An empty cache for the test (the process-wide one is left as it was)."""
    cache = _loader.Cache()
    monkeypatch.setattr(_loader, "CACHE", cache)
    monkeypatch.delenv(K.DISABLE_ENV, raising=False)
    return cache


@pytest.fixture
def fake_available(fresh_cache):
    """Pretend CuPy imported and every source compiled on device 0 (nothing is launched)."""
    fresh_cache.put(("cupy",), (FakeCupy(), None))
    for src in _registry.ENTRIES:
        fresh_cache.put(("module", src, 0), object())
    return torch.device("cuda", 0)


def test_fake_available_path_is_taken(fake_available):
    assert K.enabled()
    assert all(_registry.use_cuda_device(k, fake_available) for k in _registry.KERNELS)
    assert set(K.kernel_status(fake_available).values()) == {"cuda"}


def test_disabled_switches_off_and_restores(fake_available):
    dev = fake_available
    off = "torch (lsr_scale.cuda.disabled())"
    with K.disabled():
        assert not K.enabled()
        assert not _registry.use_cuda_device("fwht", dev)
        assert set(K.kernel_status(dev).values()) == {off}
        with K.disabled():  # nested
            assert not _registry.use_cuda_device("lowrank", dev)
        assert not K.enabled()  # still inside the outer block
        assert not _registry.use_cuda_device("lowrank", dev)
    assert K.enabled() and _registry.use_cuda_device("fwht", dev)
    with pytest.raises(RuntimeError, match="inside"):
        with K.disabled():
            raise RuntimeError("inside")
    assert K.enabled() and set(K.kernel_status(dev).values()) == {"cuda"}

    @K.disabled()
    def decorated():
        return _registry.use_cuda_device("lsmr_update", dev)

    assert decorated() is False and K.enabled()


def test_disabled_is_thread_safe_and_process_wide(fake_available):
    inside, release = threading.Event(), threading.Event()

    def hold():
        with K.disabled():
            inside.set()
            release.wait(30)

    t = threading.Thread(target=hold)
    t.start()
    try:
        assert inside.wait(30)
        assert not K.enabled()  # another thread's block switches this thread off too
        assert not _registry.use_cuda_device("fwht", fake_available)
    finally:
        release.set()
        t.join(30)
    assert K.enabled()

    def churn():
        for _ in range(300):
            with K.disabled():
                with K.disabled():
                    pass

    workers = [threading.Thread(target=churn) for _ in range(8)]
    for w in workers:
        w.start()
    for w in workers:
        w.join(60)
    assert _switch._depth == 0 and K.enabled()


def test_disabled_cpu_results_unchanged(generator):
    X = torch.randn(16, 3, generator=generator, dtype=torch.float64)
    ref = K.fwht_(X.clone())
    with K.disabled():
        assert torch.equal(K.fwht_(X.clone()), ref)


@pytest.mark.parametrize("value", ["1", "true", "YES", " on "])
def test_env_var_values_that_disable(value, fake_available, monkeypatch):
    monkeypatch.setenv(K.DISABLE_ENV, value)
    assert not K.enabled()
    assert _switch.disabled_reason() == f"{K.DISABLE_ENV}=1"
    assert not _registry.use_cuda_device("fwht", fake_available)
    with K.disabled():  # the variable's reason wins while both are active
        assert _switch.disabled_reason() == f"{K.DISABLE_ENV}=1"
    monkeypatch.delenv(K.DISABLE_ENV)  # read at each decision: takes effect at once
    assert K.enabled() and _registry.use_cuda_device("fwht", fake_available)


@pytest.mark.parametrize("value", ["", "0", "no", "off"])
def test_env_var_values_that_keep_it_on(value, fake_available, monkeypatch):
    monkeypatch.setenv(K.DISABLE_ENV, value)
    assert K.enabled() and _registry.use_cuda_device("fwht", fake_available)


def test_env_var_forces_torch_path(monkeypatch, capsys):
    monkeypatch.setenv(K.DISABLE_ENV, "1")
    status = K.kernel_status()
    assert set(status) == set(_registry.KERNELS)
    assert all(v == f"torch ({K.DISABLE_ENV}=1)" for v in status.values())
    assert not _registry.use_cuda_device("fwht", torch.device("cuda", 0))
    text = K.show_config()
    assert f"torch ({K.DISABLE_ENV}=1)" in text and "torch " in text
    assert "fwht" in capsys.readouterr().out
    import lsr_scale

    assert lsr_scale.show_config is K.show_config
    assert lsr_scale.cuda is K
    assert f"lsr_scale {lsr_scale.__version__}" in text


def test_env_var_set_at_process_start():
    code = (
        "import sys, lsr_scale.cuda as c; "
        "print(c.enabled(), set(c.kernel_status().values()), 'cupy' in sys.modules)"
    )
    env = {**os.environ, K.DISABLE_ENV: "1"}
    proc = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=120, env=env
    )
    assert proc.returncode == 0, proc.stderr
    out = proc.stdout.strip().splitlines()[-1]
    assert out == f"False {{'torch ({K.DISABLE_ENV}=1)'}} False"


# ---------------------------------------------------------------------------------------------
# loader: one cache, fallback warnings
# ---------------------------------------------------------------------------------------------


def test_cache_builds_once_under_contention():
    cache = _loader.Cache()
    calls = []
    start = threading.Barrier(8)

    def make():
        calls.append(1)
        return object()

    got = []

    def worker():
        start.wait(30)
        got.append(cache.get_or_make(("k",), make))

    threads = [threading.Thread(target=worker) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert len(calls) == 1 and len({id(g) for g in got}) == 1

    def fail():
        raise OSError("no")

    with pytest.raises(OSError):
        cache.get_or_make(("bad",), fail)
    assert cache.get(("bad",)) is None  # failures are not cached
    assert cache.first("w") and not cache.first("w")
    for i in range(5):
        cache.lru_put("t", i, i * 10, maxsize=3)
    assert cache.lru_get("t", 0) is None and cache.lru_get("t", 4) == 40
    cache.clear()
    assert cache.get(("k",)) is None


def test_csr_form_is_cached_in_the_one_cache(fresh_cache, generator):
    indices = torch.randint(0, 7, (30, 3), generator=generator)
    values = (torch.randint(0, 2, (30, 3), generator=generator) * 2 - 1).double()
    a = sparse_sign._cached_csr(indices, values, 7, torch.float64)
    assert sparse_sign._cached_csr(indices, values, 7, torch.float64) is a
    assert fresh_cache.get(("lru", "csr")) is not None
    values.mul_(2)  # modified in place: rebuilt
    b = sparse_sign._cached_csr(indices, values, 7, torch.float64)
    assert b is not a and torch.equal(b.val, a.val * 2)


def test_fallback_warns_once_when_cupy_missing(fresh_cache):
    fresh_cache.put(("cupy",), (None, "cupy not available (test)"))
    dev = torch.device("cuda", 0)
    with warnings.catch_warnings(record=True) as rec:
        warnings.simplefilter("always")
        assert not _registry.use_cuda_device("fwht", dev)
        assert not _registry.use_cuda_device("lowrank", dev)
        assert not _registry.use_cuda_device("fwht", dev)
    msgs = [str(w.message) for w in rec if issubclass(w.category, RuntimeWarning)]
    assert len(msgs) == 1 and "cupy not available (test)" in msgs[0]


def test_fallback_warns_once_per_source_on_compile_failure(fresh_cache):
    fresh_cache.put(("cupy",), (FakeCupy(), None))
    for src in _registry.ENTRIES:
        fresh_cache.put(("module", src, 0), RuntimeError("nvrtc: boom"))
    dev = torch.device("cuda", 0)
    with warnings.catch_warnings(record=True) as rec:
        warnings.simplefilter("always")
        for _ in range(3):
            assert not _registry.use_cuda_device("sparse_sign", dev)
            assert not _registry.use_cuda_device("sparse_sign_t", dev)  # same source: no new one
            assert not _registry.use_cuda_device("fwht", dev)
    msgs = [str(w.message) for w in rec if issubclass(w.category, RuntimeWarning)]
    assert len(msgs) == 2 and all("compile failed" in m and "boom" in m for m in msgs)
    ok, reason = _registry.status("lsmr_update", dev)
    assert not ok and reason.startswith("compile failed (RuntimeError: nvrtc: boom")
    with pytest.raises(RuntimeError, match="boom"):  # a launch would re-raise, not recompile
        _loader.function(_registry.entry("fwht_pass", torch.float32), 0)


def test_cpu_tensors_never_touch_cupy(monkeypatch):
    def boom(*args):
        raise AssertionError("cupy must not be imported for CPU tensors")

    monkeypatch.setattr(_loader, "cupy", boom)
    monkeypatch.setattr(_loader, "module", boom)
    monkeypatch.delenv(K.DISABLE_ENV, raising=False)
    K.fwht_(torch.randn(8, 2))
    ind = torch.zeros(4, 1, dtype=torch.long)
    K.sparse_sign_apply(ind, torch.ones(4, 1), torch.randn(4, 2), 2)
    K.sparse_sign_apply_t(ind, torch.ones(4, 1), torch.randn(2, 2))
    K.lowrank_apply(torch.eye(4)[:, :2], torch.ones(2), 1.0, torch.randn(4))
    K.lowrank_project(torch.eye(4)[:, :2], torch.randn(4))
    K.lowrank_expand(torch.eye(4)[:, :2], torch.ones(2), 1.0, torch.randn(4))
    K.lsmr_update_(*(torch.randn(3) for _ in range(4)), 1.0, 1.0, 1.0)


def test_public_names():
    assert set(K.__all__) == {
        "fwht_",
        "sparse_sign_apply",
        "sparse_sign_apply_t",
        "sparse_sign_csr",
        "SparseSignCSR",
        "lowrank_apply",
        "lowrank_project",
        "lowrank_expand",
        "lsmr_update_",
        "disabled",
        "enabled",
        "kernel_status",
        "show_config",
        "DISABLE_ENV",
    }
    assert all(hasattr(K, n) for n in K.__all__)
    for mod in (_loader, _registry, _switch, fwht, lowrank, sparse_sign, K.lsmr_update):
        assert len(Path(mod.__file__).read_text().splitlines()) <= 600, mod.__name__
