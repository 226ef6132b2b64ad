"""Run a TFLite model's operators as TensorFlow ops: a network that ships only as a
``.tflite`` file (BirdNET) becomes part of a TensorFlow graph, weights and all.

The flatbuffer is read with TensorFlow's own schema module; each operator on the path to
the wanted output tensor is replayed with the TensorFlow op of the same semantics
(padding, strides, fused activations, masks, layouts), its constant inputs taken from the
file's buffers. The result is an ordinary traceable function, so it freezes into a
GraphDef, saves as a SavedModel and converts back to TFLite with a head behind it.

Only the operators such networks use are covered (:data:`SUPPORTED`); an unknown one is a
clear error naming it, never a silent difference. Dynamic batch sizes work: shape
arithmetic in the file (``SHAPE``, ``PACK``, ``STRIDED_SLICE``...) runs on real shapes.
The port is checked against the TFLite interpreter by the tests (BirdNET: embeddings
within 1e-4).
"""
from __future__ import annotations

import contextlib
import contextvars
from typing import Callable, Iterator, Optional, Sequence

import numpy as np

_FOR_TFLITE = contextvars.ContextVar("soundretrain_trace_for_tflite", default=False)


@contextlib.contextmanager
def tracing_for_tflite() -> Iterator[None]:
    """Trace replayed graphs for conversion to TFLite: operators are emitted in the form
    TFLite runs natively (its RFFT2D takes float32; TensorFlow's needs float64 to match)."""
    token = _FOR_TFLITE.set(True)
    try:
        yield
    finally:
        _FOR_TFLITE.reset(token)

#: TFLite tensor types -> numpy dtypes (schema ``TensorType``).
_DTYPES = {0: np.float32, 1: np.float16, 2: np.int32, 3: np.uint8, 4: np.int64, 6: np.bool_, 7: np.int16,
           8: np.complex64, 9: np.int8, 10: np.float64}


class UnsupportedModel(ValueError):
    """The TFLite model uses something this port does not replay; one line."""


