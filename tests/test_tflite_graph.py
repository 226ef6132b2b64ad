"""Replaying a TFLite model as TensorFlow ops (soundretrain.backbones.tflite_graph): a small
network using the operators BirdNET needs gives the interpreter's output, at several batch
sizes; an operator the port does not know is named in one line."""
from __future__ import annotations

import numpy as np
import pytest
import tensorflow as tf

from soundretrain.backbones.tflite_graph import TFLiteGraph, UnsupportedModel


class _Net(tf.Module):
    """Spectrogram-ish front-end, convolutions, squeeze-excite, pools: BirdNET's operator mix."""

    def __init__(self):
        super().__init__()
        rng = np.random.default_rng(0)
        self.mel = tf.constant(rng.random((9, 17)).astype(np.float32))
        self.conv = tf.constant(rng.normal(size=(3, 3, 1, 4)).astype(np.float32) * 0.3)
        self.bias = tf.constant(rng.normal(size=(4,)).astype(np.float32) * 0.1)
        self.depthwise = tf.constant(rng.normal(size=(3, 3, 4, 2)).astype(np.float32) * 0.3)
        self.squeeze = tf.constant(rng.normal(size=(8, 3)).astype(np.float32))
        self.excite = tf.constant(rng.normal(size=(3, 8)).astype(np.float32))

    @tf.function(input_signature=[tf.TensorSpec([None, 256], tf.float32, name="x")])
    def __call__(self, x):
        x = (x - tf.reduce_min(x, axis=1, keepdims=True)) / (tf.reduce_max(x, axis=1, keepdims=True) + 1.0)
        frames = tf.signal.frame(x, 32, 16)                                 # SHAPE, PACK, GATHER, ...
        spec = tf.cast(tf.signal.rfft(frames * tf.signal.hann_window(32)), tf.float32)  # RFFT2D, CAST (real part)
        spec = tf.pow(tf.tensordot(spec, self.mel, axes=[[2], [1]]) ** 2, 0.3)         # FULLY_CONNECTED, POW
        img = tf.expand_dims(tf.transpose(tf.reverse(spec, axis=[2]), [0, 2, 1]), -1)  # [N, 9, 15, 1]
        img = tf.pad(img, [[0, 0], [1, 1], [0, 0], [0, 0]])
        y = tf.nn.relu6(tf.nn.conv2d(img, self.conv, 1, "SAME") + self.bias)
        y = tf.nn.depthwise_conv2d(y, self.depthwise, [1, 2, 2, 1], "VALID")
        y = y * tf.sigmoid(y)                                                   # swish: LOGISTIC, MUL
        se = tf.reduce_mean(y, axis=[1, 2])                                     # MEAN
        se = tf.sigmoid(tf.matmul(tf.nn.relu(tf.matmul(se, self.squeeze)), self.excite))
        y = y * se[:, None, None, :]
        y = tf.nn.max_pool2d(y, 2, 1, "SAME") + tf.nn.avg_pool2d(y, 2, 1, "SAME")
        return tf.reduce_mean(y, axis=[1, 2], name="embedding")


@pytest.fixture(scope="module")
def flatbuffer():
    net = _Net()
    converter = tf.lite.TFLiteConverter.from_concrete_functions([net.__call__.get_concrete_function()], net)
    return converter.convert()


def interpreter_output(data: bytes, x: np.ndarray) -> np.ndarray:
    import os
    import tempfile

    from label.models import _tflite_interpreter

    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "m.tflite")
        with open(path, "wb") as f:
            f.write(data)
        runner = _tflite_interpreter(path, 1).get_signature_runner()
        return next(iter(runner(x=x).values()))


@pytest.mark.parametrize("batch", [1, 3])
def test_replay_matches_the_interpreter(flatbuffer, batch):
    x = np.random.default_rng(batch).standard_normal((batch, 256)).astype(np.float32)
    graph = TFLiteGraph(flatbuffer)
    assert graph.input_shape == [None, 256]
    expected = interpreter_output(flatbuffer, x)
    got = tf.function(graph, input_signature=[tf.TensorSpec([None, 256], tf.float32)])(x).numpy()
    np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-5)


def test_replay_converts_back_to_tflite(flatbuffer):
    from soundretrain.backbones.tflite_graph import tracing_for_tflite

    graph = TFLiteGraph(flatbuffer)
    with tracing_for_tflite():
        fn = tf.function(lambda x: {"y": graph(x)}, input_signature=[tf.TensorSpec([None, 256], tf.float32, name="x")])
        again = tf.lite.TFLiteConverter.from_concrete_functions([fn.get_concrete_function()], tf.Module()).convert()
    x = np.random.default_rng(9).standard_normal((2, 256)).astype(np.float32)
    np.testing.assert_allclose(interpreter_output(again, x), interpreter_output(flatbuffer, x), rtol=1e-4, atol=1e-5)


def test_an_intermediate_tensor_by_name(flatbuffer):
    graph = TFLiteGraph(flatbuffer)
    name = next(n for n in graph.names if n.endswith("Mean") or "Mean" in n)
    part = TFLiteGraph(flatbuffer, name)
    assert len(part._ops) < len(graph._ops)


def test_unknown_operators_and_names_are_one_line_errors():
    @tf.function(input_signature=[tf.TensorSpec([None, 4], tf.float32, name="x")])
    def softmax(x):
        return tf.nn.softmax(tf.math.cumsum(x, axis=1))

    data = tf.lite.TFLiteConverter.from_concrete_functions([softmax.get_concrete_function()], tf.Module()).convert()
    with pytest.raises(UnsupportedModel, match="does not replay: .*CUMSUM") as info:
        TFLiteGraph(data)
    assert "\n" not in str(info.value)
    with pytest.raises(UnsupportedModel, match="0 tensors named 'nothing'"):
        TFLiteGraph(data, "nothing")
