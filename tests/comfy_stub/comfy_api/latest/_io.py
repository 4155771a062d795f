"""Stub of ``comfy_api.latest.io``: the V3 schema classes the pack uses.

Inputs and outputs carry the same constructor arguments as ComfyUI's (id, display_name,
optional, tooltip, default, min, max, step, options, control_after_generate, ...), so a
schema that builds here builds in ComfyUI. ``Schema.validate`` rejects duplicate ids as
ComfyUI does. ``tests/comfy_stub.object_info`` turns a node class into the dict that
ComfyUI's ``/object_info`` serves.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum
from typing import Any

import torch


class Hidden(str, Enum):
    unique_id = "UNIQUE_ID"
    prompt = "PROMPT"
    extra_pnginfo = "EXTRA_PNGINFO"
    dynprompt = "DYNPROMPT"


class NumberDisplay(str, Enum):
    number = "number"
    slider = "slider"


def _pruned(d: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in d.items() if v is not None and v is not False}


class Input:
    """A socket input (a link from another node)."""

    io_type = "*"
    is_widget = False

    def __init__(self, id: str, display_name: str | None = None, optional: bool = False, tooltip: str | None = None,
                 lazy: bool | None = None, extra_dict: dict | None = None) -> None:
        if not isinstance(id, str) or not id:
            raise TypeError(f"input id must be a non-empty str, got {id!r}")
        self.id = id
        self.display_name = display_name
        self.optional = optional
        self.tooltip = tooltip
        self.lazy = lazy
        self.extra_dict = extra_dict or {}

    def as_dict(self) -> dict[str, Any]:
        return _pruned({"display_name": self.display_name, "tooltip": self.tooltip, "lazy": self.lazy}) | self.extra_dict


class WidgetInput(Input):
    """An input shown as a widget (its value is stored in the workflow's widgets_values)."""

    is_widget = True

    def __init__(self, id: str, display_name: str | None = None, optional: bool = False, tooltip: str | None = None,
                 lazy: bool | None = None, default: Any = None, socketless: bool | None = None,
                 widget_type: str | None = None, force_input: bool | None = None, extra_dict: dict | None = None):
        super().__init__(id, display_name, optional, tooltip, lazy, extra_dict)
        self.default = default
        self.socketless = socketless
        self.widget_type = widget_type
        self.force_input = force_input

    def as_dict(self) -> dict[str, Any]:
        return super().as_dict() | _pruned({"default": self.default, "socketless": self.socketless,
                                            "forceInput": self.force_input})


class Output:
    io_type = "*"

    def __init__(self, id: str | None = None, display_name: str | None = None, tooltip: str | None = None,
                 is_output_list: bool = False) -> None:
        self.id = id
        self.display_name = display_name
        self.tooltip = tooltip
        self.is_output_list = is_output_list


def _comfytype(io_type: str):
    """Give a type class its io_type and typed Input/Output subclasses."""

    def wrap(cls):
        cls.io_type = io_type
        for name in ("Input", "Output"):
            base = getattr(cls, name, None)
            if base is not None:
                setattr(cls, name, type(name, (base,), {"io_type": io_type, "__qualname__": f"{cls.__name__}.{name}"}))
        return cls

    return wrap


class ComfyTypeIO:
    Input = Input
    Output = Output


@_comfytype("BOOLEAN")
class Boolean(ComfyTypeIO):
    class Input(WidgetInput):
        def __init__(self, id: str, display_name: str | None = None, optional: bool = False,
                     tooltip: str | None = None, lazy: bool | None = None, default: bool | None = None,
                     label_on: str | None = None, label_off: str | None = None, socketless: bool | None = None,
                     force_input: bool | None = None):
            super().__init__(id, display_name, optional, tooltip, lazy, default, socketless, None, force_input)
            self.label_on, self.label_off = label_on, label_off


@_comfytype("INT")
class Int(ComfyTypeIO):
    class Input(WidgetInput):
        def __init__(self, id: str, display_name: str | None = None, optional: bool = False,
                     tooltip: str | None = None, lazy: bool | None = None, default: int | None = None,
                     min: int | None = None, max: int | None = None, step: int | None = None,
                     control_after_generate: bool | None = None, display_mode: NumberDisplay | None = None,
                     socketless: bool | None = None, force_input: bool | None = None):
            super().__init__(id, display_name, optional, tooltip, lazy, default, socketless, None, force_input)
            self.min, self.max, self.step = min, max, step
            self.control_after_generate = control_after_generate
            self.display_mode = display_mode

        def as_dict(self) -> dict[str, Any]:
            return super().as_dict() | _pruned({"min": self.min, "max": self.max, "step": self.step,
                                                "control_after_generate": self.control_after_generate})


@_comfytype("FLOAT")
class Float(ComfyTypeIO):
    class Input(WidgetInput):
        def __init__(self, id: str, display_name: str | None = None, optional: bool = False,
                     tooltip: str | None = None, lazy: bool | None = None, default: float | None = None,
                     min: float | None = None, max: float | None = None, step: float | None = None,
                     round: float | None = None, display_mode: NumberDisplay | None = None,
                     socketless: bool | None = None, force_input: bool | None = None):
            super().__init__(id, display_name, optional, tooltip, lazy, default, socketless, None, force_input)
            self.min, self.max, self.step, self.round = min, max, step, round
            self.display_mode = display_mode

        def as_dict(self) -> dict[str, Any]:
            return super().as_dict() | _pruned({"min": self.min, "max": self.max, "step": self.step,
                                                "round": self.round})


@_comfytype("STRING")
class String(ComfyTypeIO):
    class Input(WidgetInput):
        def __init__(self, id: str, display_name: str | None = None, optional: bool = False,
                     tooltip: str | None = None, lazy: bool | None = None, multiline: bool = False,
                     placeholder: str | None = None, default: str | None = None,
                     dynamic_prompts: bool | None = None, socketless: bool | None = None,
                     force_input: bool | None = None):
            super().__init__(id, display_name, optional, tooltip, lazy, default, socketless, None, force_input)
            self.multiline, self.placeholder, self.dynamic_prompts = multiline, placeholder, dynamic_prompts

        def as_dict(self) -> dict[str, Any]:
            return super().as_dict() | _pruned({"multiline": self.multiline, "placeholder": self.placeholder})


@_comfytype("COMBO")
class Combo(ComfyTypeIO):
    class Input(WidgetInput):
        def __init__(self, id: str, options: list[str] | list[int] | type[Enum] | None = None,
                     display_name: str | None = None, optional: bool = False, tooltip: str | None = None,
                     lazy: bool | None = None, default: Any = None, control_after_generate: bool | None = None,
                     upload: Any = None, image_folder: Any = None, remote: Any = None,
                     socketless: bool | None = None):
            if isinstance(options, type) and issubclass(options, Enum):
                options = [v.value for v in options]
            if isinstance(default, Enum):
                default = default.value
            super().__init__(id, display_name, optional, tooltip, lazy, default, socketless)
            if not options:
                raise ValueError(f"Combo input '{id}' needs a non-empty options list")
            self.options = list(options)
            self.control_after_generate = control_after_generate

        def as_dict(self) -> dict[str, Any]:
            return super().as_dict() | _pruned({"options": self.options,
                                                "control_after_generate": self.control_after_generate})


def _socket(io_type: str, name: str):
    return _comfytype(io_type)(type(name, (ComfyTypeIO,), {}))


Image = _socket("IMAGE", "Image")
Mask = _socket("MASK", "Mask")
Latent = _socket("LATENT", "Latent")
Conditioning = _socket("CONDITIONING", "Conditioning")
Model = _socket("MODEL", "Model")
Clip = _socket("CLIP", "Clip")
Vae = _socket("VAE", "Vae")
UpscaleModel = _socket("UPSCALE_MODEL", "UpscaleModel")


def Custom(io_type: str) -> type[ComfyTypeIO]:
    """A type known only by its name, e.g. ``Custom("GENDR_PIX_MODEL")``."""
    return _socket(io_type, f"Custom_{io_type}")


@dataclass
class Schema:
    node_id: str
    display_name: str | None = None
    category: str = "sd"
    inputs: list[Input] | None = None
    outputs: list[Output] | None = None
    hidden: list[Hidden] | None = None
    description: str = ""
    is_input_list: bool = False
    is_output_node: bool = False
    is_deprecated: bool = False
    is_experimental: bool = False
    is_api_node: bool = False
    not_idempotent: bool = False
    enable_expand: bool = False

    def validate(self) -> None:
        ins = [i.id for i in self.inputs or []]
        outs = [o.id for o in self.outputs or [] if o.id is not None]
        problems = []
        for what, ids in (("Input", ins), ("Output", outs)):
            dup = sorted({i for i in ids if ids.count(i) > 1})
            if dup:
                problems.append(f"{what} ids must be unique, but {dup} are not.")
        both = set(ins) & set(outs)
        if both:
            problems.append(f"Ids must be unique between inputs and outputs, but {both} are not.")
        if problems:
            raise ValueError("\n".join(problems))

    def finalize(self) -> None:
        for i, out in enumerate(self.outputs or []):
            if out.id is None:
                out.id = f"_{i}_{out.io_type}_"


class NodeOutput:
    """What ``execute`` returns: the output values in schema order, plus optional UI data."""

    def __init__(self, *args: Any, ui: Any = None, expand: dict | None = None, block_execution: str | None = None):
        self.args = args
        self.ui = ui
        self.expand = expand
        self.block_execution = block_execution

    @property
    def result(self) -> tuple | None:
        return self.args if self.args else None


class HiddenHolder:
    def __init__(self, values: dict | None = None) -> None:
        self._values = values or {}

    def __getattr__(self, key: str) -> Any:
        return self.__dict__.get("_values", {}).get(key)


class ComfyNode:
    """Base class of V3 nodes: ``define_schema`` and ``execute`` are classmethods."""

    hidden: HiddenHolder = HiddenHolder()

    @classmethod
    def define_schema(cls) -> Schema:
        raise NotImplementedError

    @classmethod
    def execute(cls, **kwargs) -> NodeOutput:
        raise NotImplementedError

    @classmethod
    def validate_inputs(cls, **kwargs) -> bool | str:
        raise NotImplementedError

    @classmethod
    def fingerprint_inputs(cls, **kwargs) -> Any:
        raise NotImplementedError

    @classmethod
    def GET_SCHEMA(cls) -> Schema:
        if "define_schema" not in _overridden(cls) or "execute" not in _overridden(cls):
            raise TypeError(f"node class {cls.__name__} must define define_schema and execute")
        schema = cls.define_schema()
        schema.finalize()
        schema.validate()
        return schema


def _overridden(cls: type) -> set[str]:
    names: set[str] = set()
    for klass in cls.__mro__:
        if klass is ComfyNode:
            break
        names.update(vars(klass))
    return names


def overrides(cls: type, name: str) -> bool:
    """True when a node class defines its own ``name`` hook (ComfyUI's first_real_override)."""
    return name in _overridden(cls)


ImageTensor = torch.Tensor
