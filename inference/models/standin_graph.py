"""Building blocks of the stand-in models: a graph builder whose weights are drawn lazily from a seed, a counter of
parameters and multiply-accumulates read off the graph, and a writer that streams half a gigabyte of weights to
disk without holding the model in memory.

A `Blueprint` is an ONNX graph whose large weights are *specifications* (shape and initial distribution), not data.
`count_blueprint` runs ONNX shape inference on it (the weights declared as typed inputs) and sums the Conv, Gemm and
MatMul work, so counts need no weights at all. `write_blueprint` writes the ModelProto field by field: the small
top-level fields, then the graph's length, its nodes and I/O, then each initializer generated, written and dropped
in turn (peak memory: the largest single tensor, 38 MB for the swapper). Protobuf parsers accept fields in any order
and merge repeated fields, so the file is an ordinary ONNX model; initializers keep their declared order (the
swapper's emap must come last).
"""

from __future__ import annotations

import math
import os
import tempfile
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO, Final

import numpy as np
import onnx
from numpy.typing import NDArray
from onnx import TensorProto, helper, numpy_helper

OPSET: Final = 13
IR_VERSION: Final = 8
GUIDE_PREFIX: Final = "guide/"

RELU_GAIN: Final = math.sqrt(2.0)
LEAKY_SLOPE: Final = 0.2
LEAKY_GAIN: Final = math.sqrt(2.0 / (1.0 + LEAKY_SLOPE**2))

_GRAPH_FIELD = onnx.ModelProto.DESCRIPTOR.fields_by_name["graph"].number
_INITIALIZER_FIELD = onnx.GraphProto.DESCRIPTOR.fields_by_name["initializer"].number
_RAW_DATA_FIELD = onnx.TensorProto.DESCRIPTOR.fields_by_name["raw_data"].number
_WIRE_LEN = 2
_CHUNK_ELEMENTS = 1 << 22  # 16 MB of float32 per draw keeps the generator's temporaries small


@dataclass(frozen=True)
class Weight:
    """An initializer: either fixed data (`value`) or float32 drawn from N(mean, std^2) at write time."""

    name: str
    shape: tuple[int, ...]
    std: float = 0.0
    mean: float = 0.0
    value: NDArray[Any] | None = None

    @property
    def size(self) -> int:
        return math.prod(self.shape)

    @property
    def dtype(self) -> np.dtype[Any]:
        return np.dtype(np.float32) if self.value is None else self.value.dtype

    @property
    def generated(self) -> bool:
        return self.value is None


@dataclass
class Blueprint:
    """A whole model but for the generated weights' data."""

    name: str
    inputs: list[onnx.ValueInfoProto]
    outputs: list[onnx.ValueInfoProto]
    nodes: list[onnx.NodeProto]
    weights: list[Weight]
    doc_string: str = ""
    canonical_inputs: dict[str, list[int]] = field(default_factory=dict)


