"""The ``convcodec`` command line. Click commands only: no model logic here.

torch is imported only by commands that run a network, so ``--help``,
``info``, ``truncate`` and ``models`` start instantly.

Exit codes: 0 success; 1 an input, a file or the model could not be used
(one line on stderr per failure says why); 2 command-line usage error.
"""
from __future__ import annotations

import functools
import os
import sys

import click

from . import __version__
from .container import ContainerError, unpack
from .fileio import OutputError, atomic_output, check_not_input
from .image import ImageError
from .quality import QUALITY_RANGE

EXAMPLES = """
\b
Examples:
  convcodec compress photo.png -o photo.cdr                # default model, quality 50
  convcodec compress photo.png -o photo.cdr --quality 40 --steps 6
  convcodec compress photo.png -o small.cdr --max-bytes 6000
  convcodec compress photos/ -o out/                # every image in a folder
  convcodec decompress photo.cdr -o photo.out.png
  convcodec decompress photo.cdr -o dream.png --temperature 1 --seed 3
  convcodec truncate photo.cdr -o preview.cdr --steps 2
  cat photo.png | convcodec compress - -o - > photo.cdr
  convcodec info photo.cdr
  convcodec models

\b
Exit codes: 0 success, 1 an input or model could not be used, 2 usage error.
"""

IMAGE_EXTS = (".png", ".jpg", ".jpeg", ".webp", ".tif", ".tiff", ".bmp", ".ppm", ".pgm", ".gif")


class Failure(Exception):
    """An expected failure: reported as one line, exit code 1."""


def _expected():
    from .zoo import ModelError
    return (ImageError, ContainerError, ModelError, OutputError, ValueError, Failure)


def _message(e: BaseException) -> str:
    if isinstance(e, MemoryError):
        return "out of memory"
    if isinstance(e, OSError) and not isinstance(e, _expected()):
        return f"{e.filename + ': ' if e.filename else ''}{e.strerror or e}"
    return str(e)


def _is_expected(e: BaseException) -> bool:
    return isinstance(e, _expected() + (MemoryError, OSError)) or type(e).__name__ == "DesyncError"


def _errors(fn):
    """Turn every expected failure into one line on stderr and exit code 1."""
    @functools.wraps(fn)
    def wrapper(*a, **k):
        try:
            return fn(*a, **k)
        except click.ClickException:
            raise
        except Exception as e:
            if _is_expected(e):
                raise click.ClickException(_message(e)) from None
            raise
    return wrapper


def _expand(inputs, exts) -> list[str]:
    """Inputs with folders replaced by their files with one of ``exts``."""
    out = []
    for p in inputs:
        if p != "-" and os.path.isdir(p):
            out += sorted(os.path.join(p, f) for f in os.listdir(p)
                          if f.lower().endswith(exts) and not f.startswith("."))
        else:
            out.append(p)
    return out


def _plan(inputs, output, ext, in_exts) -> list[tuple[str, str]]:
    """(input, output) pairs. One input: OUTPUT is a file (default: INPUT with
    ``ext``; ``-`` is stdout). Several inputs or a folder: OUTPUT is a folder."""
    many = len(inputs) > 1 or any(p != "-" and os.path.isdir(p) for p in inputs)
    files = _expand(inputs, in_exts)
    if not many:
        src = files[0]
        if output is None:
            output = "-" if src == "-" else os.path.splitext(src)[0] + ext
        return [(src, output)]
    if "-" in files:
        raise click.UsageError("'-' (stdin) cannot be combined with other inputs")
    if output == "-":
        raise click.UsageError("several inputs need an output folder, not '-'")
    if output is not None:
        if os.path.exists(output) and not os.path.isdir(output):
            raise click.UsageError(f"several inputs need an output folder; {output} is a file")
        os.makedirs(output, exist_ok=True)
    return [(f, os.path.join(output if output is not None else os.path.dirname(f),
                             os.path.splitext(os.path.basename(f))[0] + ext)) for f in files]


def _read(path: str) -> bytes:
    if path == "-":
        return sys.stdin.buffer.read()
    with open(path, "rb") as f:
        return f.read()


def _write(path: str, inputs, write):
    if path == "-":
        import io
        buf = io.BytesIO()
        write(buf)      # complete before anything reaches stdout
        out = sys.stdout.buffer
        out.write(buf.getvalue()); out.flush()
        return
    check_not_input(path, inputs)
    with atomic_output(path) as f:
        write(f)


