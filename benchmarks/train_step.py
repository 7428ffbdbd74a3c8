"""Where a training step's time goes, and the step rate of each loader / precision / thread setting, side by side.

    python -m benchmarks.train_step --config configs/synthetic.yaml --data-root data/synthetic_sysu \\
        [--settings before,cache,cache_passive] [--competitors 0,1] [--steps 20] [--rounds 3] [--profile]

Each measurement is a fresh process that builds the demo's loader and model (same seed) and runs ``--steps`` timed
steps after ``--warmup`` untimed ones, exactly as ``training.train.train_one_epoch`` does a step (one forward of
the concatenated two-stream batch, the eq. 15 loss, backward, SGD), with a timer around each phase: ``decode`` (the
loader's JPEG reads and resizes, timed around each ``read_image``: zero when the images are cached), ``augment``
(the rest of the loader's next batch: the transforms and the collation), ``forward``, ``loss``, ``backward``,
``optimizer``. A fresh process per measurement lets a setting change the environment the thread pools start with
(``OMP_WAIT_POLICY``). ``--competitors 0,1`` measures every setting alone and beside one busy process (a Python
busy loop, started before and stopped after the measurement). The measurements run interleaved, ``--rounds`` times
each (round 1 of every setting and competitor count, then round 2, ...), so a change in the machine's load during
the run hits all of them alike; the report gives each one's median over the rounds and its ratio to the first
setting with the same competitors. ``--profile`` adds ``torch.profiler``'s top operators for the first setting.
:data:`SETTINGS` lists the settings.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, NamedTuple

from benchmarks import _machine


class Setting(NamedTuple):
    """One way of running the demo's training step."""

    options: str  # the train options it stands for
    cache: bool  # images decoded once into memory
    threads: int  # compute threads (0: torch's default, one per core)
    amp: str | None  # autocast dtype name
    env: dict[str, str]  # environment the process starts with


SETTINGS: dict[str, Setting] = {
    "before": Setting("--cache-images off, OMP_WAIT_POLICY unset (decode every image at every step)", False, 0,
                      None, {}),
    "cache": Setting("--cache-images on, OMP_WAIT_POLICY unset", True, 0, None, {}),
    "cache_passive": Setting("--cache-images on, OMP_WAIT_POLICY=PASSIVE", True, 0, None,
                             {"OMP_WAIT_POLICY": "PASSIVE"}),
    "cache_1thread": Setting("--cache-images on --threads 1", True, 1, None, {}),
    "cache_bf16": Setting("--cache-images on --amp bf16, OMP_WAIT_POLICY unset", True, 0, "bfloat16", {}),
    "cache_passive_bf16": Setting("--cache-images on --amp bf16, OMP_WAIT_POLICY=PASSIVE", True, 0, "bfloat16",
                                  {"OMP_WAIT_POLICY": "PASSIVE"}),
}
#: The timed phases of a step; ``decode`` (reading and resizing the images) and ``augment`` (the transforms and the
#: batch's collation) split the loader's ``next()``.
PHASES: tuple[str, ...] = ("decode", "augment", "forward", "loss", "backward", "optimizer")


