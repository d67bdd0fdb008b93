import numpy as np
import pytest
import torch

from convcodec import codec, entropy
from convcodec.container import ContainerError, unpack
from convcodec.zoo import ModelError, load_model

from .conftest import smooth_image

SIZES = [(1, 1), (2, 3), (7, 13), (8, 8), (31, 9), (33, 65), (64, 48)]


def _symbols(model_path, rgb, steps):
    """The integer latents the encoder coded, captured from inside the loop."""
    seen = []
    orig = entropy.encode

    def spy(sym, idx, *table):
        seen.append(np.array(sym))
        return orig(sym, idx, *table)
    entropy.encode = spy
    try:
        enc = codec.encode(rgb, model=model_path, steps=steps)
    finally:
        entropy.encode = orig
    return enc, seen


@pytest.mark.parametrize("hw", SIZES)
def test_latents_survive_the_coder_bit_exactly(tiny_model, hw):
    rgb = smooth_image(*hw, seed=hw[0] * 100 + hw[1])
    enc, sent = _symbols(tiny_model, rgb, None)
    got = []
    orig = entropy.decode

    def spy(data, idx, *table):
        out = orig(data, idx, *table)
        got.append(out)
        return out
    entropy.decode = spy
    try:
        out = codec.decode(enc.data, model=tiny_model)
    finally:
        entropy.decode = orig
    assert out.shape == rgb.shape and out.dtype == np.uint8
    assert len(sent) == len(got) == 4
    assert any(np.any(s != 0) for s in sent), "test should exercise non-zero symbols"
    for s, g in zip(sent, got):
        np.testing.assert_array_equal(s, g)


@pytest.mark.parametrize("hw", [(7, 13), (40, 24)])
def test_every_prefix_decodes_to_what_the_encoder_predicted(tiny_model, hw):
    rgb = smooth_image(*hw)
    outs = []
    for t in range(0, 5):
        enc, rec = codec.encode(rgb, model=tiny_model, steps=t, reconstruct=True)
        assert enc.cdr.header.groups_stored == t
        out = codec.decode(enc.data, model=tiny_model)
        np.testing.assert_array_equal(out, rec)
        outs.append(out)
        # the same prefix cut from the full file decodes identically
        full = codec.encode(rgb, model=tiny_model)
        np.testing.assert_array_equal(codec.decode(full.data, model=tiny_model, steps=t), out)
    assert not all(np.array_equal(outs[0], o) for o in outs[1:])


def test_decoding_twice_gives_identical_pixels(tiny_model):
    rgb = smooth_image(24, 40)
    data = codec.encode(rgb, model=tiny_model, steps=2).data
    a = codec.decode(data, model=tiny_model)
    b = codec.decode(data, model=tiny_model)
    np.testing.assert_array_equal(a, b)
    assert codec.encode(rgb, model=tiny_model, steps=2).data == data


@pytest.mark.parametrize("which", ["tiny_model", "tiny_vr"])
def test_temperature_samples_are_seeded(which, request):
    model = request.getfixturevalue(which)
    data = codec.encode(smooth_image(24, 40), model=model, steps=1).data
    a = codec.decode(data, model=model, temperature=1.0, seed=5)
    b = codec.decode(data, model=model, temperature=1.0, seed=5)
    c = codec.decode(data, model=model, temperature=1.0, seed=6)
    m = codec.decode(data, model=model, temperature=0.0)
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c) and not np.array_equal(a, m)


def test_file_bytes_track_the_model_estimate(tiny_model):
    enc = codec.encode(smooth_image(96, 128), model=tiny_model)
    assert sum(enc.estimated_bits) > 0
    assert len(enc.data) == pytest.approx(enc.estimated_bytes, rel=0.05, abs=16)


def test_file_from_another_model_is_refused_by_name(tiny_model, other_model):
    data = codec.encode(smooth_image(16, 16), model=other_model).data
    with pytest.raises(ModelError, match="made by model 'tiny'.*different model"):
        codec.decode(data, model=tiny_model)


def test_unknown_model_name_is_refused():
    from convcodec import container as C
    f = C.CdrFile(C.Header("no-such-model", bytes(8), 4, 4, 8, 0))
    with pytest.raises(ModelError, match="no-such-model.*not installed"):
        codec.decode(C.pack(f))


def test_desync_is_caught_by_the_symbol_checksum(tiny_model):
    """Perturb the decoder's prior scales on purpose: the decoder must report
    that it went out of step, never return a picture."""
    rgb = smooth_image(32, 32)
    data = codec.encode(rgb, model=tiny_model).data
    net, _ = load_model(tiny_model)
    with torch.no_grad():
        net.p_head.bias[net.cfg.latent:] += 0.7      # log sigma of the prior
    try:
        with pytest.raises(codec.DesyncError, match="out of step"):
            codec.decode(data, model=tiny_model)
    finally:
        with torch.no_grad():
            net.p_head.bias[net.cfg.latent:] -= 0.7
    codec.decode(data, model=tiny_model)


def test_damaged_chunk_is_refused(tiny_model):
    from convcodec import container as C
    cdr = unpack(codec.encode(smooth_image(32, 32), model=tiny_model).data)
    cdr.chunks[0] = bytes(len(cdr.chunks[0]))        # valid container, wrong payload
    with pytest.raises((ContainerError, codec.DesyncError)):
        codec.decode(C.pack(cdr), model=tiny_model)


def test_decode_many_batches_and_equals_one_by_one(tiny_model):
    """Files of one size and model share a network pass; every picture is
    the one decode() gives, at temperature 0 and 1; mixed sizes, step counts
    and models are bucketed."""
    files = [codec.encode(smooth_image(24, 40, seed=i), model=tiny_model, steps=s).data
             for i, s in ((0, 2), (1, 2), (2, 2), (3, 4))]
    files.append(codec.encode(smooth_image(17, 9), model=tiny_model).data)
    for temp in (0.0, 1.0):
        calls = []
        orig = codec._decode_batch

        def spy(net, cdrs, *a):
            calls.append(len(cdrs))
            return orig(net, cdrs, *a)
        codec._decode_batch = spy
        try:
            got = codec.decode_many(files, model=tiny_model, temperature=temp, seed=3, batch=2)
        finally:
            codec._decode_batch = orig
        assert sorted(calls) == [1, 1, 1, 2]        # (2 + 1) of one bucket, then two singles
        for f, g in zip(files, got):
            np.testing.assert_array_equal(g, codec.decode(f, model=tiny_model, temperature=temp, seed=3))
