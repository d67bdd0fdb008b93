"""Model registry: build a backbone from its config, save and load weights.

A model is two files side by side: ``<name>.safetensors`` (weights, no pickle;
its metadata carries the config, so the model is rebuilt from the file alone)
and ``<name>.json`` (the card: config, training record, measured numbers, and
the SHA-256 of the weights file, checked on load).
"""
from __future__ import annotations

import hashlib
import json
import os
import struct
from functools import lru_cache
from pathlib import Path

def _models_dir() -> Path:
    # Installed: the package convcodec.models (mapped from the repo's models/).
    try:
        from importlib.resources import files
        return Path(str(files("convcodec.models")))
    except (ImportError, ModuleNotFoundError, TypeError):
        return Path(__file__).resolve().parent.parent / "models"


MODELS_DIR = _models_dir()
DEFAULT_MODEL = "matnet-vr24c"


class ModelError(Exception):
    """A model cannot be found, or its files are inconsistent."""


# A backbone's name picks its default model: ``--model matnet``.
FAMILY_DEFAULTS = {"matnet": DEFAULT_MODEL, "vlae": "vlae-v1"}


def _backbone(name: str):
    """(config class, model class) of a backbone, imported on demand (torch)."""
    if name == "convdraw":
        from .nets.convdraw import ConvDraw, ConvDrawConfig
        return ConvDrawConfig, ConvDraw
    if name == "matnet":
        from .nets.matnet import MatNet, MatNetConfig
        return MatNetConfig, MatNet
    if name == "vlae":
        from .nets.vlae import VLAE, VLAEConfig
        return VLAEConfig, VLAE
    raise ModelError(f"unknown backbone {name!r}")


def config_from_dict(d: dict):
    cfg_cls, _ = _backbone(d.get("backbone", "convdraw"))
    return cfg_cls.from_dict({**cfg_cls().to_dict(), **d})


def build_model(cfg):
    return _backbone(cfg.backbone)[1](cfg)


def file_digest(path: str | os.PathLike) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def save_model(model, prefix: str | os.PathLike, card: dict) -> dict:
    """Write ``prefix.safetensors`` and ``prefix.json``; returns the card."""
    from safetensors.torch import save_file
    prefix = str(prefix)
    cfg = model.cfg.to_dict()
    state = {k: v.detach().float().contiguous() for k, v in model.state_dict().items()}
    tmp = prefix + ".safetensors.tmp"
    save_file(state, tmp, metadata={"config": json.dumps(cfg, sort_keys=True),
                                    "name": str(card.get("name", Path(prefix).name))})
    os.replace(tmp, prefix + ".safetensors")
    card = {**card, "config": cfg, "sha256": file_digest(prefix + ".safetensors"),
            "parameters": sum(v.numel() for v in state.values())}
    with open(prefix + ".json.tmp", "w") as f:
        json.dump(card, f, indent=2)
    os.replace(prefix + ".json.tmp", prefix + ".json")
    return card


def resolve(name_or_path: str | None) -> Path:
    """A model name from the registry, or a path to a .safetensors file."""
    name_or_path = name_or_path or DEFAULT_MODEL
    p = Path(name_or_path)
    if p.suffix == ".safetensors" or os.sep in name_or_path:
        if not p.exists():
            raise ModelError(f"model file not found: {name_or_path}")
        return p
    name_or_path = FAMILY_DEFAULTS.get(name_or_path, name_or_path)
    cand = MODELS_DIR / f"{name_or_path}.safetensors"
    if not cand.exists():
        avail = ", ".join(list_models()) or "none"
        raise ModelError(f"unknown model {name_or_path!r} (available: {avail})")
    return cand


def list_models() -> list[str]:
    return sorted(p.stem for p in MODELS_DIR.glob("*.safetensors"))


def installed_cards() -> dict[str, dict]:
    """Every installed model's card, by name (in name order)."""
    return {n: read_card(MODELS_DIR / f"{n}.safetensors") for n in list_models()}


