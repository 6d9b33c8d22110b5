#!/usr/bin/env python
"""GPU benchmark of lsr_scale's CUDA kernel path (issue 4): one script, one ten-minute run.

Order: environment -> correctness of every kernel against its torch fallback (stops the
kernel timings if a check fails) -> device-copy bandwidth -> each kernel's effective bandwidth as
a fraction of that copy (kernels on and off) -> one LSMR iteration against one JVP + one VJP
(m ~ 3e6 and 1.7e7 on 16k rows; ~1e5 params on 2,000 rows), kernels on and off -> Nystrom-
preconditioned LSMR at m ~ 1.7e7, l = 300 with a float32 and a bfloat16 basis. Every section
runs in its own try/except, and the script stops starting new sections once ``--budget``
seconds are spent. It writes ``<out>.json`` and ``<out>.md`` and prints the markdown table last.

Usage::

    python bench/gpu_bench.py --out bench/results/gpu_kernels          # on a GPU machine
    python bench/gpu_bench.py --dry-run                                # anywhere: checks only
    python bench/gpu_bench.py --quick --out /tmp/gpu_quick             # small sizes, ~1 min
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import platform
import sys
import time
import traceback
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

DISABLE_ENV = "LSR_SCALE_DISABLE_CUDA_KERNELS"
TARGETS = {"bandwidth": 0.70, "lsmr_large": 1.10, "lsmr_small": 1.5, "nystrom_itn": 0.05}


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument(
        "--out",
        default=str(ROOT / "bench" / "results" / "gpu_kernels"),
        help="output path without extension (writes .json and .md)",
    )
    p.add_argument(
        "--dry-run",
        action="store_true",
        help="check imports, API names and arguments, print the plan, exit",
    )
    p.add_argument("--quick", action="store_true", help="small sizes (smoke test, ~1 min)")
    p.add_argument(
        "--budget",
        type=float,
        default=540.0,
        help="seconds after which no new section starts (default 540)",
    )
    p.add_argument(
        "--sections",
        default="all",
        help="comma list of: correctness,bandwidth,lsmr,nystrom (default all)",
    )
    p.add_argument("--dtype", default="float32", choices=["float32", "float64"])
    return p.parse_args(argv)


# ---------------------------------------------------------------------------------------------
# helpers
# ---------------------------------------------------------------------------------------------


@contextlib.contextmanager
def kernels(on: bool):
    """CUDA kernels on (the disabling variable cleared for the block) or off (in-process)."""
    from lsr_scale import cuda

    if not on:
        with cuda.disabled():
            yield
        return
    old = os.environ.pop(DISABLE_ENV, None)
    try:
        yield
    finally:
        if old is not None:
            os.environ[DISABLE_ENV] = old


def cuda_ms(fn, reps=10, warmup=2):
    """Median wall time of ``fn`` in ms, from CUDA events (one sync at the end)."""
    import torch

    for _ in range(warmup):
        fn()
    torch.cuda.synchronize()
    ev = [
        (torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True))
        for _ in range(reps)
    ]
    for s, e in ev:
        s.record()
        fn()
        e.record()
    torch.cuda.synchronize()
    t = sorted(s.elapsed_time(e) for s, e in ev)
    return t[len(t) // 2]


def wall_ms(fn, reps=3):
    import torch

    out = []
    for _ in range(reps):
        torch.cuda.synchronize()
        t0 = time.perf_counter()
        fn()
        torch.cuda.synchronize()
        out.append((time.perf_counter() - t0) * 1e3)
    return sorted(out)[len(out) // 2]


def free():
    import gc

    import torch

    gc.collect()
    torch.cuda.empty_cache()


def mlp(d_in, width, hidden, dtype, device):
    import torch

    layers, d = [], d_in
    for _ in range(hidden):
        layers += [torch.nn.Linear(d, width), torch.nn.Tanh()]
        d = width
    layers.append(torch.nn.Linear(d, 1))
    return torch.nn.Sequential(*layers).to(device=device, dtype=dtype)


def lsmr_fixed(A, b, k, M=None):
    """LSMR for exactly ``k`` iterations (stopping tests off)."""
    import lsr_scale as ls

    return ls.lsmr(A, b, atol=0.0, btol=0.0, conlim=math.inf, maxiter=k, M=M)


# ---------------------------------------------------------------------------------------------
# sections
# ---------------------------------------------------------------------------------------------


def sec_correctness(ctx):
    import torch

    from lsr_scale import cuda as K

    g = torch.Generator(device="cuda").manual_seed(0)
    dt = ctx["dtype"]
    res = {"status": K.kernel_status()}
    checks = {}
    # FWHT: bit-identical to the fallback (same butterflies, same order)
    X = torch.randn(2**15, 33, generator=g, device="cuda", dtype=dt)
    with kernels(False):
        ref = K.fwht_(X.clone())
    checks["fwht_bit_identical"] = bool(torch.equal(K.fwht_(X.clone()), ref))
    # sparse sign: bit-identical across 10 runs and to the CPU reference
    n, s, zeta, k = 50_003, 517, 8, 37
    ind = torch.randint(0, s, (n, zeta), generator=g, device="cuda")
    val = (torch.randint(0, 2, (n, zeta), generator=g, device="cuda") * 2 - 1).to(dt) / zeta**0.5
    Xs = torch.randn(n, k, generator=g, device="cuda", dtype=dt)
    outs = []
    for _ in range(10):
        o = torch.full((s, k), float("nan"), device="cuda", dtype=dt)
        outs.append(K.sparse_sign_apply(ind, val, Xs, s, out=o).clone())
    cpu = K.sparse_sign_apply(ind.cpu(), val.cpu(), Xs.cpu(), s)
    checks["sparse_sign_10_runs_identical"] = all(bool(torch.equal(o, outs[0])) for o in outs)
    checks["sparse_sign_equals_cpu_bits"] = bool(torch.equal(outs[0].cpu(), cpu))
    Y = torch.randn(s, k, generator=g, device="cuda", dtype=dt)
    with kernels(False):
        reft = K.sparse_sign_apply_t(ind, val, Y)
    checks["sparse_sign_t_bit_identical"] = bool(
        torch.equal(K.sparse_sign_apply_t(ind, val, Y), reft)
    )
    # low-rank apply, bf16 and working-dtype storage
    m, l = 200_003, 300
    U = torch.linalg.qr(torch.randn(m, l, generator=g, device="cuda", dtype=dt)).Q
    d = torch.rand(l, generator=g, device="cuda", dtype=dt) + 0.5
    y = torch.randn(m, generator=g, device="cuda", dtype=dt)
    for name, Us in (("lowrank_bf16", U.to(torch.bfloat16)), ("lowrank_same", U)):
        with kernels(False):
            r = K.lowrank_apply(Us, d, 0.3, y)
        o = K.lowrank_apply(Us, d, 0.3, y, out=torch.full_like(y, float("nan")))
        err = float((o - r).norm() / r.norm())
        checks[name + "_relerr"] = err
        checks[name + "_ok"] = err <= (1e-5 if dt == torch.float32 else 1e-12)
    # fused LSMR update: bit-identical vectors
    vecs = [torch.randn(1_000_003, generator=g, device="cuda", dtype=dt) for _ in range(4)]
    co = [torch.tensor(q, device="cuda", dtype=dt) for q in (0.3, -1.7, 0.9)]
    a = [v.clone() for v in vecs]
    b = [v.clone() for v in vecs]
    with kernels(False):
        K.lsmr_update_(*a, *co)
    K.lsmr_update_(*b, *co)
    checks["lsmr_update_bit_identical"] = all(bool(torch.equal(p, q)) for p, q in zip(a, b))
    res["checks"] = checks
    res["all_ok"] = all(v for key, v in checks.items() if not key.endswith("_relerr"))
    ctx["correct"] = res["all_ok"]
    return res


def sec_bandwidth(ctx):
    import torch

    from lsr_scale import cuda as K

    dt = ctx["dtype"]
    es = torch.tensor([], dtype=dt).element_size()
    q = ctx["quick"]
    g = torch.Generator(device="cuda").manual_seed(1)
    out = {}
    # device-to-device copy
    N = (1 << 24) if q else (1 << 28)
    src = torch.empty(N, dtype=torch.float32, device="cuda").normal_(generator=g)
    dst = torch.empty_like(src)
    t = cuda_ms(lambda: dst.copy_(src))
    copy_bw = 2 * src.numel() * 4 / t / 1e6  # GB/s
    out["copy"] = {"GBps": copy_bw, "ms": t, "bytes": 2 * src.numel() * 4}
    src = dst = None  # release before the next case
    free()

    def rec(name, bytes_, fn_on, fn_off, note=""):
        with kernels(True):
            t_on = cuda_ms(fn_on)
        with kernels(False):
            t_off = cuda_ms(fn_off)
        bw = bytes_ / t_on / 1e6
        out[name] = {
            "ms_kernel": t_on,
            "ms_torch": t_off,
            "GBps": bw,
            "fraction_of_copy": bw / copy_bw,
            "speedup": t_off / t_on,
            "bytes": bytes_,
            "note": note,
        }

    # FWHT (zeros: timing does not depend on the values; repeated transforms would overflow)
    n, k = ((1 << 16), 16) if q else ((1 << 22), 16)
    X = torch.zeros(n, k, dtype=dt, device="cuda")
    rec(
        f"fwht n={n} k={k}",
        2 * X.numel() * es,
        lambda: K.fwht_(X),
        lambda: K.fwht_(X),
        "bytes = read + write X once",
    )
    X = None  # release before the next case
    free()
    # sparse sign, X resident in L2 and X much larger than L2
    for n, k, s, zeta in (
        [(1 << 14, 64, 1024, 8)] if q else [(1 << 16, 128, 4096, 8), (1 << 20, 64, 4096, 8)]
    ):
        ind = torch.randint(0, s, (n, zeta), generator=g, device="cuda")
        val = (torch.randint(0, 2, (n, zeta), generator=g, device="cuda") * 2 - 1).to(dt)
        X = torch.randn(n, k, generator=g, device="cuda", dtype=dt)
        csr = K.sparse_sign_csr(ind, val, s, dt)
        byt = X.numel() * es + s * k * es + csr.col.numel() * (4 + es) + (s + 1) * 8
        rec(
            f"sparse_sign S@X n={n} k={k} s={s} zeta={zeta}",
            byt,
            lambda: K.sparse_sign_apply(ind, val, X, s, csr=csr),  # noqa: B023
            lambda: K.sparse_sign_apply(ind, val, X, s, csr=csr),  # noqa: B023
            "bytes = X once + out + CSR; torch = deterministic padded gather",
        )

        # non-deterministic torch index_add_ (atomics), for reference
        def idx_add():
            o = X.new_zeros((s, k))  # noqa: B023
            for t in range(zeta):  # noqa: B023
                o.index_add_(0, ind[:, t], val[:, t, None] * X)  # noqa: B023
            return o

        out[f"sparse_sign S@X n={n} k={k} s={s} zeta={zeta}"]["ms_torch_index_add"] = cuda_ms(
            idx_add
        )
        Y = torch.randn(s, k, generator=g, device="cuda", dtype=dt)
        byt_t = n * k * es + s * k * es + n * zeta * (8 + es)
        rec(
            f"sparse_sign S^T@Y n={n} k={k} s={s} zeta={zeta}",
            byt_t,
            lambda: K.sparse_sign_apply_t(ind, val, Y),  # noqa: B023
            lambda: K.sparse_sign_apply_t(ind, val, Y),  # noqa: B023
            "bytes = out + Y once + indices/values",
        )
        ind = val = X = Y = csr = None  # release before the next case
        free()
    # low-rank preconditioner apply
    m, l = (200_000, 300) if q else (4_000_000, 300)
    U32 = torch.linalg.qr(torch.randn(m, l, generator=g, device="cuda", dtype=dt)).Q
    d = torch.rand(l, generator=g, device="cuda", dtype=dt) + 0.5
    y = torch.randn(m, generator=g, device="cuda", dtype=dt)
    for sname, Us in (("bf16", U32.to(torch.bfloat16)), (str(dt).split(".")[-1], U32)):
        byt = 2 * Us.numel() * Us.element_size() + 3 * m * es
        rec(
            f"lowrank m={m} l={l} U={sname}",
            byt,
            lambda: K.lowrank_apply(Us, d, 0.5, y),  # noqa: B023
            lambda: K.lowrank_apply(Us, d, 0.5, y),  # noqa: B023
            "bytes = U twice + y twice + out",
        )
    U32 = Us = d = y = None  # release before the next case
    free()
    # fused LSMR update
    m = (1 << 20) if q else 17_000_000
    vs = [torch.randn(m, generator=g, device="cuda", dtype=dt) for _ in range(4)]
    co = [torch.tensor(v, device="cuda", dtype=dt) for v in (0.9, 1e-3, 0.5)]
    rec(
        f"lsmr_update m={m}",
        7 * m * es,
        lambda: K.lsmr_update_(*vs, *co),
        lambda: K.lsmr_update_(*vs, *co),
        "bytes = 4 reads + 3 writes",
    )
    sq = torch.zeros((), device="cuda", dtype=dt)
    rec(
        f"lsmr_update+normx m={m}",
        7 * m * es,
        lambda: K.lsmr_update_(*vs, *co, sqnorm_x=sq),
        lambda: K.lsmr_update_(*vs, *co, sqnorm_x=sq),
        "with ||x||^2 fused",
    )
    vs = None  # release before the next case
    free()
    return out


def _lsmr_case(ctx, name, width, hidden, rows, iters):
    import torch

    import lsr_scale as ls

    dt = ctx["dtype"]
    g = torch.Generator(device="cuda").manual_seed(2)
    torch.manual_seed(2)
    model = mlp(8, width, hidden, dt, "cuda")
    X = torch.randn(rows, 8, generator=g, device="cuda", dtype=dt)
    Y = torch.randn(rows, 1, generator=g, device="cuda", dtype=dt)
    A = ls.JacobianOperator.from_module(model, X, Y)
    m = A.shape[1]
    v = torch.randn(m, generator=g, device="cuda", dtype=dt)
    u = torch.randn(A.shape[0], generator=g, device="cuda", dtype=dt)
    b = torch.randn(A.shape[0], generator=g, device="cuda", dtype=dt)
    t_pair = cuda_ms(lambda: (A.matvec(v), A.rmatvec(u)), reps=10)
    row = {"params": m, "rows": rows, "ms_jvp_plus_vjp": t_pair}
    n1, n2 = iters

    def solve(k):
        return lsmr_fixed(A, b, k)

    for on in (True, False):
        with kernels(on):
            solve(n1)  # warm-up (compiles, caches)
            r1 = solve(n1)
            t1 = wall_ms(lambda: solve(n1))  # noqa: B023
            r2 = solve(n2)
            t2 = wall_ms(lambda: solve(n2))  # noqa: B023
        it = max(1, int(r2.itn) - int(r1.itn))
        per = (t2 - t1) / it
        key = "on" if on else "off"
        row[f"ms_per_iter_kernels_{key}"] = per
        row[f"ratio_kernels_{key}"] = per / t_pair
        row[f"itn_{key}"] = [int(r1.itn), int(r2.itn)]
    row["graph_capture"] = "not implemented (see docs/gpu.md)"
    model = A = None  # release before the next case
    free()
    return row


def sec_lsmr(ctx):
    q = ctx["quick"]
    cases = (
        [
            ("small ~1e5 params, 2k rows", 220, 3, 2000, (10, 60)),
            ("m~3e6, 4k rows (quick)", 1250, 3, 4096, (3, 13)),
        ]
        if q
        else [
            ("small ~1e5 params, 2k rows", 220, 3, 2000, (20, 220)),
            ("m~3e6, 16k rows", 1250, 3, 16384, (5, 25)),
            ("m~1.7e7, 16k rows", 2900, 3, 16384, (3, 13)),
        ]
    )
    out = {}
    for name, w, h, rows, iters in cases:
        try:
            out[name] = _lsmr_case(ctx, name, w, h, rows, iters)
        except Exception as exc:  # keep the other cases
            out[name] = {
                "error": f"{type(exc).__name__}: {exc}",
                "traceback": traceback.format_exc(limit=4),
            }
            free()
    return out


def sec_nystrom(ctx):
    import torch

    import lsr_scale as ls

    dt = ctx["dtype"]
    q = ctx["quick"]
    width, rows, rank = (400, 2048, 50) if q else (2900, 16384, 300)
    g = torch.Generator(device="cuda").manual_seed(3)
    torch.manual_seed(3)
    model = mlp(8, width, 3, dt, "cuda")
    X = torch.randn(rows, 8, generator=g, device="cuda", dtype=dt)
    Y = torch.sin(X.sum(dim=1, keepdim=True))
    A = ls.JacobianOperator.from_module(model, X, Y, batch_size=8)
    b = -(model(X) - Y).detach().reshape(-1)
    out = {"params": A.shape[1], "rows": rows, "rank": rank}
    for name, bd in (("float32", None), ("bfloat16", torch.bfloat16)):
        row = {}
        try:
            torch.cuda.reset_peak_memory_stats()
            t0 = time.perf_counter()
            gen = torch.Generator(device="cuda").manual_seed(4)
            P = ls.precond.NystromPreconditioner(A, rank, basis_dtype=bd, generator=gen)
            torch.cuda.synchronize()
            row["build_s"] = time.perf_counter() - t0
            row["rank_full_precision"] = getattr(P, "rank_full_precision", None)
            t_apply = cuda_ms(
                lambda: P.matvec(  # noqa: B023
                    torch.ones(
                        A.shape[1],
                        device="cuda",  # noqa: B023
                        dtype=dt,
                    )
                ),
                reps=5,
            )
            row["ms_precond_apply"] = t_apply
            res = ls.lsmr(A, b, M=P, atol=1e-6, btol=1e-6, maxiter=200)
            torch.cuda.synchronize()
            t1 = wall_ms(lambda: lsmr_fixed(A, b, 5, M=P), reps=1)  # noqa: B023
            t2 = wall_ms(lambda: lsmr_fixed(A, b, 15, M=P), reps=1)  # noqa: B023
            row["ms_per_iter"] = (t2 - t1) / 10
            row["itn_to_1e-6"] = int(res.itn)
            row["istop"] = int(res.istop)
            row["peak_GB"] = torch.cuda.max_memory_allocated() / 1e9
            P = None  # release before the next case
        except Exception as exc:
            row["error"] = f"{type(exc).__name__}: {exc}"
            row["traceback"] = traceback.format_exc(limit=4)
        free()
        out[name] = row
    try:
        a, c = out["float32"]["itn_to_1e-6"], out["bfloat16"]["itn_to_1e-6"]
        out["itn_change"] = abs(c - a) / max(a, 1)
    except Exception:
        pass
    return out


SECTIONS = {
    "correctness": sec_correctness,
    "bandwidth": sec_bandwidth,
    "lsmr": sec_lsmr,
    "nystrom": sec_nystrom,
}


# ---------------------------------------------------------------------------------------------
# report
# ---------------------------------------------------------------------------------------------


def _f(x, fmt="{:.3g}"):
    if isinstance(x, bool) or not isinstance(x, (int, float)):
        return str(x)
    return fmt.format(x)


def markdown(res) -> str:
    L = [
        f"# GPU kernel benchmark ({res.get('device', '?')})",
        "",
        f"- date: {res.get('date')}; torch {res.get('torch')}; cupy {res.get('cupy')}; "
        f"dtype {res.get('dtype')}; quick={res.get('quick')}",
        f"- kernel status: {res.get('kernel_status')}",
        "",
    ]
    sec = res.get("sections", {})
    c = sec.get("correctness", {})
    if c:
        L += ["## Correctness", "", "| check | result |", "|---|---|"]
        L += [f"| {k} | {_f(v)} |" for k, v in c.get("checks", {}).items()]
        if "error" in c:
            L.append(f"| error | {c['error']} |")
        L.append("")
    bw = sec.get("bandwidth", {})
    if bw:
        cp = bw.get("copy", {})
        L += [
            "## Effective bandwidth (fraction of a device copy in the same run; target >= 70% "
            "for sketch and preconditioner kernels)",
            "",
            f"device copy: {_f(cp.get('GBps'), '{:.0f}')} GB/s",
            "",
            "| kernel | ms (kernel) | ms (torch) | speed-up | GB/s | of copy |",
            "|---|---|---|---|---|---|",
        ]
        for k, v in bw.items():
            if k == "copy" or not isinstance(v, dict) or "ms_kernel" not in v:
                continue
            L.append(
                f"| {k} | {_f(v['ms_kernel'])} | {_f(v['ms_torch'])} | "
                f"{_f(v['speedup'], '{:.2f}')} | {_f(v['GBps'], '{:.0f}')} | "
                f"{_f(100 * v['fraction_of_copy'], '{:.0f}')}% |"
            )
        if "error" in bw:
            L.append(f"\nerror: {bw['error']}")
        L.append("")
    ls_ = sec.get("lsmr", {})
    if ls_:
        L += [
            "## One LSMR iteration / (one JVP + one VJP) (targets: <= 1.10 large, <= 1.5 small)",
            "",
            "| case | params | JVP+VJP ms | iter ms (on) | ratio (on) | iter ms (off) | "
            "ratio (off) |",
            "|---|---|---|---|---|---|---|",
        ]
        for k, v in ls_.items():
            if not isinstance(v, dict):
                continue
            if "error" in v:
                L.append(f"| {k} | error: {v['error']} | | | | | |")
                continue
            L.append(
                f"| {k} | {v['params']} | {_f(v['ms_jvp_plus_vjp'])} | "
                f"{_f(v['ms_per_iter_kernels_on'])} | {_f(v['ratio_kernels_on'], '{:.2f}')} | "
                f"{_f(v['ms_per_iter_kernels_off'])} | "
                f"{_f(v['ratio_kernels_off'], '{:.2f}')} |"
            )
        L.append("")
    ny = sec.get("nystrom", {})
    if ny:
        L += [
            f"## Nystrom-preconditioned LSMR (m={ny.get('params')}, l={ny.get('rank')}, "
            f"{ny.get('rows')} rows)",
            "",
            "| basis | build s | apply ms | ms/iter | itn to 1e-6 | peak GB |",
            "|---|---|---|---|---|---|",
        ]
        for k in ("float32", "bfloat16"):
            v = ny.get(k, {})
            if "error" in v:
                L.append(f"| {k} | error: {v['error']} | | | | |")
            elif v:
                L.append(
                    f"| {k} | {_f(v.get('build_s'))} | {_f(v.get('ms_precond_apply'))} | "
                    f"{_f(v.get('ms_per_iter'))} | {v.get('itn_to_1e-6')} | "
                    f"{_f(v.get('peak_GB'))} |"
                )
        if "itn_change" in ny:
            L.append(
                f"\niteration-count change bf16 vs fp32: {100 * ny['itn_change']:.1f}% "
                f"(target <= 5%)"
            )
        if "error" in ny:
            L.append(f"\nerror: {ny['error']}")
        L.append("")
    for k, v in sec.items():
        if isinstance(v, dict) and v.get("skipped"):
            L.append(f"- section {k} skipped: {v['skipped']}")
    return "\n".join(L) + "\n"


def dry_run(args) -> int:
    import torch

    import lsr_scale as ls
    from lsr_scale import cuda as K
    from lsr_scale.cuda._loader import kernel_dir

    need = {
        "lsr_scale.lsmr": getattr(ls, "lsmr", None),
        "lsr_scale.JacobianOperator.from_module": getattr(
            getattr(ls, "JacobianOperator", None), "from_module", None
        ),
        "lsr_scale.precond.NystromPreconditioner": getattr(
            getattr(ls, "precond", None), "NystromPreconditioner", None
        ),
        "kernels": [
            K.fwht_,
            K.sparse_sign_apply,
            K.sparse_sign_apply_t,
            K.lowrank_apply,
            K.lsmr_update_,
        ],
    }
    missing = [k for k, v in need.items() if v is None]
    print(
        f"dry run: sections {args.sections}, out {args.out}, budget {args.budget}s, "
        f"quick={args.quick}, dtype={args.dtype}"
    )
    print(f"kernel sources: {kernel_dir()}")
    print(f"CUDA available: {torch.cuda.is_available()}")
    if missing:
        print(f"missing API: {missing}")
        return 1
    print("imports and API names OK")
    return 0


def main(argv=None) -> int:
    args = parse_args(argv)
    wanted = list(SECTIONS) if args.sections == "all" else args.sections.split(",")
    bad = [s for s in wanted if s not in SECTIONS]
    if bad:
        print(f"unknown sections {bad}; choose from {list(SECTIONS)}", file=sys.stderr)
        return 2
    if args.dry_run:
        return dry_run(args)
    import torch

    if not torch.cuda.is_available():
        print(
            "no CUDA device: this benchmark needs a GPU (use --dry-run to check the setup)",
            file=sys.stderr,
        )
        return 2
    import lsr_scale
    from lsr_scale import cuda as K

    t_start = time.perf_counter()
    try:
        import cupy

        cupy_v = cupy.__version__
    except Exception as exc:
        cupy_v = f"unavailable ({exc})"
    res = {
        "date": time.strftime("%Y-%m-%d %H:%M:%S"),
        "device": torch.cuda.get_device_name(),
        "host": platform.node(),
        "torch": torch.__version__,
        "torch_cuda": torch.version.cuda,
        "cupy": cupy_v,
        "lsr_scale": lsr_scale.__version__,
        "dtype": args.dtype,
        "quick": args.quick,
        "kernel_status": K.kernel_status(),
        "sections": {},
    }
    ctx = {"dtype": getattr(torch, args.dtype), "quick": args.quick, "correct": True}
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    for name in wanted:
        spent = time.perf_counter() - t_start
        if spent > args.budget:
            res["sections"][name] = {"skipped": f"time budget spent ({spent:.0f}s)"}
            continue
        if name == "bandwidth" and not ctx["correct"]:
            res["sections"][name] = {"skipped": "correctness checks failed"}
            continue
        print(f"[{spent:6.1f}s] {name} ...", flush=True)
        t0 = time.perf_counter()
        try:
            res["sections"][name] = SECTIONS[name](ctx)
        except Exception as exc:
            res["sections"][name] = {
                "error": f"{type(exc).__name__}: {exc}",
                "traceback": traceback.format_exc(limit=6),
            }
            free()
        res["sections"][name]["seconds"] = time.perf_counter() - t0
        # write after every section so a time-out keeps what was measured
        Path(f"{out}.json").write_text(json.dumps(res, indent=2, default=str))
    md = markdown(res)
    Path(f"{out}.md").write_text(md)
    Path(f"{out}.json").write_text(json.dumps(res, indent=2, default=str))
    print(f"[{time.perf_counter() - t_start:6.1f}s] wrote {out}.json and {out}.md\n")
    print(md)
    return 0


if __name__ == "__main__":
    sys.exit(main())
