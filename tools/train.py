#!/usr/bin/env python3
"""Train a convcodec model; see `python tools/train.py --help` and README."""
from convcodec.train import main

if __name__ == "__main__":
    main()