class TFLiteGraph:
    """``fn = TFLiteGraph(data, output_name_suffix)``; ``fn(x)`` -> the named tensor.

    ``data``: the ``.tflite`` file's bytes. ``output``: a tensor name (or its ending)
    whose value is wanted, else the model's first output. ``protect``: a predicate on
    tensor names; constants it accepts are wrapped with ``protect_constant`` (for example
    :func:`soundretrain.render_tf.exact`, to keep a filterbank out of quantisation).
    """

    def __init__(self, data: bytes, output: Optional[str] = None,
                 protect: Optional[Callable[[str], bool]] = None, protect_constant=None) -> None:
        from tensorflow.lite.python import schema_py_generated as schema

        self._schema = schema
        self._buf = bytearray(data)
        model = schema.Model.GetRootAs(self._buf, 0)
        if model.SubgraphsLength() < 1:
            raise UnsupportedModel("the TFLite model has no subgraph")
        self._model = model
        sg = model.Subgraphs(0)
        self._sg = sg
        self.names = [sg.Tensors(i).Name().decode("utf-8", "replace") for i in range(sg.TensorsLength())]
        if output is None:
            target = int(sg.Outputs(0))
        else:
            matches = [i for i, n in enumerate(self.names) if n == output or n.endswith(output)]
            if len(matches) != 1:
                raise UnsupportedModel(f"the TFLite model has {len(matches)} tensors named {output!r}")
            target = matches[0]
        self.output_index = target
        if sg.InputsLength() != 1:
            raise UnsupportedModel(f"the TFLite model has {sg.InputsLength()} inputs; one is supported")
        self.input_index = int(sg.Inputs(0))
        codes = {v: k for k, v in vars(schema.BuiltinOperator).items() if not k.startswith("_")}
        ops = []
        for k in range(sg.OperatorsLength()):
            op = sg.Operators(k)
            opcode = model.OperatorCodes(op.OpcodeIndex())
            code = max(int(opcode.BuiltinCode()), int(opcode.DeprecatedBuiltinCode()))
            ops.append((codes.get(code, f"builtin {code}"), [int(i) for i in op.InputsAsNumpy()],
                        [int(i) for i in op.OutputsAsNumpy()], op))
        producer = {o: k for k, (_, _, outs, _) in enumerate(ops) for o in outs}
        needed, stack = set(), [target]
        while stack:  # only the operators on the way to the wanted tensor
            t = stack.pop()
            k = producer.get(t)
            if k is not None and k not in needed:
                needed.add(k)
                stack.extend(i for i in ops[k][1] if i >= 0)
        self._ops = [ops[k] for k in sorted(needed)]
        missing = sorted({name for name, *_ in self._ops if name not in SUPPORTED})
        if missing:
            raise UnsupportedModel(f"the TFLite model uses operators this port does not replay: {', '.join(missing)}")
        self._protect = protect
        self._protect_constant = protect_constant
        spec = sg.Tensors(self.input_index)
        signature = spec.ShapeSignatureAsNumpy() if spec.ShapeSignatureLength() else spec.ShapeAsNumpy()
        self.input_shape = [None if d < 0 else int(d) for d in signature]
        self.input_dtype = _DTYPES[spec.Type()]

    # --- constants -----------------------------------------------------------------

    def constant(self, index: int) -> Optional[np.ndarray]:
        """The constant value of tensor ``index``, or None when it is computed."""
        tensor = self._sg.Tensors(index)
        buffer = self._model.Buffers(tensor.Buffer())
        dtype = _DTYPES.get(tensor.Type())
        shape = [int(d) for d in tensor.ShapeAsNumpy()] if tensor.ShapeLength() else []
        if buffer is None or buffer.DataLength() == 0:
            if 0 in shape and dtype is not None:  # an empty constant (a reshape to a scalar): no bytes
                return np.zeros(shape, dtype)
            return None
        if dtype is None:
            raise UnsupportedModel(f"tensor {self.names[index]!r} has an unsupported type {tensor.Type()}")
        return np.frombuffer(buffer.DataAsNumpy().tobytes(), dtype=dtype).reshape(shape)

    # --- replay ----------------------------------------------------------------------

    def __call__(self, x):
        import tensorflow as tf

        values = {self.input_index: tf.convert_to_tensor(x)}

        def get(i: int):
            if i < 0:
                return None
            if i not in values:
                value = self.constant(i)
                if value is None:
                    raise UnsupportedModel(f"tensor {self.names[i]!r} is used before it is computed")
                if self._protect is not None and value.dtype == np.float32 and self._protect(self.names[i]):
                    values[i] = self._protect_constant(value, values[self.input_index])
                else:
                    values[i] = tf.constant(value)
            return values[i]

        for name, ins, outs, op in self._ops:
            args = [get(i) for i in ins]
            options = self._options(op)
            result = SUPPORTED[name](self, args, options, outs)
            results = result if isinstance(result, (list, tuple)) else [result]
            for index, value in zip(outs, results):
                values[index] = value
        return values[self.output_index]

    def _options(self, op):
        kind = op.BuiltinOptionsType()
        table = op.BuiltinOptions()
        if table is None or kind == 0:
            return None
        names = {v: k for k, v in vars(self._schema.BuiltinOptions).items() if not k.startswith("_")}
        cls = getattr(self._schema, names[kind], None)
        if cls is None:
            return None
        options = cls()
        options.Init(table.Bytes, table.Pos)
        return options

    def output_type(self, index: int):
        return _DTYPES[self._sg.Tensors(index).Type()]


# --- operators -------------------------------------------------------------------------


def _activation(x, options):
    import tensorflow as tf

    code = options.FusedActivationFunction() if options is not None and hasattr(options, "FusedActivationFunction") else 0
    if code == 0:
        return x
    if code == 1:
        return tf.nn.relu(x)
    if code == 2:
        return tf.clip_by_value(x, -1.0, 1.0)
    if code == 3:
        return tf.nn.relu6(x)
    if code == 4:
        return tf.tanh(x)
    raise UnsupportedModel(f"fused activation {code} is not supported")


