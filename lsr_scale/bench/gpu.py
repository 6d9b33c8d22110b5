"""``lsr-scale bench gpu``: every GPU check in one command (target: 8 minutes on one H100).

Steps, in order, each in its own ``try`` (a failure is recorded and the next step runs), none
started once ``--budget`` seconds are spent:

1. ``cuda-tests``: ``pytest -m cuda`` over the source checkout's ``tests/`` (when present);
2. ``kernels``: each CUDA kernel against its torch fallback (bit-identity where promised,
   sparse-sign identical across 10 runs and equal to the CPU), then each kernel's effective
   bandwidth as a fraction of a device copy, kernels on and off;
3. ``lsmr``: one LSMR iteration over one JVP + one VJP for MLPs of ~1e5, ~3e6 and ~1.7e7
   parameters (targets <= 1.5 small, <= 1.10 at m >= 1e6), kernels on and off, and
   Nystrom-preconditioned LSMR at ~1.7e7 parameters with a float32 and a bfloat16 basis;
4. ``scale``: ``refine(method=ls.Krylov())`` with its defaults up to 5e7 parameters, kernels
   on and off (configurations ``ls.plan`` says do not fit are skipped);
5. ``pde``, ``peers`` (the cupyx row), ``distributed`` (NCCL; only with more than one GPU):
   those suites, run on the GPU.

Results: ``gpu_kernels_<device>.{json,md}``, ``scale_<device>.*`` and each suite's own files,
then the one-page ``gpu_summary_<device>.md``, printed last. ``--dry-run`` walks every step on
the CPU with tiny sizes (what CI runs).
"""

from __future__ import annotations

import contextlib
import math
import os
import subprocess
import sys
import time
from pathlib import Path

import torch

from ._harness import Record, device_name, device_tag, md_table, suite, sync, timeit

TARGETS = {"bandwidth": 0.70, "lsmr_large": 1.10, "lsmr_small": 1.5, "nystrom_itn": 0.05}
STEPS = ("cuda-tests", "kernels", "lsmr", "scale", "pde", "peers", "distributed")
DISABLE_ENV = "LSR_SCALE_DISABLE_CUDA_KERNELS"


@contextlib.contextmanager
def kernels(on: bool):
    """CUDA kernels on (the disabling variable cleared for the block) or off."""
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


def _free(device) -> None:
    import gc

    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()


def _ms(fn, device, reps=10) -> float:
    return 1e3 * timeit(fn, repeat=reps, warmup=2, device=device)


