"""What makes a saved model a standard transformers checkpoint.

A family's processor subclass (one that leaves out the video processor, which needs torchvision) would save
its own class name, which transformers does not know: ``AutoProcessor`` then returns the bare tokenizer and
silently drops images. :func:`standardise_processor` rewrites the saved files to name transformers' own class
and adds the video processor config that class's loader asks for, so that ``AutoProcessor.from_pretrained``
returns the real processor where torchvision is installed and raises an ImportError where it is not.
"""

from __future__ import annotations

import json
from pathlib import Path

PROCESSOR_FILE = "processor_config.json"
VIDEO_FILE = "video_preprocessor_config.json"
# image processor settings a video processor of the same family shares
_VIDEO_KEYS = ("do_convert_rgb", "do_normalize", "do_rescale", "do_resize", "image_mean", "image_std", "resample",
               "rescale_factor", "size", "patch_size", "merge_size", "temporal_patch_size", "min_pixels",
               "max_pixels")


def standardise_processor(path: str | Path, processor_class: str, video_processor_type: str | None) -> None:
    """Name ``processor_class`` (transformers' own) in the saved processor and tokenizer configs and write the
    video processor config (``video_preprocessor_config.json`` and its entry in ``processor_config.json``)."""
    path = Path(path)
    proc_file = path / PROCESSOR_FILE
    proc = json.loads(proc_file.read_text())
    proc["processor_class"] = processor_class
    if video_processor_type:
        image = proc.get("image_processor", {})
        video = {k: image[k] for k in _VIDEO_KEYS if k in image}
        video["video_processor_type"] = video_processor_type
        proc["video_processor"] = video
        (path / VIDEO_FILE).write_text(json.dumps(video, indent=2, sort_keys=True) + "\n")
    proc_file.write_text(json.dumps(proc, indent=2, sort_keys=True) + "\n")
    tok_file = path / "tokenizer_config.json"
    if tok_file.is_file():
        tok = json.loads(tok_file.read_text())
        if "processor_class" in tok:
            tok["processor_class"] = processor_class
            tok_file.write_text(json.dumps(tok, indent=2, ensure_ascii=False) + "\n")
