"""Default refines on the ecosystem's own architectures (issue: the models users bring).

Each model is built from its package with random initialization (nothing is downloaded),
fitted briefly with Adam to random regression targets, then refined with
``ls.refine(model, data=(x, y))`` and ``method="krylov"``, nothing else. For each it records
the parameter count, the product back end the self-check settled on, the linearized loss
before and after, the training error of the predictor and the time. A model whose package
is missing is skipped; rows already recorded are kept, so runs in different environments
(torchvision, and timm with it, need torch 2.14.1 on this machine: a separate venv) fill
one table.
Writes ``bench/results/ecosystem_cpu.{json,md}`` (``--quick``: the transformer encoder only,
``ecosystem_cpu_quick.*``).

    python bench/ecosystem_models.py --threads 1 [--only resnet18 vit_tiny]
"""

from __future__ import annotations

import time
import warnings

import torch
from torch import nn

import lsr_scale as ls
from lsr_scale.bench._harness import Record, parse_script


class _Head(nn.Module):
    """A model's output read out as ``k`` regression outputs."""

    def __init__(self, body, pick):
        super().__init__()
        self.body, self.pick = body, pick

    def forward(self, x):
        return self.pick(self.body(x))


def resnet18():
    import torchvision

    model = torchvision.models.resnet18(num_classes=4)
    return model, torch.randn(16, 3, 32, 32), 4


def vit_tiny():
    import timm

    # timm's ViT-Tiny (192 wide, 12 blocks, 3 heads) at 32x32 images in 8x8 patches
    model = timm.create_model(
        "vit_tiny_patch16_224", pretrained=False, num_classes=4, img_size=32, patch_size=8
    )
    return model.eval(), torch.randn(16, 3, 32, 32), 4


def gpt2():
    import transformers

    cfg = transformers.GPT2Config(
        n_layer=2, n_head=2, n_embd=64, vocab_size=100, n_positions=32,
        resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0, bos_token_id=0, eos_token_id=0,
    )  # fmt: skip
    body = transformers.GPT2LMHeadModel(cfg)
    model = _Head(body, lambda out: out.logits[:, -1, :4])
    return (
        model,
        torch.randint(0, 100, (32, 16), generator=torch.Generator().manual_seed(2)),
        4,
    )


def fno():
    from neuralop.models import FNO

    model = FNO(n_modes=(16,), hidden_channels=32, in_channels=1, out_channels=1, n_layers=4)
    return _Head(model, lambda out: out[:, 0, ::16]), torch.randn(20, 1, 128), 8


def encoder():
    layer = nn.TransformerEncoderLayer(32, 2, 64, dropout=0.0, batch_first=True)
    body = nn.Sequential(nn.Linear(3, 32), layer, nn.Linear(32, 2))
    return _Head(body, lambda out: out.mean(1)), torch.randn(40, 6, 3), 2


# the defaults, and Krylov with float32 products around a float64 solve: on an FNO, whose
# float64 copy still rounds its spectral layers to float32, is the copy worth its cost?
METHODS = {"subspace": "subspace", "krylov": "krylov",
           "krylov, precision='mixed'": ls.Krylov(precision="mixed")}  # fmt: skip
MODELS = {"resnet18": resnet18, "vit_tiny": vit_tiny, "gpt2": gpt2, "fno": fno,
          "transformer-encoder": encoder}  # fmt: skip


def _run(name, make, args):
    torch.manual_seed(0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model, x, k = make()
    y = torch.randn(x.shape[0], k, generator=torch.Generator().manual_seed(1))
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    for _ in range(args.epochs):
        opt.zero_grad()
        ((model(x) - y) ** 2).mean().backward()
        opt.step()
    model.eval()
    with torch.no_grad():
        before = float((model(x) - y).norm() / y.norm())
    n_params = sum(p.numel() for p in model.parameters())
    row = dict(model=name, torch=torch.__version__, n_params=n_params, n_rows=int(y.numel()),
               train_rel_before=before)  # fmt: skip
    for method in METHODS:
        t0 = time.perf_counter()
        with warnings.catch_warnings():  # the FNO's narrow-precision warning: info["precision"]
            warnings.simplefilter("ignore")
            refined = ls.refine(model, data=(x, y), method=METHODS[method], progress_bar=False)
        info = refined.info
        row[method] = dict(
            iterations=info.get("iterations"),
            stop=str(info.get("stop") or "") or None,
            precision=info.get("precision"),
            wall_s=time.perf_counter() - t0,
            backend=info["product_check"]["backend"],
            loss_before=info["loss_before"],
            loss_linearized=info["loss_linearized"],
            train_rel_after=float((refined(x) - y).norm() / y.norm()),
            peak_mem_bytes=info["peak_mem_bytes"],
        )
        print(name, method, row[method], flush=True)
    return row


def main(argv=None):
    args = parse_script(__file__, __doc__, lambda p: (
        p.add_argument("--epochs", type=int, default=10, help="Adam steps before refining"),
        p.add_argument("--only", nargs="*", choices=sorted(MODELS))), argv)  # fmt: skip
    rec = Record("ecosystem", out=args.out, device="cpu", quick=args.quick)
    rec.set(epochs=args.epochs)
    for name in ["transformer-encoder"] if args.quick else args.only or list(MODELS):
        try:
            rec.add(_run(name, MODELS[name], args), key=("model",))
        except ImportError as err:
            print(f"{name}: skipped ({err})")
    note = (f"Default refines (`ls.refine(model, data=(x, y))`, then `method='krylov'`, then "
            "`ls.Krylov(precision='mixed')` where recorded), after "
            f"{args.epochs} Adam steps on random targets; train rel. error of the predictor, "
            "linearized loss, product back end after the self-check.")  # fmt: skip
    rows = [{**r, **r[m], "method": m} for r in rec.rows for m in METHODS if m in r]
    rec.markdown("Ecosystem models, default arguments", [
        "model", "torch", ("n_params", "parameters"), ("n_rows:d", "rows"), "method",
        "precision",
        ("backend", "back end"),
        (lambda r: f"{r['loss_before']:.3g} -> {r['loss_linearized']:.3g}",
         "linearized loss before -> after"),
        (lambda r: f"{r['train_rel_before']:.3f} -> {r['train_rel_after']:.3g}",
         "train rel. error before -> after"), ("wall_s:.1f", "time (s)"),
    ], command=args.command, rows=rows, notes=[note])  # fmt: skip


if __name__ == "__main__":
    main()