# ------------------------------------------------------------------------------- kernels
def correctness(device, dt, tiny) -> dict:
    """Each kernel against its torch fallback on ``device``."""
    from lsr_scale import cuda as K

    g = torch.Generator(device=device).manual_seed(0)
    c = {}
    X = torch.randn(2**10 if tiny else 2**15, 33, generator=g, device=device, dtype=dt)
    with kernels(False):
        ref = K.fwht_(X.clone())
    c["fwht_bit_identical"] = bool(torch.equal(K.fwht_(X.clone()), ref))
    n, s, zeta, k = (2003, 51, 8, 5) if tiny else (50_003, 517, 8, 37)
    ind = torch.randint(0, s, (n, zeta), generator=g, device=device)
    val = (torch.randint(0, 2, (n, zeta), generator=g, device=device) * 2 - 1).to(dt) / zeta**0.5
    Xs = torch.randn(n, k, generator=g, device=device, dtype=dt)
    outs = [
        K.sparse_sign_apply(
            ind, val, Xs, s, out=torch.full((s, k), math.nan, device=device, dtype=dt)
        ).clone()
        for _ in range(10)
    ]
    c["sparse_sign_10_runs_identical"] = all(bool(torch.equal(o, outs[0])) for o in outs)
    c["sparse_sign_equals_cpu_bits"] = bool(
        torch.equal(outs[0].cpu(), K.sparse_sign_apply(ind.cpu(), val.cpu(), Xs.cpu(), s))
    )
    Y = torch.randn(s, k, generator=g, device=device, dtype=dt)
    with kernels(False):
        reft = K.sparse_sign_apply_t(ind, val, Y)
    c["sparse_sign_t_bit_identical"] = bool(torch.equal(K.sparse_sign_apply_t(ind, val, Y), reft))
    m, rank = (2003, 30) if tiny else (200_003, 300)
    U = torch.linalg.qr(torch.randn(m, rank, generator=g, device=device, dtype=dt)).Q
    d = torch.rand(rank, generator=g, device=device, dtype=dt) + 0.5
    y = torch.randn(m, generator=g, device=device, dtype=dt)
    for name, Us in (("lowrank_bf16", U.to(torch.bfloat16)), ("lowrank_same", U)):
        with kernels(False):
            r = K.lowrank_apply(Us, d, 0.3, y)
        err = float((K.lowrank_apply(Us, d, 0.3, y) - r).norm() / r.norm())
        c[name + "_relerr"] = err
        c[name + "_ok"] = err <= (1e-5 if dt == torch.float32 else 1e-12)
    vecs = [
        torch.randn(10_003 if tiny else 1_000_003, generator=g, device=device, dtype=dt)
        for _ in range(4)
    ]
    co = [torch.tensor(q, device=device, dtype=dt) for q in (0.3, -1.7, 0.9)]
    a, b = [v.clone() for v in vecs], [v.clone() for v in vecs]
    with kernels(False):
        K.lsmr_update_(*a, *co)
    K.lsmr_update_(*b, *co)
    c["lsmr_update_bit_identical"] = all(bool(torch.equal(p, q)) for p, q in zip(a, b))
    return {"checks": c, "all_ok": all(v for k, v in c.items() if not k.endswith("_relerr"))}


def bandwidth(device, dt, tiny) -> list[dict]:
    """Each kernel's effective bandwidth as a fraction of a device copy, and torch's time."""
    from lsr_scale import cuda as K

    es = torch.tensor([], dtype=dt).element_size()
    g = torch.Generator(device=device).manual_seed(1)
    src = torch.randn(1 << (16 if tiny else 28), generator=g, device=device)
    dst = torch.empty_like(src)
    t = _ms(lambda: dst.copy_(src), device)
    copy_bw = 2 * src.numel() * 4 / t / 1e6
    rows = [{"kernel": "device copy", "ms_kernel": t, "GBps": copy_bw, "fraction_of_copy": 1.0}]
    src = dst = None

    def rec(name, bytes_, fn, note=""):
        with kernels(True):
            t_on = _ms(fn, device)
        with kernels(False):
            t_off = _ms(fn, device)
        bw = bytes_ / t_on / 1e6
        rows.append(
            dict(
                kernel=name,
                ms_kernel=t_on,
                ms_torch=t_off,
                GBps=bw,
                fraction_of_copy=bw / copy_bw,
                speedup=t_off / t_on,
                note=note,
            )
        )

    n = (1 << 12) if tiny else (1 << 22)
    X = torch.zeros(n, 16, dtype=dt, device=device)  # zeros: repeated transforms stay finite
    rec(f"fwht n={n} k=16", 2 * X.numel() * es, lambda: K.fwht_(X), "read + write X once")
    sizes = [(1 << 10, 16, 64, 8)] if tiny else [(1 << 16, 128, 4096, 8), (1 << 20, 64, 4096, 8)]
    for n, k, s, zeta in sizes:
        ind = torch.randint(0, s, (n, zeta), generator=g, device=device)
        val = (torch.randint(0, 2, (n, zeta), generator=g, device=device) * 2 - 1).to(dt)
        X = torch.randn(n, k, generator=g, device=device, dtype=dt)
        csr = K.sparse_sign_csr(ind, val, s, dt)
        byt = X.numel() * es + s * k * es + csr.col.numel() * (4 + es) + (s + 1) * 8
        rec(
            f"sparse_sign S@X n={n} k={k} s={s}",
            byt,
            lambda ind=ind, val=val, X=X, s=s, csr=csr: K.sparse_sign_apply(
                ind, val, X, s, csr=csr
            ),
            "X once + out + CSR",
        )
        Y = torch.randn(s, k, generator=g, device=device, dtype=dt)
        rec(
            f"sparse_sign S^T@Y n={n} k={k} s={s}",
            n * k * es + s * k * es + n * zeta * (8 + es),
            lambda ind=ind, val=val, Y=Y: K.sparse_sign_apply_t(ind, val, Y),
            "out + Y once + indices",
        )
    m, rank = (4096, 30) if tiny else (4_000_000, 300)
    U = torch.linalg.qr(torch.randn(m, rank, generator=g, device=device, dtype=dt)).Q
    d = torch.rand(rank, generator=g, device=device, dtype=dt) + 0.5
    y = torch.randn(m, generator=g, device=device, dtype=dt)
    for sname, Us in (("bf16", U.to(torch.bfloat16)), (str(dt).split(".")[-1], U)):
        rec(
            f"lowrank m={m} l={rank} U={sname}",
            2 * Us.numel() * Us.element_size() + 3 * m * es,
            lambda Us=Us: K.lowrank_apply(Us, d, 0.5, y),
            "U twice + y twice + out",
        )
    m = (1 << 14) if tiny else 17_000_000
    vs = [torch.randn(m, generator=g, device=device, dtype=dt) for _ in range(4)]
    co = [torch.tensor(v, device=device, dtype=dt) for v in (0.9, 1e-3, 0.5)]
    rec(f"lsmr_update m={m}", 7 * m * es, lambda: K.lsmr_update_(*vs, *co), "4 reads + 3 writes")
    _free(device)
    return rows