class Builder:
    """Collects nodes and weight specifications with unique names; layer helpers return their output's name."""

    def __init__(self) -> None:
        self.nodes: list[onnx.NodeProto] = []
        self.weights: list[Weight] = []
        self._names: set[str] = set()
        self._shared: dict[str, str] = {}  # constants used by many nodes, keyed by their value

    def _unique(self, name: str) -> str:
        candidate, suffix = name, 1
        while candidate in self._names:
            suffix += 1
            candidate = f"{name}_{suffix}"
        self._names.add(candidate)
        return candidate

    # --- primitives -------------------------------------------------------------------------------------------

    def weight(self, name: str, shape: Sequence[int], *, std: float, mean: float = 0.0) -> str:
        unique = self._unique(name)
        self.weights.append(Weight(unique, tuple(int(d) for d in shape), std=float(std), mean=float(mean)))
        return unique

    def const(self, name: str, value: NDArray[Any]) -> str:
        unique = self._unique(name)
        self.weights.append(Weight(unique, tuple(int(d) for d in value.shape), value=np.ascontiguousarray(value)))
        return unique

    def add_weight(self, weight: Weight) -> str:
        """Adopt a weight under its own name (which must be free)."""
        if weight.name in self._names:
            raise ValueError(f"duplicate tensor name {weight.name!r}")
        self._names.add(weight.name)
        self.weights.append(weight)
        return weight.name

    def add_node(self, node: onnx.NodeProto) -> None:
        """Adopt a ready node; its name and outputs must be free."""
        taken = {node.name, *node.output} & self._names
        if taken:
            raise ValueError(f"duplicate names {sorted(taken)}")
        self._names.update([node.name, *node.output])
        self.nodes.append(node)

    def fill(self, value: float, size: int) -> str:
        """A shared float32 vector of `size` copies of `value` (InstanceNormalization's unit scale, zero bias)."""
        key = f"fill:{value!r}:{size}"
        if key not in self._shared:
            self._shared[key] = self.const(f"fill_{value:g}_{size}", np.full(size, value, dtype=np.float32))
        return self._shared[key]

    def ints(self, values: Sequence[int]) -> str:
        key = f"ints:{list(values)}"
        if key not in self._shared:
            label = "_".join(str(v).replace("-", "m") for v in values)
            self._shared[key] = self.const(f"i64_{label}", np.asarray(values, dtype=np.int64))
        return self._shared[key]

    def scalar(self, value: float) -> str:
        key = f"scalar:{float(value)!r}"
        if key not in self._shared:
            self._shared[key] = self.const(f"f32_{value:g}", np.asarray(value, dtype=np.float32))
        return self._shared[key]

    def op(self, op_type: str, inputs: Sequence[str], name: str, **attrs: Any) -> str:
        """One node whose single output tensor has the node's (unique) name."""
        return self.op_outputs(op_type, inputs, name, 1, **attrs)[0]

    def op_outputs(self, op_type: str, inputs: Sequence[str], name: str, count: int, **attrs: Any) -> list[str]:
        """One node with `count` outputs, named `<name>` or `<name>_0`, `<name>_1`, ..."""
        unique = self._unique(name)
        names = [unique] if count == 1 else [f"{unique}_{i}" for i in range(count)]
        self._names.update(names)
        self.nodes.append(helper.make_node(op_type, list(inputs), names, name=unique, **attrs))
        return names

    # --- layers -----------------------------------------------------------------------------------------------

    def conv(
        self,
        x: str,
        cin: int,
        cout: int,
        kernel: int,
        name: str,
        *,
        stride: int = 1,
        pad: int | None = None,
        bias: bool = True,
        gain: float = RELU_GAIN,
        std: float | None = None,
        bias_mean: float = 0.0,
    ) -> str:
        """Conv2d (PyTorch layout). Default std is He: gain / sqrt(fan_in); biases start at `bias_mean`."""
        fan_in = cin * kernel * kernel
        w = self.weight(
            f"{name}.weight", (cout, cin, kernel, kernel), std=gain / math.sqrt(fan_in) if std is None else std
        )
        inputs = [x, w]
        if bias:
            inputs.append(self.weight(f"{name}.bias", (cout,), std=0.0, mean=bias_mean))
        p = kernel // 2 if pad is None else pad
        return self.op("Conv", inputs, name, kernel_shape=[kernel, kernel], strides=[stride, stride], pads=[p] * 4)

    def gemm(self, x: str, fin: int, fout: int, name: str, *, gain: float = 1.0, bias_mean: float = 0.0) -> str:
        """nn.Linear as exported: Gemm with a (out, in) weight and transB."""
        w = self.weight(f"{name}.weight", (fout, fin), std=gain / math.sqrt(fin))
        b = self.weight(f"{name}.bias", (fout,), std=0.0, mean=bias_mean)
        return self.op("Gemm", [x, w, b], name, transB=1)

    def batch_norm(self, x: str, channels: int, name: str) -> str:
        """An inference BatchNormalization (scale 1, shift 0, mean 0, variance 1: near identity)."""
        inputs = [x]
        for part, mean in (("weight", 1.0), ("bias", 0.0), ("running_mean", 0.0), ("running_var", 1.0)):
            inputs.append(self.weight(f"{name}.{part}", (channels,), std=0.0, mean=mean))
        return self.op("BatchNormalization", inputs, name, epsilon=1e-5)

    def relu(self, x: str, name: str) -> str:
        return self.op("Relu", [x], name)

    def leaky(self, x: str, name: str) -> str:
        return self.op("LeakyRelu", [x], name, alpha=LEAKY_SLOPE)

    def prelu(self, x: str, channels: int, name: str) -> str:
        slope = self.weight(f"{name}.weight", (channels, 1, 1), std=0.0, mean=0.25)
        return self.op("PRelu", [x, slope], name)

    def add(self, a: str, b: str, name: str) -> str:
        return self.op("Add", [a, b], name)

    def mul(self, a: str, b: str, name: str) -> str:
        return self.op("Mul", [a, b], name)

    def resize(self, x: str, scale: float, name: str) -> str:
        """F.interpolate(scale_factor=scale, mode='bilinear', align_corners=False)."""
        scales = self.const(f"{name}_scales", np.asarray([1.0, 1.0, scale, scale], dtype=np.float32))
        return self.op(
            "Resize", [x, "", scales], name, mode="linear", coordinate_transformation_mode="pytorch_half_pixel"
        )

    def reflect_pad(self, x: str, pad: int, name: str) -> str:
        return self.op("Pad", [x, self.ints([0, 0, pad, pad, 0, 0, pad, pad])], name, mode="reflect")

    def flatten_head(self, x: str, width: int, name: str) -> str:
        """NCHW -> [N*H*W*C/width, width], the rank-2 layout of SCRFD's exported outputs."""
        nhwc = self.op("Transpose", [x], f"{name}_nhwc", perm=[0, 2, 3, 1])
        return self.op("Reshape", [nhwc, self.ints([-1, width])], name)

    def blueprint(
        self,
        name: str,
        inputs: list[onnx.ValueInfoProto],
        outputs: list[onnx.ValueInfoProto],
        *,
        doc_string: str,
        canonical_inputs: dict[str, list[int]],
    ) -> Blueprint:
        return Blueprint(name, inputs, outputs, self.nodes, self.weights, doc_string, canonical_inputs)


