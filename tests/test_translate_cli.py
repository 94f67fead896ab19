"""nmt-translate end to end on a tiny random-weight checkpoint of the toy task."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
import torch
from cli_checkpoint import SHORT, make_checkpoint, run_translate

from nmt import textio, translate
from nmt.checkpoint import build_from_checkpoint, save_checkpoint
from nmt.config import DecodeConfig, compose
from nmt.data import EOS, prepare_data
from nmt.decoding import translate_ids
from nmt.errors import TranslateError
from nmt.model import build_model
from nmt.search import beam_search


def test_translate_ids_keeps_input_order_across_batches(toy, ckpt) -> None:
    data, _ = toy
    model, _, _ = build_from_checkpoint(ckpt)
    test = data.splits["test"]
    src = [test.src[i] for i in range(12)]
    # A budget of ~2 sentences per batch: several batches, sorted by length internally.
    results = translate_ids(
        model,
        src,
        DecodeConfig(beam=3, alpha=0.6, max_len_a=0, max_len_b=8, max_tokens=40, nbest=2),
    )
    for ids, hyps in zip(src, results, strict=True):
        alone = beam_search(
            model,
            torch.tensor([list(map(int, ids))]),
            DecodeConfig(beam=3, max_len_a=0, max_len_b=8, nbest=2),
        )[0]
        assert [h.tokens for h in hyps] == [h.tokens for h in alone]


def test_empty_lines_give_empty_lines(monkeypatch, capsys, toy, ckpt) -> None:
    data, _ = toy
    lines = ["", data.splits["test"].src_text[0], "   ", data.splits["test"].src_text[1], ""]
    stdin = "\n".join(lines) + "\n"
    code, out, err = run_translate(monkeypatch, capsys, [str(ckpt), *SHORT], stdin)
    assert code == 0, err
    got = out.split("\n")
    assert got[-1] == "" and len(got) == len(lines) + 1
    assert [got[i] for i in (0, 2, 4)] == ["", "", ""]
    assert got[1] and got[3]


def test_nbest_file_output(tmp_path, toy, ckpt) -> None:
    data, _ = toy
    src = tmp_path / "in.txt"
    src.write_text("\n".join(data.splits["test"].src_text[:3]) + "\n", encoding="utf-8")
    out = tmp_path / "out" / "hyp.txt"
    code = translate.main(
        [
            str(ckpt),
            "-i",
            str(src),
            "-o",
            str(out),
            "--beam",
            "3",
            "--nbest",
            "2",
            "--quiet",
            *SHORT,
        ]
    )
    assert code == 0
    rows = [line.split(" ||| ") for line in out.read_text(encoding="utf-8").splitlines()]
    assert [int(r[0]) for r in rows] == [0, 0, 1, 1, 2, 2]
    for first, second in zip(rows[::2], rows[1::2], strict=True):
        assert float(first[2]) >= float(second[2])
    assert not list(out.parent.glob(".*.tmp")), "the temporary file is gone"
    umask = os.umask(0)
    os.umask(umask)
    assert out.stat().st_mode & 0o777 == 0o666 & ~umask, "an ordinary file, not mkstemp's 0600"


def test_missing_checkpoint_gives_a_clear_message(monkeypatch, capsys, tmp_path) -> None:
    out = tmp_path / "out.txt"
    code, _, err = run_translate(
        monkeypatch, capsys, [str(tmp_path / "nope.pt"), "-o", str(out)], "a line\n"
    )
    assert code == 2
    assert "nope.pt does not exist" in err and "Traceback" not in err
    assert not out.exists()


def test_checkpoint_with_another_vocabulary_is_refused(monkeypatch, capsys, tmp_path, toy) -> None:
    data, cfg = toy
    other = prepare_data(
        compose(
            [
                f"data.cache_dir={tmp_path / 'c'}",
                "data.toy.train_size=2000",
                "data.toy.seed=7",
                "data.vocab_size=400",
            ]
        ).data
    ).vocab
    state = torch.load(make_checkpoint(tmp_path / "a.pt", cfg, data.vocab), weights_only=False)
    state["vocab_model"] = other.model_bytes  # weights of one run, vocabulary of another
    save_checkpoint(tmp_path / "mixed.pt", state)
    code, _, err = run_translate(monkeypatch, capsys, [str(tmp_path / "mixed.pt")], "ba ke\n")
    assert code == 2 and "vocabulary" in err and "Traceback" not in err


def test_outputs_cut_by_the_learned_position_table_are_reported(toy) -> None:
    """Learned positions end at encoding.max_len: an output that runs into it is cut, loudly."""
    data, _ = toy
    cfg = compose(["encoding=learned", "encoding.max_len=6", "data.max_len=4"])
    torch.manual_seed(0)
    model = build_model(cfg, data.vocab.size)
    src = [[*data.vocab.encode(s)[:3], EOS] for s in data.splits["test"].src_text[:3]]
    with pytest.warns(UserWarning, match=r"3 of 3 translations reached .*encoding.max_len=6"):
        out = translate_ids(model, src, DecodeConfig(beam=2, max_len_a=0, max_len_b=20))
    assert all(len(h[0].tokens) + 1 <= 6 for h in out)


def test_too_long_line_for_learned_positions_is_refused(tmp_path, capsys, toy) -> None:
    data, _ = toy
    cfg = compose(["encoding=learned", "encoding.max_len=12", "data.max_len=8"])
    path = make_checkpoint(tmp_path / "learned.pt", cfg, data.vocab)
    words = data.splits["test"].src_text[0].split()
    src = tmp_path / "in.txt"
    src.write_text(" ".join(words[:3]) + "\n" + " ".join(words * 4) + "\n", encoding="utf-8")
    out = tmp_path / "out.txt"
    code = translate.main([str(path), "-i", str(src), "-o", str(out), "--quiet"])
    err = capsys.readouterr().err
    assert code == 2
    assert "line 2 has" in err and "encoding.max_len=12" in err
    assert not out.exists()


def test_help_says_what_happens_to_long_lines_and_nbest(capsys) -> None:
    with pytest.raises(SystemExit):
        translate.main(["--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "learned absolute positions" in text and "|||" in text


def test_gzipped_input_translates_like_plain_text(tmp_path, toy) -> None:
    """Corpora ship as .gz (Multi30k): `-i test.en.gz` reads them; a truncated one is named."""
    import gzip

    lines = "\n".join(toy[0].splits["test"].src_text[:4]) + "\n"
    (tmp_path / "in.txt").write_text(lines, encoding="utf-8")
    (tmp_path / "in.txt.gz").write_bytes(gzip.compress(lines.encode("utf-8")))
    gzipped = textio.read_lines(str(tmp_path / "in.txt.gz"))
    assert gzipped == textio.read_lines(str(tmp_path / "in.txt"))
    packed = gzip.compress(lines.encode("utf-8"))
    (tmp_path / "cut.gz").write_bytes(packed[:20])
    flipped = bytes(b ^ 0xFF for b in packed[12:-8])
    (tmp_path / "bad.gz").write_bytes(packed[:12] + flipped + packed[-8:])
    for name in ("cut.gz", "bad.gz"):  # EOFError / zlib.error underneath
        with pytest.raises(TranslateError, match=f"{name} is not a complete gzip file"):
            textio.read_lines(str(tmp_path / name))


# ---------------------------------------------------------------------------------------
# bad input: one message naming the thing and the fix, exit status 2, nothing written


def test_closed_standard_input_is_one_message_not_a_traceback(tmp_path, ckpt) -> None:
    """`nmt-translate CKPT <&-`: Python sets sys.stdin to None when descriptor 0 is closed."""
    proc = subprocess.run(
        [sys.executable, "-m", "nmt.translate", str(ckpt), *SHORT],
        preexec_fn=lambda: os.close(0),  # what the shell's <&- does
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr and len(proc.stderr.strip().splitlines()) == 1
    assert "standard input is closed" in proc.stderr and "-i FILE" in proc.stderr
    assert "pipe the text in" in proc.stderr and proc.stdout == ""


def test_closed_output_or_a_reader_that_stops_early_gives_no_traceback(tmp_path, ckpt) -> None:
    (tmp_path / "empty.txt").write_text("\n" * 300_000)  # more than a pipe holds; not decoded
    cmd = [
        sys.executable,
        "-m",
        "nmt.translate",
        str(ckpt),
        "-i",
        str(tmp_path / "empty.txt"),
        "--quiet",
    ]
    closed = subprocess.run(
        cmd, preexec_fn=lambda: os.close(1), stderr=subprocess.PIPE, text=True, timeout=120
    )  # `>&-`
    assert closed.returncode == 2 and "Traceback" not in closed.stderr
    assert "standard output is closed; write the translations with -o FILE" in closed.stderr
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    proc.stdout.close()  # `| head -0`: the reader is gone before the output is written
    err = proc.stderr.read()
    assert proc.wait(timeout=120) == 1 and err == ""


def test_a_directory_given_as_checkpoint_names_the_files_in_it(monkeypatch, capsys, tmp_path, ckpt):
    code, out, err = run_translate(monkeypatch, capsys, [str(ckpt.parent)], "ba ke\n")
    assert code == 2 and out == "" and "Traceback" not in err
    assert f"checkpoint {ckpt.parent} is a directory" in err and "does not exist" not in err
    assert f"e.g. {ckpt} (it holds checkpoint_best.pt)" in err
    (tmp_path / "empty").mkdir()
    code, _, err = run_translate(monkeypatch, capsys, [str(tmp_path / "empty")], "ba ke\n")
    assert code == 2 and "is a directory" in err and "(it holds no .pt files)" in err


def test_nbest_gives_n_lines_for_an_empty_line_too(monkeypatch, capsys, toy, ckpt) -> None:
    """Every input line has exactly N lines in --nbest N output, an empty one included."""
    text = toy[0].splits["test"].src_text[0]
    stdin = f"\n{text}\n   \n"
    argv = [str(ckpt), "--beam", "3", "--nbest", "3", *SHORT]
    code, out, err = run_translate(monkeypatch, capsys, argv, stdin)
    assert code == 0, err
    rows = [line.split(" ||| ") for line in out.splitlines()]
    assert [int(r[0]) for r in rows] == [0, 0, 0, 1, 1, 1, 2, 2, 2]
    assert [rows[i] for i in (0, 1, 2, 6, 7, 8)] == [["0", "", "0.0000"]] * 3 + [
        ["2", "", "0.0000"]
    ] * 3


def test_an_input_directory_is_named_as_one(monkeypatch, capsys, tmp_path, ckpt) -> None:
    out = tmp_path / "out.txt"
    code, _, err = run_translate(
        monkeypatch, capsys, [str(ckpt), "-i", str(tmp_path), "-o", str(out)]
    )
    assert code == 2 and "Traceback" not in err
    assert f"input file {tmp_path} is a directory" in err and "does not exist" not in err
    assert not out.exists()


def test_an_output_path_that_cannot_be_written_is_refused_before_decoding(
    monkeypatch, capsys, tmp_path, ckpt
) -> None:
    (tmp_path / "a_file").write_text("x\n")
    cases = {
        str(tmp_path): f"-o {tmp_path} is a directory; give a file path",
        str(tmp_path / "a_file" / "sub" / "out.txt"): f"{tmp_path / 'a_file'} is a file",
    }
    for output, message in cases.items():
        code, out, err = run_translate(monkeypatch, capsys, [str(ckpt), "-o", output], "ba\n")
        assert code == 2 and out == "" and "Traceback" not in err, err
        assert message in err and err.count("\n") == 1, err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a_file"], "nothing made or written"

    def full_disk(path, lines) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(translate, "write_text_atomic", full_disk)
    target = tmp_path / "out.txt"
    code, _, err = run_translate(
        monkeypatch, capsys, [str(ckpt), "-o", str(target), *SHORT], "ba\n"
    )
    assert code == 2 and "Traceback" not in err
    assert f"-o {target} cannot be written (No space left on device)" in err
