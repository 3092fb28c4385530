"""keras_cxr.trust: the op allowlist covers every export kind keras-cxr writes, and excludes I/O.

The hostile / benign crafted exports run through the CLI in tests/test_safety.py; the LSGAN, LDM and
classifier exports are also checked whenever a test samples from them (Generator and
LoadedClassifier check before they call). Here: the VAE family and the autoencoder, exported from
untrained tiny runs, and the saver rule.
"""

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))
import _corpus as C  # noqa: E402

IO_OPS = ["ReadFile", "WriteFile", "MatchingFiles", "PrintV2", "PyFunc", "EagerPyFunc", "DeleteFile",
          "TextLineDataset", "TFRecordDataset", "FixedLengthRecordDataset", "ImmutableConst", "ShellCommand",
          "DecodeProtoV2", "ParseTensor", "Save", "SaveSlices", "RecursiveCreateDir", "WholeFileReaderV2"]


def test_no_io_op_is_allowed():
    from keras_cxr.trust import ALLOWED_OPS, SAVER_OPS

    assert not set(IO_OPS) & (ALLOWED_OPS | SAVER_OPS)
    assert "SaveV2" not in ALLOWED_OPS and "RestoreV2" not in ALLOWED_OPS  # only in the saver functions


@pytest.mark.parametrize("model,overrides", [
    ("vae", ["model.latent_dim=8"]),
    ("gmvae", ["model.latent_dim=8", "model.num_components=3"]),
    ("fs-gmvae", ["model.latent_dim=8"]),
    ("autoencoder-kl", ["model.widths=[8, 16]", "model.num_res_blocks=1"]),
])
def test_every_export_kind_passes_the_check(model, overrides, tmp_path):
    from keras_cxr.export import export_run
    from keras_cxr.trust import ALLOWED_OPS, SAVER_OPS, check_saved_model, saved_model_ops

    out = export_run(C.untrained_run(tmp_path, model, model, overrides), tmp_path / "export")
    check_saved_model(out / "saved_model")  # raises on any op outside the allowlist
    ops = saved_model_ops(out / "saved_model")
    assert "SaveV2" in ops and set(ops) <= ALLOWED_OPS | SAVER_OPS
    functions = {where for where, _ in ops.values()}
    assert any("traced_save" in f for f in functions)  # the saver's own function holds SaveV2


def test_saveop_in_a_callable_function_is_refused(tmp_path):
    import tensorflow as tf

    from keras_cxr.errors import UserError
    from keras_cxr.trust import check_saved_model

    class Sneaky(tf.Module):  # writes a checkpoint file (an arbitrary write) from a signature
        @tf.function(input_signature=[tf.TensorSpec([None], tf.float32)])
        def sample(self, z):
            tf.raw_ops.SaveV2(prefix=str(tmp_path / "out"), tensor_names=["z"], shape_and_slices=[""], tensors=[z])
            return z

    tf.saved_model.save(Sneaky(), str(tmp_path / "sm"))
    with pytest.raises(UserError, match="SaveV2"):
        check_saved_model(tmp_path / "sm")
    (tmp_path / "broken").mkdir()
    (tmp_path / "broken" / "saved_model.pb").write_bytes(b"\x00garbage")
    with pytest.raises(UserError, match="damaged"):
        check_saved_model(tmp_path / "broken")
