"""Raw messages → signatures, on messages of the kinds real runs produce."""

from __future__ import annotations

import pytest

from runner.signatures import normalise

# Messages captured from real runs (seed-chain and history, 2026-11-24), abridged only at the ends.
REAL = [
    ("UnsupportedOperatorError",
     "Exporting the operator 'aten::unflatten' to ONNX opset version 17 is not supported. Please feel free to "
     "request support or submit a pull request on PyTorch GitHub: https://github.com/pytorch/pytorch/issues.",
     "export", {}, "UnsupportedOperator(aten::unflatten)"),
    ("BackendIsNotSupposedToImplementIt",
     'in user code:\n    File "/root/.cache/knowngood/envs/3.10-0d5598609e71fcab/lib/python3.10/site-packages/'
     'onnx_tf/backend.py", line 349, in _onnx_node_to_tensorflow_op  *\n        raise '
     'BackendIsNotSupposedToImplementIt("{} is not implemented.".format(\n\n    '
     "BackendIsNotSupposedToImplementIt: GridSample is not implemented.\n", "tf_run", {},
     "ConverterMissingOp(onnx-tf:GridSample)"),
    ("ConverterExit",
     "exit(1) during convert:\nSystemExit: 1\n\nERROR: input_onnx_file_path: /root/.cache/knowngood/work/ab8ab58a-8/"
     "cases/grid_sample_nearest.onnx2tf.torchscript.op17/model.onnx\nERROR: onnx_op_name: /GridSample\n"
     "ERROR: Read this and deal with it. https://github.com/PINTO0309/onnx2tf#parameter-replacement",
     "convert", {}, "ConverterMissingOp(onnx2tf:GridSample)"),
    ("UnsupportedOperatorError",
     "ONNX export failed on an operator with unrecognized namespace knowngood::scaled_tanh. If you are trying to "
     "export a custom operator, make sure you registered it with the right domain and version.",
     "export", {}, "UnsupportedOperator(knowngood::scaled_tanh)"),
    ("ModuleNotFoundError", "No module named 'tensorflow_probability'", "convert", {},
     "ModuleNotFound(tensorflow_probability)"),
    ("AttributeError", "module 'ml_dtypes' has no attribute 'float4_e2m1fn'", "export", {},
     "IncompatibleDependency(ml_dtypes)"),
    ("ImportError", "cannot import name 'float4_e2m1fn' from 'ml_dtypes' (/root/.cache/knowngood/envs/3.11-x/lib/"
     "python3.11/site-packages/ml_dtypes/__init__.py)", "export", {}, "IncompatibleDependency(ml_dtypes)"),
    ("VersionError", "Detected incompatible Protobuf Gencode/Runtime versions when loading tf_keras/protobuf/"
     "projector_config.proto: gencode 5.28.3 runtime 4.25.5. Runtime version cannot be older than the linked "
     "gencode version.", "convert", {}, "ProtobufGencodeMismatch(tf_keras)"),
    ("Fail",  # ONNX Runtime 1.15.1 loading a graph the TorchScript exporter wrote at opset 20
     "[ONNXRuntimeError] : 1 : FAIL : Load model from /root/.cache/a/model.onnx failed:/onnxruntime_src/onnxruntime/"
     "core/graph/model_load_utils.h:46 void onnxruntime::model_load_utils::ValidateOpsetForDomain(const std::"
     "unordered_map<std::basic_string<char>, int>&, const onnxruntime::logging::Logger&, bool, const string&, int) "
     "ONNX Runtime only *guarantees* support for models stamped with official released onnx opset versions. Opset "
     "20 is under development and support for this is limited. Current official support for domain ai.onnx is till "
     "opset 19.", "runtime", {}, "OpsetTooNew"),
    ("ValueError",  # onnx2tf 1.28 on a dynamo graph: Keras numbers its layers, one signature for all of them
     'Exception encountered when calling layer "tf.math.multiply_213" (type TFOpLambda).', "convert", {},
     'ValueError(convert: Exception encountered when calling layer "tf.math.multiply_<n>" (type TFOpLambda).)'),
    ("ResolutionConflict",
     "  × No solution found when resolving dependencies:\n  ╰─▶ Because onnx-graphsurgeon<=0.0.1.dev5 has no usable "
     "wheels and all of:\n             onnx-graphsurgeon>=0.5.2,<=0.5.6\n             onnx-graphsurgeon>=0.5.8\n"
     "         depend on onnx>=1.14.0, we can conclude that all of: ...",
     "", {}, "ResolutionConflict(onnx-graphsurgeon)"),
]

