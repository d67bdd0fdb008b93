import os
import subprocess
import sys

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

from convcodec.cli import main

from .conftest import smooth_image


@pytest.fixture
def png(tmp_path):
    p = tmp_path / "in.png"
    Image.fromarray(smooth_image(21, 34)).save(p)
    return p


def run(*args):
    return CliRunner().invoke(main, [str(a) for a in args])


def one_error_line(res):
    assert res.exit_code == 1, res.output
    lines = [ln for ln in res.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("Error: "), res.stderr
    assert "Traceback" not in res.output
    return lines[0]


def test_compress_decompress_info(tmp_path, png, tiny_model):
    cdr, out = tmp_path / "a.cdr", tmp_path / "a.png"
    r = run("compress", png, "-o", cdr, "--model", tiny_model, "--steps", 3)
    assert r.exit_code == 0, r.output
    assert "3/4 groups" in r.stderr
    r = run("decompress", cdr, "-o", out)
    # decoded by the file's model name 'tiny', which is not installed: clear refusal
    assert "tiny" in one_error_line(r) and not out.exists()
    r = run("decompress", cdr, "-o", out, "--model", tiny_model)
    assert r.exit_code == 0, r.output
    assert Image.open(out).size == (34, 21)
    r = run("info", cdr)
    assert r.exit_code == 0 and "3 of 4 stored" in r.output and "34x21" in r.output


def test_verbose_shows_bytes_and_estimate(tmp_path, png, tiny_model):
    r = run("compress", png, "-o", tmp_path / "a.cdr", "--model", tiny_model, "-v")
    assert r.exit_code == 0, r.output
    assert "model estimate" in r.stderr and "PSNR" in r.stderr


def test_steps_above_the_group_count_store_all_and_say_so(tmp_path, png, tiny_model):
    r = run("compress", png, "-o", tmp_path / "a.cdr", "--model", tiny_model, "--steps", 50)
    assert r.exit_code == 0 and "storing all" in r.stderr and "4/4 groups" in r.stderr


def test_default_output_names(tmp_path, png, tiny_model):
    assert run("compress", png, "--model", tiny_model).exit_code == 0
    assert (tmp_path / "in.cdr").exists()
    os.remove(png)
    assert run("decompress", tmp_path / "in.cdr", "--model", tiny_model).exit_code == 0
    assert (tmp_path / "in.png").exists()


def test_temperature_and_seed(tmp_path, png, tiny_model):
    cdr = tmp_path / "a.cdr"
    run("compress", png, "-o", cdr, "--model", tiny_model, "--steps", 1)
    outs = []
    for seed in (1, 1, 2):
        p = tmp_path / f"t{len(outs)}.png"
        assert run("decompress", cdr, "-o", p, "--model", tiny_model, "--temperature", 1, "--seed", seed).exit_code == 0
        outs.append(np.asarray(Image.open(p)))
    assert np.array_equal(outs[0], outs[1]) and not np.array_equal(outs[0], outs[2])


def test_non_image_input(tmp_path, tiny_model):
    bad = tmp_path / "notes.png"
    bad.write_text("hello")
    out = tmp_path / "x.cdr"
    assert "not an image" in one_error_line(run("compress", bad, "-o", out, "--model", tiny_model))
    assert not out.exists() and sorted(os.listdir(tmp_path)) == ["notes.png"]


def test_missing_input(tmp_path, tiny_model):
    assert "no such file" in one_error_line(run("compress", tmp_path / "nope.png", "--model", tiny_model))


def test_corrupted_cdr_leaves_nothing_and_keeps_existing_output(tmp_path, png, tiny_model):
    cdr, out = tmp_path / "a.cdr", tmp_path / "a.png"
    run("compress", png, "-o", cdr, "--model", tiny_model)
    data = bytearray(cdr.read_bytes())
    data[len(data) // 2] ^= 0x10
    cdr.write_bytes(bytes(data))
    out.write_bytes(b"precious")
    assert "corrupted" in one_error_line(run("decompress", cdr, "-o", out, "--model", tiny_model))
    assert out.read_bytes() == b"precious"
    assert not [f for f in os.listdir(tmp_path) if f.endswith(".part")]


def test_truncated_and_foreign_files(tmp_path, png, tiny_model):
    cdr = tmp_path / "a.cdr"
    run("compress", png, "-o", cdr, "--model", tiny_model)
    data = cdr.read_bytes()
    for n in (0, 3, 20, len(data) - 1):
        cdr.write_bytes(data[:n])
        msg = one_error_line(run("decompress", cdr, "-o", tmp_path / "o.png", "--model", tiny_model))
        assert ("truncated" in msg or "empty" in msg or "not a .cdr" in msg), msg
    cdr.write_bytes(png.read_bytes())
    assert "not a .cdr" in one_error_line(run("info", cdr))
    assert not (tmp_path / "o.png").exists()


def test_output_never_overwrites_input(tmp_path, png, tiny_model):
    before = png.read_bytes()
    assert "overwrite the input" in one_error_line(run("compress", png, "-o", png, "--model", tiny_model))
    assert png.read_bytes() == before


def test_unknown_output_format(tmp_path, png, tiny_model):
    cdr = tmp_path / "a.cdr"
    run("compress", png, "-o", cdr, "--model", tiny_model)
    assert "unknown output image format" in one_error_line(run("decompress", cdr, "-o", tmp_path / "a.xyz"))


def test_usage_errors_exit_2(png):
    assert run("compress", png, "--steps", 0).exit_code == 2
    assert run("decompress").exit_code == 2


def test_help_and_info_do_not_import_torch(tmp_path, png, tiny_model):
    cdr = tmp_path / "a.cdr"
    run("compress", png, "-o", cdr, "--model", tiny_model)
    code = ("import sys\nfrom convcodec.cli import main\n"
            "try:\n    main(sys.argv[1:])\nexcept SystemExit:\n    pass\n"
            "assert 'torch' not in sys.modules, 'torch imported'\n")
    for args in (["--help"], ["info", str(cdr)], ["--version"]):
        r = subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True)
        assert r.returncode == 0, r.stderr


def test_truncate_and_max_bytes(tmp_path, png, tiny_model):
    cdr, cut = tmp_path / "a.cdr", tmp_path / "b.cdr"
    assert run("compress", png, "-o", cdr, "--model", tiny_model).exit_code == 0
    r = run("truncate", cdr, "-o", cut, "--steps", 2)
    assert r.exit_code == 0 and "2/4 groups" in r.stderr
    n = len(cut.read_bytes())
    r = run("truncate", cdr, "-o", cut, "--max-bytes", n)
    assert r.exit_code == 0 and len(cut.read_bytes()) == n
    small = tmp_path / "s.cdr"
    r = run("compress", png, "-o", small, "--model", tiny_model, "--max-bytes", n)
    assert r.exit_code == 0 and small.read_bytes() == cut.read_bytes()
    r = run("compress", png, "-o", small, "--model", tiny_model, "--max-bytes", 10)
    assert "cannot fit" in one_error_line(r)
    assert run("truncate", cdr, "-o", cut).exit_code == 2


def test_decompress_steps_of_a_longer_file(tmp_path, png, tiny_model):
    cdr = tmp_path / "a.cdr"
    run("compress", png, "-o", cdr, "--model", tiny_model)
    run("truncate", cdr, "-o", tmp_path / "b.cdr", "--steps", 1)
    run("decompress", cdr, "-o", tmp_path / "a1.png", "--steps", 1, "--model", tiny_model)
    run("decompress", tmp_path / "b.cdr", "-o", tmp_path / "b1.png", "--model", tiny_model)
    assert np.array_equal(np.asarray(Image.open(tmp_path / "a1.png")), np.asarray(Image.open(tmp_path / "b1.png")))


def test_stdin_and_stdout(tmp_path, png, tiny_model):
    r = CliRunner().invoke(main, ["compress", "-", "-o", "-", "--model", tiny_model, "-q"], input=png.read_bytes())
    assert r.exit_code == 0 and r.stdout_bytes[:4] == b"\x89CDR"
    cdr = r.stdout_bytes
    r = CliRunner().invoke(main, ["decompress", "-", "-o", "-", "--model", tiny_model, "-q"], input=cdr)
    assert r.exit_code == 0
    assert Image.open(__import__("io").BytesIO(r.stdout_bytes)).size == (34, 21)


def test_a_folder_in_one_call(tmp_path, tiny_model):
    src = tmp_path / "src"
    src.mkdir()
    for i in range(3):
        Image.fromarray(smooth_image(16 + i, 20, seed=i)).save(src / f"im{i}.png")
    (src / "broken.png").write_bytes(b"nope")
    out = tmp_path / "out"
    r = run("compress", src, "-o", out, "--model", tiny_model)
    assert r.exit_code == 1                      # one input failed ...
    assert sorted(os.listdir(out)) == ["im0.cdr", "im1.cdr", "im2.cdr"]  # ... the others were written
    assert "broken.png" in r.stderr and "3 done, 1 failed" in r.stderr
    r = run("decompress", out, "-o", tmp_path / "dec", "--model", tiny_model)
    assert r.exit_code == 0 and "3 done, 0 failed" in r.stderr
    assert sorted(os.listdir(tmp_path / "dec")) == ["im0.png", "im1.png", "im2.png"]


def test_version_help_and_models():
    from convcodec import __version__
    assert __version__ in run("--version").output
    h = run("compress", "--help").output
    assert "Examples:" in h and "--max-bytes" in h and "Exit codes" in h
    from convcodec.zoo import DEFAULT_MODEL, current_models, installed_cards, list_models
    r = run("models")
    assert r.exit_code == 0 and f"{DEFAULT_MODEL} (default" in r.output
    lines = [ln for ln in r.output.strip().splitlines() if not ln.startswith("(")]
    shown = set(current_models()) | {n for n, c in installed_cards().items() if c.get("experimental")}
    assert len(lines) == len(shown)
    assert all(" bpp, " in line and "dB on Kodak" in line for line in lines)
    r = run("models", "--all")
    assert len(r.output.strip().splitlines()) == len(list_models())


def test_outputs_get_normal_permissions(tmp_path, png, tiny_model):
    old = os.umask(0o022)
    try:
        cdr = tmp_path / "a.cdr"
        assert run("compress", png, "-o", cdr, "--model", tiny_model).exit_code == 0
        assert (cdr.stat().st_mode & 0o777) == 0o644
    finally:
        os.umask(old)


def test_info_describes_every_readable_version():
    from convcodec.cli import FORMATS
    from convcodec.container import VERSIONS
    assert sorted(FORMATS) == sorted(VERSIONS)