# ---------------------------------------------------------------------------------- lsmr
def _mlp(width, device, dt):
    layers, d = [], 8
    for _ in range(3):
        layers += [torch.nn.Linear(d, width), torch.nn.Tanh()]
        d = width
    return torch.nn.Sequential(*layers, torch.nn.Linear(d, 1)).to(device=device, dtype=dt)


def _fixed(A, b, k, M=None):
    import lsr_scale as ls

    return ls.lsmr(A, b, atol=0.0, btol=0.0, conlim=math.inf, maxiter=k, M=M)


def lsmr_case(name, width, rows, iters, device, dt) -> dict:
    """One LSMR iteration over one JVP + one VJP, kernels on and off."""
    import lsr_scale as ls

    from ._harness import step_time

    g = torch.Generator(device=device).manual_seed(2)
    torch.manual_seed(2)
    model = _mlp(width, device, dt)
    X = torch.randn(rows, 8, generator=g, device=device, dtype=dt)
    A = ls.JacobianOperator.from_module(
        model, X, torch.randn(rows, 1, generator=g, device=device, dtype=dt)
    )
    v = torch.randn(A.shape[1], generator=g, device=device, dtype=dt)
    u = torch.randn(rows, generator=g, device=device, dtype=dt)
    b = torch.randn(rows, generator=g, device=device, dtype=dt)
    row = {
        "case": name,
        "params": A.shape[1],
        "rows": rows,
        "ms_jvp_plus_vjp": _ms(lambda: (A.matvec(v), A.rmatvec(u)), device),
    }
    for on in (True, False):
        with kernels(on):
            per = step_time(lambda k: _fixed(A, b, k), *iters, repeat=1, device=device)
        tag = "on" if on else "off"
        row[f"ms_per_iter_kernels_{tag}"] = 1e3 * per
        row[f"ratio_kernels_{tag}"] = 1e3 * per / row["ms_jvp_plus_vjp"]
    _free(device)
    return row


