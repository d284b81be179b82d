"""Streaming video readers/writers, frame selection and tensor layout conversions."""
from .frames import FrameSelection, check_image, image_to_nchw, nchw_to_image, to_float_frames, to_uint
from .video import (OUTPUT_FORMATS, PIXEL_FORMATS, VIDEO_EXTENSIONS, OutputExistsError, VideoInfo, VideoReadError,
                    VideoWriter, format_for_path, iter_frames, load_audio, load_video, probe, save_video, target_size)

__all__ = ["FrameSelection", "check_image", "image_to_nchw", "nchw_to_image", "to_float_frames", "to_uint",
           "OUTPUT_FORMATS", "PIXEL_FORMATS", "VIDEO_EXTENSIONS", "OutputExistsError", "VideoInfo", "VideoReadError",
           "VideoWriter",
           "format_for_path", "iter_frames", "load_audio", "load_video", "probe", "save_video", "target_size"]