class Bench:
    """The demo's dataset, loaders (decoded and cached) and a model builder, built once."""

    def __init__(self, config: Path, data_root: Path, steps: int, warmup: int) -> None:
        from training.config import load_yaml
        from training.data import build_dataset

        self.cfg = load_yaml(config)
        self.records = build_dataset(self.cfg.get("dataset", "sysu"), data_root).train
        self.steps, self.warmup = steps, warmup
        self.loaders: dict[bool, Any] = {}

    def loader(self, cache: bool) -> Any:
        from training.data.loader import build_train_loader

        if cache not in self.loaders:
            c = self.cfg
            self.loaders[cache] = build_train_loader(
                self.records, height=c["height"], width=c["width"], batch_pairs=c["batch_pairs"],
                mode=c.get("dataset", "sysu"), seed=0, augment=c.get("augment", True),
                channel_aug=c.get("channel_aug", 0.0), remap=c.get("grey_remap", 0.0), cache_images=cache)
        return self.loaders[cache]

    def measure(self, name: str, profile: bool = False) -> dict[str, Any]:
        """Seconds per phase per step (means over the timed steps) of one setting."""
        import torch

        from training.losses import dfe_loss, resolve_weights
        from training.model import DFE, param_groups

        _, cache, threads, dtype, _ = SETTINGS[name]
        default_threads = torch.get_num_threads()
        if threads:
            torch.set_num_threads(threads)
        try:
            c = self.cfg
            loader = self.loader(cache)
            loader.set_epoch(0)
            torch.manual_seed(0)
            model = DFE(loader.num_classes, arch=c["arch"], height=c["height"], width=c["width"]).train()
            opt = torch.optim.SGD(param_groups(model, c["lr"], c["head_lr"], c["weight_decay"]), momentum=0.9)
            weights = resolve_weights(c.get("loss_preset", "sysu"))
            amp = getattr(torch, dtype) if dtype else None
            sums = dict.fromkeys(PHASES, 0.0)
            decode = _DecodeTimer()
            batches = iter(loader)
            prof = torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) if profile else None
            for i in range(self.warmup + self.steps):
                if i == self.warmup and prof is not None:
                    prof.__enter__()
                t0 = time.perf_counter()
                decode.seconds = 0.0
                with decode:
                    try:
                        rgb, ir, labels = next(batches)
                    except StopIteration:
                        batches = iter(loader)
                        rgb, ir, labels = next(batches)
                t1 = time.perf_counter()
                n = rgb.shape[0]
                with torch.autocast("cpu", dtype=amp or torch.float32, enabled=amp is not None):
                    out = model(torch.cat([rgb, ir]))
                    t2 = time.perf_counter()
                    loss, _ = dfe_loss(*out.split(n), labels, weights)
                t3 = time.perf_counter()
                opt.zero_grad(set_to_none=True)
                loss.backward()
                t4 = time.perf_counter()
                opt.step()
                loss.item()
                t5 = time.perf_counter()
                if i >= self.warmup:
                    sums["decode"] += decode.seconds
                    sums["augment"] += t1 - t0 - decode.seconds
                    for phase, (a, b) in zip(PHASES[2:], ((t1, t2), (t2, t3), (t3, t4), (t4, t5))):
                        sums[phase] += b - a
            table = None
            if prof is not None:
                prof.__exit__(None, None, None)
                table = prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=15)
            per_step = {p: s / self.steps for p, s in sums.items()}
            total = sum(per_step.values())
            return {"seconds": per_step, "step_s": total, "steps_per_s": 1 / total, "threads": torch.get_num_threads(),
                    "profile": table}
        finally:
            torch.set_num_threads(default_threads)


class _DecodeTimer:
    """Within its ``with`` block, adds the time of every ``read_image`` the loader makes to ``seconds``."""

    def __init__(self) -> None:
        self.seconds = 0.0

    def __enter__(self) -> _DecodeTimer:
        import training.data.loader as loader_module

        self._module, self._read = loader_module, loader_module.read_image

        def timed(*args: Any, **kwargs: Any) -> Any:
            tic = time.perf_counter()
            try:
                return self._read(*args, **kwargs)
            finally:
                self.seconds += time.perf_counter() - tic

        loader_module.read_image = timed
        return self

    def __exit__(self, *exc: object) -> None:
        self._module.read_image = self._read