def _run_all(pairs, quiet, work, unit="image"):
    """Run ``work(src, dst) -> summary dict`` over pairs; a progress bar and a
    summary line for batches; one line per failure; exit 1 if any failed."""
    batch = len(pairs) > 1
    bar = None
    if batch and not quiet:
        from tqdm import tqdm
        bar = tqdm(total=len(pairs), unit=unit, file=sys.stderr, leave=False)
    done, failed, total_out, pixels = 0, 0, 0, 0
    for src, dst in pairs:
        try:
            r = work(src, dst)
            done += 1
            total_out += r.get("bytes", 0); pixels += r.get("pixels", 0)
        except Exception as e:
            if not _is_expected(e):
                raise
            failed += 1
            msg = f"Error: {src}: {_message(e)}" if batch else f"Error: {_message(e)}"
            (bar.write(msg, file=sys.stderr) if bar else click.echo(msg, err=True))
        if bar:
            bar.update(1)
    if bar:
        bar.close()
    if batch and not quiet:
        extra = f", {8 * total_out / pixels:.4f} bpp overall" if pixels and unit == "image" else ""
        click.echo(f"{done} done, {failed} failed; {total_out} bytes written{extra}", err=True)
    if failed:
        sys.exit(1)


@click.group(epilog=EXAMPLES, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="convcodec")
def main():
    """convcodec: a neural lossy image codec (MatNet and Convolutional DRAW).

    A file stores the first groups of latents, coarse to fine; the decoder
    regenerates the rest from the model's prior. --quality 1..100 sets the
    rate of the default (variable-rate) model.
    """


@main.command(epilog=EXAMPLES)
@click.argument("inputs", nargs=-1, required=True)
@click.option("-o", "--output", help="Output .cdr file ('-': stdout), or a folder for several inputs "
              "[default: each INPUT with .cdr].")
@click.option("--quality", type=click.IntRange(*QUALITY_RANGE), default=None,
              help="Quality 1..100 of a variable-rate model (higher: more bytes, closer to the "
              "original) [default: 50].")
@click.option("--steps", type=click.IntRange(min=1), default=None,
              help="Latent groups to store (more: higher quality, more bytes) [default: all].")
@click.option("--max-bytes", type=click.IntRange(min=1), default=None,
              help="Write the best file of at most this many bytes (choosing the quality, the "
              "number of groups and, for single-rate models, the model).")
@click.option("--bpp", type=click.FloatRange(min=0, min_open=True), default=None,
              help="Write the best file of at most this many bits per pixel.")
@click.option("--model", default=None, help="Model name (see `convcodec models`) or path to a .safetensors file.")
@click.option("--refine", type=click.IntRange(min=0, max=10000), default=0, show_default=True,
              help="Improve the latents for each image with N gradient steps on its own rate-distortion "
              "cost: a slower encoder (40 steps: about 17x), better files (matnet-vr9 on Kodak: 4.6% "
              "fewer bits at equal PSNR, mostly at high qualities); decoding is unchanged.")
@click.option("--device", type=click.Choice(["auto", "cpu", "cuda"]), default="auto", show_default=True)
@click.option("-q", "--quiet", is_flag=True, help="Print nothing on success.")
@click.option("-v", "--verbose", is_flag=True, help="Also print per-group bytes, the model's rate estimate and PSNR.")
@_errors
def compress(inputs, output, quality, steps, max_bytes, bpp, model, refine, device, quiet, verbose):
    """Compress images (PNG, JPEG, WebP, TIFF, BMP, ...) to .cdr files.

    Alpha is flattened onto white; 16-bit images are scaled to 8 bits.
    An existing output file is replaced only once the new file is complete.
    """
    from . import codec
    from .api import _budget, encode_to_budget
    from .image import load_image
    from .metrics import psnr
    pairs = _plan(inputs, output, ".cdr", IMAGE_EXTS)
    net, info = codec.load_model(model)
    if quality is not None and not codec.is_variable_rate(net):
        raise click.UsageError(f"model {info['name']} has a single rate; --quality needs a variable-rate "
                               "model (see `convcodec models`)")
    if quality is not None and (max_bytes is not None or bpp is not None):
        raise click.UsageError("--quality and --max-bytes/--bpp both set the rate: give one")
    if steps is not None and steps > net.num_groups and not quiet:
        click.echo(f"note: model {info['name']} has {net.num_groups} groups; storing all of them", err=True)
    single = len(pairs) == 1

    def work(src, dst):
        if src != "-":
            check_not_input(dst, [src])
        rgb = load_image(_read(src) if src == "-" else src)
        h, w = rgb.shape[:2]
        budget = _budget(w, h, max_bytes, bpp)
        enc = rec = None
        if budget is not None:
            data = encode_to_budget(rgb, model, steps, budget, device, refine)
        elif verbose:
            enc, rec = codec.encode(rgb, model=model, steps=steps, device=device, reconstruct=True,
                                    refine=refine, quality=quality)
            data = enc.data
        else:
            data = codec.encode(rgb, model=model, steps=steps, device=device, refine=refine,
                                quality=quality).data
        _write(dst, [src], lambda f: f.write(data))
        hd = unpack(data).header
        n = len(data)
        if not quiet and single:
            qs = f"quality {hd.quality}, " if hd.quality else ""
            click.echo(f"{src} -> {dst}: {w}x{h}, {qs}{hd.groups_stored}/{hd.groups_total} groups, "
                       f"{n} bytes, {8 * n / (w * h):.4f} bpp", err=True)
        if verbose and budget is not None:
            click.echo(f"  model {hd.model_name} chosen for the budget of {budget} bytes", err=True)
        if verbose and enc is not None:
            est = enc.estimated_bytes
            click.echo(f"  model {info['name']} (weights {info['sha256'][:16]})", err=True)
            click.echo(f"  bytes per group: {' '.join(map(str, enc.cdr.group_bytes))}", err=True)
            click.echo("  estimated bytes per group: "
                       + " ".join(f"{b / 8:.0f}" for b in enc.estimated_bits), err=True)
            click.echo(f"  all {len(enc.cdr.chunks)} groups: {len(enc.data)} bytes vs model estimate "
                       f"{est:.0f} bytes ({100 * (len(enc.data) - est) / est:+.2f}%)", err=True)
            click.echo(f"  decoded PSNR {psnr(rgb, rec):.2f} dB", err=True)
        return {"bytes": n, "pixels": w * h}

    _run_all(pairs, quiet, work)


