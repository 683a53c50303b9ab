"""TensorFlow peer: Keras MobileNetV2 (keras.applications, weights=None), a Keras ResNet-18
laid out as torchvision's, NHWC, and a Keras port of bert_peer_model.py's encoder (`KerasBert`,
layers named as the torch module's; token-level cross-entropy); BatchNorm in training mode, SGD momentum 0.9, one step as
GradientTape + apply_gradients, either compiled (`--mode function`: tf.function) or eager.

The frozen set: Keras's `trainable` is per layer (and a frozen BatchNorm layer switches to
inference mode), so the same per-parameter set as pock's is given by differentiating only with
respect to the selected variables: a variable is selected when its torchvision name (mapped
from the Keras layer and variable names below) matches one of the --train globs."""

import os
import re

import common

args = common.parse_args(__doc__)
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
import math  # noqa: E402

import bert_peer_model as bert  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

tf.config.threading.set_intra_op_parallelism_threads(args.threads)
tf.config.threading.set_inter_op_parallelism_threads(args.threads)
keras = tf.keras
if args.mode not in ("function", "eager"):
    common.fail("tensorflow", args, f"--mode must be function or eager, not {args.mode!r}")
system = f"tensorflow-{args.mode}"
keras.utils.set_random_seed(0)

VAR = {"kernel": "weight", "depthwise_kernel": "weight", "gamma": "weight", "beta": "bias", "bias": "bias",
       "embeddings": "weight"}


def mobilenet_layer_name(layer):
    """Keras MobileNetV2 layer name -> torchvision module path (None: no parameters)."""
    fixed = {"Conv1": "features.0.0", "bn_Conv1": "features.0.1",
             "expanded_conv_depthwise": "features.1.conv.0.0", "expanded_conv_depthwise_BN": "features.1.conv.0.1",
             "expanded_conv_project": "features.1.conv.1", "expanded_conv_project_BN": "features.1.conv.2",
             "Conv_1": "features.18.0", "Conv_1_bn": "features.18.1", "predictions": "classifier.1"}
    if layer in fixed:
        return fixed[layer]
    m = re.fullmatch(r"block_(\d+)_(expand|depthwise|project)(_BN)?", layer)
    if not m:
        return None
    index, part, bn = int(m.group(1)) + 1, m.group(2), m.group(3) is not None
    sub = {"expand": ("conv.0.0", "conv.0.1"), "depthwise": ("conv.1.0", "conv.1.1"), "project": ("conv.2", "conv.3")}[part]
    return f"features.{index}.{sub[1] if bn else sub[0]}"


