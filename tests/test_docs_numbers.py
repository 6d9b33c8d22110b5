"""The measured figures the docs quote are the recorded ones.

Tables copied whole from ``bench/results/<stem>.md`` are checked by ``test_docs_tables.py``.
This file checks the rest against their JSON sources: the tables of ``docs/results.md``
laid out by hand, the precision tables of ``docs/solvers.md``, and the figures the prose
quotes. A quoted figure agrees with its source when they differ by at most half a unit in
the figure's last digit (``1.22e-7`` stands for anything in ``[1.215e-7, 1.225e-7]``,
``5,632x`` for ``[5631.5, 5632.5]``), and memory is quoted in MiB or GiB of 2^20 and 2^30
bytes. It also checks that the guide's list of ``refine``'s ``info`` keys names every key
that real calls return.
"""

from __future__ import annotations

import importlib.util
import json
import re
import warnings
from pathlib import Path

import pytest
import torch

import lsr_scale as ls

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"
spec = importlib.util.spec_from_file_location("docs_tables", ROOT / "bench" / "docs_tables.py")
docs_tables = importlib.util.module_from_spec(spec)
spec.loader.exec_module(docs_tables)

NUMBER = re.compile(r"(?<![\w.])(?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d+)?(?:[eE][+-]?\d+)?")


def _json(path: str):
    return json.loads((ROOT / path).read_text())


def parse(figure: str) -> tuple[float, float]:
    """The value of a quoted figure and half a unit in its last digit."""
    m = re.fullmatch(r"-?(\d+)(?:\.(\d+))?(?:[eE]([+-]?\d+))?", figure.replace(",", ""))
    assert m, f"not a figure: {figure!r}"
    return float(figure.replace(",", "")), 0.5 * 10.0 ** (
        int(m.group(3) or 0) - len(m.group(2) or "")
    )


def agrees(figure: str, value: float, what: str = "") -> None:
    quoted, tol = parse(figure)
    assert abs(quoted - value) <= tol * (1 + 1e-9), (
        f"{what}: the docs say {figure}, the source {value!r}"
    )


def figures(text: str) -> list[str]:
    return NUMBER.findall(text.replace("**", ""))


def first(cell: str) -> str:
    found = figures(cell)
    assert found, f"no figure in {cell!r}"
    return found[0]


def agrees_mem(cell: str, nbytes: int, what: str = "") -> None:
    unit = 2**30 if "GiB" in cell else 2**20 if "MiB" in cell else None
    assert unit, f"{what}: no unit in {cell!r}"
    agrees(first(cell), nbytes / unit, what)


def section(page: str, heading: str) -> str:
    """The text of ``page`` from the heading that starts with ``heading`` to the next one of
    the same or a higher level."""
    text = (DOCS / page).read_text()
    m = re.search(rf"^(#+) {re.escape(heading)}.*$", text, re.M)
    assert m, f"{page}: no heading {heading!r}"
    level = len(m.group(1))
    rest = text[m.end() :]
    end = re.search(rf"^#{{1,{level}}} ", rest, re.M)
    return rest[: end.start()] if end else rest


def rows(table: str) -> list[dict[str, str]]:
    """A markdown table as one dict (header -> cell) per body row."""
    lines = [[c.strip() for c in line.strip().strip("|").split("|")] for line in table.splitlines()]
    head = lines[0]
    return [dict(zip(head, cells)) for cells in lines[2:]]


def test_figures_parse_to_half_a_unit_in_the_last_digit():
    assert parse("1.22e-7") == pytest.approx((1.22e-7, 0.5e-9))
    assert parse("5,632") == (5632.0, 0.5)
    agrees("1.22e-7", 1.2152e-7)
    with pytest.raises(AssertionError):
        agrees("1.22e-7", 1.2252e-7)
    with pytest.raises(AssertionError):
        agrees_mem("8.24 GiB", 8.30 * 2**30)
    assert figures("k=500, 4 outer; **7.05e-4** (268 s)") == ["500", "4", "7.05e-4", "268"]


# -- docs/results.md: the `lsr-scale reproduce` tables ------------------------------------

REPRODUCE = [
    ("1. Function approximation", 1, "docs/results/function.json", None),
    ("2. Burgers DeepONet", 1, "docs/results/burgers.json", None),
    ("2. Burgers DeepONet", 3, "docs/results/burgers_fixed_k1000.json", ["subspace", "krylov"]),
    ("3. Physics-informed antiderivative", 1, "docs/results/antiderivative.json", None),
    ("4. Poisson PINN", 1, "docs/results/poisson.json", None),
]


@pytest.mark.parametrize("heading, k, source, methods", REPRODUCE)
def test_reproduce_tables_quote_their_json(heading, k, source, methods):
    """Row i of the table is record i of the JSON (of the named methods, in order)."""
    table = docs_tables.tables(section("results.md", heading))[k - 1]
    body, records = rows(table), _json(source)
    if methods is not None:
        records = [r for r in records if r["method"] in methods]
    assert len(body) == len(records), f"{heading}: {len(body)} rows for {len(records)} records"
    for row, rec in zip(body, records):
        what = f"{heading}, {rec['method']}"
        err = row.get("rel. L2", row.get("mean rel. L2"))
        agrees(first(err), rec["rel_l2"], what + " rel. L2")
        if rec.get("reduction") is not None:
            agrees(first(row["reduction"]), rec["reduction"], what + " reduction")
        wall = next(v for h, v in row.items() if h.startswith("wall"))
        agrees(first(wall), rec["wall_s"], what + " wall")
        agrees_mem(row["peak mem"], rec["peak_mem_bytes"], what + " peak mem")
        ri = row["rank / iters"]
        if "k=" in ri:
            agrees(first(ri), rec["rank"], what + " rank")
        elif ri:
            agrees(first(ri), rec["iterations"], what + " iterations")
        paper = row.get("paper", "")
        if rec.get("paper") is not None and figures(paper):
            agrees(first(paper), rec["paper"], what + " paper")


def test_burgers_validation_scan_quotes_the_rank_scan():
    table = docs_tables.tables(section("results.md", "2. Burgers DeepONet"))[1]
    lines = [line.strip("|").split("|") for line in table.splitlines()]
    ranks = [parse(first(c))[0] for c in lines[0][1:]]
    scan = {r["rank"]: r["val_rel_l2"] for r in _json("docs/results/burgers.json")[1]["rank_scan"]}
    assert ranks == sorted(scan)
    for k, cell in zip(ranks, lines[2][1:]):
        agrees(first(cell), scan[k], f"validation scan k={k}")


