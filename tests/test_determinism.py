"""Same input, same bytes: across runs, thread counts and processes."""
import hashlib
import subprocess
import sys

import numpy as np

from convcodec import codec

from .conftest import smooth_image

SCRIPT = r"""
import hashlib, sys, torch
torch.set_num_threads(int(sys.argv[1]))
from convcodec import codec
from tests.conftest import smooth_image
rgb = smooth_image(45, 61, seed=11)
data = codec.encode(rgb, model=sys.argv[2]).data
out = codec.decode(data, model=sys.argv[2])
print(hashlib.sha256(data).hexdigest(), hashlib.sha256(out.tobytes()).hexdigest())
"""


def _run(threads, model):
    r = subprocess.run([sys.executable, "-c", SCRIPT, str(threads), model],
                       capture_output=True, text=True, check=True)
    return r.stdout.split()


def test_same_bytes_and_pixels_across_threads_and_processes(tiny_model):
    rgb = smooth_image(45, 61, seed=11)
    data = codec.encode(rgb, model=tiny_model).data
    out = codec.decode(data, model=tiny_model)
    here = [hashlib.sha256(data).hexdigest(), hashlib.sha256(out.tobytes()).hexdigest()]
    assert _run(1, tiny_model) == here
    assert _run(2, tiny_model) == here


def test_repeated_runs_in_one_process(tiny_model):
    rgb = smooth_image(30, 30, seed=2)
    first = codec.encode(rgb, model=tiny_model).data
    for _ in range(3):
        assert codec.encode(rgb, model=tiny_model).data == first
        np.testing.assert_array_equal(codec.decode(first, model=tiny_model), codec.decode(first, model=tiny_model))
