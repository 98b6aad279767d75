"""The cost of fusion: inference latency and training throughput, host + concat vs host + iFusion.

Inference: the full CTR model (embeddings, long-term encoder, session encoder, fusion, head) in
eval mode on one batch, for each batch size, eager and (``--compile``) ``torch.compile``d. The
models are timed interleaved in one process (each repeat runs every model once, in turn), and
the median over repeats after warm-up is reported with its ratio to concat's median: the
overhead iFusion adds, measured under the same machine state.

Training: samples/s of forward + backward + Adam steps (median step time after warm-up) and
the peak resident memory, each model in a fresh subprocess so that peaks do not mix.

Shapes are those of our MovieLens-1M data (long-term sequence 100, K = 4 sessions of 5,
embedding 32, head [256, 128, 64]); batches are random in-vocabulary ids with padded histories.

    python -m benchmarks.speed --host TWIN                       # the issue's table (minutes)
    python -m benchmarks.speed --host TWIN --compile             # + torch.compile rows
    python -m benchmarks.speed --quick                           # seconds: CI checks the harness

Request form (``--candidates``, default 512): one user against C candidates through
:class:`~ifusion_plugin.serving.RequestServingModel` (the user's side once) and, timed in the same
interleaved loop, the row form of that very request; FLOPs per sample of the fusion layer and of
the whole model from torch's ``FlopCounterMode``. ``--onnx`` also times the request form exported to
ONNX and run by ONNX Runtime (without eager PyTorch's per-operator dispatch).
"""

from __future__ import annotations

import argparse
import functools
import json
import resource
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass
from typing import Callable, Optional

import torch
from torch import nn

from ifusion_plugin.batch import CTRBatch, FeatureSpec
from ifusion_plugin.fusion import ConcatFusion, GateFusion, InterestFusion
from ifusion_plugin.hosts import DIN, SIM, TWIN, AvgPoolDNN
from ifusion_plugin.serving import example_inputs, input_names

HOSTS: dict[str, type] = {"AvgPoolDNN": AvgPoolDNN, "DIN": DIN, "SIM": SIM, "TWIN": TWIN}
ML1M_SPEC = FeatureSpec(num_users=6042, num_items=3708, num_cates=20, long_len=100, num_sessions=4, session_len=5)
QUICK_SPEC = FeatureSpec(num_users=50, num_items=80, num_cates=8, long_len=12, num_sessions=2, session_len=3)


@dataclass(frozen=True)
class Variant:
    """One fusion setting: ``name`` in the tables, ``fusion`` the factory given to the host,
    ``host_options`` further host arguments."""

    name: str
    fusion: Callable[..., nn.Module]
    host_options: tuple[tuple[str, object], ...] = ()


#: The fusion slot fed the user-level mean of the long sequence, the host's h_long to the head
#: (``CTRHost(fusion_long="mean")``): the request form then fuses once per request.
USER_LEVEL = (("fusion_long", "mean"), ("head_sees_long", True))
#: The variants of the request-form table (the rows form of each is timed beside it).
REQUEST_VARIANTS = ("concat", "gate", "iFusion S=1", "iFusion S=1 h64", "concat, fusion_long=mean",
                    "iFusion S=1, fusion_long=mean")


def variants(sampling_steps: list[int]) -> list[Variant]:
    out = [Variant("concat", ConcatFusion), Variant("gate", GateFusion)]
    out += [Variant(f"iFusion S={s}", functools.partial(InterestFusion, sampling_steps=s)) for s in sampling_steps]
    # The cheaper setting measured in BENCHMARKS.md: hidden widths 64 instead of 128.
    out.append(Variant("iFusion S=1 h64", functools.partial(InterestFusion, denoiser_hidden_dim=64, guidance_hidden_dim=64)))
    out.append(Variant("concat, fusion_long=mean", ConcatFusion, USER_LEVEL))
    out.append(Variant("iFusion S=1, fusion_long=mean", functools.partial(InterestFusion, sampling_steps=1), USER_LEVEL))
    return out


def build_host(host: str, variant: Variant, spec: FeatureSpec, quick: bool) -> nn.Module:
    torch.manual_seed(0)
    sizes = dict(embed_dim=8, head_dims=(16,)) if quick else {}
    options = dict(variant.host_options)
    if host == "AvgPoolDNN":  # its h_long is the mean already: the option changes nothing
        options.pop("head_sees_long", None)
    return HOSTS[host](spec, fusion=variant.fusion, **sizes, **options)