def test_poisson_error_against_time_quotes_the_curves():
    curves = _json("docs/results/poisson_curves.json")
    table = docs_tables.tables(section("results.md", "4. Poisson PINN"))[1]
    body = rows(table)
    assert len(body) == len(curves["iterative"])
    for i, row in enumerate(body):
        times = [float(t) for t in re.findall(r"\d+", row["wall (s)"])]
        lo, hi = min(times) - 1, max(times) + 1
        net_t, net = curves["iterative"][i]
        assert lo <= net_t <= hi, f"row {i}: the network's point is at {net_t} s"
        agrees(first(row["Iterative: network"]), net, f"row {i} network")
        if i:
            agrees(first(row["Iterative: LSR predictor"]), curves["iterative_lsr"][i - 1][1])
        # each L-BFGS figure is a point of its curve inside the row's time range
        for fig in re.findall(r"\d\.\d+e-\d+|0\.\d+", row["L-BFGS alone"]):
            ok = [
                e
                for t, e in curves["lbfgs"]
                if lo <= t <= hi and abs(parse(fig)[0] - e) <= parse(fig)[1]
            ]
            assert ok, f"row {i}: L-BFGS {fig} is no point of the curve in [{lo}, {hi}] s"


def test_fourier_table_quotes_its_json():
    src = _json("bench/results/fourier_refine_cpu.json")
    body = rows(docs_tables.tables(section("results.md", "5. Fourier layer"))[0])
    assert len(body) == len(src["runs"])
    for row, run in zip(body, src["runs"]):
        before, after = figures(row["test rel. L2, trained → refined"])
        agrees(before, src["before_test_rel_l2"], "before")
        agrees(after, run["after_test_rel_l2"], run["settings"])
        agrees(first(row["gain"]), run["gain"], run["settings"])
        agrees(first(row["refine wall (s)"]), run["refine_s"], run["settings"])


FNO_COLUMNS = {  # docs column (its start) -> row of bench/results/fno_reference_cpu.json
    "trained": "trained",
    "dense k=300": "dense k=300",
    "dense k=1000": "dense k=1000",
    "dense lstsq": "dense k=all",
    "`Subspace()`": "subspace",
    "`Krylov()` before": "krylov (before the fix)",
    "`Krylov()` now": "krylov",
    "`Krylov()`, true float64": "krylov, widened",
}


def test_fno_reference_table_quotes_its_json():
    src = {(r["model"], r["row"]): r for r in _json("bench/results/fno_reference_cpu.json")["rows"]}
    body = rows(docs_tables.tables(section("results.md", "FNO (neuraloperator 2.0)"))[0])
    assert [row["model"] for row in body] == ["long", "short"]
    for row in body:
        for col, cell in row.items():
            name = next((v for k, v in FNO_COLUMNS.items() if col.startswith(k)), None)
            if col == "model":
                continue
            assert name, f"FNO table: unknown column {col!r}"
            train, test = figures(cell)[-2:]
            ref = src[(row["model"], name)]
            agrees(train, ref["train"], f"{row['model']} {col} train")
            agrees(test, ref["test"], f"{row['model']} {col} test")


# -- docs/solvers.md: the precision tables -------------------------------------------------

CASES = {"demo MLP": "demo", "user MLP": "user", "Poisson PINN": "pinn"}


def _precision():
    return {(r["case"], r["variant"]): r for r in _json("bench/results/precision_cpu.json")["rows"]}


def test_precision_table_quotes_its_json():
    src = _precision()
    columns = {
        "trained": "trained",
        "subspace (defaults)": "subspace",
        "float32 Krylov (0.1)": "f32",
        "mixed": "mixed",
        "mixed + noise-floor cut": "mixed+floor",
        "float64 products": "f64",
    }
    body = rows(docs_tables.tables(section("solvers.md", "Precision of the Krylov route"))[0])
    assert [r["case"] for r in body] == list(CASES)
    for row in body:
        for col, variant in columns.items():
            rec = src[CASES[row["case"]], variant]
            agrees(first(row[col]), rec["rel_l2"], f"{row['case']} {col}")


def test_stopping_table_quotes_the_default_rows():
    src = _precision()
    body = rows(docs_tables.tables(section("solvers.md", "Stopping"))[0])
    assert [r["case"] for r in body] == list(CASES)
    for row in body:
        case = CASES[row["case"]]
        agrees(first(row["subspace (defaults)"]), src[case, "subspace"]["rel_l2"], case)
        rec = src[case, "default"]
        agrees(first(row["Krylov (defaults)"]), rec["rel_l2"], case)
        assert int(row["iterations"]) == rec["iterations"], case
        assert (row["stopped by"] == "stall rule") == rec["stop"].startswith("stalled"), case


# -- figures quoted in prose ---------------------------------------------------------------


def _by(path: str) -> dict:
    return {r["method"]: r for r in _json(path)}


def _peers() -> dict:
    return {(r["problem"], r["key"]): r for r in _json("bench/results/peers_cpu.json")["rows"]}


