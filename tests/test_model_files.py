"""What a model file may do: hold a Keras model, and nothing else. Each test makes a model
file that would run code (or import a module, or pass for a committed model) and checks
that loading it refuses with one line before any of it runs."""
import io
import json
import os
import pickle
import pickletools
import shutil
import subprocess
import sys
import zipfile

import numpy as np
import pytest

from conftest import ROOT, assert_clean_error, run_script
from expressions import UserError
from expressions import model as nets

nets.import_tensorflow()
import keras  # noqa: E402  (after import_tensorflow, which imports it quietly)
from keras.src.models.functional import Functional  # noqa: E402
from keras.src.saving import saving_lib  # noqa: E402

PRE_TRAINED = ROOT / "results" / "model" / "pre_trained_model.pkl"  # the small committed model (1.2 MB)


class Attr:
    """Pickles as getattr(obj, name)."""

    def __init__(self, obj, name):
        self.obj, self.name = obj, name

    def __reduce__(self):
        return getattr, (self.obj, self.name)

    def __call__(self):  # pickle wants a callable as the function of a reduce
        pass


class Call:
    """Pickles as fn(*args)."""

    def __init__(self, fn, *args):
        self.fn, self.args = fn, args

    def __reduce__(self):
        return self.fn, self.args


def pickle_globals(data):
    """The (module, name) pairs a pickle references: the two strings before each
    STACK_GLOBAL (enough for these pickles, which push both right before it)."""
    strings, found = [], set()
    for op, arg, _ in pickletools.genops(data):
        if isinstance(arg, str):
            strings.append(arg)
        if op.name == "STACK_GLOBAL":
            found.add(tuple(strings[-2:]))
    return found


def keras_style_pickle(archive: bytes) -> bytes:
    """A pickle made the way Keras 3 pickles a model, holding the .keras zip `archive`."""
    return pickle.dumps(Call(Functional._unpickle_model, io.BytesIO(archive)))


def tiny_model(*middle):
    inputs = keras.Input((48, 48, 1))
    x = inputs
    for layer in middle:
        x = layer(x)
    return keras.Model(inputs, keras.layers.Dense(7, activation="softmax")(keras.layers.Flatten()(x)))


def archive_of(model) -> bytes:
    buf = io.BytesIO()
    saving_lib._save_model_to_fileobj(model, buf, "h5")
    return buf.getvalue()


def with_config(archive: bytes, edit) -> bytes:
    """The archive with its config.json changed by edit(config)."""
    out = io.BytesIO()
    with zipfile.ZipFile(io.BytesIO(archive)) as old, zipfile.ZipFile(out, "w") as new:
        for name in old.namelist():
            content = old.read(name)
            if name == "config.json":
                config = json.loads(content)
                edit(config)
                content = json.dumps(config).encode()
            new.writestr(name, content)
    return out.getvalue()


def refusal(path, what):
    with pytest.raises(UserError) as err:
        nets.load_model(path)
    message = str(err.value)
    assert "\n" not in message
    assert f"model {path} is not a Keras model file this toolkit can load safely: it asks to " in message
    assert what in message, message
    return message


# ---------------------------------------------------------------- (a) code in the pickle
class RunsShell:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


def test_pickle_that_runs_a_command_is_refused_before_it_runs(tmp_path):
    marker, evil = tmp_path / "ran", tmp_path / "evil.pkl"
    evil.write_bytes(pickle.dumps(RunsShell(marker)))
    refusal(evil, f"run {os.system.__module__}.system")
    assert not marker.exists()


def test_predict_script_refuses_such_a_model_in_one_line(tmp_path):
    import cv2
    marker, evil, photo = tmp_path / "ran", tmp_path / "evil.pkl", tmp_path / "grey.png"
    evil.write_bytes(pickle.dumps(RunsShell(marker)))
    cv2.imwrite(str(photo), np.full((64, 64), 128, np.uint8))
    result = run_script("predict.py", photo, "--model", evil, timeout=120)
    assert_clean_error(result, "is not a Keras model file this toolkit can load safely", "system")
    assert not marker.exists()


def test_keras_own_globals_cannot_reach_further(tmp_path):
    # getattr and Functional are admitted, but a plain getattr would reach Keras' module
    # globals and from there io.open: this pickle writes a file through pickle.load.
    marker, evil = tmp_path / "written", tmp_path / "evil.pkl"
    module_globals = Attr(Attr(Functional, "_unpickle_model"), "__globals__")
    gadget = Call(Attr(Call(Attr(module_globals, "get"), "io"), "open"), str(marker), "w")
    evil.write_bytes(pickle.dumps(gadget))
    assert pickle_globals(evil.read_bytes()) <= nets.PICKLE_GLOBALS  # passes a list of names alone
    refusal(evil, "run getattr(function, '__globals__')")
    assert not marker.exists()
    pickle.loads(evil.read_bytes()).close()  # the same bytes, unrestricted: they do write
    assert marker.exists()


