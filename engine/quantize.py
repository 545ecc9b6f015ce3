"""Load-time weight-only quantization through torchao, and the device bytes a checkpoint needs.

Owns which weights are quantized and how (int8 per row, int4 in groups, fp8 per row), which
mode runs on which device and dtype, and the byte counts `dgemma inspect` prints from
config.json alone. Works one tensor at a time (engine.checkpoint streams the file through
`quantize_weight`); knows nothing about checkpoint files or tokenization.
"""

from __future__ import annotations

import ctypes
import logging
import os
from dataclasses import dataclass

import torch
from torch import nn

from .config import ModelConfig
from .errors import EngineError

MODES = ("none", "int8", "int4", "fp8")
# int4 group size along the input dimension, of torchao's CPU choices 32/64/128: their logit errors
# are equal within noise on the embedded model and 32 kept the most argmaxes (docs/quantization.md,
# benchmarks/quantize.py); it divides every DiffusionGemma input width (2816, 2112, 704).
INT4_GROUP = 32

# our parameter names (engine.checkpoint.checkpoint_names) that are quantized: every projection
# and expert weight. Kept in the compute dtype: the tied embedding / LM head (it is read three
# ways, and torchao's Int8Tensor embedding lookup dequantizes the whole table per call), the
# router (E x H, 0.05% of a layer; kept because a flipped expert costs more than its bytes: not
# measured separately), norms and scalars.
LINEAR_SUFFIXES = ("q_proj.weight", "k_proj.weight", "v_proj.weight", "o_proj.weight", "mlp_gate.weight",
                   "mlp_up.weight", "mlp_down.weight", "sc_gate.weight", "sc_up.weight", "sc_down.weight")
EXPERT_SUFFIXES = ("experts_gate_up", "experts_down")


class QuantizeError(EngineError):
    """A quantization mode that cannot run with this device, dtype or torch build."""


def _torchao():
    """Import torchao quietly: it logs a warning per optional CUDA extension it cannot load, and
    torch a deprecation notice for an enum torchao registers."""
    loggers = [logging.getLogger(name) for name in ("torchao", "torch.utils._pytree")]
    levels = [logger.level for logger in loggers]
    for logger in loggers:
        logger.setLevel(logging.ERROR)
    try:
        import torchao.prototype.quantization.int4
        import torchao.quantization  # noqa: F401
    except ImportError as e:
        raise QuantizeError(f"--quantize needs torchao: pip install 'dgemma-ls[quantize]' ({e})") from None
    finally:
        for logger, level in zip(loggers, levels):
            logger.setLevel(level)


def check_mode(mode: str, dtype: torch.dtype, device: str | torch.device) -> None:
    """Raise QuantizeError unless `mode` runs with weights in `dtype` on `device`."""
    if mode not in MODES:
        raise QuantizeError(f"unknown quantization {mode!r}; use one of {', '.join(MODES)}")
    if mode == "none":
        return
    device = torch.device(device)
    if mode == "fp8":
        if device.type != "cuda":
            raise QuantizeError("--quantize fp8 needs a CUDA GPU with float8 support (compute capability 8.9+); "
                                f"the model is on {device.type}: use int8 or int4")
        capability = torch.cuda.get_device_capability(device)
        if capability < (8, 9):
            raise QuantizeError(f"--quantize fp8 needs compute capability 8.9+ (Ada, Hopper), this GPU has "
                                f"{capability[0]}.{capability[1]}; use int8 or int4")
    if mode == "int4":
        if device.type not in ("cpu", "cuda"):
            raise QuantizeError(f"--quantize int4 runs on cpu or cuda, not {device.type}")
        if device.type == "cpu" and not hasattr(torch.ops.aten, "_weight_int4pack_mm_for_cpu"):
            raise QuantizeError("--quantize int4 on the CPU needs torch's _weight_int4pack_mm_for_cpu kernel, "
                                "which this torch build lacks; use int8")
    if dtype == torch.float32:
        raise QuantizeError(f"--quantize {mode} with float32 weights: float32 is the bit-exact parity mode; "
                            "quantized weights compute in bfloat16 (--dtype auto or bfloat16)")
    if mode == "int4" and dtype != torch.bfloat16:
        raise QuantizeError(f"--quantize int4 needs bfloat16 weights (torchao's int4 kernels), got {dtype}")
    _torchao()


def quantized_kind(name: str) -> str | None:
    """'linear', 'experts' or None (kept in the compute dtype) for our parameter `name`."""
    if name.endswith(LINEAR_SUFFIXES):
        return "linear"
    if name.endswith(EXPERT_SUFFIXES):
        return "experts"
    return None


def _quantize_2d(weight: torch.Tensor, mode: str) -> torch.Tensor:
    """One (N, K) weight -> a torchao tensor subclass that F.linear accepts."""
    _torchao()
    from torchao.quantization import Int8Tensor
    from torchao.quantization.granularity import PerRow

    if mode == "int8":
        return Int8Tensor.from_hp(weight, granularity=PerRow())
    if mode == "int4":
        if weight.shape[-1] % INT4_GROUP or weight.shape[0] % 16:
            raise QuantizeError(f"int4: a weight of shape {tuple(weight.shape)} does not fit torchao's int4 packing "
                                f"(input width a multiple of {INT4_GROUP}, output rows of 16); use int8")
        if weight.device.type == "cpu":
            from torchao.prototype.quantization.int4 import Int4OpaqueTensor

            return Int4OpaqueTensor.from_hp(weight, [1, INT4_GROUP])
        from torchao.quantization import Int4TilePackedTo4dTensor

        return Int4TilePackedTo4dTensor.from_hp(weight, [1, INT4_GROUP])
    from torchao.quantization import Float8Tensor

    return Float8Tensor.from_hp(weight, float8_dtype=torch.float8_e4m3fn, granularity=PerRow())