def _prose():
    fn, anti = _by("docs/results/function.json"), _by("docs/results/antiderivative.json")
    poi, peers = _by("docs/results/poisson.json"), _peers()
    rank = {r["rank"]: r for r in _json("bench/results/precond_rank_cpu.json")["rows"]}

    def p(problem, key, field="rel_l2"):
        return peers[problem, key][field]

    # (page, text as the page has it, the source of each figure in it in order; None: not
    # a measured figure)
    return [
        (
            "results.md",
            "5.43e-2 → 9.65e-6 (**5,632x**, k=300), Krylov 4.91e-6 (**11,065x**)",
            [
                fn["trained"]["rel_l2"],
                fn["subspace"]["rel_l2"],
                fn["subspace"]["reduction"],
                300,
                fn["krylov"]["rel_l2"],
                fn["krylov"]["reduction"],
            ],
        ),
        (
            "results.md",
            "7.11e-3 → **1.22e-7** (k=40), Krylov 1.64e-7",
            [anti["trained"]["rel_l2"], anti["subspace"]["rel_l2"], 40, anti["krylov"]["rel_l2"]],
        ),
        (
            "results.md",
            "0.545 → **7.05e-4** (LSR predictor, 772x), aligned network 6.97e-3 (78x). "
            "L-BFGS alone: 8.16e-3 at 274 s vs 268 s",
            [
                poi["trained"]["rel_l2"],
                poi["iterative"]["rel_l2"],
                poi["iterative"]["reduction"],
                poi["iterative_network"]["rel_l2"],
                poi["iterative_network"]["reduction"],
                poi["lbfgs"]["rel_l2"],
                poi["lbfgs"]["wall_s"],
                poi["iterative"]["wall_s"],
            ],
        ),
        (
            "results.md",
            "The margin over L-BFGS is 11.6x",
            [poi["lbfgs"]["rel_l2"] / poi["iterative"]["rel_l2"]],
        ),
        (
            "results.md",
            "Adam ran for only 800\nepochs (float32, 82 s",
            [None, fn["trained"]["wall_s"]],
        ),
        (
            "peers.md",
            "**2.7e-5 in 79 s**, building J included; lsr_scale's best row reaches 7.3e-4 "
            "(subspace,\n  defaults) in 348 s",
            [
                p("poisson", "dense_lstsq"),
                p("poisson", "dense_lstsq", "wall_s"),
                p("poisson", "subspace_default"),
                p("poisson", "subspace_default", "wall_s"),
            ],
        ),
        (
            "peers.md",
            "(14 s against 18-40 s for\n  lsr_scale), but less accurate: 1.05e-5 against 1.9e-6 "
            "(Krylov, defaults) and 3.3e-7",
            [
                p("demo", "dense_lstsq", "wall_s"),
                p("demo", "subspace_default", "wall_s"),
                p("demo", "subspace_best", "wall_s"),
                p("demo", "dense_lstsq"),
                p("demo", "krylov_default"),
                p("demo", "subspace_best"),
            ],
        ),
        (
            "peers.md",
            "180 s more of Adam gave 1.58e-2 from 1.62e-2",
            [None, p("burgers", "adam"), p("burgers", "trained")],
        ),
        (
            "peers.md",
            "the Krylov\n  defaults make it worse (2.6e-2)",
            [p("burgers", "krylov_default")],
        ),
        (
            "peers.md",
            "Krylov with defaults, 1.9e-6 in 19 s, against 8.0e-4 for curvlinops + scipy lsmr\n"
            "    after 3,000 iterations (139 s) and 8.1e-4 for the same lsmr on the dense J (58 s)",
            [
                p("demo", "krylov_default"),
                p("demo", "krylov_default", "wall_s"),
                p("demo", "curvlinops_lsmr"),
                None,
                p("demo", "curvlinops_lsmr", "wall_s"),
                p("demo", "dense_lsmr"),
                p("demo", "dense_lsmr", "wall_s"),
            ],
        ),
        (
            "peers.md",
            "Krylov with defaults, 2.3e-7 in 166 s;\n    subspace with defaults (k = 1,000, "
            "float32), 1.3e-5 in 131 s",
            [
                p("function", "krylov_default"),
                p("function", "krylov_default", "wall_s"),
                None,
                p("function", "subspace_default"),
                p("function", "subspace_default", "wall_s"),
            ],
        ),
        (
            "peers.md",
            "(Adam 7.0e-3, L-BFGS 7.25e-3,\n    our Gauss-Newton 5.3e-3 from 7.27e-3 on the demo)",
            [
                p("demo", "adam"),
                p("demo", "lbfgs"),
                p("demo", "gauss_newton"),
                p("demo", "trained"),
            ],
        ),
        (
            "peers.md",
            "(L-BFGS\n    4.7e-2, Adam 0.50, Gauss-Newton 0.15 from 0.54, against 7.3e-4 for LSR)",
            [
                p("poisson", "lbfgs"),
                p("poisson", "adam"),
                p("poisson", "gauss_newton"),
                p("poisson", "trained"),
                p("poisson", "subspace_default"),
            ],
        ),
        (
            "scale.md",
            "rank 300 costs\n1.5x the products of rank 100 and is 92x more accurate",
            [
                None,
                rank[300]["products"] / rank[100]["products"],
                None,
                rank[100]["rel_l2"] / rank[300]["rel_l2"],
            ],
        ),
    ]


def test_prose_figures_quote_their_json():
    for page, text, sources in _prose():
        assert text in (DOCS / page).read_text(), f"{page}: the text {text!r} is gone"
        found = figures(text)
        assert len(found) == len(sources), f"{page}: {text!r} has figures {found}"
        for fig, value in zip(found, sources):
            if value is not None:
                agrees(fig, value, f"{page}: {text!r}")


# -- README: the demo table and the prose under it -----------------------------------------


def test_readme_demo_table_quotes_the_recorded_demo():
    """The errors, times, iterations and products of the README's table are those of
    ``bench/results/demo_cpu.json`` (what ``lsr-scale demo`` wrote, seed 0), the prose under
    the table quotes the table, and its float64 figure is ``demo_float64_cpu.json``'s
    (``lsr-scale demo --dtype float64``)."""
    readme = (ROOT / "README.md").read_text()
    table = rows(docs_tables.tables(readme.split("## What the demo prints")[1])[0])
    demo = _json("bench/results/demo_cpu.json")
    assert len(table) == len(demo)
    trained = demo[0]["rel_l2"]
    for row, rec in zip(table, demo):
        what = rec["method"]
        assert row["method"].split(" (")[0] == rec["method"].split(" (")[0], what
        agrees(row["test rel. L2"], rec["rel_l2"], what)
        agrees(row["reduction"].rstrip("x"), trained / rec["rel_l2"], what)
        agrees(row["time (s)"], rec["time_s"], what)
        assert row["LSMR iters"] == str(rec["iters"]), what
        assert row["JVP+VJP"] == rec["products"], what
    krylov = demo[-1]
    assert f"stops on its own after {krylov['iters']} iterations" in readme
    ratio = re.search(r"iterations, ([\d.]+)x more accurate than one-shot LSR", readme).group(1)
    agrees(ratio, demo[1]["rel_l2"] / krylov["rel_l2"], "Krylov over one-shot")
    f64 = _json("bench/results/demo_float64_cpu.json")
    assert f64[1]["method"].startswith("one-shot LSR")
    quoted = re.search(r"`--dtype float64` the subspace route reaches ([\d.e-]+)", readme)
    agrees(quoted.group(1), f64[1]["rel_l2"], "the float64 demo's subspace route")


# -- the guide's list of info keys ---------------------------------------------------------


