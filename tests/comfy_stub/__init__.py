"""Our own minimal stand-in for the parts of ComfyUI the node pack uses, for CI.

CI has no ComfyUI (it is not on PyPI), so tests put this folder on ``sys.path``: it provides
``comfy_api.latest`` (``io``, ``ui``, ``ComfyExtension``), ``folder_paths``, ``comfy.utils``
(``ProgressBar`` with ComfyUI's global hook) and ``comfy.model_management`` (devices, memory,
the interrupt flag). Behaviour follows ComfyUI 0.3.64 as described in ../shared/COMFYUI.md;
the code is written here, not copied.

``load_pack()`` imports the repository root as a package the way ComfyUI's custom-node
loader does (``spec_from_file_location`` on ``__init__.py`` with the folder as its search
location), so the node layer's relative imports run exactly as in ComfyUI.
"""

from __future__ import annotations

import importlib.util
import inspect
import sys
from pathlib import Path
from types import ModuleType

STUB_DIR = Path(__file__).resolve().parent
REPO = STUB_DIR.parents[1]
PACK_NAME = "ComfyUI_GenDR_Pix_pack"


def install() -> None:
    """Make ``import comfy_api / comfy / folder_paths`` resolve to this stub."""
    if str(STUB_DIR) not in sys.path:
        sys.path.insert(0, str(STUB_DIR))
    import comfy.model_management  # noqa: F401
    import comfy.utils  # noqa: F401
    import comfy_api.latest  # noqa: F401
    import folder_paths  # noqa: F401

    for name in ("comfy_api", "comfy", "folder_paths"):
        mod = sys.modules[name]
        if not str(getattr(mod, "__file__", "")).startswith(str(STUB_DIR)):
            raise RuntimeError(f"'{name}' resolves to {mod.__file__}, not to the test stub in {STUB_DIR}")


def load_pack() -> ModuleType:
    """Import the repository root as a ComfyUI custom-node package (cached in sys.modules)."""
    install()
    if PACK_NAME in sys.modules:
        return sys.modules[PACK_NAME]
    spec = importlib.util.spec_from_file_location(PACK_NAME, REPO / "__init__.py",
                                                  submodule_search_locations=[str(REPO)])
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[PACK_NAME] = module
    try:
        spec.loader.exec_module(module)
    except BaseException:
        del sys.modules[PACK_NAME]
        raise
    return module


# ----------------------------------------------------------------------- what ComfyUI does with a node

CONTROL_VALUES = ("fixed", "increment", "decrement", "randomize")


def object_info(cls: type) -> dict:
    """The ``/object_info`` entry ComfyUI serves for a V3 node class (V1 layout)."""
    schema = cls.GET_SCHEMA()
    sections: dict[str, dict] = {"required": {}, "optional": {}}
    for inp in schema.inputs or []:
        sections["optional" if inp.optional else "required"][inp.id] = (inp.io_type, inp.as_dict())
    outputs = schema.outputs or []
    return {
        "input": sections,
        "input_order": {k: list(v) for k, v in sections.items()},
        "output": [o.io_type for o in outputs],
        "output_name": [o.display_name or o.io_type for o in outputs],
        "output_tooltips": [o.tooltip for o in outputs],
        "name": schema.node_id,
        "display_name": schema.display_name,
        "description": schema.description,
        "category": schema.category,
        "output_node": schema.is_output_node,
        "deprecated": schema.is_deprecated,
    }


def widget_problem(spec: tuple, value) -> str | None:
    """ComfyUI's prompt-time check of one widget value (type, min/max, combo options)."""
    io_type, opts = spec
    if io_type == "COMBO":
        return None if value in opts["options"] else f"{value!r} not in {opts['options']}"
    if io_type == "INT":
        if isinstance(value, bool) or not isinstance(value, int):
            return f"{value!r} is not an INT"
    elif io_type == "FLOAT":
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            return f"{value!r} is not a FLOAT"
    elif io_type == "STRING":
        return None if isinstance(value, str) else f"{value!r} is not a STRING"
    elif io_type == "BOOLEAN":
        return None if isinstance(value, bool) else f"{value!r} is not a BOOLEAN"
    else:
        return None
    if "min" in opts and value < opts["min"]:
        return f"{value} smaller than min {opts['min']}"
    if "max" in opts and value > opts["max"]:
        return f"{value} bigger than max {opts['max']}"
    return None


def validate_node_inputs(cls: type, inputs: dict) -> list[str]:
    """Errors ComfyUI would report for these inputs before running the node."""
    from comfy_api.latest import io

    schema = cls.GET_SCHEMA()
    errors = []
    validate = cls.validate_inputs if io.overrides(cls, "validate_inputs") else None
    custom = set(inspect.signature(validate).parameters) if validate else set()
    for inp in schema.inputs or []:
        if inp.id not in inputs:
            if not inp.optional:
                errors.append(f"required input '{inp.id}' missing")
            continue
        if inp.is_widget and inp.id not in custom:
            problem = widget_problem((inp.io_type, inp.as_dict()), inputs[inp.id])
            if problem:
                errors.append(f"{inp.id}: {problem}")
    known = {i.id for i in schema.inputs or []}
    errors += [f"unknown input '{k}'" for k in inputs if k not in known]
    if validate and not errors:
        result = validate(**{k: inputs[k] for k in custom if k in inputs})
        if result is not True:
            errors.append(f"custom validation failed: {result}")
    return errors


def execute_node(cls: type, **inputs):
    """Validate and run a node as ComfyUI's executor does; returns its NodeOutput."""
    import comfy.model_management
    from comfy_api.latest import io

    errors = validate_node_inputs(cls, inputs)
    if errors:
        raise ValueError(f"{cls.__name__}: " + "; ".join(errors))
    comfy.model_management.throw_exception_if_processing_interrupted()  # checked before every node
    out = cls.execute(**inputs)
    if not isinstance(out, io.NodeOutput):
        raise TypeError(f"{cls.__name__}.execute returned {type(out).__name__}, not io.NodeOutput")
    n_out = len(cls.GET_SCHEMA().outputs or [])
    if len(out.args) != n_out:
        raise ValueError(f"{cls.__name__}: execute returned {len(out.args)} values for {n_out} outputs")
    return out
