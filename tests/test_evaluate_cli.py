"""nmt-evaluate end to end on a tiny random-weight checkpoint of the toy task."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from cli_checkpoint import SHORT, make_checkpoint

from nmt import evaluate
from nmt.checkpoint import build_from_checkpoint
from nmt.config import DecodeConfig, compose
from nmt.data import EOS
from nmt.decoding import translate_ids


def sacrebleu_cli(ref: Path, hyp: Path, *extra: str) -> str:
    cmd = [sys.executable, "-m", "sacrebleu", str(ref), "-i", str(hyp), "-b", *extra]
    return subprocess.run(cmd, capture_output=True, text=True, check=True).stdout.strip()


def test_evaluate_bleu_equals_the_sacrebleu_command_line(tmp_path, capsys, toy, ckpt) -> None:
    data, _ = toy
    # References that partly agree with what this random model says, so BLEU is neither 0
    # nor 100: its own outputs with one word dropped from every other line.
    test = data.splits["test"]
    sources = list(test.src_text[:30])
    hyps = translate_ids(
        build_from_checkpoint(ckpt)[0],
        [[*data.vocab.encode(s), EOS] for s in sources],
        DecodeConfig(max_len_a=0, max_len_b=8),
    )
    refs = []
    for i, h in enumerate(hyps):
        words = data.vocab.decode(h[0].tokens).split()
        refs.append(" ".join(words[1:] if i % 2 else words) or "x")
    root = tmp_path / "corpus"
    root.mkdir()
    for split in ("train", "valid", "test"):
        (root / f"{split}.src").write_text("\n".join(sources) + "\n", encoding="utf-8")
        (root / f"{split}.tgt").write_text("\n".join(refs) + "\n", encoding="utf-8")

    out_dir = tmp_path / "eval"
    code = evaluate.main(
        [
            str(ckpt),
            "data.source=local",
            f"data.root={root}",
            "data.src=src",
            "data.tgt=tgt",
            "--beam",
            "4",
            *SHORT,
            "-o",
            str(out_dir),
            "--quiet",
        ]
    )
    printed = capsys.readouterr().out
    assert code == 0
    result = json.loads((out_dir / "eval.json").read_text())
    assert 5 < result["bleu"] < 95, "the test needs a BLEU that is neither 0 nor 100"
    assert result["sentences"] == 30 and result["search"] == "beam"
    assert (result["precision"], result["eos_rule"], result["unk_penalty"]) == (
        "fp32",
        "top_beam",
        0.0,
    )
    cli = sacrebleu_cli(out_dir / "ref.txt", out_dir / "hyp.txt", "-w", "4")
    assert float(cli) == pytest.approx(result["bleu"], abs=1e-4)
    assert f"BLEU      : {float(cli):.2f}" in printed
    assert "| source subwords |" in printed  # the Markdown length table
    assert sum(row["sentences"] for row in result["by_length"]) == 30


def test_evaluate_averages_several_checkpoints_on_the_checkpoints_own_test_set(
    tmp_path, capsys, toy, ckpt
) -> None:
    _, cfg = toy
    vocab = toy[0].vocab
    second = make_checkpoint(tmp_path / "checkpoint_2.pt", cfg, vocab, seed=1)
    code = evaluate.main(
        [
            str(ckpt),
            str(second),
            "--beam",
            "1",
            "--max-sentences",
            "10",
            *SHORT,
            "-o",
            str(tmp_path / "ev"),
            "--quiet",
            "--buckets",
            "5,10",
        ]
    )
    assert code == 0, capsys.readouterr().err
    result = json.loads((tmp_path / "ev" / "eval.json").read_text())
    assert result["averaged"] and result["search"] == "greedy" and result["sentences"] == 10
    assert [row["bucket"] for row in result["by_length"]] == ["1-5", "6-10", "11+"]
    assert len((tmp_path / "ev" / "hyp.txt").read_text(encoding="utf-8").splitlines()) == 10


def test_a_rotary_checkpoint_older_than_dynamic_scaling_evaluates_with_it(
    tmp_path, capsys, toy
) -> None:
    """Checkpoints written before `encoding.rotary_train_len` existed load with its default."""
    data, cfg = toy
    rotary = compose(
        [
            f"data.cache_dir={cfg.data.cache_dir}",
            "data.toy.train_size=2000",
            "data.toy.test_size=40",
            "encoding=rotary",
        ]
    )
    path = make_checkpoint(tmp_path / "old.pt", rotary, data.vocab)
    state = torch.load(path, weights_only=False)
    del state["config"]["encoding"]["rotary_train_len"]
    torch.save(state, path)
    code = evaluate.main(
        [
            str(path),
            "encoding.rotary_scaling=dynamic_ntk",
            "encoding.rotary_train_len=4",
            "--beam",
            "1",
            "--max-sentences",
            "5",
            *SHORT,
            "-o",
            str(tmp_path / "ev"),
            "--quiet",
        ]
    )
    assert code == 0, capsys.readouterr().err
    code = evaluate.main(
        [
            str(path),
            "encoding.rotary_scaling=dynamic_ntk",
            "--beam",
            "1",
            "--quiet",
            "-o",
            str(tmp_path / "ev2"),
        ]
    )
    assert code == 2 and "set encoding.rotary_train_len" in capsys.readouterr().err


def test_evaluate_rejects_a_bad_override(capsys, ckpt) -> None:
    assert evaluate.main([str(ckpt), "model.d_model=8"]) == 2
    assert "cannot override model.d_model=8" in capsys.readouterr().err


def test_evaluate_takes_checkpoints_from_sweep_directories(
    tmp_path, monkeypatch, capsys, ckpt
) -> None:
    """Hydra names sweep jobs `0_encoding.k=0,seed=1/`: their checkpoints are not overrides."""
    job = tmp_path / "0_encoding.k=0,seed=1"
    job.mkdir()
    (job / "checkpoint_best.pt").write_bytes(ckpt.read_bytes())
    (tmp_path / "k=2.pt").write_bytes(ckpt.read_bytes())
    monkeypatch.chdir(tmp_path)
    inputs = [str(job / "checkpoint_best.pt"), "k=2.pt", "data.toy.test_size=5"]
    assert evaluate.split_inputs(inputs) == (
        [str(job / "checkpoint_best.pt"), "k=2.pt"],
        ["data.toy.test_size=5"],
    )
    # relative to the sweep directory and missing: a checkpoint (file not found), not an override
    assert evaluate.split_inputs(["3_encoding.k=16,seed=1/nope.pt", "data.root=/x"]) == (
        ["3_encoding.k=16,seed=1/nope.pt"],
        ["data.root=/x"],
    )
    code = evaluate.main(
        [
            str(job / "checkpoint_best.pt"),
            "--beam",
            "1",
            "--max-sentences",
            "3",
            *SHORT,
            "-o",
            str(tmp_path / "ev"),
            "--quiet",
        ]
    )
    assert code == 0, capsys.readouterr().err
    assert json.loads((tmp_path / "ev" / "eval.json").read_text())["sentences"] == 3


def test_evaluate_warns_when_the_language_pair_is_not_the_checkpoints(
    tmp_path, capsys, toy, ckpt
) -> None:
    """A src->tgt model scored on src->fr data: scored (it may be meant), but a warning says so."""
    sources = toy[0].splits["test"].src_text[:3]
    root = tmp_path / "corpus"
    root.mkdir()
    for split in ("train", "valid", "test"):
        (root / f"{split}.src").write_text("\n".join(sources) + "\n", encoding="utf-8")
        for lang in ("tgt", "fr"):
            (root / f"{split}.{lang}").write_text("a b\n" * 3, encoding="utf-8")
    local = ["data.source=local", f"data.root={root}"]
    flags = ["--beam", "1", *SHORT, "--quiet"]
    code = evaluate.main([str(ckpt), *local, "data.tgt=fr", *flags, "-o", str(tmp_path / "fr")])
    err = capsys.readouterr().err
    assert code == 0, err
    warning = [line for line in err.splitlines() if "warning" in line]
    assert len(warning) == 1 and warning[0].startswith("nmt-evaluate: warning: ")
    assert "trained on src->tgt but is evaluated on src->fr" in warning[0]
    assert "pass data.src=src data.tgt=tgt" in warning[0]
    assert (tmp_path / "fr" / "eval.json").exists()
    # the checkpoint's own pair: no warning; overrides may also follow the flags
    code = evaluate.main([str(ckpt), *flags, "-o", str(tmp_path / "tgt"), *local])
    err = capsys.readouterr().err
    assert code == 0 and "warning" not in err, err


def test_evaluate_refuses_bad_output_and_sentence_counts(tmp_path, capsys, ckpt) -> None:
    (tmp_path / "a_file").write_text("x\n")
    code = evaluate.main([str(ckpt), "--quiet", *SHORT, "-o", str(tmp_path / "a_file")])
    err = capsys.readouterr().err
    assert code == 2 and "Traceback" not in err
    assert f"-o {tmp_path / 'a_file'} is a file, not a directory" in err
    code = evaluate.main([str(ckpt), "--max-sentences", "-1", "-o", str(tmp_path / "ev")])
    assert code == 2 and "--max-sentences -1: give a number >= 1" in capsys.readouterr().err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a_file"]