def _info_keys() -> set[str]:
    torch.manual_seed(0)
    x = torch.randn(48, 2)
    y = torch.sin(x).sum(1, keepdim=True)
    labels = (x[:, 0] > 0).long() + (x[:, 1] > 0).long()
    reg = torch.nn.Sequential(torch.nn.Linear(2, 8), torch.nn.Tanh(), torch.nn.Linear(8, 1))
    cls = torch.nn.Sequential(torch.nn.Linear(2, 8), torch.nn.Tanh(), torch.nn.Linear(8, 3))
    val, val_labels = (x[:12], y[:12]), (x[:12], labels[:12])
    calls = [
        (reg, y, dict(method=ls.Subspace(rank=5))),
        (reg, y, dict(method=ls.Subspace(rank="auto"), validation=val)),
        (
            reg,
            y,
            dict(method=ls.Subspace(rank=5, fraction=0.5, range_finder="streamed", oversample=0)),
        ),
        (reg, y, dict(method=ls.Krylov(maxiter=20))),
        (reg, y, dict(method=ls.Krylov(maxiter=20), validation=val)),
        (reg, y, dict(method=ls.Krylov(space="sample", maxiter=20))),
        (
            cls,
            labels,
            dict(loss="cross_entropy", method=ls.Subspace(rank=5), validation=val_labels),
        ),
        (cls, labels, dict(loss="softmax_mse", method=ls.Krylov(maxiter=20))),
    ]
    keys: set[str] = set()
    for model, targets, kw in calls:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            r = ls.refine(
                model,
                data=(x, targets),
                generator=torch.Generator().manual_seed(0),
                progress_bar=False,
                **kw,
            )
        keys |= set(r.info)
    return keys


def test_guide_lists_every_info_key():
    listed = section("guide.md", "What `refine` reports")
    keys = _info_keys()
    assert {"iterations", "stop", "rank_scan", "steps", "times"} <= keys
    missing = sorted(k for k in keys if f"`{k}`" not in listed)
    assert not missing, f"docs/guide.md 'What refine reports' does not name {missing}"


# -- docs/results.md section 2d: the MultiONet figures in prose ----------------------------


def _multionet():
    rows = _json("docs/results/multionet.json")
    base = "burgers_viscid_authors_tanh_multionet"
    trained = next(r for r in rows if r["method"] == "trained" and r["baseline"] == base)
    curve = {r["rank"]: r for r in rows if r["method"] == "subspace_streamed"}
    kry = {(r["baseline"], r["config"]): r for r in rows if r["method"] == "krylov"}
    return trained, curve, kry[base, "maxiter1000"], kry[base, "defaults"], kry


def test_multionet_prose_quotes_its_json():
    trained, curve, best, defaults, kry = _multionet()
    t = trained["mean_rel_l2"]
    gib = 2**30
    c5 = curve[5000]
    long_ = kry["burgers_viscid_authors_tanh_multionet_8k", "defaults"]
    cases = [
        (
            "1.11e-2 → **1.96e-3 with `Krylov(maxiter=1000)` (5.67x, 1.47 GiB)**, defaults "
            "5.56x; best truncation 5.19x (k=5,000 of a curve to 14,000, 10.7 GiB)",
            [t, best["mean_rel_l2"], 1000, t / best["mean_rel_l2"], best["peak_mem_bytes"] / gib,
             t / defaults["mean_rel_l2"], t / c5["mean_rel_l2"], 5000, 14000,
             c5["peak_mem_bytes"] / gib],
        ),
        (
            "Krylov within 4 GiB reaches **5.67x** (`Krylov(maxiter=1000)`, 1.47 GiB, 42 s; "
            "the defaults\n  5.56x in 37 s)",
            [None, t / best["mean_rel_l2"], 1000, best["peak_mem_bytes"] / gib, best["wall_s"],
             t / defaults["mean_rel_l2"], defaults["wall_s"]],
        ),
        (
            "Krylov shows the same gap: training error 4.32e-3 → 2.69e-4 (16x), test 5.67x.",
            [best["trained_train_rel_l2"], best["train_rel_l2"],
             best["trained_train_rel_l2"] / best["train_rel_l2"], t / best["mean_rel_l2"]],
        ),
        (
            "Krylov takes its test error to 3.02e-3 (1.84x)",
            [long_["mean_rel_l2"], long_["trained_mean_rel_l2"] / long_["mean_rel_l2"]],
        ),
        (
            "test 5.55e-3 (mean; aggregate 1.12e-2, worse than the 2,000-epoch net's\n  8.58e-3)",
            [long_["trained_mean_rel_l2"], long_["trained_rel_l2"], None, trained["rel_l2"]],
        ),
        (
            "Our test error follows it only to k≈5,000 and then turns (3.36e-3 at\n  14,000)",
            [None, curve[14000]["mean_rel_l2"], None],
        ),
    ]  # fmt: skip
    text = section("results.md", "2d. MultiONet")
    summary = (DOCS / "results.md").read_text()
    for quoted, sources in cases:
        assert quoted in text or quoted in summary, f"results.md 2d: the text {quoted!r} is gone"
        found = figures(quoted)
        assert len(found) == len(sources), f"{quoted!r} has figures {found}"
        for fig, value in zip(found, sources, strict=True):
            if value is not None:
                agrees(fig, value, quoted)


# -- docs/results.md section 2c: the viscid DeepONet curves and Krylov tables -------------


def _curve(baseline: str) -> dict[int, dict]:
    return {
        r["rank"]: r
        for r in _json("docs/results/burgers_curve.json")
        if r["method"] == "subspace_streamed" and r["baseline"] == baseline
        and r.get("fraction") == 0.5 and r.get("kmax") == 9000
    }  # fmt: skip


def _transposed(table: str) -> dict[str, list[str]]:
    """A table whose header row holds k: ``{first cell: the other cells}``, ``"k"`` too."""
    lines = [ln for ln in table.splitlines() if ln.startswith("|") and not ln.startswith("|---")]
    cells = [[c.strip() for c in ln.strip("|").split("|")] for ln in lines]
    return {row[0]: row[1:] for row in cells}


CURVES = [  # (table index in 2c, baseline, rows checked: docs row label -> JSON field)
    (0, "burgers_viscid_authors_tanh",
     {"test, mean per-function": "mean_rel_l2", "test, aggregate rel. L2": "rel_l2",
      "lin. train MSE": "train_loss"}),
    (1, "burgers_viscid_authors_relu",
     {"test, mean per-function": "mean_rel_l2", "test, aggregate": "rel_l2",
      "lin. train MSE": "train_loss"}),
    (4, "burgers_viscid_authors_tanh_4k",
     {"test, mean per-function": "mean_rel_l2", "test, aggregate": "rel_l2"}),
]  # fmt: skip