def resnet18(inputs):
    """torchvision resnet18 in Keras; layer names are torchvision's with '.' written as '_'."""
    L = keras.layers

    def conv(x, filters, k, stride, name):
        if k > 1:
            x = L.ZeroPadding2D(k // 2)(x)
        return L.Conv2D(filters, k, strides=stride, use_bias=False, name=name.replace(".", "_"))(x)

    def bn(x, name):
        return L.BatchNormalization(epsilon=1e-5, momentum=0.9, name=name.replace(".", "_"))(x)

    x = L.ReLU()(bn(conv(inputs, 64, 7, 2, "conv1"), "bn1"))
    x = L.MaxPooling2D(3, 2)(L.ZeroPadding2D(1)(x))
    in_ch = 64
    for layer, planes in enumerate([64, 128, 256, 512]):
        for block in range(2):
            s = 2 if layer > 0 and block == 0 else 1
            p = f"layer{layer + 1}.{block}"
            y = L.ReLU()(bn(conv(x, planes, 3, s, p + ".conv1"), p + ".bn1"))
            y = bn(conv(y, planes, 3, 1, p + ".conv2"), p + ".bn2")
            if s != 1 or in_ch != planes:
                x = bn(conv(x, planes, 1, s, p + ".downsample.0"), p + ".downsample.1")
            x = L.ReLU()(L.Add()([y, x]))
            in_ch = planes
    x = L.GlobalAveragePooling2D()(x)
    return L.Dense(common.CLASSES, name="fc")(x)


class KerasBert(keras.Model):
    """tests/onnx/make_models.py's `Bert` at bert_peer_model.py's sizes: embeddings + LayerNorm,
    post-norm encoder layers (fused qkv, masked softmax attention, exact GELU FFN), a token head.
    `named` maps each torch module name to its Keras layer."""

    def __init__(self):
        super().__init__()
        L, H, F = keras.layers, bert.HIDDEN, bert.FFN
        named = {"tok": L.Embedding(bert.VOCAB, H), "pos": L.Embedding(bert.SEQ, H), "ln": L.LayerNormalization(epsilon=1e-5)}
        for i in range(bert.LAYERS):
            for part, layer in [("qkv", L.Dense(3 * H)), ("out", L.Dense(H)), ("ln1", L.LayerNormalization(epsilon=1e-5)),
                                ("ffn1", L.Dense(F)), ("ffn2", L.Dense(H)), ("ln2", L.LayerNormalization(epsilon=1e-5))]:
                named[f"layers.{i}.{part}"] = layer
        named["head"] = L.Dense(bert.VOCAB)
        self.named = named

    def call(self, inputs):
        ids, mask = inputs
        n, t, h, heads = common.BATCH, bert.SEQ, bert.HIDDEN, bert.HEADS
        d = h // heads
        get = self.named.__getitem__
        x = get("ln")(get("tok")(ids) + get("pos")(tf.range(t))[None])
        keep = tf.cast(mask, tf.bool)[:, None, None, :]

        def split_heads(v):
            return tf.transpose(tf.reshape(v, (n, t, heads, d)), (0, 2, 1, 3))

        for i in range(bert.LAYERS):
            layer = lambda part: get(f"layers.{i}.{part}")  # noqa: E731
            q, k, v = tf.split(layer("qkv")(x), 3, axis=-1)
            scores = tf.matmul(split_heads(q), split_heads(k), transpose_b=True) / math.sqrt(d)
            scores = tf.where(keep, scores, tf.float32.min)
            ctx = tf.matmul(tf.nn.softmax(scores, axis=-1), split_heads(v))
            x = layer("ln1")(x + layer("out")(tf.reshape(tf.transpose(ctx, (0, 2, 1, 3)), (n, t, h))))
            x = layer("ln2")(x + layer("ffn2")(tf.nn.gelu(layer("ffn1")(x), approximate=False)))
        return get("head")(x)


if args.model == "bert":
    ids, mask, labels = bert.batch(common.BATCH)
    model = KerasBert()
    x, y = (tf.constant(ids), tf.constant(mask)), tf.constant(labels)
    model(x)  # creates the variables
    layers = [(name, layer) for name, layer in model.named.items()]
elif args.model == "mobilenetv2":
    model = keras.applications.MobileNetV2(input_shape=(common.SIZE, common.SIZE, common.CHANNELS),
                                           weights=None, classes=common.CLASSES, classifier_activation=None)
    layer_name = mobilenet_layer_name
else:
    inputs = keras.Input((common.SIZE, common.SIZE, common.CHANNELS))
    model = keras.Model(inputs, resnet18(inputs))

    def layer_name(layer):
        return re.sub(r"_", ".", layer) if not layer.startswith("re_lu") else None

if args.model != "bert":
    layers = [(layer_name(layer.name), layer) for layer in model.layers]
selected, total = [], 0
for module, layer in layers:
    for v in layer.trainable_weights:
        leaf = v.name.split("/")[-1].split(":")[0]
        if module is None or leaf not in VAR:
            common.fail(system, args, f"no torchvision name for Keras variable {layer.name}/{v.name}")
        total += int(np.prod(v.shape))
        if common.trains(f"{module}.{VAR[leaf]}", args.train):
            selected.append(v)

opt = keras.optimizers.SGD(learning_rate=common.LR, momentum=common.MOMENTUM)
loss_fn = keras.losses.SparseCategoricalCrossentropy(from_logits=True)
if args.model != "bert":
    rng = np.random.default_rng(1)
    x = tf.constant(rng.standard_normal((common.BATCH, common.SIZE, common.SIZE, common.CHANNELS), dtype=np.float32))
    y = tf.constant(np.arange(common.BATCH) % common.CLASSES)


def train_step():
    with tf.GradientTape() as tape:
        loss = loss_fn(y, model(x, training=True))
    opt.apply_gradients(zip(tape.gradient(loss, selected), selected))
    return loss


step = tf.function(train_step) if args.mode == "function" else train_step
ms, losses = common.time_steps(lambda: step().numpy(), args.warmup, args.steps)
common.report(system, args, ms, losses, sum(int(np.prod(v.shape)) for v in selected), total,
              {"version": tf.__version__, "optimizer": "SGD momentum 0.9",
               "batch_norm": "none (LayerNorm)" if args.model == "bert" else "train (batch statistics)"})