def nystrom(device, dt, tiny) -> list[dict]:
    """Nystrom-preconditioned LSMR with a float32 and a bfloat16 basis."""
    import lsr_scale as ls

    from ._harness import peak_memory, step_time

    width, rows, rank = (32, 256, 10) if tiny else (2900, 16384, 300)
    g = torch.Generator(device=device).manual_seed(3)
    torch.manual_seed(3)
    model = _mlp(width, device, dt)
    X = torch.randn(rows, 8, generator=g, device=device, dtype=dt)
    Y = torch.sin(X.sum(dim=1, keepdim=True))
    A = ls.JacobianOperator.from_module(model, X, Y, batch_size=8)
    b = -(model(X) - Y).detach().reshape(-1)
    out = []
    for name, bd in (("float32", None), ("bfloat16", torch.bfloat16)):
        with peak_memory(device) as pm:
            t0 = time.perf_counter()
            P = ls.precond.NystromPreconditioner(
                A, rank, basis_dtype=bd, generator=torch.Generator(device=device).manual_seed(4)
            )
            sync(device)
            build = time.perf_counter() - t0
            ones = torch.ones(A.shape[1], device=device, dtype=dt)
            res = ls.lsmr(A, b, M=P, atol=1e-6, btol=1e-6, maxiter=200)
            per = step_time(lambda k, P=P: _fixed(A, b, k, M=P), 5, 15, repeat=1, device=device)
        out.append(
            dict(
                basis=name,
                params=A.shape[1],
                rows=rows,
                rank=rank,
                build_s=build,
                ms_precond_apply=_ms(lambda P=P: P.matvec(ones), device, 5),  # noqa: B023
                ms_per_iter=1e3 * per,
                itn=int(res.itn),
                istop=int(res.istop),
                peak_GB=pm.peak_bytes / 1e9,
            )
        )
        del P
        _free(device)
    a, c = out[0]["itn"], out[1]["itn"]
    out[1]["itn_change"] = abs(c - a) / max(a, 1)
    return out


LSMR_CASES = [
    ("small ~1e5 params, 2k rows", 220, 2000, (20, 220)),
    ("m~3e6, 16k rows", 1250, 16384, (5, 25)),
    ("m~1.7e7, 16k rows", 2900, 16384, (3, 13)),
]
TINY_LSMR = [("tiny", 16, 200, (2, 6))]


# --------------------------------------------------------------------------------- steps
def step_cuda_tests(ctx) -> dict:
    tests = Path.cwd() / "tests"
    if not tests.is_dir():
        return {"skipped": "no tests/ folder here (run from a source checkout)"}
    cmd = [sys.executable, "-m", "pytest", "-q", "-m", "cuda", str(tests), "-p", "no:cacheprovider"]
    if ctx["dry"]:
        cmd.append("--collect-only")
    p = subprocess.run(cmd, capture_output=True, text=True, timeout=ctx["left"]())
    tail = (p.stdout.strip().splitlines() or [""])[-1]
    ok = p.returncode in (0, 5)  # 5: none collected (e.g. all deselected)
    return {"returncode": p.returncode, "ok": ok, "summary": tail}


def step_kernels(ctx) -> dict:
    rec: Record = ctx["kernels"]
    dev, dt, tiny = ctx["device"], ctx["dtype"], ctx["dry"]
    c = correctness(dev, dt, tiny)
    rec.set(correctness=c)
    if not c["all_ok"]:
        return {"ok": False, "summary": "correctness checks failed: bandwidth not measured"}
    for row in bandwidth(dev, dt, tiny):
        rec.add({"section": "bandwidth", **row}, key=("section", "kernel"))
    low = [
        r["kernel"]
        for r in rec.rows
        if r.get("section") == "bandwidth" and r.get("fraction_of_copy", 1) < TARGETS["bandwidth"]
    ]
    return {
        "ok": True,
        "summary": f"all kernels match their torch path; below 70% of copy: "
        f"{', '.join(low) or 'none'}",
    }


def step_lsmr(ctx) -> dict:
    rec: Record = ctx["kernels"]
    dev, dt = ctx["device"], ctx["dtype"]
    parts = []
    for name, width, rows, iters in TINY_LSMR if ctx["dry"] else LSMR_CASES:
        if ctx["left"]() < 30 and not ctx["dry"]:
            break
        r = rec.add(
            {"section": "lsmr", **lsmr_case(name, width, rows, iters, dev, dt)},
            key=("section", "case"),
        )
        parts.append(f"{name}: {r['ratio_kernels_on']:.2f} (off {r['ratio_kernels_off']:.2f})")
    for row in nystrom(dev, dt, ctx["dry"]):
        rec.add({"section": "nystrom", **row}, key=("section", "basis"))
    return {"ok": True, "summary": "LSMR iter / (JVP+VJP): " + "; ".join(parts)}