def graft(builder: Builder, model: onnx.ModelProto, *, keep: Iterable[str] = ()) -> dict[str, str]:
    """Copy another model's graph into `builder` under GUIDE_PREFIX. Graph inputs keep their names (they are shared);
    every other tensor and node is renamed. Returns the map from the model's output names to their new names.
    Initializers named in `keep` are left out (the caller re-adds them where it wants them)."""
    graph = model.graph
    shared = {value.name for value in graph.input}
    kept = set(keep)

    def rename(tensor: str) -> str:
        return tensor if not tensor or tensor in shared else GUIDE_PREFIX + tensor

    for initializer in graph.initializer:
        if initializer.name in kept:
            continue
        value = numpy_helper.to_array(initializer)
        builder.add_weight(Weight(rename(initializer.name), tuple(value.shape), value=np.ascontiguousarray(value)))
    for node in graph.node:
        copy = onnx.NodeProto()
        copy.CopyFrom(node)
        copy.name = GUIDE_PREFIX + (node.name or node.output[0])
        copy.input[:] = [rename(t) for t in node.input]
        copy.output[:] = [rename(t) for t in node.output]
        builder.add_node(copy)
    return {value.name: rename(value.name) for value in graph.output}


# --- counting -------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class GraphCounts:
    params: int
    flops: int  # multiply-accumulates of Conv, Gemm and MatMul
    guide_params: int
    guide_flops: int
    activation_bytes: int  # every intermediate float tensor at the canonical size, summed (an upper bound)


def _dims(value: onnx.ValueInfoProto) -> list[int] | None:
    dims = value.type.tensor_type.shape.dim
    if not value.type.tensor_type.HasField("shape") or any(not d.HasField("dim_value") for d in dims):
        return None
    return [int(d.dim_value) for d in dims]


