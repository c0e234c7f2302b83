"""brSF's per-pass random magnitudes: a counter-based stream with the same numbers on every device.

brSF draws one magnitude per weight at every backward pass, so the generator sits on the critical path of every
training step and every attack step, and a float32 draw of every weight with torch's or numpy's generator costs a
large part of a whole step (results/bench/NOTES.md). So:

- each magnitude is 16 random bits with the lowest forced to 1: |M| / a = (2j + 1) / 65536, j uniform on
  0..32767, the midpoints of 32,768 equal bins of (0, 1) (mean exactly 1/2, variance that of U(0, 1) within 1e-10,
  never 0);
- the bits are counter-based (rules/feedback_kernels.c): any slice of a draw can be computed on its own, and the
  same arithmetic runs as one fused vectorised C pass that reads W and writes B, in numpy (no compiler), or in
  torch on a GPU, all bit-identical;
- the stream's whole state is (seed, draws so far), saved with the checkpoint.
"""

from __future__ import annotations

import numpy as np
import torch

from rules.kernels import native_fill, native_fill_codes, why_not_native

_GOLDEN = 0x9E3779B97F4A7C15
_C1, _C2 = 0xBF58476D1CE4E5B9, 0x94D049BB133111EB
_H1, _H2 = 0x21F0AAAD, 0xD35A2D97
_M64, _M32 = (1 << 64) - 1, (1 << 32) - 1
_LEVELS = 65536.0


def _mix64(z: int) -> int:
    z = ((z ^ (z >> 30)) * _C1) & _M64
    z = ((z ^ (z >> 27)) * _C2) & _M64
    return z ^ (z >> 31)


def _h32_numpy(x: np.ndarray) -> np.ndarray:
    x ^= x >> np.uint32(16)
    x *= np.uint32(_H1)
    x ^= x >> np.uint32(15)
    x *= np.uint32(_H2)
    x ^= x >> np.uint32(15)
    return x


def _h32_torch(x: torch.Tensor) -> torch.Tensor:
    """lowbias32 on int64 tensors holding values in [0, 2^32): products wrap, the low 32 bits are exact."""
    x = x ^ (x >> 16)
    x = (x * _H1) & _M32
    x = x ^ (x >> 15)
    x = (x * _H2) & _M32
    return x ^ (x >> 15)


class UniformStream:
    """Odd 16-bit magnitudes k (|M| = a * k / 65536), reproducible from `seed` on any device and thread count."""

    unit_scale = 1.0 / _LEVELS

    def __init__(self, seed: int) -> None:
        self.seed = int(seed)
        self.key = _mix64((self.seed * _GOLDEN + 0x5851F42D4C957F2D) & _M64)
        self.draws = 0

    def _next_keys(self) -> tuple[int, int]:
        k = _mix64((self.key + self.draws * _GOLDEN) & _M64)
        self.draws += 1
        return k & _M32, k >> 32

    def fill_signed_(
        self, out: torch.Tensor, weight: torch.Tensor, scale: float = 1.0, backend: str | None = None,
        codes: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """out = (k * scale) * sign(weight) with a fresh k per element, in float32; returns out.

        `backend` forces 'native' (one fused pass in C), 'numpy' or 'torch'; all give the same numbers. `codes`,
        sign(weight) as `rules.kernels.sign_codes` makes it, lets the native pass read 1 byte per weight instead of
        4; the other backends read weight.
        """
        if out.numel() >= 1 << 33:
            raise ValueError("a brsf draw is limited to 2^33 weights per layer")
        k1, k2 = self._next_keys()
        if backend is None:
            backend = "torch" if out.device.type != "cpu" else ("native" if native_fill() else "numpy")
        usable = out.is_contiguous() and out.dtype == torch.float32 and out.device.type == "cpu"
        scale = float(np.float32(scale))  # every backend multiplies by the same float32 value
        if backend == "torch" or not usable:
            return self._fill_torch(out, weight, k1, k2, scale)
        if codes is not None:
            if codes.shape != out.shape or codes.dtype != torch.int8 or not codes.is_contiguous():
                raise ValueError("codes must be rules.kernels.sign_codes(weight): int8, contiguous, shaped like out")
            fill = native_fill_codes() if backend == "native" else None
            if fill is not None:
                fill(out.data_ptr(), codes.data_ptr(), 0, out.numel(), k1, k2, scale)
                return out
        w = weight.detach().to(torch.float32).contiguous()
        if backend == "native":
            fill = native_fill()
            if fill is None:
                raise RuntimeError(f"the native brsf kernel is not available: {why_not_native()}")
            self._fill_native(fill, out, w, k1, k2, scale)
        else:
            self._fill_numpy(out, w, k1, k2, scale)
        return out

    @staticmethod
    def _fill_native(fill, out: torch.Tensor, weight: torch.Tensor, k1: int, k2: int, scale: float) -> None:
        fill(out.data_ptr(), weight.data_ptr(), 0, out.numel(), k1, k2, scale)

    @staticmethod
    def _fill_numpy(out: torch.Tensor, weight: torch.Tensor, k1: int, k2: int, scale: float) -> None:
        n = out.numel()
        x = _h32_numpy(np.arange(-(-n // 2), dtype=np.uint32) ^ np.uint32(k1))
        x += np.uint32(k2)
        x = _h32_numpy(x)
        lanes = np.empty(2 * len(x), dtype=np.uint32)
        lanes[0::2], lanes[1::2] = x & np.uint32(0xFFFF), x >> np.uint32(16)
        k = (lanes[:n] | np.uint32(1)).astype(np.float32).reshape(out.shape)
        k *= np.float32(scale)
        np.multiply(k, torch.sign(weight).numpy(), out=out.numpy())

    @staticmethod
    def _fill_torch(out: torch.Tensor, weight: torch.Tensor, k1: int, k2: int, scale: float) -> torch.Tensor:
        n = out.numel()
        j = torch.arange(-(-n // 2), dtype=torch.int64, device=out.device)
        x = _h32_torch((_h32_torch(j ^ k1) + k2) & _M32)
        lanes = torch.stack([x & 0xFFFF, x >> 16], 1).reshape(-1)[:n]
        # float32 first, as the other backends, so the product is rounded once whatever out's dtype
        k = (lanes | 1).to(torch.float32).mul_(scale).view(out.shape)
        return torch.mul(k, torch.sign(weight.detach()).to(torch.float32), out=out)

    def state_dict(self) -> dict:
        return {"seed": self.seed, "draws": self.draws}

    def load_state_dict(self, state: dict) -> None:
        self.__init__(int(state["seed"]))
        self.draws = int(state["draws"])
