"""Peak memory of one encoder layer's forward + backward against sequence length, per encoding.

    python scripts/bench_memory.py                       # model=base layer, N = 64 .. 2048
    python scripts/bench_memory.py --lengths 256,1024 --encodings absolute,relative
    python scripts/bench_memory.py --naive-max-len 1024  # add the (N, N, d) reference curve

Each point runs in a fresh process (`--worker ENCODING N`), so one allocation pattern never
leaves its pages to the next. The layer is `model=base` (d_model 512, 8 heads of 64, FFN 1024),
batch 1, in training mode. On CUDA the peak is `torch.cuda.max_memory_allocated`; on the CPU it
is the process's resident-set high-water mark (VmHWM, reset through /proc/self/clear_refs),
both minus what was held just before the pass. `naive` is relative attention written the way
the paper's section 3.3 warns against, materialising (N, N, d_head) edge tensors per head: the
curve the efficient path must stay away from. Writes bench_memory.{json,md,png} to --out-dir.
"""

from __future__ import annotations

import argparse
import json
import platform
import subprocess
import sys
from pathlib import Path

import torch

LENGTHS = [64, 128, 256, 512, 1024, 2048]


def _status_kib(field: str) -> int:
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith(field + ":"))


def _naive_relative_attention(attn, x: torch.Tensor) -> torch.Tensor:
    """Shaw et al. eq. (3)-(4) with explicit (H, N, N, d) edge tensors: the reference to beat."""
    pos = attn.positions
    B, N, D = x.shape
    H, d = attn.heads, attn.d_head
    q, k, v = (
        p(x).view(B, N, H, d).transpose(1, 2) for p in (attn.q_proj, attn.k_proj, attn.v_proj)
    )
    index = pos.bucket_index(0, N, N, x.device)
    a_k, a_v = pos.edge_keys[:, index], pos.edge_values[:, index]  # (H, N, N, d)
    scores = (q @ k.transpose(-1, -2) + torch.einsum("bhid,hijd->bhij", q, a_k)) * pos.scale
    w = scores.softmax(-1)
    out = w @ v + torch.einsum("bhij,hijd->bhid", w, a_v)  # (B, H, N, d)
    return attn.out_proj(out.transpose(1, 2).reshape(B, N, D))


PARTS = ("layer", "attention")