SYNTHETIC = [
    ("UnsupportedOperatorError",
     "Exporting the operator 'aten::grid_sampler' to ONNX opset version 15 is not supported. Please feel free to "
     "request support or submit a pull request on PyTorch GitHub: https://github.com/pytorch/pytorch/issues.",
     "export", {}, "UnsupportedOperator(aten::grid_sampler)"),
    ("RuntimeError", "ONNX export failed: Unsupported operator 'aten::grid_sampler_2d'", "export", {},
     "UnsupportedOperator(aten::grid_sampler_2d)"),
    ("InvalidGraph",
     "[ONNXRuntimeError] : 10 : INVALID_GRAPH : Load model from /tmp/x/model.onnx failed:"
     "/onnxruntime_src/onnxruntime/core/graph/model.cc:180 onnxruntime::Model::Model(...) "
     "Unsupported model IR version: 10, max supported IR version: 9", "runtime", {}, "IRVersionTooNew"),
    ("ResolutionConflict",
     "  × No solution found when resolving dependencies:\n  ╰─▶ Because onnx==1.17.0 depends on protobuf>=3.20.2 and "
     "you require protobuf==3.20.1, we can conclude that your requirements and onnx==1.17.0 are incompatible.",
     "", {}, "ResolutionConflict(protobuf)"),
    # torch 2.8.0 dynamo exporter with the resolver's newest onnxscript: the cause is in the exception summary
    ("ConversionError",
     "Failed to convert the exported program to an ONNX model. \x1b[96mThis is step 3/3\x1b[0m of exporting the "
     "model to ONNX. Next steps:\n- If there is a missing ONNX function, implement it and register it to the registry."
     "\n## Exception summary\n<class 'torch.onnx._internal.exporter._errors.DispatchError'>: No ONNX function found "
     "for <OpOverload(op='aten.convolution', overload='default')>. Failure message: No decompositions registered for "
     "the real-valued input\n⬆️\n<class 'torch.onnx._internal.exporter._errors.ConversionError'>: Error when "
     "translating node %convolution", "export", {}, "NoOnnxFunction(aten::convolution)"),
    ("ConversionError",
     "Failed to convert the exported program to an ONNX model.\n## Exception summary\n<class 'torch.onnx._internal."
     "exporter._errors.DispatchError'>: No ONNX function found for <torch._higher_order_ops.cond.CondOp object at "
     "0x7f3a2c1b2d90>. Failure message: No decompositions registered", "export", {}, "NoOnnxFunction(Cond)"),
    ("TorchExportError",
     "Failed to export the model with torch.export. \x1b[96mThis is step 1/3\x1b[0m of exporting the model to ONNX."
     "\n## Exception summary\n<class 'torch.fx.experimental.symbolic_shapes.GuardOnDataDependentSymNode'>: Could not "
     "guard on data-dependent expression Eq(u0, 1) (unhinted: Eq(u0, 1)).\n  File \"/work/main/matrix/corpus/"
     "control_flow.py\", line 39, in forward\n    if bool(x.sum() > 0):", "export", {}, "DataDependentControlFlow"),
    ("TorchExportError",
     "Failed to export the model with torch.export.\n## Exception summary\n<class 'ValueError'>: Exporting a "
     "ScriptModule is not supported. Maybe try converting your ScriptModule to an ExportedProgram using "
     "`TS2EPConverter(mod, args, kwargs)` instead.", "export", {}, "ScriptModuleNotSupported"),
    ("ParityExceeded", "input 1 (branch=else): max abs diff 6.4 exceeds atol 1e-05", "parity", {"failed_input": 1},
     "ParityExceeded(input=1)"),
    ("Crash", "worker died from SIGSEGV", "convert", {}, "Crash(convert,SIGSEGV)"),
    ("Timeout", "step exceeded 600 s; process group stopped", "convert", {}, "Timeout(convert)"),
    ("ModuleNotFoundError", "No module named 'onnxscript'", "export", {}, "ModuleNotFound(onnxscript)"),
    ("ValueError", "shape (1, 3, 224, 224) at /tmp/abc/def.py:12 is wrong at 0x7fff1234", "convert", {},
     "ValueError(convert: shape (<n>, <n>, <n>, <n>) at <path>:<n> is wrong at <addr>)"),
]
CASES = [*REAL, *SYNTHETIC]


@pytest.mark.parametrize(("error_type", "message", "step", "details", "expected"), CASES,
                         ids=[c[4][:40] for c in CASES])
def test_normalise(error_type: str, message: str, step: str, details: dict, expected: str) -> None:
    assert normalise(error_type, message, step=step, details=details) == expected


def test_versions_paths_and_numbers_do_not_split_a_group() -> None:
    a = normalise("ValueError", "bad tensor at /home/a/x.py:3 in torch 2.1.0", step="convert")
    b = normalise("ValueError", "bad tensor at /srv/b/y.py:99 in torch 2.4.1", step="convert")
    assert a == b
