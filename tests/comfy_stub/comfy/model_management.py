"""Stub of ``comfy.model_management``: devices, memory requests and the interrupt flag.

As in ComfyUI, ``throw_exception_if_processing_interrupted`` raises
``InterruptProcessingException`` and clears the flag; ``processing_interrupted`` only peeks.
Memory calls are recorded in ``FREE_MEMORY_CALLS`` so tests can check them.
"""

from __future__ import annotations

import torch

TORCH_DEVICE = "cpu"
OFFLOAD_DEVICE = "cpu"
OOM_EXCEPTION = torch.cuda.OutOfMemoryError
FREE_MEMORY_CALLS: list[tuple[int, torch.device]] = []
_interrupted = False


class InterruptProcessingException(Exception):
    pass


def get_torch_device() -> torch.device:
    return torch.device(TORCH_DEVICE)


def unet_offload_device() -> torch.device:
    return torch.device(OFFLOAD_DEVICE)


def intermediate_device() -> torch.device:
    return torch.device("cpu")


def module_size(module: torch.nn.Module) -> int:
    return sum(t.nbytes for t in module.state_dict().values())


def free_memory(memory_required: int, device: torch.device, keep_loaded: list | None = None) -> list:
    FREE_MEMORY_CALLS.append((int(memory_required), torch.device(device)))
    return []


def soft_empty_cache(force: bool = False) -> None:
    pass


def unload_all_models() -> None:
    pass


def interrupt_current_processing(value: bool = True) -> None:
    global _interrupted
    _interrupted = value


def processing_interrupted() -> bool:
    return _interrupted


def throw_exception_if_processing_interrupted() -> None:
    global _interrupted
    if _interrupted:
        _interrupted = False
        raise InterruptProcessingException()