def _measure_in_process(args: argparse.Namespace, name: str, competitors: int, profile: bool) -> dict[str, Any]:
    """One measurement in a fresh process with the setting's environment, beside ``competitors`` busy loops."""
    # The setting alone decides the wait policy (not whatever the caller's shell exported).
    env = {**{k: v for k, v in os.environ.items() if k != "OMP_WAIT_POLICY"}, **SETTINGS[name].env}
    cmd = [sys.executable, "-m", "benchmarks.train_step", "--worker", name, "--config", str(args.config),
           "--data-root", str(args.data_root), "--steps", str(args.steps), "--warmup", str(args.warmup)]
    if profile:
        cmd.append("--profile")
    busy = [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(competitors)]
    try:
        out = subprocess.run(cmd, env=env, capture_output=True, text=True, check=False)
    finally:
        for proc in busy:
            proc.kill()
            proc.wait()
    if out.returncode != 0:
        from xmreid.errors import UserError

        last = out.stderr.strip().splitlines()[-1] if out.stderr.strip() else f"exit status {out.returncode}"
        raise UserError(f"measuring {name} failed: {last}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def _worker(args: argparse.Namespace) -> int:
    """``--worker NAME``: measure one setting here and print its JSON (the parent reads the last line)."""
    import training.data.loader  # noqa: F401 - imports torch, which is not the loader's cost

    bench = Bench(args.config, args.data_root, args.steps, args.warmup)
    tic = time.perf_counter()
    bench.loader(SETTINGS[args.worker].cache)
    build_s = time.perf_counter() - tic
    result = bench.measure(args.worker, profile=args.profile)
    result["loader_build_s"] = build_s
    print(json.dumps(result))
    return 0


def run(args: argparse.Namespace) -> dict[str, Any]:
    from xmreid.errors import UserError

    names = [s.strip() for s in args.settings.split(",") if s.strip()]
    bad = [n for n in names if n not in SETTINGS]
    if bad or not names:
        raise UserError(f"--settings {args.settings!r}: valid settings are {', '.join(SETTINGS)}")
    counts = [int(c) for c in args.competitors.split(",") if c.strip()]
    rounds: dict[tuple[int, str], list[dict[str, Any]]] = {(c, n): [] for c in counts for n in names}
    profile = None
    for r in range(args.rounds):
        for c in counts:
            for name in names:
                m = _measure_in_process(args, name, c, args.profile and r == 0 and c == counts[0] and name == names[0])
                profile = profile or m.pop("profile", None)
                m.pop("profile", None)
                rounds[(c, name)].append(m)
    summary: dict[str, dict[str, Any]] = {}
    for c in counts:
        base = statistics.median(m["step_s"] for m in rounds[(c, names[0])])
        for name in names:
            ms = rounds[(c, name)]
            step_s = statistics.median(m["step_s"] for m in ms)
            summary[f"{name}+{c}busy"] = {
                "setting": name, "competitors": c, "options": SETTINGS[name].options, "threads": ms[0]["threads"],
                "step_ms": 1e3 * step_s, "steps_per_s": 1 / step_s, "speedup_vs_first": base / step_s,
                "phase_ms": {p: 1e3 * statistics.median(m["seconds"][p] for m in ms) for p in PHASES},
                "rounds_step_ms": [1e3 * m["step_s"] for m in ms],
                "loader_build_s": statistics.median(m["loader_build_s"] for m in ms)}
    return {"config": str(args.config), "steps": args.steps, "warmup": args.warmup, "rounds": args.rounds,
            "competitors": counts, "settings": summary, "profile_first_setting": profile}


def report(results: dict[str, Any]) -> str:
    rows = []
    for s in results["settings"].values():
        rows.append({"setting": s["setting"], "busy competitors": s["competitors"], "options": s["options"],
                     "threads": s["threads"], "step ms": s["step_ms"], "steps/s": s["steps_per_s"],
                     "vs first": s["speedup_vs_first"], **{f"{p} ms": s["phase_ms"][p] for p in PHASES},
                     "rounds (step ms)": " / ".join(f"{v:.0f}" for v in s["rounds_step_ms"]),
                     "loader build s": s["loader_build_s"]})
    text = [(f"{results['steps']} timed steps (after {results['warmup']} untimed) per measurement, one fresh process "
            f"each, {results['rounds']} interleaved rounds, medians; config `{results['config']}`; busy competitors: "
            "Python busy loops running during the measurement. `vs first`: step-time ratio to the first setting "
            "with the same competitors. `loader build s`: building the loader, with the one-time decode of "
            "the training images when cached."), "", _machine.markdown_table(rows, digits=3), ""]
    if results.get("profile_first_setting"):
        text += ["## torch.profiler, first setting, top operators by self CPU time", "", "```",
                 results["profile_first_setting"].rstrip(), "```", ""]
    return "\n".join(text)


def plot(results: dict[str, Any]) -> Any:
    plt = _machine.pyplot()
    fig, ax = plt.subplots(figsize=(8, 0.5 * len(results["settings"]) + 1.5))
    names = list(results["settings"])
    left = [0.0] * len(names)
    for phase in PHASES:
        vals = [results["settings"][n]["phase_ms"][phase] for n in names]
        ax.barh(names, vals, left=left, label=phase)
        left = [a + b for a, b in zip(left, vals)]
    ax.set_xlabel("ms per training step (median over rounds)")
    ax.invert_yaxis()
    ax.legend(fontsize=8)
    fig.tight_layout()
    return fig


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.train_step", description=__doc__.split("\n\n")[0])
    p.add_argument("--config", type=Path, default=Path("configs/synthetic.yaml"))
    p.add_argument("--data-root", type=Path, default=Path("data/synthetic_sysu"))
    p.add_argument("--settings", default="before,cache,cache_passive", help=f"comma list of {', '.join(SETTINGS)}")
    p.add_argument("--competitors", default="0", help="comma list of busy competing processes, e.g. 0,1")
    p.add_argument("--steps", type=int, default=20, help="timed steps per setting and round")
    p.add_argument("--warmup", type=int, default=3, help="untimed steps first")
    p.add_argument("--rounds", type=int, default=3, help="interleaved rounds")
    p.add_argument("--profile", action="store_true", help="add torch.profiler's operator table (first setting)")
    p.add_argument("--name", default="train_step", help="results file stem")
    p.add_argument("--out", type=Path, default=None, help="results folder (default benchmarks/results)")
    p.add_argument("--worker", default=None, help=argparse.SUPPRESS)  # internal: measure one setting, print JSON
    args = p.parse_args(argv)
    if args.worker:
        return _worker(args)
    return _machine.run_and_write(args, run, report, plot)


if __name__ == "__main__":
    sys.exit(main())