@pytest.mark.parametrize("k, baseline, fields", CURVES, ids=["tanh", "relu", "tanh_4k"])
def test_viscid_curve_tables_quote_their_json(k, baseline, fields):
    table = _transposed(docs_tables.tables(section("results.md", "2c. The paper"))[k])
    curve = _curve(baseline)
    ranks = [int(first(c).replace(",", "")) for c in table["k"]]
    assert ranks and all(r in curve for r in ranks), f"{baseline}: ranks {ranks}"
    for label, field in fields.items():
        for rank, cell in zip(ranks, table[label], strict=True):
            agrees(first(cell), curve[rank][field], f"{baseline} k={rank} {label}")


KRYLOV_TABLES = [  # (table index in 2c, baseline, docs row start -> config)
    (2, "burgers_viscid_authors_tanh",
     {"defaults (": "defaults", "**defaults, `maxiter` 1,000**": "maxiter1000",
      "Nyström rank 1,000": "nys1000", "Nyström rank 2,000": "nys2000",
      "no preconditioner": "plain"}),
    (3, "burgers_viscid_authors_tanh_4k",
     {"defaults": "defaults", "**`Krylov(maxiter=1000)`**": "maxiter1000",
      "Nyström rank 1,000": "nys1000"}),
]  # fmt: skip


@pytest.mark.parametrize("k, baseline, configs", KRYLOV_TABLES, ids=["tanh", "tanh_4k"])
def test_viscid_krylov_tables_quote_their_json(k, baseline, configs):
    src = {r["config"]: r for r in _json("docs/results/burgers_krylov.json")
           if r["baseline"] == baseline}  # fmt: skip
    body = rows(docs_tables.tables(section("results.md", "2c. The paper"))[k])
    checked = 0
    for row in body:
        name = next(iter(row.values()))
        cfg = next((c for start, c in configs.items() if name.startswith(start)), None)
        if cfg is None:
            continue
        r, checked = src[cfg], checked + 1
        agrees(first(row["test, mean"]), r["mean_rel_l2"], f"{cfg} mean")
        agrees(first(row["reduction"]), r["trained_mean_rel_l2"] / r["mean_rel_l2"], cfg)
        agrees(first(row["aggregate"]), r["rel_l2"], f"{cfg} aggregate")
        agrees(first(row["iterations (best)"]), r["iterations"], f"{cfg} iterations")
        agrees(first(row["wall"]), r["wall_s"], f"{cfg} wall")
        agrees_mem(row["peak RSS"], r["peak_mem_bytes"], f"{cfg} peak")
    assert checked == len(configs)


def test_filters_table_quotes_its_json():
    """results.md 2c's three-filters table (and its copy in solvers.md) against
    burgers_filters.json, and its truncation row against the curve."""
    src = _json("docs/results/burgers_filters.json")
    trunc = _curve("burgers_viscid_authors_tanh")[4000]
    base = next(r for r in _json("docs/results/burgers_curve.json")
                if r["method"] == "trained" and r["baseline"] == "burgers_viscid_authors_tanh"
                and r.get("kmax") == 9000)["mean_rel_l2"]  # fmt: skip
    plain = src["iterations"]["path"][-1]
    damp = next(r for r in src["damp"]["rows"] if r["k"] == 4000)
    nys = next(p for p in src["krylov_path"]["path"] if p["iterations"] == 75)
    want = {
        "truncation": (trunc["mean_rel_l2"], trunc["rel_l2"]),
        "plain LSMR": (plain["mean_rel_l2"], plain["rel_l2"]),
        "Tikhonov": (damp["mean_rel_l2"], damp["rel_l2"]),
        "Nyström-preconditioned": (nys["mean_rel_l2"], nys["rel_l2"]),
    }
    for page, heading in (("results.md", "2c. The paper"), ("solvers.md", "Three filters")):
        tables = [t for t in docs_tables.tables(section(page, heading)) if "filter" in t]
        assert tables, f"{page}: no filters table under {heading!r}"
        body = rows(tables[0])
        assert len(body) == len(want)
        for row in body:
            name = next(iter(row.values()))
            key = next(k for k in want if name.startswith(k))
            mean, agg = want[key]
            agrees(first(row["test, mean"]), mean, f"{page} {key} mean")
            agrees(first(row["reduction"]), base / mean, f"{page} {key} reduction")
            agrees(first(row["aggregate"]), agg, f"{page} {key} aggregate")
            if key == "Tikhonov":  # k=4,000 (Σφ = 4,083; 478 iterations)
                k, eff, itn = figures(row["best level"])
                agrees(k, damp["k"], "damp k")
                agrees(eff, damp["effective_rank"], "effective rank")
                agrees(itn, damp["itn"], "damp iterations")
            if key == "plain LSMR":
                agrees(first(row["cost"]), src["iterations"]["wall_s"], "plain LSMR wall")
            if key == "Nyström-preconditioned":
                agrees(first(row["cost"]), src["krylov_path"]["wall_s"], "Nystrom path wall")


def test_multionet_more_data_prose_quotes_its_json():
    _, _, best, _, kry = _multionet()
    r = kry["burgers_viscid_authors_tanh_multionet_n4000", "defaults"]
    text = section("results.md", "2d. MultiONet")
    quoted = (
        "(training\n  error 4.21e-3, test 4.18e-3 aggregate, 4.85e-3 mean), and `Krylov()` takes "
        "the test error\n  to 1.22e-3 mean (8.60e-4 aggregate, 3.98x) in 3.76 GiB, stopped by "
        "validation after 190\n  iterations, with training and test gains now close (6.6x and "
        "4.9x aggregate). The\n  refined error is 1.6x below"
    )
    assert quoted in text, "results.md 2d: the more-data passage is gone"
    values = [r["trained_train_rel_l2"], r["trained_rel_l2"], r["trained_mean_rel_l2"],
              r["mean_rel_l2"], r["rel_l2"], r["trained_mean_rel_l2"] / r["mean_rel_l2"],
              r["peak_mem_bytes"] / 2**30, r["iterations"],
              r["trained_train_rel_l2"] / r["train_rel_l2"], r["trained_rel_l2"] / r["rel_l2"],
              best["mean_rel_l2"] / r["mean_rel_l2"]]  # fmt: skip
    found = figures(quoted)
    assert len(found) == len(values), found
    for fig, value in zip(found, values, strict=True):
        agrees(fig, value, "2d, more data")