def _typed(value: onnx.ValueInfoProto, shape: list[int]) -> onnx.ValueInfoProto:
    return helper.make_tensor_value_info(value.name, value.type.tensor_type.elem_type, shape)


def count_blueprint(blueprint: Blueprint) -> GraphCounts:
    """Parameters (every initializer element) and multiply-accumulates (Conv, Gemm, MatMul) at the blueprint's
    canonical input shapes, from ONNX shape inference over the graph; generated weights need no data for it."""
    inputs = []
    for value in blueprint.inputs:
        dims = blueprint.canonical_inputs.get(value.name) or _dims(value)
        if dims is None:
            raise ValueError(f"input {value.name!r} is dynamic and has no canonical shape")
        inputs.append(_typed(value, dims))
    initializers: list[onnx.TensorProto] = []
    for weight in blueprint.weights:
        if weight.generated:
            inputs.append(helper.make_tensor_value_info(weight.name, TensorProto.FLOAT, list(weight.shape)))
        else:
            assert weight.value is not None
            initializers.append(numpy_helper.from_array(weight.value, name=weight.name))
    graph = helper.make_graph(blueprint.nodes, blueprint.name, inputs, blueprint.outputs, initializer=initializers)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)])
    model.ir_version = IR_VERSION
    inferred = onnx.shape_inference.infer_shapes(model, strict_mode=True, data_prop=True)
    shapes: dict[str, list[int]] = {w.name: list(w.shape) for w in blueprint.weights}
    activation_bytes = 0
    for value in [*inferred.graph.input, *inferred.graph.value_info, *inferred.graph.output]:
        dims = _dims(value)
        if dims is not None:
            shapes[value.name] = dims
    weight_names = {w.name for w in blueprint.weights}
    for value in [*inferred.graph.value_info, *inferred.graph.output]:
        dims = shapes.get(value.name)
        if (
            dims is not None
            and value.type.tensor_type.elem_type == TensorProto.FLOAT
            and value.name not in weight_names
        ):
            activation_bytes += 4 * math.prod(dims)

    flops = guide_flops = 0
    for node in inferred.graph.node:
        work = _node_macs(node, shapes)
        flops += work
        if node.name.startswith(GUIDE_PREFIX):
            guide_flops += work
    params = sum(w.size for w in blueprint.weights)
    guide_params = sum(w.size for w in blueprint.weights if w.name.startswith(GUIDE_PREFIX))
    return GraphCounts(params, flops, guide_params, guide_flops, activation_bytes)


def _node_macs(node: onnx.NodeProto, shapes: dict[str, list[int]]) -> int:
    def shape(name: str) -> list[int]:
        if name not in shapes:
            raise ValueError(f"shape inference left {name!r} (input of {node.name!r}) without a static shape")
        return shapes[name]

    if node.op_type == "Conv":
        out = shape(node.output[0])
        weight = shape(node.input[1])  # (cout, cin / groups, kh, kw): groups are already in the weight's shape
        return math.prod(out) * math.prod(weight[1:])
    if node.op_type == "Gemm":
        a, b = shape(node.input[0]), shape(node.input[1])
        attrs = {attr.name: helper.get_attribute_value(attr) for attr in node.attribute}
        m, k = (a[1], a[0]) if attrs.get("transA", 0) else (a[0], a[1])
        n = b[0] if attrs.get("transB", 0) else b[1]
        return m * n * k
    if node.op_type == "MatMul":
        a, out = shape(node.input[0]), shape(node.output[0])
        return math.prod(out) * a[-1]
    return 0


# --- writing --------------------------------------------------------------------------------------------------


def _varint(value: int) -> bytes:
    out = bytearray()
    while True:
        byte = value & 0x7F
        value >>= 7
        if value:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


def _tag(number: int) -> bytes:
    return _varint((number << 3) | _WIRE_LEN)