def _padding(options) -> str:
    return "SAME" if options.Padding() == 0 else "VALID"


def _binary(fn):
    def run(graph, args, options, outs):
        return _activation(fn(args[0], args[1]), options)
    return run


def _conv_2d(graph, args, options, outs):
    import tensorflow as tf

    x, w, b = (args + [None])[:3]
    kernel = tf.transpose(w, [1, 2, 3, 0])  # TFLite [out, h, w, in] -> TF [h, w, in, out]
    y = tf.nn.conv2d(x, kernel, strides=[1, options.StrideH(), options.StrideW(), 1], padding=_padding(options),
                     dilations=[1, options.DilationHFactor(), options.DilationWFactor(), 1])
    return _activation(y + b if b is not None else y, options)


def _depthwise_conv_2d(graph, args, options, outs):
    import tensorflow as tf

    x, w, b = (args + [None])[:3]
    channels = int(x.shape[-1])
    multiplier = options.DepthMultiplier() or int(w.shape[-1]) // channels
    kernel = tf.reshape(w, [int(w.shape[1]), int(w.shape[2]), channels, multiplier])  # [1, h, w, in*m]
    y = tf.nn.depthwise_conv2d(x, kernel, strides=[1, options.StrideH(), options.StrideW(), 1],
                               padding=_padding(options),
                               dilations=[options.DilationHFactor(), options.DilationWFactor()])
    return _activation(y + b if b is not None else y, options)


def _fully_connected(graph, args, options, outs):
    import tensorflow as tf

    x, w, b = (args + [None])[:3]
    units, depth = int(w.shape[0]), int(w.shape[1])
    flat = tf.reshape(x, [-1, depth])
    y = tf.matmul(flat, w, transpose_b=True)
    if b is not None:
        y = y + b
    if options is not None and options.KeepNumDims():
        y = tf.reshape(y, tf.concat([tf.shape(x)[:-1], [units]], axis=0))
    return _activation(y, options)


def _reducer(fn):
    def run(graph, args, options, outs):
        keep = bool(options.KeepDims()) if options is not None else False
        return fn(args[0], axis=args[1], keepdims=keep)
    return run


def _reshape(graph, args, options, outs):
    import tensorflow as tf

    if len(args) > 1 and args[1] is not None:
        shape = args[1]
    else:
        shape = [int(d) for d in options.NewShapeAsNumpy()]
    return tf.reshape(args[0], shape)


def _shape(graph, args, options, outs):
    import tensorflow as tf

    return tf.shape(args[0], out_type=tf.as_dtype(graph.output_type(outs[0])))


def _split_v(graph, args, options, outs):
    import tensorflow as tf

    return tf.split(args[0], args[1], axis=args[2], num=len(outs))


def _pack(graph, args, options, outs):
    import tensorflow as tf

    return tf.stack(args, axis=options.Axis())


def _concatenation(graph, args, options, outs):
    import tensorflow as tf

    return _activation(tf.concat(args, axis=options.Axis()), options)


def _strided_slice(graph, args, options, outs):
    import tensorflow as tf

    x, begin, end, strides = args
    if hasattr(options, "Offset") and options.Offset():
        end = begin + end
    return tf.strided_slice(x, begin, end, strides, begin_mask=options.BeginMask(), end_mask=options.EndMask(),
                            ellipsis_mask=options.EllipsisMask(), new_axis_mask=options.NewAxisMask(),
                            shrink_axis_mask=options.ShrinkAxisMask())


def _gather(graph, args, options, outs):
    import tensorflow as tf

    axis = options.Axis() if options is not None else 0
    batch_dims = options.BatchDims() if options is not None and hasattr(options, "BatchDims") else 0
    return tf.gather(args[0], args[1], axis=axis, batch_dims=batch_dims)


def _range(graph, args, options, outs):
    import tensorflow as tf

    return tf.range(args[0], args[1], args[2])


def _expand_dims(graph, args, options, outs):
    import tensorflow as tf

    return tf.expand_dims(args[0], tf.reshape(args[1], []))