# -- section 6: classification ---------------------------------------------------------------


def test_classification_memory_prose_quotes_its_results():
    """The memory paragraph's figures are the lean and warm rows' (issue 17; the targets
    list above it is a copied region, checked by test_docs_tables.py)."""
    page = (DOCS / "results.md").read_text()
    rows = {r["key"]: r for r in _json("bench/results/classification_cpu.json")["rows"]}

    def one(prefix):
        (key,) = [k for k in rows if k.startswith(prefix)]
        return rows[key]

    sub = {n: one(f"paper/{n}/lean_subspace/") for n in ("digits", "mnist")}
    kry = {n: one(f"paper/{n}/lean_krylov_budget/") for n in ("digits", "mnist")}
    warm = one("paper/digits/warm_krylov_budget/")
    mib = 2**20
    text = (
        "98.4% against 97.4% in 60 MiB against 313 MiB on digits (**0.19x**), 90.6% against "
        "84.2% in\n215 MiB against 1.28 GiB on MNIST (**0.16x**)"
    )
    assert text in page
    values = [
        100 * kry["digits"]["test_acc"], 100 * sub["digits"]["test_acc"],
        kry["digits"]["increment_bytes"] / mib, sub["digits"]["increment_bytes"] / mib,
        kry["digits"]["increment_bytes"] / sub["digits"]["increment_bytes"],
        100 * kry["mnist"]["test_acc"], 100 * sub["mnist"]["test_acc"],
        kry["mnist"]["increment_bytes"] / mib, sub["mnist"]["increment_bytes"] / 2**30,
        kry["mnist"]["increment_bytes"] / sub["mnist"]["increment_bytes"],
    ]  # fmt: skip
    found = figures(text)
    assert len(found) == len(values), found
    for fig, value in zip(found, values):
        agrees(fig, value, "results.md section 6")
    text = (
        "added 106 MiB with glibc's defaults and 60 MiB with the\nthreshold fixed, against 59 MiB"
    )
    assert text in page
    for fig, value in zip(figures(text), [warm["increment_bytes"] / mib,
                                          kry["digits"]["increment_bytes"] / mib,
                                          warm["planned_bytes"] / mib]):  # fmt: skip
        agrees(fig, value, "results.md section 6")


def test_classification_flips_quote_their_json():
    """What section 6 says of the test images the long-trained network's subspace refines
    changed (the rows' ``flips``)."""
    rows = {r["key"]: r for r in _json("bench/results/classification_cpu.json")["rows"]}
    page = (DOCS / "results.md").read_text()
    (lost,) = rows["trained/digits/long/softmax_mse/subspace"]["flips"]
    assert not lost["now_correct"] and lost["margin_rank"] == 0
    text = "least confident of the 497 (its top two probabilities 0.016 apart)"
    assert text in page
    agrees("0.016", lost["margin"], "results.md section 6")
    flips = rows["trained/digits/long/mse/subspace"]["flips"]
    text = (
        "it changed 16 test images, 7 to right and 9 to wrong,\namong them confident ones: "
        "probability margins up to 0.99999"
    )
    assert text in page
    wrong = [f for f in flips if not f["now_correct"]]
    values = [len(flips), len(flips) - len(wrong), len(wrong), max(f["margin"] for f in wrong)]
    for fig, value in zip(figures(text), values, strict=True):
        agrees(fig, value, "results.md section 6")


def test_classification_rank_study_prose_quotes_its_json():
    """Section 6's reading of the dense-Jacobian study (exact truncations and ridge of the
    mse problem) and of the five networks' cross-entropy refines."""
    page = (DOCS / "results.md").read_text()

    def changes(path):
        return {r["solve"]: r for r in _json(path)["rows"]}

    full = changes("bench/results/classification_rank_study_cpu.json")
    quick = changes("bench/results/classification_rank_study_train200_cpu.json")
    tsvd = "truncated SVD, rank "
    assert full["ls.refine, Subspace() defaults"]["test_change"] == -2
    assert full[tsvd + "1000"]["test_change"] == -2
    text = "(+7 at 1,500, +10 at 3,000)"
    assert text in page
    values = [full[tsvd + "1500"]["test_change"], full[tsvd + "3000"]["test_change"]]
    assert values == [7, 10]  # the quoted +7 and +10
    last = full[tsvd + "10000 (interpolates)"]
    text = "(−65 when all 10,000\ndirections interpolate, with `‖δ‖` 44x larger)"
    assert text in page
    assert last["test_change"] == -65
    agrees("44", last["delta_norm"] / full[tsvd + "1000"]["delta_norm"], "results.md section 6")
    truncations = {k: r for k, r in full.items() if k.startswith(tsvd)}
    best = min(truncations.values(), key=lambda r: r["test_mse"])
    text = "(lowest, 0.131, at rank 4,000,\n+9 images)"
    assert text in page
    assert best["solve"] == tsvd + "4000" and best["test_change"] == 9
    agrees("0.131", best["test_mse"], "results.md section 6")
    ridge = [r["test_change"] for k, r in full.items() if k.startswith("ridge")]
    assert max(ridge) == 8 and sorted({ridge[0], ridge[-1]}) == [2, 4]
    text = (
        "the exact rank 1,000\ngained 13 where rank 2,000 (interpolation) lost 16, and "
        "`Krylov()` lost 11"
    )
    assert text in page
    assert quick[tsvd + "1000"]["test_change"] == 13
    assert quick[tsvd + "2000 (interpolates)"]["test_change"] == -16
    assert quick["ls.refine, Krylov() defaults"]["test_change"] == -11
    rows = {r["key"]: r for r in _json("bench/results/classification_cpu.json")["rows"]}
    for method, (lo, hi) in {"subspace": (4, 12), "krylov": (4, 12)}.items():
        got = []
        for seed in range(5):
            pre = "trained/digits/long" if seed == 0 else f"seeds/digits/long/{seed}"
            base, r = rows[f"{pre}/trained"], rows[f"{pre}/cross_entropy/{method}"]
            got.append(round((r["test_acc"] - base["test_acc"]) * 497))
            assert r["train_ce_network"] < base["train_ce"], (seed, method)
        assert (min(got), max(got)) == (lo, hi), (method, got)
    text = (
        "(+4 to +12 images by the subspace route, +4 to +12 by Krylov's; +3 to +9 and +1 to\n"
        "+8 with 3 steps)"
    )
    assert text in page


