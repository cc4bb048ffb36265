"""Audio plumbing with no device and no model: WAV files, resampling, frame buffers."""

from .resample import Resampler, resample
from .wav import AudioFormatError, read_wav, write_wav

__all__ = ["AudioFormatError", "Resampler", "read_wav", "resample", "write_wav"]
