"""Helpers of the CLI tests: a tiny random-weight checkpoint of the toy task, nmt-translate
with a given standard input. Their fixtures (`toy`, `ckpt`) are in conftest.py."""

from __future__ import annotations

import io
import sys
from pathlib import Path

import torch

from nmt import translate
from nmt.checkpoint import save_checkpoint
from nmt.config import to_container
from nmt.model import build_model

SHORT = ["--max-len-a", "0", "--max-len-b", "8"]  # random weights rarely say EOS: keep it short


def make_checkpoint(path: Path, cfg, vocab, seed: int = 0) -> Path:
    torch.manual_seed(seed)
    model = build_model(cfg, vocab.size)
    save_checkpoint(
        path,
        {
            "model": model.state_dict(),
            "config": to_container(cfg),
            "vocab_model": vocab.model_bytes,
            "vocab_fingerprint": vocab.fingerprint,
            "step": 0,
        },
    )
    return path


def run_translate(monkeypatch, capsys, argv: list[str], stdin: str = "") -> tuple[int, str, str]:
    monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO(stdin.encode("utf-8"))))
    code = translate.main(argv)
    out = capsys.readouterr()
    return code, out.out, out.err