def test_guide_mixed_precision_prose_quotes_the_ecosystem_json():
    """The guide's reading of the ecosystem table's `precision='mixed'` rows."""
    page = (DOCS / "guide.md").read_text()
    rows = [r for r in _json("bench/results/ecosystem_cpu.json")["rows"]
            if "krylov, precision='mixed'" in r]  # fmt: skip
    assert {r["model"] for r in rows} == {"fno", "gpt2", "transformer-encoder"}
    speed = [r["krylov"]["wall_s"] / r["krylov, precision='mixed'"]["wall_s"] for r in rows]
    loss = [r["krylov, precision='mixed'"]["loss_linearized"] / r["krylov"]["loss_linearized"]
            for r in rows]  # fmt: skip
    text = (
        "was 1.3x to\n2x faster here and fitted less tightly: a linearized loss 6x to 1,924x higher"
    )
    assert text in page
    for fig, value in zip(figures(text), [min(speed), max(speed), min(loss), max(loss)]):
        agrees(fig, value, "guide.md, ecosystem models")
    worst = max(rows, key=lambda r: r["krylov, precision='mixed'"]["loss_linearized"]
                / r["krylov"]["loss_linearized"])  # fmt: skip
    assert worst["model"] == "fno"
    fno = worst
    text = "mixed stopped at a\n  linearized loss of 1.15e-7 where the copy reached 5.96e-11"
    assert text in (DOCS / "results.md").read_text()
    values = [fno["krylov, precision='mixed'"]["loss_linearized"], fno["krylov"]["loss_linearized"]]
    for fig, value in zip(figures(text), values, strict=True):
        agrees(fig, value, "results.md, FNO")


def test_classification_validation_rank_prose_quotes_its_json():
    """What section 6 and the guide say of the rank chosen on validation data: by
    `Subspace(rank="auto")` (its rescans above the default grid) and over given ranks."""
    page = (DOCS / "results.md").read_text()
    guide = (DOCS / "guide.md").read_text()
    rows = {r["key"]: r for r in _json("bench/results/classification_cpu.json")["rows"]}
    pre = "trained/digits/long"
    los = ("mse", "softmax_mse")
    base = rows[f"{pre}/trained"]["test_acc"]
    auto = {lo: rows[f"{pre}/{lo}/subspace_auto"] for lo in los}
    wide = {lo: rows[f"{pre}/{lo}/subspace_auto_wide"] for lo in los}
    default = {lo: rows[f"{pre}/{lo}/subspace"] for lo in los}
    assert [auto[lo]["rank"] for lo in los] == [3000, 1500]
    assert [auto[lo]["svd_ranks"] for lo in los] == [[1000, 2000, 4000], [1000, 2000]]
    assert [wide[lo]["rank"] for lo in los] == [4000, 1500]
    for got in (auto, wide):
        assert [round((got[lo]["test_acc"] - base) * 497) for lo in los] == [9, 0]
    assert "`mse` (+9 images, 98.8%; randomized SVDs at 1,000, 2,000 and 4,000)" in page
    agrees("98.8", 100 * auto["mse"]["test_acc"], "results.md section 6")
    text = "in 242 s and 68 s against 17 s and 20 s for the default `Subspace()`"
    assert text in page
    values = [auto["mse"]["wall_s"], auto["softmax_mse"]["wall_s"],
              default["mse"]["wall_s"], default["softmax_mse"]["wall_s"]]  # fmt: skip
    for fig, value in zip(figures(text), values, strict=True):
        agrees(fig, value, "results.md section 6")
    assert {r["threads"] for r in (*auto.values(), *default.values(), *wide.values())} == {1}
    text = "4,000 and 1,500, with the same test accuracy, in 200 s and 178 s"
    assert text in page
    for fig, value in zip(figures(text)[2:], [wide[lo]["wall_s"] for lo in los], strict=True):
        agrees(fig, value, "results.md section 6")
    text = "on the first, in 14x the time of the default `Subspace()`"
    assert text in " ".join(guide.split())
    agrees("14", auto["mse"]["wall_s"] / default["mse"]["wall_s"], "guide.md, classification")

    def over_seeds(lo, col):
        got, chosen = [], []
        for seed in range(5):
            p = pre if seed == 0 else f"seeds/digits/long/{seed}"
            r = rows[f"{p}/{lo}/{col}"]
            got.append(round((r["test_acc"] - rows[f"{p}/trained"]["test_acc"]) * 497))
            chosen.append(r["rank"])
        return got, chosen

    got, chosen = over_seeds("mse", "subspace_auto")
    assert (min(got), max(got)) == (4, 10) and sorted(chosen) == [3000] * 4 + [4000]
    edge = [w for w in rows["seeds/digits/long/4/mse/subspace_auto"]["warnings"]
            if "largest rank scanned, 4000" in w]  # fmt: skip
    assert edge and chosen[4] == 4000
    text = (
        'by +4 to +10 images with `Subspace(rank="auto")` (it chose 3,000 on\nfour and 4,000 on '
        "one, where it warned that a larger rank may be better still), and by +5 to\n+10 over the "
        "given ranks (3,000 or 4,000)"
    )
    assert text in page
    got, chosen = over_seeds("mse", "subspace_auto_wide")
    assert (min(got), max(got), set(chosen)) == (5, 10, {3000, 4000})
    assert "gained 4 to 10 images on all five" in " ".join(guide.split())
    got_wide, _ = over_seeds("softmax_mse", "subspace_auto_wide")
    got_auto, _ = over_seeds("softmax_mse", "subspace_auto")
    assert (min(got_wide), max(got_wide), min(got_auto), max(got_auto)) == (0, 3, -1, 1)
    assert got_auto.index(-1) == 3
    text = '+0 to +3 over the given ranks, and -1 to +1 by `rank="auto"`'
    assert text in page
    (lost,) = rows["seeds/digits/long/3/softmax_mse/subspace_auto"]["flips"]
    assert not lost["now_correct"] and lost["margin_rank"] == 0
    assert "(its top two probabilities 0.054\napart)" in page
    agrees("0.054", lost["margin"], "results.md section 6")


