"""Dense peak TFLOP/s of common NVIDIA parts, for perf/mfu: achieved TFLOP/s over what the part can do at the
run's precision.

Each row is a part's datasheet figures without structured sparsity (a datasheet's starred "with sparsity" numbers
halved), matched on torch.cuda.get_device_name(): "NVIDIA H100 80GB HBM3" (the SXM part), "NVIDIA H100 PCIe",
"NVIDIA A100-SXM4-80GB", "Tesla T4", "NVIDIA GeForce RTX 4090" ... A part that is not here, or a CPU, has no
peak: then no MFU is logged, never a guess.

Columns: bf16 and fp16 on tensor cores (with FP32 accumulation, which is what PyTorch uses), tf32 on tensor
cores, and plain fp32 on the CUDA cores. None where the part lacks that path (no bf16 or TF32 before Ampere):
fp32 matmuls then run in fp32 (tf32 falls back to the fp32 column), and a bf16 run has no meaningful peak.
"""
from __future__ import annotations

import re
from typing import NamedTuple, Optional


class Peak(NamedTuple):
    pattern: str               # a regular expression searched in the device name (case-insensitive)
    bf16: Optional[float]
    fp16: Optional[float]
    tf32: Optional[float]
    fp32: float


# Order matters: the first row whose pattern is found wins (the PCIe and NVL variants before the plain name).
PEAKS = (
    # NVIDIA H100 Tensor Core GPU datasheet, https://www.nvidia.com/en-us/data-center/h100/
    # (H100 NVL: FP32 60, TF32 835*, BF16/FP16 1671*; H100 PCIe: 51, 756*, 1513*; H100 SXM: 67, 989*, 1979*)
    Peak(r"\bH100\b.*\bNVL\b", 835.5, 835.5, 417.5, 60.0),
    Peak(r"\bH100\b.*\bPCIe\b", 756.5, 756.5, 378.0, 51.0),
    Peak(r"\bH100\b", 989.5, 989.5, 494.5, 67.0),
    # NVIDIA H200 Tensor Core GPU datasheet, https://www.nvidia.com/en-us/data-center/h200/
    # (H200 NVL: FP32 60, TF32 835*, BF16/FP16 1671*; H200 SXM: 67, 989*, 1979*)
    Peak(r"\bH200\b.*\bNVL\b", 835.5, 835.5, 417.5, 60.0),
    Peak(r"\bH200\b", 989.5, 989.5, 494.5, 67.0),
    # NVIDIA GH200 Grace Hopper Superchip datasheet, https://www.nvidia.com/en-us/data-center/grace-hopper-superchip/
    Peak(r"\bGH200\b", 989.5, 989.5, 494.5, 67.0),
    # NVIDIA A100 Tensor Core GPU datasheet (SXM4 and PCIe alike: FP32 19.5, TF32 156, BF16/FP16 312),
    # https://www.nvidia.com/content/dam/en-zz/Solutions/Data-Center/a100/pdf/nvidia-a100-datasheet-us-nvidia-1758950-r4-web.pdf
    Peak(r"\bA100\b", 312.0, 312.0, 156.0, 19.5),
    # NVIDIA L40S datasheet (FP32 91.6, TF32 183, BF16/FP16 362.05), https://www.nvidia.com/en-us/data-center/l40s/
    Peak(r"\bL40S\b", 362.05, 362.05, 183.0, 91.6),
    # NVIDIA L40 datasheet (FP32 90.5, TF32 90.5, BF16/FP16 181.05), https://www.nvidia.com/en-us/data-center/l40/
    Peak(r"\bL40\b", 181.05, 181.05, 90.5, 90.5),
    # NVIDIA L4 datasheet (FP32 30.3, TF32 120*, BF16/FP16 242*), https://www.nvidia.com/en-us/data-center/l4/
    Peak(r"\bL4\b", 121.0, 121.0, 60.0, 30.3),
    # NVIDIA A10 datasheet (FP32 31.2, TF32 62.5, BF16/FP16 125),
    # https://www.nvidia.com/en-us/data-center/products/a10-gpu/
    # (not the A10G, whose figures NVIDIA does not publish: \b keeps it, and the A100, out)
    Peak(r"\bA10\b", 125.0, 125.0, 62.5, 31.2),
    # NVIDIA V100 datasheet (SXM2: FP32 15.7, tensor FP16 125; PCIe: 14, 112; V100S PCIe: 16.4, 130),
    # https://images.nvidia.com/content/technologies/volta/pdf/volta-v100-datasheet-update-us-1165301-r5.pdf
    Peak(r"\bV100S\b", None, 130.0, None, 16.4),
    Peak(r"\bV100\b.*\bPCIE\b", None, 112.0, None, 14.0),
    Peak(r"\bV100\b", None, 125.0, None, 15.7),
    # NVIDIA T4 datasheet (FP32 8.1, mixed FP16/FP32 65),
    # https://www.nvidia.com/content/dam/en-zz/Solutions/Data-Center/tesla-t4/t4-tensor-core-datasheet-951643.pdf
    Peak(r"\bT4\b", None, 65.0, None, 8.1),
    # NVIDIA Ada Lovelace GPU architecture whitepaper, GeForce RTX 4090 (FP32 82.6; TF32 82.6; FP16/BF16 tensor
    # with FP32 accumulate 165.2), https://images.nvidia.com/aem-dam/Solutions/geforce/ada/nvidia-ada-gpu-architecture.pdf
    Peak(r"\bRTX 4090\b", 165.2, 165.2, 82.6, 82.6),
)

HALF = {"16-mixed": "fp16", "16-true": "fp16", "16": "fp16", "bf16-mixed": "bf16", "bf16-true": "bf16",
        "bf16": "bf16"}
FLOAT32 = ("32-true", "32")


def find(device_name: Optional[str]) -> Optional[Peak]:
    """The table's row for this device name, None for a CPU or a part the table lacks."""
    for row in PEAKS:
        if device_name and re.search(row.pattern, device_name, flags=re.IGNORECASE):
            return row
    return None


def peak_tflops(device_name: Optional[str], precision: str, matmul_precision: str = "highest") -> Optional[float]:
    """Dense peak TFLOP/s of `device_name` (torch.cuda.get_device_name()) at trainer.precision `precision`:
    the bf16 or fp16 tensor-core figure for the half precisions (mixed or true), for 32-true the TF32 one when
    trainer.matmul_precision lets float32 matmuls use it (high, medium) and plain fp32 otherwise (highest).
    None for a CPU, an unknown part, 64-true, or a precision the part has no fast path for (bf16 on a V100)."""
    row = find(device_name)
    precision = str(precision)
    if row is None:
        return None
    if precision in HALF:
        return getattr(row, HALF[precision])
    if precision in FLOAT32:
        if matmul_precision in ("high", "medium") and row.tf32 is not None:
            return row.tf32
        return row.fp32
    return None
