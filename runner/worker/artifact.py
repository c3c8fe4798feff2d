"""Artifacts of split chains: what an export environment hands to runtime environments, stored by content.

An artifact is a folder named by its key: `model.onnx` (external data inlined), the example inputs and torch's
reference outputs as `.npy` files, and `meta.json`. The key is a hash of the graph with everything that carries
no meaning removed (producer name and version, doc strings, node names, the names of internal values), so the
same graph exported by two torch releases is one artifact and is converted once per runtime environment.

Runs inside case environments: the export side has torch, onnx and numpy; the runtime side has numpy and onnx
(or only onnxruntime, whose protobuf copy is not needed: the runtime side reads the file, never the proto).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile

FORMAT = 1


def _clear_metadata(message) -> None:  # type: ignore[no-untyped-def]
    # metadata_props (IR 10) on graphs, nodes and values carry source locations, module paths and rewrite-rule
    # names: the dynamo exporter writes them, and they change with every torch release while the graph doesn't.
    if "metadata_props" in message.DESCRIPTOR.fields_by_name:
        del message.metadata_props[:]


def _rename_values(graph, names: dict) -> None:  # type: ignore[no-untyped-def]
    """Rename internal values in order of first appearance; graph inputs and outputs keep their names (a user
    feeds them by name). Subgraphs (If/Loop bodies) share the mapping, as they may read outer values."""

    def new(name: str) -> str:
        if not name:
            return name
        if name not in names:
            names[name] = "v%d" % len(names)
        return names[name]

    _clear_metadata(graph)
    for init in graph.initializer:
        init.name = new(init.name)
        _clear_metadata(init)
    for node in graph.node:
        node.name = ""
        node.doc_string = ""
        _clear_metadata(node)
        for i, name in enumerate(node.input):
            node.input[i] = new(name)
        for i, name in enumerate(node.output):
            node.output[i] = new(name)
        for attr in node.attribute:
            attr.doc_string = ""
            if attr.HasField("g"):
                _rename_values(attr.g, names)
            for sub in attr.graphs:
                _rename_values(sub, names)
    for info in list(graph.value_info):
        info.name = new(info.name)
    graph.doc_string = ""
    graph.name = ""


def graph_key(path: str) -> str:
    """The normalised graph hash of an ONNX file (with its external data, if any)."""
    import onnx

    model = onnx.load(path)
    model.producer_name = ""
    model.producer_version = ""
    model.doc_string = ""
    model.model_version = 0
    del model.metadata_props[:]
    graph = model.graph
    # Inputs and outputs keep their names: they are the artifact's interface. Everything else is renamed.
    keep = {v.name: v.name for v in list(graph.input) + list(graph.output)}
    names = dict(keep)
    _rename_values(graph, names)
    for value in list(graph.input) + list(graph.output):
        value.doc_string = ""
        _clear_metadata(value)
    # value_info carries shape inference results that some torch releases write and others don't.
    del graph.value_info[:]
    return hashlib.sha256(model.SerializeToString(deterministic=True)).hexdigest()


def save(root: str, onnx_path: str, examples: list, reference: list, meta: dict) -> dict:
    """Store one export; an artifact already stored under the same key is kept (first writer wins)."""
    import numpy as np
    import onnx

    key = graph_key(onnx_path)
    final = os.path.join(root, key[:2], key)
    if os.path.isfile(os.path.join(final, "meta.json")):
        # The same graph from another export: accept it only if this export's inputs and torch's outputs agree
        # with the stored ones, so a normalisation that dropped something meaningful cannot merge two graphs.
        differs = _differs(Loaded(final), examples, reference, float(meta["atol"]), float(meta["rtol"]))
        if differs is None:
            return {"key": key, "stored": False, "dedup": "same graph, same inputs and reference outputs",
                    "path": final}
        key = hashlib.sha256((key + differs).encode()).hexdigest()
        final = os.path.join(root, key[:2], key)
        if os.path.isfile(os.path.join(final, "meta.json")):
            return {"key": key, "stored": False, "dedup": "kept apart: " + differs, "path": final}
    os.makedirs(os.path.dirname(final), exist_ok=True)
    tmp = tempfile.mkdtemp(prefix=".incoming-", dir=os.path.dirname(final))
    model = onnx.load(onnx_path)  # external data inlined: one file to hand over, and one to hash
    onnx.save(model, os.path.join(tmp, "model.onnx"))
    for i, example in enumerate(examples):
        for j, arg in enumerate(example.args):
            np.save(os.path.join(tmp, "input-%d-%d.npy" % (i, j)), arg.detach().cpu().numpy())
    for i, outputs in enumerate(reference):
        for j, out in enumerate(outputs):
            np.save(os.path.join(tmp, "reference-%d-%d.npy" % (i, j)), np.asarray(out))
    meta = dict(meta, format=FORMAT, key=key, inputs=[len(e.args) for e in examples],
                outputs=[len(r) for r in reference], notes=[e.note for e in examples])
    with open(os.path.join(tmp, "meta.json"), "w", encoding="utf-8") as fh:
        json.dump(meta, fh, indent=1, sort_keys=True)
    try:
        os.rename(tmp, final)  # atomic: a reader never sees half an artifact
    except OSError:  # another worker stored the same graph meanwhile
        shutil.rmtree(tmp, ignore_errors=True)
        return {"key": key, "stored": False, "path": final}
    return {"key": key, "stored": True, "path": final}


def _differs(stored, examples: list, reference: list, atol: float, rtol: float):  # type: ignore[no-untyped-def]
    """Why this export may not share the stored artifact, or None when inputs and reference outputs agree."""
    import numpy as np

    mine = [[a.detach().cpu().numpy() for a in e.args] for e in examples]
    if [[a.shape for a in x] for x in mine] != [[a.shape for a in x] for x in stored.inputs] or not all(
            np.array_equal(a, b) for x, y in zip(mine, stored.inputs) for a, b in zip(x, y)):
        return "example inputs differ"
    for outs, kept in zip(reference, stored.reference):
        for a, b in zip(outs, kept):
            a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
            if a.shape != b.shape or not np.allclose(a, b, atol=atol, rtol=rtol, equal_nan=True):
                return "reference outputs differ"
    return None


class Loaded:
    """An artifact read back on the runtime side: what the steps of a case need instead of torch."""

    def __init__(self, folder: str) -> None:
        import numpy as np

        with open(os.path.join(folder, "meta.json"), encoding="utf-8") as fh:
            self.meta = json.load(fh)
        self.onnx_path = os.path.join(folder, "model.onnx")
        self.inputs = [[np.load(os.path.join(folder, "input-%d-%d.npy" % (i, j))) for j in range(n)]
                       for i, n in enumerate(self.meta["inputs"])]
        self.reference = [[np.load(os.path.join(folder, "reference-%d-%d.npy" % (i, j))) for j in range(n)]
                          for i, n in enumerate(self.meta["outputs"])]