@main.command(epilog=EXAMPLES)
@click.argument("inputs", nargs=-1, required=True)
@click.option("-o", "--output", help="Output image ('-': stdout), format from its extension; "
              "or a folder for several inputs [default: each INPUT with .png].")
@click.option("--format", "fmt", default=None, help="Image format when it cannot come from a file name "
              "(stdout, folders) [default: PNG].")
@click.option("--steps", type=click.IntRange(min=0), default=None,
              help="Decode only the first N stored groups [default: all stored].")
@click.option("--temperature", type=click.FloatRange(min=0, max=10), default=0.0, show_default=True,
              help="Groups not stored come from the prior mean (0) or a sample at this temperature.")
@click.option("--seed", type=click.IntRange(min=0, max=2**63 - 1), default=0, show_default=True,
              help="Seed of the sample when --temperature > 0.")
@click.option("--model", default=None, help="Decode with this model (name or path) instead of the file's.")
@click.option("--device", type=click.Choice(["auto", "cpu", "cuda"]), default="auto", show_default=True)
@click.option("--engine", type=click.Choice(["auto", "numpy", "torch"]), default="auto", show_default=True,
              help="Decoder: 'auto' decodes portable files on the CPU at temperature 0 with numpy alone "
              "(no torch import: a quicker start) and everything else with torch.")
@click.option("-q", "--quiet", is_flag=True, help="Print nothing on success.")
@_errors
def decompress(inputs, output, fmt, steps, temperature, seed, model, device, engine, quiet):
    """Decompress .cdr files to images (PNG, BMP, TIFF, PPM, ...)."""
    from PIL import Image
    ext = "." + (fmt or "png").lower()
    pairs = _plan(inputs, output, ext, (".cdr",))
    single = len(pairs) == 1

    def fmt_for(dst):
        if dst == "-" or fmt:
            f = (fmt or "PNG").upper()
            f = {"JPG": "JPEG", "TIF": "TIFF"}.get(f, f)
        else:
            e = os.path.splitext(dst)[1].lower()
            f = Image.registered_extensions().get(e)
            if f is None:
                raise Failure(f"{dst}: unknown output image format {e or '(no extension)'!r}")
        # Pillow registers most save plugins lazily (on the first open or
        # save): in a fresh process Image.SAVE is nearly empty until init().
        Image.init()
        if f not in Image.SAVE or f == "CDR":
            raise Failure(f"{dst}: cannot write image format {f!r}")
        return f

    def work(src, dst):
        f = fmt_for(dst)
        if src != "-":
            check_not_input(dst, [src])
        cdr = unpack(_read(src))
        from . import npdecode
        from .image import save_image
        if engine == "numpy" or (engine == "auto" and npdecode.can_decode(cdr, model, temperature, device)):
            if not npdecode.can_decode(cdr, model, temperature, "cpu"):
                raise Failure("--engine numpy decodes only portable (version 2 and later) files of MatNet models "
                              f"at temperature 0, up to {npdecode.MAX_PIXELS // 1_000_000} MP")
            rgb = npdecode.decode(cdr, model=model, steps=steps)
        else:
            from . import codec
            rgb = codec.decode(cdr, model=model, steps=steps, temperature=temperature, seed=seed, device=device)
        _write(dst, [src], lambda fp: save_image(rgb, fp, f))
        if not quiet and single:
            used = len(cdr.chunks) if steps is None else min(steps, len(cdr.chunks))
            click.echo(f"{src} -> {dst}: {cdr.header.width}x{cdr.header.height}, "
                       f"{used}/{cdr.header.groups_total} groups decoded", err=True)
        return {}

    _run_all(pairs, quiet, work, unit="file")