def _squeeze(graph, args, options, outs):
    import tensorflow as tf

    dims = [int(d) for d in options.SqueezeDimsAsNumpy()] if options is not None and options.SqueezeDimsLength() else None
    return tf.squeeze(args[0], axis=dims)


def _cast(graph, args, options, outs):
    import tensorflow as tf

    x = args[0]
    if x.dtype.is_complex:  # TFLite's complex -> real cast keeps the real part
        x = tf.math.real(x)
    return tf.cast(x, tf.as_dtype(graph.output_type(outs[0])))


def _rfft2d(graph, args, options, outs):
    import tensorflow as tf

    if _FOR_TFLITE.get():  # TFLite's own RFFT2D takes float32 (and computes in double inside)
        return tf.signal.rfft2d(args[0], fft_length=args[1])
    # TFLite's RFFT2D computes in double precision (kernels/rfft2d.cc); in float32 the quiet
    # bins of a pure tone are rounding noise, which BirdNET's magnitude compression amplifies
    # (embeddings off by 0.7 % instead of 4e-6).
    return tf.cast(tf.signal.rfft2d(tf.cast(args[0], tf.float64), fft_length=args[1]), tf.complex64)


def _pool(fn):
    def run(graph, args, options, outs):
        y = fn(args[0], ksize=[1, options.FilterHeight(), options.FilterWidth(), 1],
               strides=[1, options.StrideH(), options.StrideW(), 1], padding=_padding(options))
        return _activation(y, options)
    return run


def _simple(fn):
    def run(graph, args, options, outs):
        return fn(*[a for a in args if a is not None])
    return run


def _build_supported() -> dict:
    import tensorflow as tf

    return {
        "ADD": _binary(tf.add), "SUB": _binary(tf.subtract), "MUL": _binary(tf.multiply),
        "DIV": _binary(tf.divide), "FLOOR_DIV": _binary(tf.math.floordiv),
        "MAXIMUM": _binary(tf.maximum), "MINIMUM": _binary(tf.minimum), "POW": _binary(tf.pow),
        "CONV_2D": _conv_2d, "DEPTHWISE_CONV_2D": _depthwise_conv_2d, "FULLY_CONNECTED": _fully_connected,
        "MEAN": _reducer(tf.reduce_mean), "SUM": _reducer(tf.reduce_sum), "REDUCE_MAX": _reducer(tf.reduce_max),
        "REDUCE_MIN": _reducer(tf.reduce_min), "REDUCE_PROD": _reducer(tf.reduce_prod),
        "RESHAPE": _reshape, "SHAPE": _shape, "SPLIT_V": _split_v, "PACK": _pack,
        "CONCATENATION": _concatenation, "STRIDED_SLICE": _strided_slice, "GATHER": _gather, "RANGE": _range,
        "EXPAND_DIMS": _expand_dims, "SQUEEZE": _squeeze, "CAST": _cast, "RFFT2D": _rfft2d,
        "LOGISTIC": _simple(tf.sigmoid), "TANH": _simple(tf.tanh), "RELU": _simple(tf.nn.relu),
        "RELU6": _simple(tf.nn.relu6), "TRANSPOSE": _simple(tf.transpose),
        "REVERSE_V2": _simple(lambda x, axis: tf.reverse(x, tf.reshape(axis, [-1]))),
        "PAD": _simple(tf.pad), "AVERAGE_POOL_2D": _pool(tf.nn.avg_pool2d), "MAX_POOL_2D": _pool(tf.nn.max_pool2d),
    }


class _Supported(dict):
    """The operator table, built on first use (TensorFlow is imported only then)."""

    def _fill(self) -> None:
        if not dict.__len__(self):
            self.update(_build_supported())

    def __contains__(self, key) -> bool:
        self._fill()
        return dict.__contains__(self, key)

    def __getitem__(self, key):
        self._fill()
        return dict.__getitem__(self, key)


SUPPORTED = _Supported()
__all__: Sequence[str] = ["TFLiteGraph", "UnsupportedModel", "SUPPORTED", "tracing_for_tflite"]
