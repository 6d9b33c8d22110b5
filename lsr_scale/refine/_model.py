"""The refined model: a linear predictor around the trained weights."""

from __future__ import annotations

import copy
import hashlib
import warnings
from pathlib import Path

import torch

from .._checks import check_inputs
from ..operators import module_jvp, unflatten_params
from ..operators._params import to_precision

__all__ = ["RefinedModel"]

_FORMAT = "lsr_scale.RefinedModel"
_VERSION = 2  # 2: a fingerprint of the function refined (1: none)
_PROBE_ROWS = 8


def _as_tuple(inputs):
    return tuple(inputs) if isinstance(inputs, (tuple, list)) else (inputs,)


def _param_signature(model: torch.nn.Module) -> dict[str, tuple]:
    return {name: tuple(p.shape) for name, p in model.named_parameters()}


class RefinedModel:
    """The result of :func:`lsr_scale.refine`.

    Calling it evaluates the *linear predictor*

        q_lin(x) = q(theta0, x) + J_q(x) delta,

    with one JVP per batch of new inputs. This is what LSR refines, and it is usually far
    more accurate than the network at ``theta0 + delta`` (see :meth:`to_network`). After
    ``refine(..., loss="softmax_mse")`` (:attr:`output` ``"softmax"``) it returns the
    linearized probabilities ``p0(x) + J_p(x) delta``, ``p = softmax(q)``, instead.

    Attributes
    ----------
    delta : torch.Tensor
        The flat parameter update, ordered as :attr:`param_names`; a complex parameter
        contributes its (real, imaginary) pairs (see :func:`lsr_scale.operators.flatten_params`).
    delta_dict : dict
        The update as a name -> tensor dict: complex tensors for complex parameters, which
        :meth:`predict` and :meth:`to_network` add as such.
    info : dict
        Wall time per phase (``times``), ``peak_mem_bytes``, ``rank``, the solver result and
        the preconditioner used. See :func:`lsr_scale.refine`.
    model : torch.nn.Module
        The network that was refined (never modified). When ``refine`` ran in another
        dtype, this is a private converted copy.
    output : str or None
        ``"softmax"`` when the predictor is linearized through a softmax of the network's
        outputs (``loss="softmax_mse"``), else ``None``.
    network_delta : torch.Tensor or None
        The update :meth:`to_network` adds instead of :attr:`delta`, when they differ
        (``loss="cross_entropy"``: the step length of the network's line search); ``None``
        otherwise.
    """

    def __init__(
        self, model, param_names, delta, info: dict, *, probe_inputs=None, io_dtype=None,
        output=None, network_delta=None,
    ):  # fmt: skip
        if output not in (None, "softmax"):
            raise ValueError(f"output: expected None or 'softmax', got {output!r}")
        if network_delta is not None and network_delta.shape != delta.shape:
            raise ValueError(
                f"network_delta: expected delta's shape {tuple(delta.shape)}, got "
                f"{tuple(network_delta.shape)}"
            )
        self.output = output
        self.network_delta = network_delta
        # ``model`` is a private copy holding theta0 (parameters and buffers) at the
        # linearization point; the user's network is never referenced or modified.
        self.model = model
        self.param_names = list(param_names)  # the refined subset, in delta's order
        self.delta = delta
        self.info = info
        # the dtype of the user's model: inputs of it are accepted, computed in self.dtype
        # (e.g. float64 after a float64 Krylov solve of a float32 model) and returned in it
        self.io_dtype = io_dtype or delta.dtype
        # a few data rows whose outputs identify the function on save/load (None for
        # residual_fn refinements, which are identified by a hash of theta0 instead)
        self._probe_inputs = (
            None
            if probe_inputs is None
            else tuple(x[:_PROBE_ROWS].detach().clone() for x in _as_tuple(probe_inputs))
        )

    @property
    def theta0(self) -> dict[str, torch.Tensor]:
        """The parameters at the linearization point (all of them, by name)."""
        return {k: v.detach() for k, v in self.model.named_parameters()}

    # ------------------------------------------------------------------ views
    @property
    def delta_dict(self) -> dict[str, torch.Tensor]:
        like = {n: self.theta0[n] for n in self.param_names}
        return unflatten_params(self.delta, like)

    @property
    def dtype(self) -> torch.dtype:
        return self.delta.dtype

    @property
    def device(self) -> torch.device:
        return self.delta.device

    # ------------------------------------------------------------------ prediction
    def predict(self, inputs, *, batch_size: int | None = 4096) -> torch.Tensor:
        """Evaluate the linear predictor on model inputs (a tensor or a tuple of tensors).

        Inputs are split along their first dimension into batches of ``batch_size`` rows
        (None: one batch). They must have the refined model's device, and its dtype
        (:attr:`dtype`) or the dtype of the model that was refined (:attr:`io_dtype`): when
        ``refine`` solved in a wider precision than the model's, inputs of the model's dtype
        are widened, the predictor is evaluated in :attr:`dtype`, and the output comes back in
        the inputs' dtype.
        """
        inputs = _as_tuple(inputs)
        first = next((x for x in inputs if isinstance(x, torch.Tensor)), None)
        narrow = (
            first is not None
            and first.is_floating_point()
            and first.dtype == self.io_dtype != self.dtype
        )
        if narrow:
            inputs = tuple(
                x.to(self.dtype) if isinstance(x, torch.Tensor) and x.dtype == self.io_dtype else x
                for x in inputs
            )
        check_inputs(
            inputs, "inputs", self.dtype, self.device, whose="the refined model's", allow_empty=True
        )
        n = inputs[0].shape[0]
        tangents = self.delta_dict
        step = n if not batch_size else int(batch_size)
        outs = []
        for start in range(0, max(n, 1), max(step, 1)):
            chunk = tuple(x[start : start + step] for x in inputs)
            with torch.no_grad():
                out, dout = module_jvp(self.model, chunk, tangents)
            if self.output == "softmax":  # p + dp, dp = (diag(p) - p p^T) dout, row by row
                out = torch.softmax(out, dim=-1)
                dout = out * (dout - (out * dout).sum(-1, keepdim=True))
            outs.append(out + dout)
        out = torch.cat(outs, dim=0)
        return out.to(self.io_dtype) if narrow else out

    __call__ = predict

    def to_network(self) -> torch.nn.Module:
        """A deep copy of the network with parameters ``theta0 + delta``.

        This is *not* the linear predictor and is usually less accurate than it; offered
        for deployment where a plain network is required. It is in the precision of the
        model that was refined (:attr:`io_dtype`), also when the products were wider. It
        returns what the network returns: logits after ``loss="softmax_mse"`` (no softmax is
        added) and after ``loss="cross_entropy"``, where it is the Gauss-Newton iterate
        ``theta0 + network_delta`` whose step length the line search chose on the network's
        own training loss (see :attr:`network_delta`).
        """
        net = copy.deepcopy(self.model)
        delta = self.delta_dict
        if self.network_delta is not None:
            like = {n: self.theta0[n] for n in self.param_names}
            delta = unflatten_params(self.network_delta, like)
        with torch.no_grad():
            for name, p in net.named_parameters():
                if name in delta:
                    p.add_(delta[name])
        if self.io_dtype != self.dtype:  # products were wider (Krylov's float64): the
            to_precision(net, self.io_dtype)  # network comes back in the model's precision
        return net

    # ------------------------------------------------------------------ persistence
    def save(self, path) -> None:
        """Save theta0, delta and metadata (not the architecture) with ``torch.save``."""
        payload = {
            "format": _FORMAT,
            "version": _VERSION,
            "io_dtype": str(self.io_dtype).removeprefix("torch."),
            "model_class": type(self.model).__qualname__,
            "signature": _param_signature(self.model),
            "param_names": list(self.param_names),
            "theta0": {k: v.detach().cpu() for k, v in self.model.named_parameters()},
            "buffers": {k: v.detach().cpu() for k, v in self.model.named_buffers()},
            "delta": self.delta.detach().cpu(),
            "output": self.output,
            "network_delta": (
                None if self.network_delta is None else self.network_delta.detach().cpu()
            ),
            "info": _jsonable(self.info),
            "fingerprint": self._fingerprint(),
        }
        torch.save(payload, Path(path))

    def _fingerprint(self) -> dict:
        if self._probe_inputs is None:
            return {"kind": "theta0_sha256", "value": _params_hash(self.model)}
        with torch.no_grad():
            out = self.model(*self._probe_inputs)
        return {
            "kind": "outputs",
            "inputs": [x.detach().cpu() for x in self._probe_inputs],
            "outputs": out.detach().cpu(),
        }

    @classmethod
    def load(cls, path, model: torch.nn.Module, *, map_location=None) -> RefinedModel:
        """Load a refined model saved by :meth:`save` for an architecture-matching ``model``.

        The predictor uses the saved ``theta0`` and buffers: ``model`` only supplies the
        architecture, and is copied (converted to the saved dtype), never modified.

        The file holds a fingerprint of the function that was refined, checked here:
        for ``data=`` refinements, the outputs at ``theta0`` on a few stored input rows (so
        a model with the same shapes and another function, ReLU for tanh, is refused); for
        ``residual_fn`` refinements, a hash of the parameters at ``theta0``, which
        ``model``'s parameters must match.

        Raises
        ------
        ValueError
            If the file is not a saved RefinedModel, ``model``'s parameter names or shapes
            differ from the saved ones, or ``model`` fails the fingerprint.
        """
        payload = torch.load(Path(path), map_location=map_location or "cpu", weights_only=True)
        if not isinstance(payload, dict) or payload.get("format") != _FORMAT:
            raise ValueError(f"{path}: expected a file written by RefinedModel.save")
        sig = _param_signature(model)
        saved = {k: tuple(v) for k, v in payload["signature"].items()}
        if sig != saved:
            missing = sorted(set(saved) - set(sig))
            extra = sorted(set(sig) - set(saved))
            shape = sorted(k for k in set(sig) & set(saved) if sig[k] != saved[k])
            raise ValueError(
                f"model: expected the architecture the refined model was saved with "
                f"({payload['model_class']}, {len(saved)} parameter tensors), got "
                f"{type(model).__qualname__} with missing {missing[:5]}, unexpected "
                f"{extra[:5]}, different shapes "
                f"{[(k, saved[k], sig[k]) for k in shape[:5]]}"
            )
        delta = payload["delta"]
        version = payload.get("version")
        if version not in (1, _VERSION):
            raise ValueError(f"{path}: expected save format version 1 or {_VERSION}, got {version}")
        fp = payload.get("fingerprint")
        if version == 1:
            warnings.warn(
                f"{path}: saved by lsr_scale 0.1 without a fingerprint; the model's function "
                "cannot be verified. Save it again to add one.",
                UserWarning,
                stacklevel=2,
            )
        elif fp["kind"] == "theta0_sha256":
            given = _params_hash(to_precision(copy.deepcopy(model), delta.dtype, "cpu"))
            if given != fp["value"]:
                raise ValueError(
                    "model: expected the network the residual_fn refinement was made from "
                    "(its parameters at theta0, by hash), got one with other parameter values"
                )
        dev = torch.device(map_location) if map_location is not None else _module_device(model)
        # complex parameters become the complex dtype of delta's precision (Module.to would
        # cast them to real, dropping the imaginary parts)
        work = to_precision(copy.deepcopy(model), delta.dtype, dev)
        with torch.no_grad():
            for k, v in work.named_parameters():
                v.copy_(payload["theta0"][k])
            for k, v in work.named_buffers():
                if k in payload["buffers"]:
                    v.copy_(payload["buffers"][k])
        probe = None
        if fp is not None and fp["kind"] == "outputs":
            probe = tuple(x.to(dev) for x in fp["inputs"])
            with torch.no_grad():
                out = work(*probe).detach().cpu()
            ref = fp["outputs"]
            tol = 1e3 * torch.finfo(ref.dtype).eps * (1.0 + float(ref.abs().max()))
            if out.shape != ref.shape or float((out - ref).abs().max()) > tol:
                diff = float((out - ref).abs().max()) if out.shape == ref.shape else float("nan")
                raise ValueError(
                    "model: expected the function the refined model was saved with (its outputs "
                    f"on {ref.shape[0]} stored inputs at theta0), got outputs that differ by "
                    f"{diff:.3e} (tolerance {tol:.1e}): another activation or architecture?"
                )
        io = payload.get("io_dtype")
        io_dtype = getattr(torch, io) if isinstance(io, str) else None
        return cls(
            work,
            payload["param_names"],
            delta.to(dev),
            payload["info"],
            probe_inputs=probe,
            io_dtype=io_dtype,
            output=payload.get("output"),
            network_delta=(
                None if payload.get("network_delta") is None else payload["network_delta"].to(dev)
            ),
        )

    def __repr__(self) -> str:
        return (
            f"<RefinedModel method={self.info.get('method')} rank={self.info.get('rank')} "
            f"params={self.delta.numel()} dtype={self.dtype} device={self.device}>"
        )


def _params_hash(model: torch.nn.Module) -> str:
    h = hashlib.sha256()
    for name, p in model.named_parameters():
        t = p.detach().cpu().contiguous().reshape(-1)
        h.update(name.encode())
        h.update(str(t.dtype).encode())
        h.update(t.view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def _module_device(model: torch.nn.Module) -> torch.device:
    p = next(iter(model.parameters()), None)
    return p.device if p is not None else torch.device("cpu")


def _jsonable(obj):
    """Keep what ``torch.load(weights_only=True)`` can read back: plain types and tensors."""
    if isinstance(obj, dict):
        return {str(k): _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_jsonable(v) for v in obj]
    if isinstance(obj, torch.Tensor):
        return obj.detach().cpu()
    if isinstance(obj, (str, bool)) or obj is None:
        return obj
    if isinstance(obj, int):
        return int(obj)  # IntEnum -> int
    if isinstance(obj, float):
        return float(obj)
    if hasattr(obj, "__dataclass_fields__"):
        return {
            k: _jsonable(getattr(obj, k))
            for k, f in obj.__dataclass_fields__.items()
            # the solution is delta, stored separately; repr=False fields hold data (tensors)
            if k != "x" and f.repr
        }
    return repr(obj)
