"""The networks, saving and loading them, and prediction with test-time augmentation.

Both networks take raw 48x48x1 grey pixels 0..255 (scaling happens inside the model) and
return 7 class probabilities, so every script treats them alike."""
from __future__ import annotations

import contextlib
import io
import pickle
import sys
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from . import EMOTIONS, IMAGE_SIZE, MODEL_DIR, UserError, import_tensorflow, quiet_stderr
from .outputs import atomic_path, write_json

MODEL_PATH = MODEL_DIR / "my_own_model.pkl"
# Short names for the committed models, accepted wherever a model path is.
MODEL_ALIASES = {"own": MODEL_PATH, "pre_trained": MODEL_DIR / "pre_trained_model.pkl",
                 "fast": MODEL_DIR / "fast_model.pkl"}
# The committed model trained on the validation rows too, so figures on them cannot judge it.
# This network of its recipe did not: the default model of the scripts that measure there.
HELD_OUT_MODEL = MODEL_DIR / "runs" / "run3b.pkl"


# ---------------------------------------------------------------- the networks
def build_cnn(width=32, dropout=0.3, crop_px=IMAGE_SIZE):
    """Our VGG-style CNN: four stages of two 3x3 convolutions (width, 2x, 4x, 8x channels)
    with batch norm, max pooling after each stage, then a 256-unit dense head. With
    crop_px < 48 it sees only the central crop_px x crop_px pixels (the training pipeline
    then shifts each face so that it trains on random crops)."""
    import keras
    from keras import layers
    inputs = keras.Input((IMAGE_SIZE, IMAGE_SIZE, 1), name="pixels")
    x = inputs
    if crop_px < IMAGE_SIZE:
        x = layers.Cropping2D((IMAGE_SIZE - crop_px) // 2, name="central_crop")(x)
    x = layers.Rescaling(1 / 127.5, offset=-1.0, name="scale_to_unit")(x)
    for stage, mult in enumerate([1, 2, 4, 8], start=1):
        for k in range(2):
            x = layers.Conv2D(width * mult, 3, padding="same", use_bias=False, name=f"conv{stage}_{k + 1}")(x)
            x = layers.BatchNormalization(name=f"bn{stage}_{k + 1}")(x)
            x = layers.ReLU(name=f"relu{stage}_{k + 1}")(x)
        x = layers.MaxPooling2D(name=f"pool{stage}")(x)
    # A 3x3 spatial map left (2x2 from a 44 or 40 crop): flattening keeps where features are (mouth vs eyes).
    x = layers.Flatten(name="flatten")(x)
    x = layers.Dense(256, use_bias=False, name="fc")(x)
    x = layers.BatchNormalization(name="bn_fc")(x)
    x = layers.ReLU(name="relu_fc")(x)
    x = layers.Dropout(dropout, name="dropout")(x)
    outputs = layers.Dense(len(EMOTIONS), activation="softmax", dtype="float32", name="emotion")(x)
    return keras.Model(inputs, outputs, name="fer_vgg")


def build_mobilenet(weights, input_px=96, dropout=0.3):
    """The optional pre-trained model: ImageNet MobileNet (alpha 0.25) on the face upscaled
    to input_px and repeated to 3 channels. weights: a .h5 path, 'imagenet' or None."""
    import keras
    from keras import layers
    inputs = keras.Input((IMAGE_SIZE, IMAGE_SIZE, 1), name="pixels")
    x = layers.Resizing(input_px, input_px, interpolation="bilinear", name="upscale")(inputs)
    x = layers.Concatenate(name="grey_to_rgb")([x, x, x])
    x = layers.Rescaling(1 / 127.5, offset=-1.0, name="scale_to_unit")(x)  # mobilenet.preprocess_input
    try:
        with warnings.catch_warnings():  # "weights for input shape (224, 224) will be loaded": intended
            warnings.simplefilter("ignore")
            backbone = keras.applications.MobileNet(input_shape=(input_px, input_px, 3), alpha=0.25,
                                                    include_top=False, weights=weights, pooling="avg",
                                                    name="backbone")
    except Exception as err:  # a wrong file, or no network for 'imagenet'
        raise UserError(f"cannot load MobileNet(alpha=0.25, include_top=False) weights from {weights}: "
                        f"{str(err).splitlines()[0][:200]}") from None
    x = backbone(x)
    # The pooled ReLU6 features are all positive and large; without normalisation the
    # head's first SGD steps at lr 0.1 sent the training loss to 25 (measured).
    x = layers.BatchNormalization(name="head_bn")(x)
    x = layers.Dropout(dropout, name="dropout")(x)
    outputs = layers.Dense(len(EMOTIONS), activation="softmax", dtype="float32", name="emotion")(x)
    return keras.Model(inputs, outputs, name="fer_mobilenet")


def build_ensemble(members, name="fer_vgg_ensemble"):
    """One model that averages the probabilities of several trained models: raw pixels in,
    7 probabilities out, like each of them, so every script treats it alike. The members
    keep their weights (renamed member_1, member_2, ...)."""
    import keras
    from keras import layers
    inputs = keras.Input((IMAGE_SIZE, IMAGE_SIZE, 1), name="pixels")
    outputs = []
    for k, member in enumerate(members, start=1):
        member.name = f"member_{k}"  # two runs of one recipe share a name; Keras needs unique ones
        outputs.append(member(inputs))
    return keras.Model(inputs, layers.Average(name="mean_probabilities")(outputs), name=name)


def ensemble_members(model):
    """The models an ensemble averages, or [model] for a single network."""
    import keras
    inner = [layer for layer in model.layers if isinstance(layer, keras.Model)]
    return inner if model.layers[-1].name == "mean_probabilities" else [model]


def unfreeze_backbone(model):
    """Make the whole backbone trainable, batch normalisation included. Keeping its
    batch-norm layers frozen (the Keras transfer-learning guide's advice for small
    datasets) made fine-tuning collapse here: on a 4,000-image slice the training accuracy
    fell to the class prior within an epoch, even at a rate of 0.001, while with batch
    norm free it rose (29 -> 38 % in 3 epochs)."""
    model.get_layer("backbone").trainable = True


# ---------------------------------------------------------------- saving and loading
def model_path(name) -> Path:
    """A model file: 'own' / 'pre_trained' name the committed models, anything else is a path."""
    return Path(MODEL_ALIASES.get(str(name), name))


# The committed models' SHA-256 (sha256sum results/model/*.pkl). A file at one of these
# paths loads only if it is that file, or the file this toolkit's save_model last wrote there:
# train.py and ensemble.py rewrite them on purpose, and save_model then records the new hash
# beside it (PATH.sha256, sha256sum's format), so `train.py && predict.py` keeps working. A
# file swapped in any other way (a pull, a copy, a download) is refused: its binary diff
# cannot be reviewed, a change of these lines can. Other paths get no hash check; every
# model file, wherever it is, goes through the restricted unpickler below.
COMMITTED_SHA256 = {
    "my_own_model.pkl": "2241f078b09e041301a3d43f0972d5b27e097557bcee079d76d360eb98e1bc49",
    "pre_trained_model.pkl": "f3e2dce0eaadc7877349a9649d3633b500bf9cf474cf936316fba103605d9a85",
    "fast_model.pkl": "3348acf65ace44e217603be783b6b8e7e9638feb23dcc15935ba8ed6a092d18b",
}


def committed_name(path):
    """The committed model a path is (its file name), or None for any other path."""
    path = Path(path)
    if path.name in COMMITTED_SHA256 and path.resolve() == (MODEL_DIR / path.name).resolve():
        return path.name
    return None


def sha256_record(path) -> Path:
    """Where save_model records the SHA-256 of a committed model it rewrote."""
    path = Path(path)
    return path.with_name(path.name + ".sha256")


def save_model(model, path):
    """Pickle a Keras model atomically, so a crash never leaves a broken file behind. When it
    rewrites a committed model, record its SHA-256 beside it (see COMMITTED_SHA256)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        pickle.dump(model, f)
    if committed_name(path):
        with atomic_path(sha256_record(path)) as tmp:
            Path(tmp).write_text(f"{file_sha256(path)}  {path.name}\n")


def check_committed(path, content: bytes):
    """Refuse a committed model file that is neither the committed one nor the one save_model
    last wrote there."""
    name = committed_name(path)
    if name is None:
        return
    import hashlib
    digest = hashlib.sha256(content).hexdigest()
    if digest == COMMITTED_SHA256[name]:
        return
    try:
        recorded = sha256_record(path).read_text().split()[0]
    except (OSError, IndexError):
        recorded = None
    if digest != recorded:
        raise UserError(f"the committed model file {path} is altered (SHA-256 {digest[:12]}..., committed "
                        f"{COMMITTED_SHA256[name][:12]}...) and was not written by this toolkit's training: "
                        f"restore it with `git checkout -- {path}`; if you changed it on purpose, record it "
                        f"with `sha256sum {path} > {sha256_record(path)}`")


# Every global a model file of this toolkit references (pickletools.dis of each committed
# .pkl, results/model/runs/ included): Keras 3 pickles a model as
# getattr(Functional, "_unpickle_model")(BytesIO(<its .keras zip>)). The unpickler admits
# these and nothing else, and even these only in that use (see _ModelUnpickler).
PICKLE_GLOBALS = {("builtins", "getattr"), ("keras.src.models.functional", "Functional"), ("_io", "BytesIO")}
# A Sequential model (a user's own, say) is pickled the same way, through its own class.
MODEL_CLASSES = {("keras.src.models.functional", "Functional"), ("keras.src.models.sequential", "Sequential")}


class Refused(Exception):
    """A model file asked for something a model file may not do (the message says what)."""


class _FunctionalToken:
    """What the unpickler gives for Functional (or Sequential): not the class, so a pickle
    cannot call its constructor or read its attributes; only getattr(it, "_unpickle_model")
    works."""
    __slots__ = ()


_FUNCTIONAL = _FunctionalToken()


class _ModelUnpickler(pickle.Unpickler):
    """Unpickles only Keras' own pickling of a model (see PICKLE_GLOBALS). An unrestricted
    getattr would reach any attribute (a function's __globals__, so os.system), so getattr
    serves only _unpickle_model, and that is ours: Keras' own loads the archive with
    safe_mode=False ("pickle is not safe regardless")."""

    def find_class(self, module, name):
        if (module, name) in MODEL_CLASSES:
            return _FUNCTIONAL
        if (module, name) not in PICKLE_GLOBALS:
            raise Refused(f"it asks to run {module}.{name}")
        return {"getattr": self._getattr, "BytesIO": io.BytesIO}[name]

    def _getattr(self, obj, name, *default):
        if obj is _FUNCTIONAL and name == "_unpickle_model" and not default:
            return load_keras_archive
        what = "Functional" if obj is _FUNCTIONAL else type(obj).__name__
        raise Refused(f"it asks to run getattr({what}, {name!r})")


def archive_modules(config):
    """Every `module` a .keras config.json names (the classes' and functions' modules)."""
    if isinstance(config, dict):
        if "module" in config:
            yield config["module"]
        for value in config.values():
            yield from archive_modules(value)
    elif isinstance(config, list):
        for value in config:
            yield from archive_modules(value)


def load_keras_archive(buffer):
    """The model in a .keras zip (Keras' pickling holds one in a BytesIO), loaded in Keras'
    safe mode, after checking that loading it imports no module."""
    import json
    import zipfile
    if not isinstance(buffer, io.BytesIO):
        raise Refused(f"it asks to run Functional._unpickle_model on a {type(buffer).__name__}")
    content = buffer.getvalue()
    try:
        with zipfile.ZipFile(io.BytesIO(content)) as archive:
            if archive.getinfo("config.json").file_size > 64 << 20:
                raise Refused("its config.json is over 64 MB")
            config = json.loads(archive.read("config.json"))
    except (zipfile.BadZipFile, KeyError, ValueError) as err:
        raise Refused(f"its Keras archive is unreadable ({err.__class__.__name__}: {err})") from None
    # Even in safe mode Keras imports a class's `module` when it starts with keras, keras_hub,
    # keras_cv or keras_nlp (a keras_hub folder on sys.path would run; keras.*_test modules
    # pull in pytest): only Keras' own modules, already imported, so loading imports nothing.
    for module in archive_modules(config):
        if module is not None and not (isinstance(module, str) and module.split(".")[0] == "keras"
                                       and module in sys.modules):
            raise Refused(f"it asks to import {module}")
    from keras.src.saving import saving_lib, serialization_lib
    # The scope too: keras.config.enable_unsafe_deserialization() would override the argument.
    with serialization_lib.SafeModeScope(True):
        try:
            return saving_lib._load_model_from_fileobj(io.BytesIO(content), custom_objects=None,
                                                       compile=True, safe_mode=True)
        except ValueError as err:
            if "safe_mode" not in str(err):
                raise
            # "Requested the deserialization of a `Lambda` layer whose `function` is a Python lambda."
            raise Refused(f"it asks to run code Keras' safe mode refuses ({str(err).split('. ')[0]})") from None


def load_model(name="own"):
    """Load a pickled Keras model (a path, or 'own' / 'pre_trained') and check it maps
    48x48x1 pixels to 7 probabilities.

    What a model file may do: hold a Keras model made of Keras' own layers (Keras' pickling:
    a .keras archive in a buffer), mapping 48x48x1 pixels to 7 probabilities. What it may
    not: run code when loaded (the unpickler admits only the three globals of that pickling,
    PICKLE_GLOBALS), import modules (its config may name only Keras modules already
    imported), or carry Python code such as a Lambda layer's (Keras loads it in safe mode).
    Anything else is a one-line UserError, before any of it runs. The committed models must
    also be the committed files or ones this toolkit's training wrote (COMMITTED_SHA256). A
    MODEL.tflite beside a model (frame_predictor) is a TensorFlow Lite flatbuffer: ops and
    weights, no Python code."""
    path = model_path(name)
    if not path.exists():
        how = "python scripts/train.py" + (" --backbone mobilenet" if path.name.startswith("pre_trained") else "")
        raise UserError(f"model not found at {path}: train one with `{how}`")
    try:
        content = path.read_bytes()
    except OSError as err:
        raise UserError(f"cannot read model {path}: {err.strerror or err}") from None
    check_committed(path, content)
    import_tensorflow()  # the archive's modules must be imported already (load_keras_archive)
    try:
        model = _ModelUnpickler(io.BytesIO(content)).load()
    except Refused as err:
        raise UserError(f"model {path} is not a Keras model file this toolkit can load safely: {err} "
                        "(model files may only hold a Keras model)") from None
    except Exception as err:
        first = (str(err).splitlines() or [""])[0][:300]
        raise UserError(f"cannot load model {path}: {err.__class__.__name__}: {first}") from None
    in_shape = tuple(getattr(model, "input_shape", ()) or ())
    out_shape = tuple(getattr(model, "output_shape", ()) or ())
    if in_shape[1:] != (IMAGE_SIZE, IMAGE_SIZE, 1) or out_shape[1:] != (len(EMOTIONS),):
        raise UserError(f"model {path} maps {in_shape} to {out_shape}; expected "
                        f"(None, 48, 48, 1) to (None, 7)")
    return model


def add_model_option(parser, default="own", why=""):
    parser.add_argument("--model", default=default,
                        help="model .pkl file, or one of the committed models: own (the ensemble), fast (the "
                             f"stream's), pre_trained (default: %(default)s{why})")


# ---------------------------------------------------------------- prediction
# Test-time augmentation: (mirror too, shift in pixels). flip+shift averages 10 views (5
# positions 2 px apart, each also mirrored); it was the best on the validation split.
TTA_MODES = {"none": (False, 0), "flip": (True, 0), "flip+shift": (True, 2)}
DEFAULT_TTA = "flip+shift"


# A stream's own mode: one pass per face, the mirror image on every other frame, so that each
# second's average holds both views at the cost of one (on a photo: both views at once).
ALTERNATE = "alternate"
STREAM_TTA_MODES = (*TTA_MODES, ALTERNATE)


def add_tta_option(parser, default=DEFAULT_TTA, why="", stream=False, flag="--tta"):
    """The one --tta option of every script that predicts; stream=True offers alternate too."""
    parser.add_argument(flag, choices=list(STREAM_TTA_MODES if stream else TTA_MODES), default=default,
                        help="test-time augmentation: none (single pass), flip (average with the mirror "
                             "image, 2 views), flip+shift (10 views: 5 positions 2 px apart, each also "
                             "mirrored; the best on the validation split)"
                             + (", alternate (streams: the mirror image on every other frame, one pass per "
                                "face, both views in every second's average; a photo gets both)" if stream else "")
                             + f" (default: %(default)s{why})")


def make_predictor(model, tta=DEFAULT_TTA):
    """A compiled function: uint8/float images [n,48,48,1] -> probabilities [n,7],
    averaged over the views of the `tta` mode.

    Calling the model inside a tf.function avoids model.predict's large per-call cost
    (about 50 ms), which matters for video."""
    tf, _ = import_tensorflow()

    # Plain tensor code: AutoGraph has nothing to convert (and warned of a "closure mismatch").
    @tf.function(input_signature=[tf.TensorSpec([None, IMAGE_SIZE, IMAGE_SIZE, 1], tf.float32)])
    @tf.autograph.experimental.do_not_convert
    def predict_float(x):  # one trace for every batch size
        views = tta_views(x, tta, tf)
        n = tf.shape(x)[0]
        p = tf.cast(model(tf.concat(views, 0), training=False), tf.float32)
        return tf.reduce_mean(tf.reshape(p, [len(views), n, len(EMOTIONS)]), axis=0)

    def predict(x):
        return predict_float(tf.cast(x, tf.float32))

    return predict


def tta_views(x, tta, ops=np):
    """The views of images [n,48,48,1] that a `tta` mode averages over: the image, its
    shifts by the mode's pixels (mirror-padded), then the mirror of each. ops=np for numpy
    arrays (TensorFlow Lite's fast path), ops=tf for tensors (differentiable)."""
    flip, s = TTA_MODES[tta]
    views = [x]
    if s:
        padding = [(0, 0), (s, s), (s, s), (0, 0)]
        padded = np.pad(x, padding, mode="symmetric") if ops is np else ops.pad(x, padding, mode="SYMMETRIC")
        views = [padded[:, s + dy:s + dy + IMAGE_SIZE, s + dx:s + dx + IMAGE_SIZE]
                 for dx, dy in [(0, 0), (s, 0), (-s, 0), (0, s), (0, -s)]]
    if flip:
        views += [v[:, :, ::-1] if ops is np else ops.reverse(v, axis=[2]) for v in views]
    return views


_predictors = []  # (model, tta, function), the most recent last: a few, never every model seen


def predict_in_batches(model, x, tta=DEFAULT_TTA, batch_size=256):
    """Probabilities [n,7] for many images, one compiled function per model and mode."""
    found = [entry for entry in _predictors if entry[0] is model and entry[1] == tta]
    predict = found[0][2] if found else make_predictor(model, tta)
    _predictors[:] = [e for e in _predictors if not (e[0] is model and e[1] == tta)][-3:] + [(model, tta, predict)]
    out = [predict(x[i:i + batch_size]).numpy() for i in range(0, len(x), batch_size)]
    return np.concatenate(out) if out else np.zeros((0, len(EMOTIONS)), np.float32)


def classification_report(y_true, y_pred, usage=None):
    """Accuracy (overall and per split), per-class precision/recall/F1, macro-F1, confusion matrix."""
    n = len(EMOTIONS)
    cm = np.zeros((n, n), dtype=int)
    np.add.at(cm, (y_true, y_pred), 1)
    tp = np.diag(cm).astype(float)
    precision = np.divide(tp, cm.sum(0), out=np.zeros(n), where=cm.sum(0) > 0)
    recall = np.divide(tp, cm.sum(1), out=np.zeros(n), where=cm.sum(1) > 0)
    f1 = np.divide(2 * precision * recall, precision + recall, out=np.zeros(n), where=(precision + recall) > 0)
    report = {"accuracy": float((y_true == y_pred).mean()), "n": int(len(y_true))}
    if usage is not None:
        for split in ("PublicTest", "PrivateTest"):
            m = usage == split
            if m.any():
                report[f"accuracy_{split}"] = float((y_true[m] == y_pred[m]).mean())
    report["per_class"] = {EMOTIONS[k]: {"precision": float(precision[k]), "recall": float(recall[k]),
                                         "f1": float(f1[k]), "support": int(cm[k].sum())} for k in range(n)}
    report["macro_f1"] = float(f1.mean())
    report["confusion_matrix"] = cm.tolist()
    return report


# ---------------------------------------------------------------- the fast form for faces in frames
def tflite_path(name) -> Path:
    """Where the TensorFlow Lite form of a model lives: beside it, same stem."""
    return model_path(name).with_suffix(".tflite")


def file_sha256(path) -> str:
    import hashlib
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def to_tflite(model, kind="dynamic", calibration=None):
    """The model converted to TensorFlow Lite: float32, "float16" (half-precision weights,
    computed in float32 on a CPU), "dynamic" (int8 weights, float activations), or "int8"
    (weights and activations, calibrated on `calibration` images)."""
    tf, _ = import_tensorflow()
    converter = tf.lite.TFLiteConverter.from_keras_model(model)
    if kind in ("float16", "dynamic", "int8"):
        converter.optimizations = [tf.lite.Optimize.DEFAULT]
    if kind == "float16":
        converter.target_spec.supported_types = [tf.float16]
    if kind == "int8":
        converter.representative_dataset = lambda: ([x[None].astype(np.float32)] for x in calibration)
    import contextlib
    import io
    # The converter lists the saved graph on stdout and its settings on the stderr descriptor.
    with contextlib.redirect_stdout(io.StringIO()), quiet_stderr():
        return converter.convert()


class TFLitePredictor:
    """Like make_predictor's function, on a TensorFlow Lite model: uint8/float images
    [n,48,48,1] -> probabilities [n,7], averaged over the views of `tta`. One interpreter
    per predictor (not thread-safe: give each thread its own). xnnpack=False runs
    TensorFlow Lite's own kernels instead of the XNNPACK delegate."""

    def __init__(self, content: bytes, tta=DEFAULT_TTA, threads=1, xnnpack=True):
        tf, _ = import_tensorflow()
        options = {} if xnnpack else {"experimental_op_resolver_type":
                                      tf.lite.experimental.OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES}
        with warnings.catch_warnings():  # "tf.lite.Interpreter is deprecated": it still works in TF 2.21
            warnings.simplefilter("ignore")
            self.interpreter = tf.lite.Interpreter(model_content=content, num_threads=threads, **options)
        self.input = self.interpreter.get_input_details()[0]["index"]
        self.output = self.interpreter.get_output_details()[0]["index"]
        self.tta, self.batch = tta, None
        self._allocate((1, IMAGE_SIZE, IMAGE_SIZE, 1))  # prints its note once, here, where it can be hidden

    def _allocate(self, shape):
        self.interpreter.resize_tensor_input(self.input, shape)
        with quiet_stderr():  # "INFO: Created TensorFlow Lite XNNPACK delegate for CPU." (first time only)
            self.interpreter.allocate_tensors()
        self.batch = tuple(shape)

    def __call__(self, x):
        x = np.asarray(x)
        batch = np.concatenate(tta_views(x, self.tta)).astype(np.float32)
        if self.batch != batch.shape:
            self._allocate(batch.shape)
        self.interpreter.set_tensor(self.input, batch)
        self.interpreter.invoke()
        p = self.interpreter.get_tensor(self.output).astype(np.float32)
        # A quantised output is a distribution only to within its steps (the pair's int8
        # averaged output summed to 1.004-1.006, measured): make each row sum to 1.
        p /= np.maximum(p.sum(-1, keepdims=True), 1e-12)
        return p.reshape(-1, len(x), len(EMOTIONS)).mean(axis=0)


RUNTIMES = ("auto", "tflite", "keras")


def add_runtime_option(parser):
    parser.add_argument("--runtime", choices=RUNTIMES, default="auto",
                        help="what classifies the faces: tflite, the TensorFlow Lite forms of the model "
                             "(MODEL.tflite and MODEL.KIND.tflite, made by scripts/build/export_tflite.py: "
                             "float32, int8 weights or int8 throughout), each with and without XNNPACK, timed "
                             "on this CPU at start (a fraction of a second) and the fastest kept: which one wins "
                             "depends on the CPU (int8 where it has AVX-512 VNNI); keras, the model itself "
                             "(7-16x slower per face); auto, tflite when such a file was made from this very "
                             "model, else keras (default: %(default)s)")


def record_path(form: Path) -> Path:
    """What export_tflite.py recorded beside a TensorFlow Lite form: FORM.json."""
    return form.with_name(form.name + ".json")


def tflite_record(model_name, form=None) -> dict:
    """What export_tflite.py recorded beside a TensorFlow Lite form (the source .pkl's
    SHA-256, kind, command); {} when missing or unreadable."""
    import json
    try:
        return json.loads(record_path(form or tflite_path(model_name)).read_text())
    except (OSError, ValueError):
        return {}


def tflite_forms(model_name) -> list:
    """[(kind, path)] of the TensorFlow Lite forms beside a model (MODEL.tflite, MODEL.KIND.tflite)
    that were made from this very .pkl, MODEL.tflite first."""
    source = model_path(model_name)
    paths = [tflite_path(model_name)] + sorted(source.parent.glob(f"{source.stem}.*.tflite"))
    sha, forms = None, []
    for path in paths:
        record = tflite_record(model_name, path) if path.is_file() else {}
        if record:
            sha = sha or file_sha256(source)
            if record.get("source_sha256") == sha:
                forms.append((record.get("kind", "?"), path))
    return forms


@dataclass(frozen=True)
class Runtime:
    """What classifies the faces, and why: `name` (keras, or tflite KIND) and a one-line
    reason with the timings it was chosen by. str() gives the name."""
    name: str
    why: str

    def __str__(self):
        return self.name


def per_face_ms(predict, calls=15, beaten_ms=None, faces=1):
    """Median milliseconds per face of a call on `faces` faces, after warm-up calls; a
    candidate whose warm-up already takes 3x `beaten_ms` is not timed further (its warm-up
    time is returned)."""
    import time
    face = np.tile(np.arange(IMAGE_SIZE, dtype=np.uint8)[None, :, None] * 5, (faces, IMAGE_SIZE, 1, 1))
    predict(face)
    start = time.perf_counter()
    predict(face)
    warm = (time.perf_counter() - start) * 1000
    if beaten_ms is not None and warm > 3 * beaten_ms:
        return warm
    predict(face)
    times = []
    for _ in range(calls):
        start = time.perf_counter()
        predict(face)
        times.append(time.perf_counter() - start)
    return float(np.median(times)) * 1000 / faces


def fastest_tflite(forms, tta):
    """The fastest form on this CPU, with or without XNNPACK: each is timed on one face with
    a single view (the views of `tta` cost alike for all) the first time this set of forms
    runs on this kind of CPU, and the choice is remembered (runtime_cache()), so that later
    runs start at once and classify alike. Returns (predictor, Runtime)."""
    import json
    from datetime import date
    contents = {kind: path.read_bytes() for kind, path in forms}
    if len(contents) == 1:
        kind, content = next(iter(contents.items()))
        return TFLitePredictor(content, tta), Runtime(f"tflite {kind}", f"tflite {kind}: the only TensorFlow Lite form")
    import hashlib
    key = cpu_line() + " | " + " ".join(sorted(hashlib.sha256(c).hexdigest()[:16] for c in contents.values()))
    cache = runtime_cache()
    try:
        known = json.loads(cache.read_text()) if cache else {}
    except (OSError, ValueError):
        known = {}
    known = known if isinstance(known, dict) else {}
    choice = known.get(key)
    if not usable_choice(choice, contents):  # not measured yet here, or a damaged cache: measure
        timings = {}
        for kind, content in contents.items():
            for xnnpack in (True, False):
                best = min(timings.values(), default=None)
                timings[kind + ("" if xnnpack else " builtin")] = per_face_ms(
                    TFLitePredictor(content, "none", xnnpack=xnnpack), beaten_ms=best)
        name = min(timings, key=timings.get)
        choice = {"kind": name.split()[0], "xnnpack": not name.endswith("builtin"), "timings": timings,
                  "measured": date.today().isoformat()}
        if cache:
            known[key] = choice
            with contextlib.suppress(OSError, UserError):  # a read-only home: measured again next time
                cache.parent.mkdir(parents=True, exist_ok=True)
                write_json(cache, known)
    kind, xnnpack, timings = choice["kind"], choice["xnnpack"], choice["timings"]
    chosen = kind + ("" if xnnpack else " builtin")
    others = ", ".join(f"{k} {t:.2f}" for k, t in sorted(timings.items(), key=lambda kv: kv[1]) if k != chosen)
    name = f"tflite {kind}" + ("" if xnnpack else " (builtin kernels)")
    why = (f"{name}: {timings[chosen]:.2f} ms per face and view, the fastest form on this CPU when measured on "
           f"{choice['measured']} (then {others} ms; XNNPACK unless builtin); {cpu_line()}")
    return TFLitePredictor(contents[kind], tta, xnnpack=xnnpack), Runtime(name, why)


def usable_choice(choice, contents):
    try:
        chosen = choice["kind"] + ("" if choice["xnnpack"] else " builtin")
        return (choice["kind"] in contents and chosen in choice["timings"] and isinstance(choice["measured"], str)
                and all(isinstance(v, (int, float)) for v in choice["timings"].values()))
    except (TypeError, KeyError, AttributeError):
        return False


def runtime_cache():
    """Where the runtime chosen for each CPU and model is remembered: $EXPRESSIONS_CACHE or
    ~/.cache/expressions, file runtimes.json; None when there is no home to write to."""
    import os
    folder = os.environ.get("EXPRESSIONS_CACHE") or (
        os.path.join(os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "expressions"))
    return None if folder.startswith("~") else Path(folder) / "runtimes.json"


def cpu_line():
    """CPU model, cores and AVX flags, for the line that says why a runtime was chosen."""
    from . import machine_line
    return machine_line()


def frame_predictor(model_name, tta, runtime="auto"):
    """The classifier of the face pipeline: with runtime tflite, or auto when TensorFlow Lite
    forms made from this very model lie beside it (their .json records the .pkl's SHA-256),
    the fastest of them on this CPU (fastest_tflite); else the Keras model in a tf.function.
    Returns (predict function returning numpy, Runtime).

    The .tflite bytes go to TensorFlow Lite without load_model's checks: a flatbuffer holds
    ops and weights, no Python code to run (see load_model on what a model file may do)."""
    path = tflite_path(model_name)
    if not model_path(model_name).exists():
        load_model(model_name)  # the one-line "model not found" error
    if runtime in ("auto", "tflite"):
        forms = tflite_forms(model_name)
        if forms:
            return fastest_tflite(forms, tta)
        if runtime == "tflite" and path.exists():
            raise UserError(f"{path} was not made from {model_path(model_name)}: "
                            "run `python scripts/build/export_tflite.py` again")
        if runtime == "tflite":
            raise UserError(f"no TensorFlow Lite model at {path}: run `python scripts/build/export_tflite.py`")
        if path.exists():
            print(f"note: {path} was not made from {model_path(model_name)}: classifying with Keras "
                  "(`python scripts/build/export_tflite.py` makes it again)", file=sys.stderr)
    predict = make_predictor(load_model(model_name), tta)
    return (lambda x: predict(x).numpy()), Runtime("keras", "keras: the model itself (runtime keras, or no "
                                                            "TensorFlow Lite form made from it)")
