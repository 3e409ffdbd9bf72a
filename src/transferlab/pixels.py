"""Image arrays as their users mean them, made into what Pillow reads: no torch, so that deploy.py can use it too."""

from __future__ import annotations

from typing import Any

import numpy as np

from transferlab.errors import UserError


def uint8_image(array: np.ndarray) -> np.ndarray:
    """`array` (height x width, or height x width x 1, 3 or 4 channels; uint8, uint16, other integers in 0-255, floats
    in 0-1 as torchvision's tensors hold them, or booleans) as the uint8 array Pillow's `fromarray` takes. Pillow alone
    reads floats as a 32-bit image that converts to near black, and refuses a single channel on a third axis."""
    array = np.asarray(array)
    if array.ndim == 3 and array.shape[-1] == 1:
        array = array[..., 0]
    if not (array.ndim == 2 or (array.ndim == 3 and array.shape[-1] in (3, 4))):
        raise UserError(f"an image array of shape {array.shape}: give height x width, or height x width x 1, 3 or 4 channels")
    if array.dtype == np.uint8:
        return array
    if array.dtype == bool:
        return array.astype(np.uint8) * 255
    if array.dtype == np.uint16 and array.max(initial=0) > 255:  # 16-bit values: their top 8 bits, as `rgb_image` reads
        return (array >> 8).astype(np.uint8)  # 16-bit files
    if np.issubdtype(array.dtype, np.floating):
        if array.size and not (np.isfinite(array).all() and array.min() >= 0 and array.max() <= 1):
            raise UserError("an image array of floats must hold values in 0-1 (or give uint8 values in 0-255)")
        return np.round(array * 255).astype(np.uint8)
    if np.issubdtype(array.dtype, np.integer):
        if array.size and (array.min() < 0 or array.max() > 255):
            raise UserError("an image array of integers must hold values in 0-255")
        return array.astype(np.uint8)
    raise UserError(f"an image array of type {array.dtype}: give uint8 values in 0-255 or floats in 0-1")


def rgb_image(image: Any) -> Any:
    """A Pillow image as RGB. Pillow's own conversion clips 16-bit greyscale (microscopy, medical scans, depth maps) at
    255, so nearly every pixel turns white: such images keep their top 8 bits instead. A 32-bit integer image ("I",
    which Pillow also opens 16-bit files as) is taken as 16-bit when any value passes 255."""
    if image.mode == "I" or image.mode.startswith("I;16"):
        from PIL import Image

        array = np.asarray(image).astype(np.int64)
        if image.mode != "I" or array.max(initial=0) > 255:
            array = array >> 8
        image = Image.fromarray(np.clip(array, 0, 255).astype(np.uint8))
    return image.convert("RGB")
