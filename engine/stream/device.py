"""Choosing the torch device from ``auto | cpu | cuda | cuda:N``.

``auto`` takes the first CUDA GPU when torch sees one, else the CPU: the engine must run everywhere (a QGIS laptop
without a GPU included), just faster where it can. An explicit ``cuda`` request on a machine without CUDA is a
user error with a one-line message rather than a torch traceback.
"""

from __future__ import annotations

import re

import torch

from engine.errors import EngineError


class DeviceError(EngineError):
    """The requested device does not exist on this machine."""


_PATTERN = re.compile(r"^(auto|cpu|cuda(?::(\d+))?)$")


def resolve_device(spec: str = "auto") -> torch.device:
    """Parse and check ``spec``; returns a usable :class:`torch.device`."""
    text = (spec or "auto").strip().lower()
    m = _PATTERN.match(text)
    if not m:
        raise DeviceError(f"unknown device '{spec}' (use auto, cpu, cuda or cuda:N)")
    if text == "auto":
        return torch.device("cuda:0") if torch.cuda.is_available() else torch.device("cpu")
    if text == "cpu":
        return torch.device("cpu")
    if not torch.cuda.is_available():
        raise DeviceError(f"device '{spec}' requested but no CUDA GPU is available to torch (use --device cpu)")
    index = int(m.group(2) or 0)
    count = torch.cuda.device_count()
    if index >= count:
        raise DeviceError(f"device '{spec}' requested but only {count} CUDA GPU(s) exist (cuda:0…cuda:{count - 1})")
    return torch.device(f"cuda:{index}")


def describe_device(device: torch.device) -> str:
    """``cpu`` or ``cuda:0 (NVIDIA H100 80GB HBM3)`` for logs and reports."""
    if device.type == "cuda":
        return f"{device} ({torch.cuda.get_device_name(device)})"
    return str(device)
