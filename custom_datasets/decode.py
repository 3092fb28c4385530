"""PNG decoding and resizing for the datasets: the folder path, the shard path and `prepare`.

A leaf of `custom_datasets` (imports nothing from it), built on the image contract in
`keras_cxr.images`: one decoder (`decode_png`: 8/16-bit, gray/RGB/RGBA -> gray float [0, 1],
16-bit precision kept) and one resize policy (`resize_gray`: area when shrinking, bilinear when
enlarging). Preprocessing follows the original project: resize the shorter side to 256 and
centre-crop 224, generalised to any `image_size` by keeping the 256:224 ratio (resize to
round(size*256/224), crop `size`). Normalisation names are the `data_range` vocabulary of
`keras_cxr.images`: "tanh" -> [-1, 1] (GANs), "sigmoid" -> [0, 1] (VAEs), "imagenet" ->
per-channel ImageNet mean/std (needs channels=3).

A PNG is read the same way whether `keras-cxr prepare` ran or not: prepare decodes with
`decode_png`, shrinks with the "shorter" fit and stores the result at the source's bit depth
(`shrink_png`), so a stored image that needed no shrinking decodes to exactly the source's values.
"""

from __future__ import annotations

from keras_cxr.images import check_data_range, decode_png, from_unit_tf, resize_gray, resize_size  # noqa: F401


def check_normalization(normalization: str, channels: int) -> None:
    """A one-line `UserError` for an unknown normalisation or a channel count it cannot give."""
    from keras_cxr.errors import UserError

    if channels not in (1, 3):
        raise UserError(f"channels must be 1 or 3, got {channels}")
    try:
        check_data_range(normalization, channels=channels, name="normalization")
    except ValueError as exc:
        raise UserError(str(exc)) from None


def normalize(img01, normalization: str, channels: int):
    """[..., H, W, 1] in [0, 1] -> [..., H, W, channels] in the `normalization` range."""
    check_normalization(normalization, channels)
    return from_unit_tf(img01, normalization, channels)


def resize_and_crop(img, image_size: int):
    """Shorter side to resize_size(image_size), centre crop `image_size` ("crop" fit of
    `keras_cxr.images.resize_gray`). `img` [H, W, 1] may be uint8/uint16/float; the result is
    float32 on the same value scale."""
    return resize_gray(img, int(image_size), fit="crop")


def decode_resize_crop(png_bytes, image_size: int):
    """PNG bytes -> float32 [image_size, image_size, 1] in [0, 1]: `decode_png`, then the "crop"
    fit. The resize reads the decoder's integer image (uint8, or uint16 for 16-bit files), so no
    full-resolution float copy is made."""
    from keras_cxr.images import decode_png_resized

    return decode_png_resized(png_bytes, int(image_size), fit="crop")


def preprocess_png(png_bytes, image_size: int, channels: int = 1, normalization: str = "tanh"):
    """PNG bytes -> one model-ready image [image_size, image_size, channels]."""
    return normalize(decode_resize_crop(png_bytes, image_size), normalization, channels)


def shrink_png(png_bytes, size: int, compression: int = 6):
    """(PNG bytes, height, width): the image with its shorter side shrunk to `size` (area, never
    enlarged, aspect kept), one gray channel, stored at the source's bit depth (8 or 16)."""
    import tensorflow as tf

    from keras_cxr.images import encode_png, is_16bit_png

    img = resize_gray(decode_png(png_bytes), int(size), fit="shorter")
    shape = tf.shape(img)
    png = encode_png(img, sixteen_bit=is_16bit_png(png_bytes), compression=compression)
    return png, shape[0], shape[1]