class ExpertStack(nn.Module):
    """E quantized (N, K) expert weights standing in for one (E, N, K) tensor: `stack[e]` is expert e.

    Used for int4 and fp8, whose torchao layouts are 2-D; int8 experts stay one 3-D Int8Tensor
    (per expert, per row scales) that the Triton kernel reads directly."""

    def __init__(self, experts: list[torch.Tensor], shape: tuple[int, int, int]):
        super().__init__()
        self.experts = nn.ParameterList(nn.Parameter(w, requires_grad=False) for w in experts)
        self.shape = torch.Size(shape)

    def __getitem__(self, expert: int) -> torch.Tensor:
        return self.experts[expert]

    @property
    def is_cuda(self) -> bool:
        return self.experts[0].is_cuda

    @property
    def device(self) -> torch.device:
        return self.experts[0].device


def quantize_weight(name: str, weight: torch.Tensor, mode: str) -> torch.Tensor | ExpertStack:
    """`weight` (already on its device, in the compute dtype) as it is stored under `mode`."""
    kind = quantized_kind(name)
    if mode == "none" or kind is None:
        return weight
    if kind == "linear":
        return _quantize_2d(weight, mode)
    if mode == "int8":
        return _int8_experts(weight)
    return ExpertStack([_quantize_2d(weight[e], mode) for e in range(weight.shape[0])], tuple(weight.shape))


def _int8_experts(weight: torch.Tensor) -> torch.Tensor:
    """(E, N, K) -> one 3-D Int8Tensor with a scale per expert row, quantized an expert at a time: a
    whole-tensor from_hp holds several fp32 copies of the 26B's 1 GB expert tensor at once."""
    _torchao()
    from torchao.quantization import Int8Tensor

    E, N, K = weight.shape
    qdata = torch.empty(E, N, K, dtype=torch.int8, device=weight.device)
    scale = torch.empty(E, N, 1, dtype=torch.float32, device=weight.device)
    zero_point = torch.zeros(E, N, 1, dtype=torch.int8, device=weight.device)
    for e in range(E):
        one = _quantize_2d(weight[e], "int8")
        qdata[e], scale[e] = one.qdata, one.scale
    return Int8Tensor(qdata, scale, [1, 1, K], weight.dtype, zero_point=zero_point)


def release_freed_heap() -> None:
    """Hand freed heap pages back to the OS (glibc only; a no-op elsewhere). Quantizing a tensor
    frees fp32 temporaries of its size, which glibc's raised mmap threshold keeps in its heap:
    without this a streamed int8 load of a 0.44 GB checkpoint ends 165 MiB above its weights."""
    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:
        return
    libc.malloc_trim(0)


def is_quantized(t) -> bool:
    return isinstance(t, ExpertStack) or (isinstance(t, torch.Tensor) and type(t) not in (torch.Tensor, nn.Parameter))


def stored_bytes(t) -> int:
    """Bytes a (possibly quantized) weight occupies: the sum over its inner tensors."""
    if isinstance(t, ExpertStack):
        return sum(stored_bytes(w) for w in t.experts)
    if type(t) in (torch.Tensor, nn.Parameter):
        return t.numel() * t.element_size()
    names, _ = t.__tensor_flatten__()
    return sum(stored_bytes(getattr(t, n)) for n in names if getattr(t, n) is not None)


# ---- what a configuration needs, from config.json alone ---------------------------------------


def bytes_per_weight(mode: str, rows: int, cols: int, compute_bytes: int = 2) -> int:
    """Bytes of one quantized (rows, cols) weight in torchao's layouts (checked against the real
    tensors in tests/test_quantize.py and, for one 26B layer, benchmarks/quantize_memory.py)."""
    if mode == "none":
        return rows * cols * compute_bytes
    if mode == "int8":  # int8 values + a float32 scale and an int8 zero point per row
        return rows * cols + rows * 5
    if mode == "int4":  # two values a byte + a bf16 (scale, zero) pair per group
        return rows * cols // 2 + rows * (cols // INT4_GROUP) * 4
    if mode == "fp8":  # float8 values + a float32 scale per row
        return rows * cols + rows * 4
    raise QuantizeError(f"unknown quantization {mode!r}")


@dataclass
class Footprint:
    params: int
    quantized_params: int
    device_bytes: int


def parameter_shapes(config: ModelConfig) -> dict[str, tuple[int, ...]]:
    """Our parameter name -> shape, by building the model on the meta device (no memory)."""
    from .model import DiffusionGemma

    with torch.device("meta"):
        model = DiffusionGemma(config)
    return {name: tuple(p.shape) for name, p in model.named_parameters()}


def footprint(config: ModelConfig, mode: str, compute_bytes: int = 2) -> Footprint:
    """Parameters and device bytes of the weights under `mode` (the KV cache and activations are extra)."""
    params = quantized = total = 0
    for name, shape in parameter_shapes(config).items():
        n = 1
        for d in shape:
            n *= d
        params += n
        if mode != "none" and quantized_kind(name) is not None:
            quantized += n
            experts = shape[0] if len(shape) == 3 else 1
            total += experts * bytes_per_weight(mode, shape[-2], shape[-1], compute_bytes)
        else:
            total += n * compute_bytes
    return Footprint(params, quantized, total)


def available_memory() -> dict[str, int]:
    """Device name -> bytes: "RAM" (total) and each CUDA GPU's total memory."""
    out = {"RAM": os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")}
    if torch.cuda.is_available():
        for i in range(torch.cuda.device_count()):
            out[f"cuda:{i} ({torch.cuda.get_device_name(i)})"] = torch.cuda.get_device_properties(i).total_memory
    return out
