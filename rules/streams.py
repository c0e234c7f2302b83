"""The seeded stream of uniform draws behind brSF's per-forward feedback magnitudes.

brSF draws one magnitude per weight at every forward pass, so the generator sits on the critical path of every
training step and every attack step. Measured on 2 CPU cores for ResNet-18's 11.2M weights: torch's CPU generator
31 ms, numpy float32 `random` 22 ms, raw SFC64 words for 16-bit magnitudes on two threads about 3 ms. A ResNet-18
step on 32x32 inputs takes about 125 ms, so only the last meets the issue's 1.10x budget.

So on the CPU each magnitude is drawn from 16 random bits with the lowest forced to 1: |M| / a = (2j + 1) / 65536,
j uniform on 0..32767, the midpoints of 32,768 equal bins of (0, 1). The mean is exactly 1/2 and the variance that of
U(0, 1) to within 1e-10; no magnitude is 0. The whole draw is then one integer-to-float copy and one multiply.
On an accelerator torch's device generator (Philox) fills float32 U[0, 1) in place.

The CPU draw is split into a fixed number of sub-streams, so the numbers do not depend on how many threads run them.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import numpy as np
import torch

_SUBSTREAMS = 2
_LEVELS = 65536.0
_ODD_LANES = np.uint64(0x0001_0001_0001_0001)
# Below this many weights a thread hand-off costs more than it saves.
_PARALLEL_MIN = 1 << 20
_pool: ThreadPoolExecutor | None = None


def _executor() -> ThreadPoolExecutor:
    global _pool
    if _pool is None:
        _pool = ThreadPoolExecutor(max_workers=_SUBSTREAMS, thread_name_prefix="brsf-draw")
    return _pool


class UniformStream:
    """Uniform magnitudes, reproducible from `seed`, with a state that round-trips through `torch.save`.

    `fill_scaled_(out, scale)` writes (U / unit) * scale into `out`, unit = `unit(device)` (1/65536 on the CPU,
    1 elsewhere): the caller folds unit into a scalar it applies later, so a draw is two passes over the weights.
    """

    def __init__(self, seed: int) -> None:
        self.seed = int(seed)
        children = np.random.SeedSequence(self.seed).spawn(_SUBSTREAMS)
        self._cpu = [np.random.SFC64(c) for c in children]
        self._devices: dict[str, torch.Generator] = {}

    @staticmethod
    def unit(device: torch.device) -> float:
        return 1.0 / _LEVELS if device.type == "cpu" else 1.0

    def _device_generator(self, device: torch.device) -> torch.Generator:
        key = str(device)
        gen = self._devices.get(key)
        if gen is None:
            gen = torch.Generator(device=device)
            gen.manual_seed(self.seed)
            self._devices[key] = gen
        return gen

    def _fill_cpu_(self, out: torch.Tensor, scale: torch.Tensor) -> None:
        n = out.numel()
        per = -(-n // _SUBSTREAMS)
        spans = [(i * per, min(n, (i + 1) * per)) for i in range(_SUBSTREAMS)]

        def draw(i: int) -> np.ndarray:  # numpy releases the GIL here, so the sub-streams run in parallel
            lo, hi = spans[i]
            words = self._cpu[i].random_raw(-(-(hi - lo) // 4))
            words |= _ODD_LANES  # each 16-bit lane becomes odd: 2j + 1, j uniform on 0..32767
            return words.view(np.uint16)[: hi - lo]

        if torch.get_num_threads() > 1 and n >= _PARALLEL_MIN:
            lanes = list(_executor().map(draw, range(_SUBSTREAMS)))
        else:
            lanes = [draw(i) for i in range(_SUBSTREAMS)]
        flat = out.view(-1)
        for (lo, hi), k in zip(spans, lanes, strict=True):
            flat[lo:hi].copy_(torch.from_numpy(k))
        out.mul_(scale)  # (2j + 1) * unit * a * sign(W), unit = 1/65536

    def fill_scaled_(self, out: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
        if out.device.type == "cpu" and out.is_contiguous() and scale.is_contiguous():
            self._fill_cpu_(out, scale)
            return out
        if out.device.type == "cpu":
            tmp = torch.empty(out.shape, dtype=out.dtype)
            self._fill_cpu_(tmp, scale.contiguous())
            return out.copy_(tmp)
        return out.uniform_(0.0, 1.0, generator=self._device_generator(out.device)).mul_(scale)

    def state_dict(self) -> dict:
        cpu = []
        for bg in self._cpu:
            st = bg.state
            cpu.append({
                "words": torch.from_numpy(np.asarray(st["state"]["state"], dtype=np.uint64).view(np.int64).copy()),
                "has_uint32": int(st["has_uint32"]),
                "uinteger": int(st["uinteger"]),
            })
        return {"seed": self.seed, "cpu": cpu, "devices": {k: g.get_state() for k, g in self._devices.items()}}

    def load_state_dict(self, state: dict) -> None:
        self.seed = int(state["seed"])
        restored = []
        for st in state["cpu"]:
            bg = np.random.SFC64()
            bg.state = {
                "bit_generator": "SFC64",
                "state": {"state": st["words"].numpy().astype(np.int64).view(np.uint64)},
                "has_uint32": int(st["has_uint32"]),
                "uinteger": int(st["uinteger"]),
            }
            restored.append(bg)
        if len(restored) != _SUBSTREAMS:
            raise ValueError(f"brsf stream state has {len(restored)} sub-streams, expected {_SUBSTREAMS}")
        self._cpu = restored
        self._devices = {}
        for key, gstate in state.get("devices", {}).items():
            try:
                gen = torch.Generator(device=key)
            except RuntimeError:
                continue  # saved on a device this process does not have: that stream restarts from the seed
            gen.set_state(gstate)
            self._devices[key] = gen