@main.command(epilog=EXAMPLES)
@click.argument("input")
@click.option("-o", "--output", required=True, help="Output .cdr file ('-': stdout).")
@click.option("--steps", type=click.IntRange(min=1), default=None, help="Keep the first N groups.")
@click.option("--max-bytes", type=click.IntRange(min=1), default=None, help="Keep as many groups as fit in N bytes.")
@click.option("-q", "--quiet", is_flag=True, help="Print nothing on success.")
@_errors
def truncate(input, output, steps, max_bytes, quiet):
    """Cut a .cdr file to fewer groups, without re-encoding (a coarser preview)."""
    from .api import cut
    if steps is None and max_bytes is None:
        raise click.UsageError("give --steps or --max-bytes")
    data = cut(_read(input), steps=steps, max_bytes=max_bytes)
    _write(output, [input], lambda f: f.write(data))
    if not quiet:
        h = unpack(data).header
        click.echo(f"{input} -> {output}: {h.groups_stored}/{h.groups_total} groups, {len(data)} bytes", err=True)


# What `convcodec info` says of each .cdr version (container.VERSIONS).
FORMATS = {
    1: "float entropy model: another machine may fail to decode it",
    2: "exact entropy model: decodes the same on every machine",
    3: "exact entropy model, the model's code tables: decodes the same on every machine",
    4: "exact entropy model, the model's code and context tables: decodes the same on every machine",
}


@main.command()
@click.argument("files", nargs=-1, required=True)
@_errors
def info(files):
    """Describe .cdr files: model, size, groups, bytes per group, bpp."""
    from .container import overhead_bytes
    for path in files:
        data = _read(path)
        c = unpack(data)
        h = c.header
        px = h.width * h.height
        over = overhead_bytes(h.model_name, h.groups_stored, h.version)
        click.echo(f"{path}:")
        click.echo(f"  model           {h.model_name} (weights {h.model_digest.hex()})")
        click.echo(f"  format          .cdr version {h.version} ({FORMATS[h.version]})")
        if h.quality:
            click.echo(f"  quality         {h.quality}")
        click.echo(f"  image           {h.width}x{h.height}")
        click.echo(f"  groups          {h.groups_stored} of {h.groups_total} stored")
        click.echo(f"  bytes           {len(data)} ({8 * len(data) / px:.4f} bpp; container {over})")
        cum = over
        for i, n in enumerate(c.group_bytes):
            cum += n
            click.echo(f"  group {i + 1:<3}       {n:>8} bytes   cumulative {8 * cum / px:.4f} bpp")


@main.command()
@click.option("--all", "show_all", is_flag=True, help="Also list superseded models (kept so that their files decode).")
@_errors
def models(show_all):
    """List the installed models with their Kodak rate ranges."""
    from .zoo import DEFAULT_MODEL, FAMILY_DEFAULTS, MODELS_DIR, current_models, installed_cards
    cards = installed_cards()
    if not cards:
        raise Failure(f"no models installed in {MODELS_DIR}")
    current = current_models(cards)
    hidden = 0
    for n, card in cards.items():
        if n not in current and not show_all and not card.get("experimental"):
            hidden += 1
            continue
        rd = card.get("kodak", {}).get("quality_sweep") or card.get("kodak", {}).get("rd", [])
        rng = (f"{rd[0]['bpp']:.3f}-{rd[-1]['bpp']:.3f} bpp, {rd[0]['psnr']:.1f}-{rd[-1]['psnr']:.1f} dB "
               f"on Kodak" if rd else "not measured on Kodak")
        cfg = card.get("config", {})
        groups = cfg.get("steps") or sum(cfg.get("groups", [])) or cfg.get("levels") or "?"
        kind = ("variable rate (--quality 1..100), portable files" if cfg.get("rate_knots")
                else "single rate, version-1 files (not portable)")
        flags = (["default"] if n == DEFAULT_MODEL else []) + [
            f"--model {fam}" for fam, m in FAMILY_DEFAULTS.items() if m == n]
        if card.get("experimental"):
            flags.append("experimental: used only when named")
        elif n not in current:
            flags.append(f"superseded by {card['superseded_by']}; "
                         + ("decode only: " if card.get("decode_only") else "") + "kept so that its files decode")
        flag = f" ({', '.join(flags)})" if flags else ""
        click.echo(f"{n}{flag}: {cfg.get('backbone')}, {groups} groups, {kind}, {rng}")
    if hidden:
        click.echo(f"({hidden} superseded models not shown: `convcodec models --all`)")


if __name__ == "__main__":
    main()
