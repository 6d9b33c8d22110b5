"""``lsr-scale bench products``: the per-product costs LSR's run time is made of.

For an MLP, a DeepONet, a Fourier-layer (FNO-style) network and a transformer block, time
the forward pass, one JVP, one VJP and the JVP + VJP pair on the same
:class:`~lsr_scale.JacobianOperator`, each interleaved with the forward pass so the reported
ratios (product / forward) are measured under the same load.
"""

from __future__ import annotations

from . import _models
from ._harness import Record, suite, time_ratio

# (kind, width knob): about 1e4 and 1e5 parameters each
SIZES = {
    "mlp": (64, 300),
    "deeponet": (40, 160),
    "fourier": (16, 48),
    "transformer": (32, 96),
}
COLUMNS = [
    ("model", "model"),
    ("params", "params m"),
    ("rows", "rows n"),
    ("forward_ms:.3f", "forward (ms)"),
    ("jvp_ms:.3f", "JVP (ms)"),
    ("vjp_ms:.3f", "VJP (ms)"),
    ("pair_ms:.3f", "JVP+VJP (ms)"),
    ("jvp_over_forward:.2f", "JVP / forward"),
    ("vjp_over_forward:.2f", "VJP / forward"),
    ("jvp_mode", "JVP mode"),
]


def measure(kind: str, size: int, rows: int, device, repeat: int) -> dict:
    """One row: forward, JVP, VJP and pair times and their ratios to the forward pass."""
    import torch

    J, v, u, model, inputs = _models.operator(kind, size, rows, device)

    def forward():
        with torch.no_grad():
            model(*inputs)

    jvp = time_ratio(lambda: J.matvec(v), forward, repeat=repeat, device=device)
    vjp = time_ratio(lambda: J.rmatvec(u), forward, repeat=repeat, device=device)
    pair = time_ratio(lambda: (J.matvec(v), J.rmatvec(u)), forward, repeat=repeat, device=device)
    return {
        "model": kind,
        "size": size,
        "params": J.shape[1],
        "rows": J.shape[0],
        "forward_ms": 1e3 * pair["t_ref"],
        "jvp_ms": 1e3 * jvp["t"],
        "vjp_ms": 1e3 * vjp["t"],
        "pair_ms": 1e3 * pair["t"],
        "jvp_over_forward": jvp["ratio"],
        "vjp_over_forward": vjp["ratio"],
        "pair_over_forward": pair["ratio"],
        "jvp_mode": J.jvp_mode,
    }


@suite("products", "JVP and VJP product time against the forward pass, per model")
def run(args) -> None:
    rec = Record("products", out=args.out, device=args.device, quick=args.quick)
    rows = args.rows or (256 if args.quick else (16384 if args.device.type == "cuda" else 2000))
    repeat = 3 if args.quick else 7
    rec.set(command=args.command, rows_per_model=rows)
    for kind in args.models:
        for size in SIZES[kind][:1] if args.quick else SIZES[kind]:
            if rec.has(model=kind, size=size, rows=rows):
                continue
            row = rec.add(measure(kind, size, rows, args.device, repeat), key=("model", "size"))
            print(
                f"  {kind:12s} m={row['params']:>8,}  JVP/fwd {row['jvp_over_forward']:5.2f}  "
                f"VJP/fwd {row['vjp_over_forward']:5.2f}",
                flush=True,
            )
    print(
        rec.markdown(
            "JVP and VJP products",
            COLUMNS,
            command=args.command,
            notes=[
                "Each product is timed interleaved with the forward pass (median of the "
                "per-round ratios); compare the ratios, not the absolute times, across runs."
            ],
        )
    )


@run.options
def _options(parser) -> None:
    parser.add_argument("--rows", type=int, default=None, help="rows (default 2000 CPU, 16384 GPU)")
    parser.add_argument(
        "--models", nargs="+", default=list(SIZES), choices=list(SIZES), help="models to time"
    )