def step_scale(ctx) -> dict:
    from . import scale

    rec = Record("scale", out=ctx["out"], device=ctx["device"], quick=ctx["dry"])
    rec.set(command=ctx["command"])
    runs = scale.TINY if ctx["dry"] else scale.GPU_RUNS
    both = (True,) if ctx["dry"] else (True, False)  # kernels off means nothing on a CPU
    for run in runs:
        left = ctx["left"]()
        if left < 20 and not ctx["dry"]:
            break
        scale.sweep(
            rec, [run], ctx["device"], limit=max(20, min(150, left)), kernels=both, lsmr=True
        )
    rows, bad = scale.table_rows(rec)
    rec.markdown(
        "refine at scale on the GPU",
        scale.GPU_COLUMNS,
        command=ctx["command"],
        rows=rows,
        notes=bad,
    )
    big = max((r["m"] for r in rows), default=0)
    return {
        "ok": not bad or bool(rows),
        "summary": f"{len(rows)} configurations measured, "
        f"largest m = {big:.2e}; {len(bad)} failed or skipped",
    }


def _suite_step(name, extra=()):
    def step(ctx) -> dict:
        from . import SuiteUnavailable, main, parser_for

        argv = [name, "--device", str(ctx["device"]), "--out", str(ctx["out"]), *extra]
        if ctx["dry"]:  # a dry run checks that the suite loads and takes these options
            try:
                parser_for(name).parse_args(argv[1:] + ["--quick"])
            except SuiteUnavailable as err:
                return {"skipped": str(err)}
            return {
                "ok": True,
                "summary": f"lsr-scale bench {' '.join(argv)}: options valid "
                "(suites are not run in a dry run; each has its own --quick)",
            }
        rc = main(argv)
        if rc == 2:
            return {"skipped": f"suite {name} is not available (see the log)"}
        return {"ok": rc == 0, "summary": f"lsr-scale bench {' '.join(argv)}: exit {rc}"}

    return step


def step_distributed(ctx) -> dict:
    if ctx["device"].type == "cuda" and torch.cuda.device_count() < 2:
        return {"skipped": "one GPU: NCCL needs at least two"}
    return _suite_step("distributed")(ctx)


STEP_FUNCS = {
    "cuda-tests": step_cuda_tests,
    "kernels": step_kernels,
    "lsmr": step_lsmr,
    "scale": step_scale,
    "pde": _suite_step("pde"),
    "peers": _suite_step("peers"),
    "distributed": step_distributed,
}