def test_only_keras_pickling_globals_are_admitted():
    # Every committed model references exactly these, and they are all that is admitted.
    committed = sorted((ROOT / "results" / "model").glob("**/*.pkl"))
    assert committed
    for path in committed:
        assert pickle_globals(path.read_bytes()) == nets.PICKLE_GLOBALS, path


# ---------------------------------------------------------------- (b) the committed models
def test_committed_models_load_safely_and_unchanged():
    own = nets.load_model("own")
    assert own.input_shape == (None, 48, 48, 1) and own.output_shape == (None, 7)
    safe = nets.load_model("pre_trained")
    assert safe.input_shape == (None, 48, 48, 1) and safe.output_shape == (None, 7)
    with open(PRE_TRAINED, "rb") as f:
        plain = pickle.load(f)  # Keras' own unpickling: the same network
    x = np.random.default_rng(0).integers(0, 256, (3, 48, 48, 1)).astype(np.float32)
    np.testing.assert_array_equal(safe(x).numpy(), plain(x).numpy())


# ---------------------------------------------------------------- (c) what the archive asks for
def test_archive_naming_a_module_to_import_is_refused(tmp_path, monkeypatch):
    # Even in safe mode Keras imports a `module` under keras_hub (not installed here): any
    # keras_hub folder on the path runs. The model file names it; the check refuses it.
    marker = tmp_path / "imported"
    (tmp_path / "keras_hub").mkdir()
    (tmp_path / "keras_hub" / "planted.py").write_text(f"open({str(marker)!r}, 'w').close()\n")
    monkeypatch.syspath_prepend(str(tmp_path))

    def plant(config):
        dense = config["config"]["layers"][-1]
        dense.update(module="keras_hub.planted", class_name="Planted", registered_name=None)

    archive = with_config(archive_of(tiny_model()), plant)
    evil = tmp_path / "evil.pkl"
    evil.write_bytes(keras_style_pickle(archive))
    assert pickle_globals(evil.read_bytes()) == nets.PICKLE_GLOBALS  # Keras' pickling, to the byte
    try:
        refusal(evil, "import keras_hub.planted")
        assert not marker.exists() and "keras_hub.planted" not in sys.modules
        with pytest.raises(ValueError, match="not a KerasSaveable"):  # Keras alone, in safe mode: imports it
            saving_lib._load_model_from_fileobj(io.BytesIO(archive), None, True, True)
        assert marker.exists()
    finally:
        for name in [m for m in sys.modules if m.split(".")[0] == "keras_hub"]:
            del sys.modules[name]


def test_lambda_layer_code_is_refused_even_with_unsafe_deserialization_on(tmp_path):
    from keras.src.backend.common import global_state
    marker = tmp_path / "ran"
    code = eval(f"lambda x: (open({str(marker)!r}, 'w').close(), x)[1]")  # noqa: S307 (the test's own code)
    data = pickle.dumps(tiny_model(keras.layers.Lambda(code)))  # Keras' own pickling
    marker.unlink()  # building the model called it
    evil = tmp_path / "lambda.pkl"
    evil.write_bytes(data)
    saved = global_state.get_global_attribute("safe_mode_saving")
    keras.config.enable_unsafe_deserialization()  # a script that trusts its own files
    try:
        refusal(evil, "run code Keras' safe mode refuses (Requested the deserialization of a `Lambda` layer")
    finally:
        global_state.set_global_attribute("safe_mode_saving", saved)
    assert not marker.exists()
    pickle.loads(data)  # Keras' own unpickling runs it
    assert marker.exists()


# ---------------------------------------------------------------- (d) the committed models' SHA-256
def test_altered_committed_model_is_refused_unless_written_by_training(tmp_path, monkeypatch):
    monkeypatch.setattr(nets, "MODEL_DIR", tmp_path)  # tmp_path stands for results/model
    committed = tmp_path / "pre_trained_model.pkl"
    shutil.copyfile(PRE_TRAINED, committed)
    model = nets.load_model(committed)  # the committed bytes
    with open(committed, "ab") as f:
        f.write(b"\0")  # after pickle's STOP: it would still load
    with pytest.raises(UserError, match=r"the committed model file .* is altered .* restore it with "
                                        r"`git checkout -- "):
        nets.load_model(committed)
    (tmp_path / "mine").mkdir()  # the same name elsewhere is not a committed model: no hash check
    nets.load_model(shutil.copy(committed, tmp_path / "mine" / committed.name))

    nets.save_model(model, committed)  # what train.py / ensemble.py do: records the new hash
    assert nets.sha256_record(committed).read_text() == f"{nets.file_sha256(committed)}  {committed.name}\n"
    nets.load_model(committed)
    with open(committed, "ab") as f:
        f.write(b"\0")
    with pytest.raises(UserError, match="is altered") as err:
        nets.load_model(committed)
    record_it = str(err.value).split("`")[-2]  # the message's own way to keep a change on purpose
    assert record_it.startswith("sha256sum ")
    subprocess.run(record_it, shell=True, check=True)
    nets.load_model(committed)