def random_batch(spec: FeatureSpec, batch_size: int, seed: int = 0) -> CTRBatch:
    """A batch of random in-vocabulary ids (histories front-padded to random lengths)."""
    inputs = dict(zip(input_names(spec), example_inputs(spec, batch_size, seed=seed)))
    label = torch.randint(0, 2, (batch_size,), generator=torch.Generator().manual_seed(seed)).float()
    return CTRBatch(label=label, **inputs)


def interleaved_latency(models: dict[str, Callable[[CTRBatch], object]], batch: CTRBatch, repeats: int, warmup: int) -> dict[str, float]:
    """Median seconds per call of each model, the models timed in turn within every repeat."""
    times: dict[str, list[float]] = {name: [] for name in models}
    with torch.inference_mode():
        for r in range(warmup + repeats):
            for name, model in models.items():
                start = time.perf_counter()
                model(batch)
                elapsed = time.perf_counter() - start
                if r >= warmup:
                    times[name].append(elapsed)
    return {name: statistics.median(values) for name, values in times.items()}


def inference_table(args: argparse.Namespace, spec: FeatureSpec) -> list[dict[str, object]]:
    rows: list[dict[str, object]] = []
    hosts = {v.name: build_host(args.host, v, spec, args.quick).eval() for v in variants(args.sampling_steps)}
    modes = ["eager"] + (["compile"] if args.compile else [])
    for mode in modes:
        runners: dict[str, Callable[[CTRBatch], object]] = dict(hosts)
        if mode == "compile":
            # Every host shares CTRHost.forward: dynamo guards each (model, batch size) as a
            # recompilation of that one frame, and past its default limit of 8 it silently
            # falls back to eager, which would time eager models as compiled ones.
            torch._dynamo.config.recompile_limit = max(torch._dynamo.config.recompile_limit, 4 * len(hosts) * len(args.batch_sizes))
            runners = {name: torch.compile(host) for name, host in hosts.items()}
        for batch_size in args.batch_sizes:
            batch = random_batch(spec, batch_size)
            medians = interleaved_latency(runners, batch, args.repeats, args.warmup)
            base = medians["concat"]
            for name, seconds in medians.items():
                rows.append({"mode": mode, "batch": batch_size, "fusion": name, "ms": seconds * 1e3,
                             "vs_concat": seconds / base})
    return rows


def fusion_flops(host: nn.Module, spec: FeatureSpec, rows: int, candidates: int) -> dict[str, float]:
    """FLOPs per sample of the fusion layer alone (torch's FlopCounterMode, eval mode): in the
    row form (``rows`` rows) and in the request form (one user's sessions prepared once, then
    ``candidates`` candidates), and of the whole model in both forms."""
    from torch.utils.flop_counter import FlopCounterMode

    from ifusion_plugin.serving import RequestServingModel, ServingModel

    fusion = host.fusion.eval()
    h_long, h_sessions = torch.randn(rows, fusion.long_dim), torch.randn(rows, spec.num_sessions, fusion.session_dim)
    # The request form fuses once per request when the fusion layer's h_long is the user's alone.
    fused_rows = 1 if host.fusion_long == "mean" or not host.LONG_READS_CANDIDATE else candidates

    def count(call: Callable[[], object]) -> int:
        with torch.inference_mode(), FlopCounterMode(display=False) as counter:
            call()
        return counter.get_total_flops()

    request_model, row_model = RequestServingModel(host, spec), ServingModel(host, spec)
    request_inputs = request_model.example_inputs(candidates)
    row_inputs = row_model.example_inputs(rows)
    return {
        "fusion_row": count(lambda: fusion(h_long, h_sessions)) / rows,
        # The per-request session work included, shared by the candidates.
        "fusion_request": count(lambda: fusion.fuse_prepared(h_long[:fused_rows], fusion.prepare_sessions(h_sessions[:1]))) / candidates,
        "model_row": count(lambda: row_model(*row_inputs)) / rows,
        "model_request": count(lambda: request_model(*request_inputs)) / candidates,
    }