def test_classification_softmax_study_prose_quotes_its_json():
    """Section 6's reading of the dense-Jacobian study of the softmax residual: the image the
    subspace default lost is a tie, and no solve moves the median test image."""
    page = (DOCS / "results.md").read_text()
    study = _json("bench/results/classification_rank_study_softmax_mse_cpu.json")
    rows = {r["solve"]: r for r in study["rows"]}
    text = "(½‖p − y‖² = 2.6e-3)"
    assert text in page
    agrees("2.6e-3", study["loss_before"], "results.md section 6")
    assert "under 1e-6" in page
    assert max(r["median_dp"] for r in rows.values()) < 1e-6

    def lost(name):
        return [(f["image"], f["top2"]) for f in rows[name]["flips"] if not f["now_correct"]]

    text = "lost image\n#268 (its top two probabilities 0.506 and 0.491)"
    assert text in page
    for name in ("ls.refine, Subspace() defaults",
                 "ls.refine, Subspace() defaults, dtype=torch.float64"):  # fmt: skip
        ((image, top2),) = lost(name)
        assert image == 268 and len(rows[name]["flips"]) == 1, name
        for fig, value in zip(figures(text)[1:], top2, strict=True):
            agrees(fig, value, "results.md section 6")
    text = "the exact truncation at rank 250 and two\nof the four ridge solves lost another, #376"
    assert text in page
    losers = [k for k in rows if lost(k) and lost(k)[0][0] == 376]
    ridge = [k for k in rows if k.startswith("ridge")]
    assert "truncated SVD, rank 250" in losers and len(ridge) == 4
    assert sum(k in losers for k in ridge) == 2
    assert "(rank 778, where `J Jᵀ`'s eigenvalues reach float64's resolution)" in page
    assert study["numerical_rank"] == 778
    for name in ("truncated SVD, rank 778 (interpolates)", "ls.refine, Krylov() defaults"):
        assert rows[name]["flips"] == [], name


def test_guide_classification_prose_quotes_the_seed_rows():
    """The guide's reading of the five long-trained CNNs' subspace refines."""
    page = " ".join((DOCS / "guide.md").read_text().split())  # the prose, unwrapped
    rows = {r["key"]: r for r in _json("bench/results/classification_cpu.json")["rows"]}

    def changes(col):
        got = []
        for seed in range(5):
            pre = "trained/digits/long" if seed == 0 else f"seeds/digits/long/{seed}"
            base = rows[f"{pre}/trained"]["test_acc"]
            got.append(round((rows[f"{pre}/{col}"]["test_acc"] - base) * 497))
        return got

    soft = changes("softmax_mse/subspace")
    assert (
        "the subspace default lost 1 image on one (its top two probabilities 0.506 and "
        "0.491), gained 1 on two and changed none on two"
    ) in page
    assert sorted(soft) == [-1, 0, 0, 1, 1]
    assert '`"cross_entropy"` gained 4 to 12' in page
    ce = changes("cross_entropy/subspace")
    assert (min(ce), max(ce)) == (4, 12)
    mse = changes("mse/subspace")
    assert "lost 1 to 5 of 497 test images on four of them and gained 1 on the fifth" in page
    assert sorted(mse) == [-5, -4, -2, -1, 1]


def test_classification_cross_entropy_prose_quotes_its_json():
    """Section 6's reading of the trained CNNs' cross-entropy refines against the peers."""
    page = " ".join((DOCS / "results.md").read_text().split())
    rows = {r["key"]: r for r in _json("bench/results/classification_cpu.json")["rows"]}

    def row(level, peer):  # a peer's row: its key ends with its budget
        (key,) = [k for k in rows if k.startswith(f"{level}/{peer}/")]
        return rows[key]

    ce = {(lv, m): rows[f"trained/digits/{lv}/cross_entropy/{m}"]
          for lv in ("short", "long") for m in ("subspace", "krylov")}  # fmt: skip
    adam = {lv: row(f"peers/digits/{lv}", "adam") for lv in ("short", "long")}
    text = "(98.8% against continued Adam's 97.8% in the same 424 s)"
    assert text in page
    values = [100 * ce["long", "subspace"]["test_acc"], 100 * ce["long", "krylov"]["test_acc"],
              100 * adam["long"]["test_acc"], ce["long", "krylov"]["wall_s"]]  # fmt: skip
    for fig, value in zip(["98.8", "98.8", "97.8", "424"], values, strict=True):
        agrees(fig, value, "results.md section 6")
    text = (
        "(97.8% against continued Adam's 97.4%, L-BFGS 95.6%, the probes 94% and the last "
        "layer 93.4%, in 128 s)"
    )
    assert text in page
    peers = [row("peers/digits/short", p)["test_acc"] for p in ("lbfgs", "probe", "last_layer")]
    values = [ce["short", "subspace"]["test_acc"], adam["short"]["test_acc"], *peers]
    for fig, value in zip(figures(text)[:5], values, strict=True):
        agrees(fig, 100 * value, "results.md section 6")
    agrees("128", ce["short", "subspace"]["wall_s"], "results.md section 6")
    assert "**every peer beats the Krylov route** (90.5%)" in page
    agrees("90.5", 100 * ce["short", "krylov"]["test_acc"], "results.md section 6")
    others = [r["test_acc"] for k, r in rows.items() if k.startswith("peers/digits/short/")]
    assert len(others) == 5 and min(others) > ce["short", "krylov"]["test_acc"]
    steps = ce["short", "subspace"]["steps"]
    assert "kept 3% to 32% of each of its first four steps (and 0.4% to 6% of them for" in page
    agrees("3", 100 * steps[0]["t"], "first step")
    agrees("32", 100 * steps[3]["t"], "fourth step")
    assert all(e["t"] < 1 for e in steps[:4]) and [e["t"] for e in steps[4:6]] == [1.0, 1.0]
    agrees("0.4", 100 * steps[0]["network_t"], "first network step")
    agrees("6", 100 * steps[3]["network_t"], "fourth network step")
    kry = ce["short", "krylov"]["steps"]
    assert "(1% kept)" in page and len(kry) == 2 and kry[1]["network_t"] is None
    agrees("1", 100 * kry[0]["t"], "Krylov's first step")
    assert "classifies 88.9% (the trained network 89.7%)" in page
    agrees("88.9", 100 * ce["short", "subspace"]["test_acc_network"], "results.md section 6")
    agrees("89.7", 100 * rows["trained/digits/short/trained"]["test_acc"], "results.md")
    assert ce["short", "subspace"]["selected_step"] == 6
    assert all(ce["long", m]["selected_step"] == 10 for m in ("subspace", "krylov"))