def summary(ctx, steps: dict, path: Path) -> str:
    """The one-page summary: every step's status, then the kernel and LSMR tables."""
    krec: Record = ctx["kernels"]
    lines = [
        f"# GPU summary ({device_name(ctx['device'])}, torch {torch.__version__}, CUDA "
        f"{torch.version.cuda})",
        "",
        f"Command: `{ctx['command']}`"
        + (" (dry run on the CPU: tiny sizes, numbers meaningless)" if ctx["dry"] else ""),
        "",
        md_table(
            [("step", "step"), ("status", "status"), ("seconds:.0f", "s"), ("summary", "result")],
            [{"step": k, **v} for k, v in steps.items()],
        ),
    ]
    bw = [r for r in krec.rows if r.get("section") == "bandwidth"]
    if bw:
        lines += [
            "## Kernels (fraction of a device copy; target >= 70%)",
            "",
            md_table(
                [
                    ("kernel", "kernel"),
                    ("ms_kernel:.3g", "ms (kernel)"),
                    ("ms_torch:.3g", "ms (torch)"),
                    ("speedup:.2f", "speed-up"),
                    ("GBps:.0f", "GB/s"),
                    (lambda r: f"{100 * r['fraction_of_copy']:.0f}%", "of copy"),
                ],
                bw,
            ),
        ]
    lm = [r for r in krec.rows if r.get("section") == "lsmr"]
    if lm:
        lines += [
            "## One LSMR iteration / (one JVP + one VJP) (targets <= 1.10 large, <= 1.5 small)",
            "",
            md_table(
                [
                    ("case", "case"),
                    ("params", "params"),
                    ("ms_jvp_plus_vjp:.3g", "JVP+VJP ms"),
                    ("ratio_kernels_on:.2f", "ratio (on)"),
                    ("ratio_kernels_off:.2f", "ratio (off)"),
                ],
                lm,
            ),
        ]
    ny = [r for r in krec.rows if r.get("section") == "nystrom"]
    if ny:
        lines += [
            "## Nystrom-preconditioned LSMR (iteration change bf16 vs fp32: target <= 5%)",
            "",
            md_table(
                [
                    ("basis", "basis"),
                    ("params", "params"),
                    ("build_s:.3g", "build s"),
                    ("ms_per_iter:.3g", "ms/iter"),
                    ("itn", "itn to 1e-6"),
                    ("peak_GB:.3g", "peak GB"),
                ],
                ny,
            ),
        ]
    lines += ["Every step's files are in " + str(ctx["out"]) + "."]
    text = "\n".join(lines) + "\n"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return text


@suite("gpu", "every GPU check in one command (pytest -m cuda, kernels, scale, ...)")
def run(args) -> int:
    dry = args.dry_run
    if not dry and args.device.type != "cuda":
        print(
            "lsr-scale bench gpu: no CUDA device (use --dry-run to walk the steps on the CPU)",
            file=sys.stderr,
        )
        return 2
    device = torch.device("cpu") if dry else args.device
    t_start = time.perf_counter()
    ctx = dict(
        device=device,
        dtype=getattr(torch, args.dtype),
        dry=dry,
        out=args.out,
        command=args.command,
        left=lambda: args.budget - (time.perf_counter() - t_start),
    )
    ctx["kernels"] = Record("gpu_kernels", out=args.out, device=device, quick=dry)
    from lsr_scale import cuda as K

    ctx["kernels"].set(command=args.command, kernel_status=K.kernel_status(), dtype=args.dtype)
    steps = {}
    wanted = [s for s in STEPS if s in args.steps]
    for name in wanted:
        t0 = time.perf_counter()
        if ctx["left"]() <= 0:
            steps[name] = {"status": "skipped", "summary": "time budget spent", "seconds": 0}
            continue
        print(f"[{t0 - t_start:6.1f}s] {name}", flush=True)
        try:
            res = STEP_FUNCS[name](ctx)
            status = "skipped" if "skipped" in res else ("ok" if res.get("ok") else "FAILED")
            res.setdefault("summary", res.get("skipped", ""))
        except Exception as err:  # noqa: BLE001 - recorded; the next step runs
            res, status = {"summary": f"{type(err).__name__}: {err}"[:300]}, "error"
            _free(device)
        steps[name] = {
            "status": status,
            "summary": res["summary"],
            "seconds": time.perf_counter() - t0,
        }
        ctx["kernels"].set(steps=steps)
    tag = device_tag(device) + ("_dry" if dry else "")
    text = summary(ctx, steps, args.out / f"gpu_summary_{tag}.md")
    print(f"\n[{time.perf_counter() - t_start:6.1f}s] done\n\n{text}")
    return 0 if all(s["status"] in ("ok", "skipped") for s in steps.values()) else 1


@run.options
def _options(parser) -> None:
    parser.add_argument(
        "--dry-run",
        action="store_true",
        help="walk every step on the CPU with tiny sizes (no GPU needed)",
    )
    parser.add_argument(
        "--budget", type=float, default=480.0, help="seconds after which no new step starts"
    )
    parser.add_argument("--steps", nargs="+", default=list(STEPS), choices=STEPS)
    parser.add_argument("--dtype", default="float32", choices=["float32", "float64"])