def request_table(args: argparse.Namespace, spec: FeatureSpec) -> list[dict[str, object]]:
    """The request form (one user x ``args.candidates`` candidates) against the row form of the
    same request (the user repeated per candidate), every variant timed interleaved; ratios to
    concat in the same form, and FLOPs per sample."""
    from ifusion_plugin.serving import RequestServingModel, ServingModel

    hosts = {v.name: build_host(args.host, v, spec, args.quick).eval() for v in variants(args.sampling_steps)
             if v.name in REQUEST_VARIANTS}
    requests = {name: RequestServingModel(host, spec) for name, host in hosts.items()}
    rows_models = {name: ServingModel(host, spec) for name, host in hosts.items()}
    inputs = next(iter(requests.values())).example_inputs(args.candidates, seed=7)
    row_inputs = next(iter(requests.values())).rows_of(inputs)
    runners: dict[str, Callable[[object], object]] = {}
    for name in hosts:
        runners[f"request {name}"] = lambda _, m=requests[name]: m(*inputs)
        runners[f"rows {name}"] = lambda _, m=rows_models[name]: m(*row_inputs)
    onnx: dict[str, Callable[..., torch.Tensor]] = {}
    if args.onnx:
        onnx = onnx_requests({name: requests[name] for name in ONNX_VARIANTS if name in requests}, inputs, args.threads)
        for name, session in onnx.items():
            runners[f"onnx {name}"] = lambda _, m=session: m(*inputs)
    medians = interleaved_latency(runners, None, args.repeats, args.warmup)  # type: ignore[arg-type]
    out = []
    for name, host in hosts.items():
        with torch.inference_mode():
            parity = (requests[name](*inputs) - rows_models[name](*row_inputs)).abs().max().item()
        flops = fusion_flops(host, spec, rows=args.candidates, candidates=args.candidates)
        if name in onnx:
            with torch.inference_mode():
                onnx_parity = (onnx[name](*inputs) - rows_models[name](*row_inputs)).abs().max().item()
            out.append({"form": "request, ONNX Runtime", "candidates": args.candidates, "fusion": name,
                        "ms": medians[f"onnx {name}"] * 1e3, "vs_concat": medians[f"onnx {name}"] / medians["onnx concat"],
                        "vs_rows_form": medians[f"onnx {name}"] / medians[f"rows {name}"],
                        "fusion_flops_per_sample": flops["fusion_request"], "model_flops_per_sample": flops["model_request"],
                        "max_abs_diff_vs_rows": onnx_parity})
        for form in ("request", "rows"):
            out.append({"form": form, "candidates": args.candidates, "fusion": name, "ms": medians[f"{form} {name}"] * 1e3,
                        "vs_concat": medians[f"{form} {name}"] / medians[f"{form} concat"],
                        "vs_rows_form": medians[f"{form} {name}"] / medians[f"rows {name}"],
                        "fusion_flops_per_sample": flops["fusion_request" if form == "request" else "fusion_row"],
                        "model_flops_per_sample": flops["model_request" if form == "request" else "model_row"],
                        "max_abs_diff_vs_rows": parity})
    return out


#: The request-form variants also timed as exported ONNX programs (``--onnx``; each export takes
#: tens of seconds).
ONNX_VARIANTS = ("concat", "iFusion S=1", "concat, fusion_long=mean", "iFusion S=1, fusion_long=mean")


def onnx_requests(requests: dict[str, nn.Module], inputs: tuple, threads: int) -> dict[str, Callable[..., torch.Tensor]]:
    """Each request model exported to ONNX (a temporary directory, as ``cli export`` writes
    it) and run by ONNX Runtime's CPU provider with ``threads`` intra-op threads: the
    per-operator overhead of eager PyTorch is then gone, which is what a serving runtime sees.
    The runtime's threads do not spin between calls: spinning threads would take the cores
    from the eager models timed in the same loop."""
    import tempfile

    from ifusion_plugin.serving import export_onnx, load_onnx

    sessions = {}
    with tempfile.TemporaryDirectory() as folder:
        for index, (name, model) in enumerate(requests.items()):
            path = f"{folder}/request-{index}.onnx"
            export_onnx(model, path, inputs)
            # The session holds the model once loaded: the file may go.
            sessions[name] = load_onnx(path, threads=threads, spin=False)
    return sessions


def train_one(args: argparse.Namespace, spec: FeatureSpec, variant_name: str) -> dict[str, float]:
    """Training samples/s and peak RSS of one variant (run in its own process)."""
    variant = {v.name: v for v in variants(args.sampling_steps)}[variant_name]
    host = build_host(args.host, variant, spec, args.quick).train()
    optimizer = torch.optim.Adam(host.parameters(), lr=1e-3, eps=1e-7)
    batch = random_batch(spec, args.train_batch)
    times = []
    for step in range(args.warmup + args.train_steps):
        start = time.perf_counter()
        output = host(batch)
        loss = torch.nn.functional.binary_cross_entropy_with_logits(output.logits, batch.label)
        loss = loss + sum(output.losses.values())
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        if step >= args.warmup:
            times.append(time.perf_counter() - start)
    peak_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return {"samples_per_s": args.train_batch / statistics.median(times), "peak_rss_gib": peak_kib / 2**20}


