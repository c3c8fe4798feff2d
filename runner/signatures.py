"""Raw error → signature: versions, paths, addresses and numbers stripped so equal causes group."""

from __future__ import annotations

import re
from collections.abc import Mapping

_RULES: list[tuple[re.Pattern[str], str]] = [
    # torch.onnx dynamo exporter: its "## Exception summary" names the cause under a generic first line
    # ("Failed to convert the exported program to an ONNX model"), so it is read before anything else.
    (re.compile(r"No ONNX function found for <OpOverload\(op='(\w+)\.(\w+)'"), "NoOnnxFunction({0}::{1})"),
    (re.compile(r"No ONNX function found for <torch\._higher_order_ops\.\w+\.(\w+?)Op\b"),
     "NoOnnxFunction({0})"),
    (re.compile(r"GuardOnDataDependentSymNode|Could not guard on data-dependent expression"),
     "DataDependentControlFlow"),
    (re.compile(r"Exporting a ScriptModule is not supported"), "ScriptModuleNotSupported"),
    # torch.onnx (TorchScript): "Exporting the operator 'aten::grid_sampler' to ONNX opset version 15 is not supported"
    (re.compile(r"Exporting the operator '?([\w:.]+)'? to ONNX opset version \d+ is not supported"),
     "UnsupportedOperator({0})"),
    (re.compile(r"Unsupported operator '?([\w:.]+)'?", re.I), "UnsupportedOperator({0})"),
    (re.compile(r"No decompositions? (?:registered|found|for) .*?\b(aten::\w+|[\w]+::[\w]+)", re.I),
     "UnsupportedOperator({0})"),
    (re.compile(r"Unsupported FX nodes?:?\s*\{?'?(?:call_function)?'?:?\s*\[?'?([\w:.]+)"),
     "UnsupportedOperator({0})"),
    (re.compile(r"(?:Could not find an implementation|NOT_IMPLEMENTED).*?(?:for|node with name)\s+'?(\w+)'?",
                re.I), "RuntimeNotImplemented({0})"),
    (re.compile(r"Unsupported model IR version: \d+, max supported IR version: \d+"), "IRVersionTooNew"),
    # ONNX Runtime before 1.17 on an opset-20 graph: "Opset 20 is under development ... till opset 19."
    (re.compile(r"Opset \d+ is under development"), "OpsetTooNew"),
    (re.compile(r"onnx\.ModelProto exceeds maximum protobuf size"), "ProtobufTooLarge"),
    (re.compile(r"Descriptors cannot be created directly"), "ProtobufIncompatible"),
    # uv: "Because onnx==1.17.0 depends on protobuf>=3.20.2 and you require protobuf==3.20.1, ..."
    (re.compile(r"Because .*?depends on ([A-Za-z0-9_.-]+?)(?:[<>=!~;\[ ]|$)"), "ResolutionConflict({0})"),
    (re.compile(r"Because (?:there is no version of |only |all versions of )?([A-Za-z0-9_.-]+)"),
     "ResolutionConflict({0})"),
    (re.compile(r"Failed to build `([A-Za-z0-9_.-]+?)(?:==|`)"), "BuildFailed({0})"),
    (re.compile(r"No module named '([\w.]+)'"), "ModuleNotFound({0})"),
    # A dependency older than its user needs, installed because nobody declared the lower bound:
    # "module 'ml_dtypes' has no attribute 'float4_e2m1fn'", "cannot import name 'x' from 'ml_dtypes'"
    (re.compile(r"module '([\w.]+)' has no attribute '\w+'"), "IncompatibleDependency({0})"),
    (re.compile(r"cannot import name '\w+' from '([\w.]+)'"), "IncompatibleDependency({0})"),
    (re.compile(r"incompatible Protobuf Gencode/Runtime versions when loading (\w+)"),
     "ProtobufGencodeMismatch({0})"),
    (re.compile(r"unrecognized namespace (\w+::\w+)"), "UnsupportedOperator({0})"),
    # onnx-tf: "BackendIsNotSupposedToImplementIt: GridSample is not implemented."
    (re.compile(r"BackendIsNotSupposedToImplementIt: (\w+)(?: version \d+)? is not implemented"),
     "ConverterMissingOp(onnx-tf:{0})"),
    # onnx2tf prints the node it gave up on, then exits
    (re.compile(r"onnx_op_name: (?:[\w./-]*/)?([A-Za-z]+)"), "ConverterMissingOp(onnx2tf:{0})"),
]


# Failures the worker names itself, whose message adds nothing to group on (issue 11: a deployed artifact that a
# user cannot call, e.g. a SavedModel without serving_default, which TF Serving refuses).
SELF_NAMED = ("NoServingSignature", "NoSavedModel", "NoTfliteFile")


def _clean(text: str) -> str:
    text = re.sub(r"\x1b\[[0-9;]*m|\[\d+m", "", text)  # terminal colours
    text = re.sub(r"(/[\w.+-]+)+/?", "<path>", text)
    text = re.sub(r"0x[0-9a-fA-F]+", "<addr>", text)
    text = re.sub(r"\b\d+(\.\d+)*\b", "<n>", text)
    text = re.sub(r"(?<=[A-Za-z])_\d+\b", "_<n>", text)  # Keras' numbered layer names: tf.math.multiply_213
    return re.sub(r"\s+", " ", text).strip()


def normalise(
    error_type: str | None, message: str | None, *, step: str = "", details: Mapping[str, object] | None = None
) -> str:
    """A short stable signature for a failed step, e.g. `ParityExceeded(input=1)`."""
    details = details or {}
    message = message or ""
    if error_type in SELF_NAMED:
        return error_type
    if error_type == "WorkerLost":  # the queue gave an environment up (runner/queue.py give_up)
        return f"WorkerLost({details.get('times', '?')} times)"
    if error_type == "ParityExceeded":
        return f"ParityExceeded(input={details.get('failed_input', '?')})"
    if error_type in ("Timeout", "Crash", "Oom"):
        sig = re.search(r"\b(SIG[A-Z]+)\b", message)
        return f"{error_type}({step}{',' + sig.group(1) if sig else ''})"
    for pattern, template in _RULES:
        m = pattern.search(message)
        if m:
            return template.format(*(g.strip("'\"") for g in m.groups()))
    first = next((ln for ln in message.splitlines() if ln.strip()), "")
    return f"{error_type or 'Error'}({step}: {_clean(first)[:120]})"
