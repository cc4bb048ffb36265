"""moshi-mlx-convert: Kyutai's PyTorch (or MLX bf16) LM checkpoint to Kyutai's MLX layout, streamed.

The conversion reads one tensor at a time from the source safetensors file, remaps its name (and slices the
per-step depformer matrices), optionally quantizes it, and appends it to the output file, so peak memory is
about one tensor whatever the model size. See `convert.__main__` for the command line.
"""


class ConvertError(Exception):
    """A conversion cannot go on; the message is one sentence saying what is wrong and what to do."""