def training_table(args: argparse.Namespace) -> list[dict[str, object]]:
    rows: list[dict[str, object]] = []
    settings = ["--host", args.host, "--threads", str(args.threads), "--warmup", str(args.warmup),
                "--train-batch", str(args.train_batch), "--train-steps", str(args.train_steps),
                "--sampling-steps", *map(str, args.sampling_steps)]
    if args.quick:
        settings = ["--quick", "--host", args.host, "--threads", str(args.threads)]
    for name in REQUEST_VARIANTS:
        result = subprocess.run(
            [sys.executable, "-m", "benchmarks.speed", *settings, "--train-one", name],
            capture_output=True, text=True, check=True,
        )
        rows.append({"fusion": name, **json.loads(result.stdout.strip().splitlines()[-1])})
    base = rows[0]["samples_per_s"]
    for row in rows:
        # Time per sample relative to concat: 1.05 means 5 % more training time per sample.
        row["time_vs_concat"] = base / row["samples_per_s"]
    return rows


def parse_args(argv: Optional[list[str]] = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.speed", description=__doc__.splitlines()[0])
    parser.add_argument("--host", choices=sorted(HOSTS), default="TWIN")
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 256, 2048])
    parser.add_argument("--sampling-steps", type=int, nargs="+", default=[1, 2, 4], help="iFusion S values")
    parser.add_argument("--repeats", type=int, default=50, help="timed repeats per model and batch size")
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--compile", action="store_true", help="also time torch.compile'd models")
    parser.add_argument("--train-batch", type=int, default=256)
    parser.add_argument("--train-steps", type=int, default=30)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--skip-training", action="store_true")
    parser.add_argument("--candidates", type=int, default=512, help="candidates of the request-form table")
    parser.add_argument("--skip-request", action="store_true", help="skip the request-form table")
    parser.add_argument("--onnx", action="store_true",
                        help="also time the request form exported to ONNX, in ONNX Runtime (needs onnx, onnxscript, onnxruntime)")
    parser.add_argument("--json", help="also write the rows to this JSON file")
    parser.add_argument("--quick", action="store_true",
                        help="tiny model and data, few repeats: checks that the harness runs (CI)")
    parser.add_argument("--train-one", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.quick:
        args.batch_sizes, args.sampling_steps = [1, 8], [1, 2]
        args.repeats, args.warmup, args.train_batch, args.train_steps, args.candidates = 3, 1, 8, 3, 16
    return args


def main(argv: Optional[list[str]] = None) -> None:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    spec = QUICK_SPEC if args.quick else ML1M_SPEC
    if args.train_one:
        print(json.dumps(train_one(args, spec, args.train_one)))
        return

    print(f"# {args.host}: threads={args.threads}, torch {torch.__version__}, "
          f"L={spec.long_len} K={spec.num_sessions} N={spec.session_len}, {time.strftime('%Y-%m-%d')}\n")
    inference = inference_table(args, spec)
    print(f"Inference, median of {args.repeats} interleaved repeats after {args.warmup} warm-up:\n")
    print("| mode | batch | fusion | ms / batch | vs concat |")
    print("|---|---|---|---|---|")
    for row in inference:
        print(f"| {row['mode']} | {row['batch']} | {row['fusion']} | {row['ms']:.3f} | {row['vs_concat']:.3f} |")
    request: list[dict[str, object]] = []
    if not args.skip_request:
        request = request_table(args, spec)
        print(f"\nRequest form: 1 user x {args.candidates} candidates, against the row form of the same request "
              f"(the user repeated per candidate), median of {args.repeats} interleaved repeats:\n")
        print("| form | fusion | ms / request | vs concat (same form) | vs rows form | fusion FLOPs / sample | model FLOPs / sample | max abs diff vs rows |")
        print("|---|---|---|---|---|---|---|---|")
        for row in request:
            print(f"| {row['form']} | {row['fusion']} | {row['ms']:.3f} | {row['vs_concat']:.3f} | {row['vs_rows_form']:.3f} | "
                  f"{row['fusion_flops_per_sample']:,.0f} | {row['model_flops_per_sample']:,.0f} | {row['max_abs_diff_vs_rows']:.1e} |")
    training: list[dict[str, object]] = []
    if not args.skip_training:
        training = training_table(args)
        print(f"\nTraining, batch {args.train_batch}, median of {args.train_steps} steps, each model in its own process:\n")
        print("| fusion | train samples/s | time per sample vs concat | peak RSS GiB |")
        print("|---|---|---|---|")
        for row in training:
            print(f"| {row['fusion']} | {row['samples_per_s']:,.0f} | {row['time_vs_concat']:.3f} | {row['peak_rss_gib']:.2f} |")
    if args.json:
        with open(args.json, "w") as handle:
            json.dump({"host": args.host, "inference": inference, "request": request, "training": training}, handle, indent=2)


if __name__ == "__main__":
    main()