def _tensor_header(weight: Weight) -> bytes:
    """TensorProto fields but the data: dims, data_type, name."""
    header = TensorProto()
    header.dims.extend(weight.shape)
    header.data_type = helper.np_dtype_to_tensor_dtype(weight.dtype)
    header.name = weight.name
    return header.SerializeToString(deterministic=True)


def _entry_prefix(weight: Weight) -> bytes:
    """Everything of GraphProto.initializer[i] up to the raw bytes themselves."""
    data_bytes = weight.size * weight.dtype.itemsize
    head = _tensor_header(weight)
    body_length = len(head) + len(_tag(_RAW_DATA_FIELD)) + len(_varint(data_bytes)) + data_bytes
    return _tag(_INITIALIZER_FIELD) + _varint(body_length) + head + _tag(_RAW_DATA_FIELD) + _varint(data_bytes)


def _write_data(stream: BinaryIO, weight: Weight, rng: np.random.Generator) -> None:
    if weight.value is not None:
        stream.write(np.ascontiguousarray(weight.value, dtype=weight.value.dtype.newbyteorder("<")).tobytes())
        return
    remaining = weight.size
    if weight.std == 0.0:
        constant = np.full(min(remaining, _CHUNK_ELEMENTS), weight.mean, dtype="<f4")
        while remaining:
            n = min(remaining, _CHUNK_ELEMENTS)
            stream.write(constant[:n].data)
            remaining -= n
        return
    while remaining:
        n = min(remaining, _CHUNK_ELEMENTS)
        chunk = rng.standard_normal(n, dtype=np.float32)
        chunk *= np.float32(weight.std)
        if weight.mean:
            chunk += np.float32(weight.mean)
        stream.write(chunk.data)
        remaining -= n


def shell_model(
    blueprint: Blueprint, *, producer: str, version: str, doc_string: str, metadata: dict[str, str]
) -> onnx.ModelProto:
    """The ModelProto with every field but the initializers."""
    graph = helper.make_graph(
        blueprint.nodes, blueprint.name, blueprint.inputs, blueprint.outputs, doc_string=blueprint.doc_string
    )
    model = helper.make_model(
        graph,
        opset_imports=[helper.make_opsetid("", OPSET)],
        producer_name=producer,
        producer_version=version,
        doc_string=doc_string,
    )
    model.ir_version = IR_VERSION
    helper.set_model_props(model, metadata)
    return model


def write_blueprint(blueprint: Blueprint, path: Path, *, shell: onnx.ModelProto, seed: Sequence[int]) -> int:
    """Write the model to `path` atomically (a temporary file in the same directory, then a rename) and return its
    size in bytes. Each generated weight draws from its own stream, `default_rng([*seed, index])`, so a weight's
    values depend on the seed and its position only."""
    top = onnx.ModelProto()
    top.CopyFrom(shell)
    top.ClearField("graph")
    head = shell.graph.SerializeToString(deterministic=True)
    prefixes = [_entry_prefix(w) for w in blueprint.weights]
    graph_length = len(head) + sum(
        len(p) + w.size * w.dtype.itemsize for p, w in zip(prefixes, blueprint.weights, strict=True)
    )
    top_bytes = top.SerializeToString(deterministic=True)
    graph_tag = _tag(_GRAPH_FIELD) + _varint(graph_length)

    path = Path(path)
    fd, temporary = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb", buffering=1 << 20) as stream:
            stream.write(top_bytes)
            stream.write(graph_tag)
            stream.write(head)
            for index, (prefix, weight) in enumerate(zip(prefixes, blueprint.weights, strict=True)):
                stream.write(prefix)
                _write_data(stream, weight, np.random.default_rng([*seed, index]))
            size = stream.tell()
        if size != len(top_bytes) + len(graph_tag) + graph_length:  # a length prefix would be wrong: never rename
            raise RuntimeError(
                f"{path.name}: wrote {size} bytes, expected {len(top_bytes) + len(graph_tag) + graph_length}"
            )
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise
    return size