def measure(encoding: str, length: int, model: str = "base", part: str = "layer") -> float:
    """MiB above the pre-pass level at the peak of one layer's (or only its self-attention's)
    forward + backward."""
    from nmt.config import compose
    from nmt.encodings import AttentionShape, build_attention_positions, build_input_positions
    from nmt.model import EncoderLayer

    naive = encoding == "naive"
    cfg = compose([f"model={model}", f"encoding={'relative' if naive else encoding}"])
    m = cfg.model
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    torch.manual_seed(0)
    torch.set_num_threads(1)
    shape = AttentionShape(m.heads, m.d_model // m.heads, layers=1, causal=False)
    layer = EncoderLayer(m, next(build_attention_positions(cfg.encoding, shape)))
    inputs = build_input_positions(cfg.encoding, m.d_model)
    layer, inputs = layer.to(device).train(), inputs.to(device) if inputs is not None else None
    if naive:
        attn = layer.self_attn
        attn.forward = lambda h, key_padding_mask=None: _naive_relative_attention(attn, h)
    pad = torch.zeros(1, length, dtype=torch.bool, device=device)

    def step(n: int) -> None:
        x = torch.randn(1, n, m.d_model, device=device, requires_grad=True)
        h = inputs(x) if inputs is not None else x
        out = (
            layer(h, pad[:, :n])
            if part == "layer"
            else layer.self_attn(h, key_padding_mask=pad[:, :n])
        )
        out.sum().backward()

    step(8)  # kernels, allocator and parameter gradients exist before the measured pass
    if device.type == "cuda":
        torch.cuda.synchronize()
        base = torch.cuda.memory_allocated()
        torch.cuda.reset_peak_memory_stats()
        step(length)
        torch.cuda.synchronize()
        return (torch.cuda.max_memory_allocated() - base) / 2**20
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")  # resets VmHWM to the current RSS (ru_maxrss would carry the parent's peak)
    base = _status_kib("VmRSS")
    step(length)
    return (_status_kib("VmHWM") - base) / 1024


def measure_in_fresh_process(
    encoding: str, length: int, model: str = "base", part: str = "layer"
) -> float:
    out = subprocess.run(
        [
            sys.executable,
            __file__,
            "--worker",
            encoding,
            str(length),
            "--model",
            model,
            "--part",
            part,
        ],
        capture_output=True,
        text=True,
    )
    if out.returncode != 0:
        raise RuntimeError(f"{encoding} at N={length} failed:\n{out.stderr[-2000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])["extra_mib"]


def write_plot(results: dict[str, dict[int, float]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.4, 4.4))
    for name, points in results.items():
        lengths = sorted(points)
        ax.plot(
            lengths,
            [points[n] for n in lengths],
            marker="o",
            label=name,
            linestyle="--" if name == "naive" else "-",
        )
    ax.set_xscale("log", base=2)
    ax.set_yscale("log")
    ax.set_xlabel("sequence length N (batch 1)")
    ax.set_ylabel("peak memory above inputs (MiB)")
    ax.set_title("One encoder layer (d 512, 8 heads of 64), forward + backward")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--encodings",
        help="comma-separated presets (default: every preset that trains a "
        "different model, nmt.presets.training_presets)",
    )
    parser.add_argument("--lengths", default=",".join(map(str, LENGTHS)))
    parser.add_argument("--model", default="base")
    parser.add_argument(
        "--part",
        choices=PARTS,
        default="layer",
        help="the whole encoder layer, or its self-attention alone",
    )
    parser.add_argument(
        "--naive-max-len",
        type=int,
        default=1024,
        help="longest N for the naive (N, N, d) curve; 0 leaves it out",
    )
    parser.add_argument("--out-dir", type=Path, default=Path("bench_results"))
    parser.add_argument("--worker", nargs=2, metavar=("ENCODING", "N"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        print(
            json.dumps(
                {"extra_mib": measure(args.worker[0], int(args.worker[1]), args.model, args.part)}
            )
        )
        return

    lengths = [int(n) for n in args.lengths.split(",")]
    if args.encodings:
        names = args.encodings.split(",")
    else:
        from nmt.presets import training_presets

        names = list(training_presets())
    names += ["naive"] if args.naive_max_len else []
    results: dict[str, dict[int, float]] = {}
    for name in names:
        for n in lengths:
            if name == "naive" and n > args.naive_max_len:
                continue
            results.setdefault(name, {})[n] = mib = measure_in_fresh_process(
                name, n, args.model, args.part
            )
            print(f"{name:>14} N={n:<5} {mib:9.1f} MiB", flush=True)

    device = "cuda " + torch.cuda.get_device_name() if torch.cuda.is_available() else "CPU (VmHWM)"
    lines = [
        f"One `model={args.model}` encoder layer, batch 1, forward + backward, peak MiB above "
        f"the pre-pass level; {device}, {platform.machine()}, torch {torch.__version__}. "
        "Extra over absolute in brackets.",
        "",
        "| N | " + " | ".join(results) + " |",
        "|---:|" + "---:|" * len(results),
    ]
    for n in lengths:
        cells = []
        for name in results:
            if n not in results[name]:
                cells.append("—")
                continue
            cell = f"{results[name][n]:,.0f}"
            if name != "absolute" and n in results.get("absolute", {}):
                cell += f" ({results[name][n] - results['absolute'][n]:+,.0f})"
            cells.append(cell)
        lines.append(f"| {n} | " + " | ".join(cells) + " |")
    table = "\n".join(lines)
    print(table)
    args.out_dir.mkdir(parents=True, exist_ok=True)
    (args.out_dir / "bench_memory.md").write_text(table + "\n")
    (args.out_dir / "bench_memory.json").write_text(
        json.dumps(
            {
                "model": args.model,
                "device": device,
                "mib": {k: {str(n): v for n, v in p.items()} for k, p in results.items()},
            },
            indent=1,
        )
    )
    write_plot(results, args.out_dir / "bench_memory.png")


if __name__ == "__main__":
    main()
