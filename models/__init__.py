"""Shipped model weights (<name>.safetensors) and cards (<name>.json).

Installed as the package ``convcodec.models`` so the CLI finds them after
``pip install``; see convcodec.zoo.
"""
