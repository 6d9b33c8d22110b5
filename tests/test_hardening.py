"""Bad inputs found by trying the library as a new user: each is named, before any work."""

from __future__ import annotations

import pytest
import torch
from torch.func import functional_call

import lsr_scale as ls
from lsr_scale.models import MLP


class _Counting(torch.nn.Module):
    def __init__(self, net):
        super().__init__()
        self.net = net
        self.calls = 0

    def forward(self, *x):
        self.calls += 1
        return self.net(*x)


def _data(n=40, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(n, 2, generator=g, dtype=torch.float64) * 2 - 1
    return x, torch.sin(2 * x[:, :1]) * x[:, 1:]


def _tanh_net(seed=0):
    torch.manual_seed(seed)
    return MLP((2, 8, 8, 1)).double()


def test_infinite_inputs_named_even_when_outputs_stay_finite():
    net = torch.nn.Sequential(torch.nn.Linear(2, 8), torch.nn.Tanh(), torch.nn.Linear(8, 1))
    net = _Counting(net.double())
    x, y = _data()
    x[5, 0] = float("inf")  # tanh saturates: the output stays finite
    x[9, 1] = float("-inf")
    with pytest.raises(ValueError, match=r"inputs: expected finite values, got 2 of 40 .*\[5, 9\]"):
        ls.refine(net, data=(x, y))
    assert net.calls == 0


def test_batchnorm_in_train_mode_refused():
    net = torch.nn.Sequential(
        torch.nn.Linear(2, 8), torch.nn.BatchNorm1d(8), torch.nn.Tanh(), torch.nn.Linear(8, 1)
    ).double()
    net.train()
    x, y = _data()
    with pytest.raises(ValueError, match=r"1 \(BatchNorm1d\) in train mode; call model.eval\(\)"):
        ls.refine(net, data=(x, y))
    net.eval()
    r = ls.refine(net, data=(x, y), method=ls.Subspace(rank=5))
    assert r.delta.shape[0] == sum(p.numel() for p in net.parameters())


def test_integer_targets_refused_like_other_dtypes():
    net = _Counting(_tanh_net())
    x, _ = _data()
    y_int = torch.zeros(40, 1, dtype=torch.int64)
    with pytest.raises(
        TypeError, match="targets: expected floating targets for loss='mse', got torch.int64 class"
    ):
        ls.refine(net, data=(x, y_int))
    with pytest.raises(
        TypeError, match="targets: expected dtype torch.float64 .*got torch.float16"
    ):
        ls.refine(net, data=(x, y_int.half()))
    assert net.calls == 0


def test_load_refuses_same_shapes_other_function(tmp_path):
    x, y = _data()
    tanh = _tanh_net()
    refined = ls.refine(tanh, data=(x, y), method=ls.Subspace(rank=10))
    path = tmp_path / "r.pt"
    refined.save(path)
    relu = MLP((2, 8, 8, 1), activation="relu").double()
    relu.load_state_dict(tanh.state_dict())
    with pytest.raises(ValueError, match="expected the function the refined model was saved with"):
        ls.RefinedModel.load(path, relu)
    other_weights = _tanh_net(seed=3)  # same function, other weights: theta0 is restored
    loaded = ls.RefinedModel.load(path, other_weights)
    assert torch.equal(loaded(x), refined(x))


def test_load_of_residual_fn_refinement_checks_theta0(tmp_path):
    x, y = _data()
    net = _tanh_net()

    def residual(p):
        return (functional_call(net, p, (x,)) - y).reshape(-1)

    refined = ls.refine(net, residual_fn=residual, method=ls.Subspace(rank=10))
    path = tmp_path / "r.pt"
    refined.save(path)
    assert torch.equal(ls.RefinedModel.load(path, net).delta, refined.delta)
    with pytest.raises(ValueError, match="residual_fn refinement was made from"):
        ls.RefinedModel.load(path, _tanh_net(seed=3))


def test_load_of_a_version_1_file_warns(tmp_path):
    x, y = _data()
    net = _tanh_net()
    refined = ls.refine(net, data=(x, y), method=ls.Subspace(rank=5))
    path = tmp_path / "r.pt"
    refined.save(path)
    payload = torch.load(path, weights_only=True)
    payload["version"] = 1
    del payload["fingerprint"]
    torch.save(payload, path)
    with pytest.warns(UserWarning, match="without a fingerprint"):
        loaded = ls.RefinedModel.load(path, net)
    assert torch.equal(loaded.delta, refined.delta)
    payload["version"] = 7
    torch.save(payload, path)
    with pytest.raises(ValueError, match="expected save format version 1 or 2, got 7"):
        ls.RefinedModel.load(path, net)


def test_dataloader_data_gives_the_tensor_result():
    """data= as a DataLoader: batches are uncached row blocks; same delta as the tensors."""
    x, y = _data(n=60)
    net = _tanh_net()
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x, y), batch_size=16)
    for method in (ls.Subspace(rank=12), ls.Krylov(maxiter=15, stall=None)):
        # the same row blocks as tensors: chunk_size = the batch size
        a = ls.refine(
            net,
            data=(x, y),
            method=method,
            products=ls.Products(chunk_size=16),
            generator=torch.Generator().manual_seed(1),
        )
        b = ls.refine(net, data=loader, method=method, generator=torch.Generator().manual_seed(1))
        torch.testing.assert_close(b.delta, a.delta, rtol=1e-10, atol=1e-12)
        assert b.info["n_rows"] == 60
    with pytest.raises(ValueError, match="Products.chunk_size: applies to tensor data="):
        ls.refine(net, data=loader, products=ls.Products(chunk_size=8))
    bad = x.clone()
    bad[40, 0] = float("nan")
    nan_loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(bad, y), batch_size=16)
    with pytest.raises(ValueError, match=r"data batch 2 inputs: expected finite values"):
        ls.refine(net, data=nan_loader)
