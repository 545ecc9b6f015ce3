"""How the launchers configure tl.dot, in one place.

fp32 operands get IEEE precision (not TF32) so fp32 runs match the reference to ~1e-6.
Under the Triton interpreter (triton 3.9) tl.dot multiplies bf16 bit patterns as integers,
so there, and only there, the kernels upcast dot operands to fp32.
"""

import torch
import triton


def dot_flags(dtype: torch.dtype) -> dict:
    return {
        "DOT_FP32": bool(triton.knobs.runtime.interpret),
        "DOT_PRECISION": "ieee" if dtype == torch.float32 else "tf32",
    }