def current_models(cards: dict[str, dict] | None = None) -> list[str]:
    """The installed models that no newer model supersedes: those a budget
    search tries. A superseded model (its card names ``superseded_by``) stays
    installed so that the files made with it still decode: a file names the
    exact weights it needs. (Superseded by a model that is not installed, it
    stays current.) An experimental model (its card says so: a backbone
    still in its first training) is installed and listed, but only used when
    named. ``cards``: ``installed_cards()``, when the caller has them."""
    cards = installed_cards() if cards is None else cards
    return [n for n, card in cards.items()
            if card.get("superseded_by") not in cards and not card.get("experimental")]


def read_card(weights: Path) -> dict:
    card_path = weights.with_suffix(".json")
    if not card_path.exists():
        raise ModelError(f"model card missing: {card_path}")
    with open(card_path) as f:
        return json.load(f)


def _read_weights(weights: Path, framework: str):
    """(state, config dict, info) of a weights file checked against its card;
    tensors as ``framework`` ("torch" or "numpy") gives them."""
    import importlib
    from safetensors import SafetensorError
    card = read_card(weights)
    # Read the file once: the digest, the header's metadata and the tensors
    # all come from the same bytes (so they are also the bytes the card vouched for).
    data = weights.read_bytes()
    digest = hashlib.sha256(data).hexdigest()
    if card.get("sha256") != digest:
        raise ModelError(f"model weights {weights.name} do not match their card (sha256 differs)")
    try:
        state = importlib.import_module(f"safetensors.{framework}").load(data)
        (n,) = struct.unpack_from("<Q", data, 0)        # safetensors: u64 header length, JSON header
        meta = json.loads(data[8:8 + n]).get("__metadata__") or {}
        cfg = json.loads(meta["config"])
    except (SafetensorError, ValueError, KeyError, struct.error) as e:
        raise ModelError(f"cannot read model weights {weights.name}: {e}") from None
    return state, cfg, {"name": meta.get("name", weights.stem), "sha256": digest, "card": card}


@lru_cache(maxsize=8)
def _load(path: str, mtime: float):
    state, cfg, info = _read_weights(Path(path), "torch")
    model = build_model(config_from_dict(cfg))
    model.load_state_dict(state)
    model.eval()
    for p in model.parameters():
        p.requires_grad_(False)
    return model, info


@lru_cache(maxsize=8)
def _load_arrays(path: str, mtime: float):
    return _read_weights(Path(path), "numpy")


def load_arrays(name_or_path: str | None = None):
    """``(state, config dict, info)`` with the weights as numpy arrays, for
    the torch-free decoder (convcodec.npdecode); checked like load_model."""
    p = resolve(name_or_path)
    return _load_arrays(str(p.resolve()), p.stat().st_mtime)


def file_version(cfg) -> int:
    """The .cdr version a model writes, and the only one it reads (``cfg``:
    its config, object or dict): 4 with context tables, 3 with code tables,
    2 with exact scales (the portable entropy model), else 1."""
    get = cfg.get if isinstance(cfg, dict) else (lambda k: getattr(cfg, k, False))
    return (4 if get("coder_context") else 3 if get("coder_tables") else 2 if get("exact_scales") else 1)


def check_identity(header, info: dict, num_groups: int, variable_rate: bool = False, version: int | None = None):
    """Refuse to decode a file with weights other than those it was made with,
    or whose header does not fit that model (``version``: the one it writes)."""
    from .container import ContainerError
    digest8 = bytes.fromhex(info["sha256"])[:8]
    if digest8 != header.model_digest:
        raise ModelError(f"file was made by model {header.model_name!r} "
                         f"(weights {header.model_digest.hex()}), but the model loaded is "
                         f"{info['name']!r} (weights {digest8.hex()}): cannot decode with a different model")
    if num_groups != header.groups_total:
        raise ContainerError("corrupted .cdr header (group count does not match the model)")
    if version is not None and header.version != version:
        raise ContainerError(f"corrupted .cdr header (version {header.version}, but the model "
                             f"writes version {version})")
    if variable_rate != (header.quality > 0):
        raise ContainerError(f"corrupted .cdr header (quality {header.quality} for a "
                             f"{'variable' if variable_rate else 'single'}-rate model)")


def load_model(name_or_path: str | None = None):
    """Return ``(model, info)``; models are cached, so repeated calls are cheap."""
    p = resolve(name_or_path)
    return _load(str(p.resolve()), p.stat().st_mtime)
