"""Comparison helpers for the kernel tests: fail with the mismatching elements listed."""

import torch


def assert_close(name: str, got: torch.Tensor, want: torch.Tensor, atol: float, rtol: float, show: int = 8) -> None:
    """Like torch.testing.assert_close on fp32 copies, but lists up to `show` mismatches."""
    assert got.shape == want.shape, f"{name}: shape {tuple(got.shape)} != {tuple(want.shape)}"
    g, w = got.float(), want.float()
    bad = ~((g - w).abs() <= atol + rtol * w.abs()) & ~(g.isnan() & w.isnan()) & ~(g == w)
    if bad.any():
        idx = bad.nonzero()[:show]
        rows = "\n".join(f"  {tuple(i.tolist())}: got {g[tuple(i)].item():.6g} want {w[tuple(i)].item():.6g}" for i in idx)
        raise AssertionError(
            f"{name}: {int(bad.sum())}/{bad.numel()} elements off (atol={atol}, rtol={rtol}), "
            f"max abs err {(g - w).abs()[bad].max().item():.3g}; first:\n{rows}"
        )


def assert_equal(name: str, got: torch.Tensor, want: torch.Tensor, show: int = 8) -> None:
    """Exact equality (token ids, masks), listing up to `show` mismatching positions."""
    assert got.shape == want.shape, f"{name}: shape {tuple(got.shape)} != {tuple(want.shape)}"
    bad = got != want
    if bad.any():
        idx = bad.nonzero()[:show]
        rows = "\n".join(f"  {tuple(i.tolist())}: got {got[tuple(i)].item()} want {want[tuple(i)].item()}" for i in idx)
        raise AssertionError(f"{name}: {int(bad.sum())}/{bad.numel()} elements differ; first:\n{rows}")
