"""W&B sweep configurations for train.py, and the same search run here without W&B's server.

A sweep file (``configs/sweeps/*.yaml``) is a W&B sweep configuration: ``program``, ``method``,
``metric`` (``name``, ``goal``), ``parameters`` (dotted LightningCLI keys with ``value`` /
``values`` / a ``distribution``) and a ``command`` with W&B's macros. ``wandb sweep`` + ``wandb
agent`` run it against a W&B server. ``python -m luma_pl.tracking.sweep <file>`` runs it here:

- ``grid``: every combination of the ``values`` (the last parameter varies fastest);
  ``random``: ``--count`` draws (``values`` uniformly; ``uniform``, ``log_uniform_values``,
  ``int_uniform``, ``q_uniform`` between ``min`` and ``max``), seeded; ``bayes`` needs W&B's
  controller and is refused with that fix;
- each run's command line is built by wandb's own agent code (``create_sweep_command_args``, the
  agent's macro expansion), so what reaches the CLI is what the agent would pass
  (``--model.init_args.bridge.lr=0.003``), plus ``--trainer.default_root_dir <out>/run-<i>``;
- each run's final metrics are read from the ``luma_metrics.json`` train.py writes in its
  ``default_root_dir``; the run with the best ``metric`` (by ``goal``) is named, and every run's
  parameters and metric go to ``<out>/sweep_results.json``. A run that fails or did not log the
  metric is reported as such, never selected.
"""

from __future__ import annotations

import argparse
import itertools
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import yaml

METHODS = ("grid", "random")
METRICS_FILE = "luma_metrics.json"
"""File train.py writes in its ``default_root_dir`` at the end of fit (rank 0, ``LumaCLI.after_fit``):
``{"metrics": {name: value}, "wandb_run": {"id", "name"} or None}``."""


def load_sweep(path: str | Path) -> dict:
    """Read and check a sweep file; a ValueError names the field, the value and the fix."""
    where = f"sweep {str(path)!r}"
    try:
        sweep = yaml.safe_load(Path(path).read_text())
    except yaml.YAMLError as e:
        raise ValueError(f"{where}: not valid YAML ({e}); quote W&B's macros in a list written one item per line "
                         "(- ${args})") from None
    if not isinstance(sweep, dict):
        raise ValueError(f"{where}: is a YAML {type(sweep).__name__}, expected a mapping (program, method, metric, "
                         "parameters, command)")
    method = sweep.get("method")
    if method not in METHODS:
        raise ValueError(f"{where}: method={method!r} cannot run without W&B's controller here; use one of {METHODS}, "
                         "or run `wandb sweep` + `wandb agent` for bayes")
    metric = sweep.get("metric")
    if not isinstance(metric, dict) or not isinstance(metric.get("name"), str) or \
            metric.get("goal", "maximize") not in ("maximize", "minimize"):
        raise ValueError(f"{where}: metric={metric!r}; give metric: {{name: val/recall@10, goal: maximize}}")
    params = sweep.get("parameters")
    if not isinstance(params, dict) or not params:
        raise ValueError(f"{where}: parameters={params!r}; give at least one dotted CLI key with values: [...]")
    for key, spec in params.items():
        if not isinstance(spec, dict) or not ({"value", "values", "distribution"} & set(spec)):
            raise ValueError(f"{where}: parameters.{key}={spec!r}; give value:, values: [...] or a distribution")
        if method == "grid" and "distribution" in spec:
            raise ValueError(f"{where}: parameters.{key} has a distribution, which a grid cannot enumerate; "
                             "give values: [...] or use method: random")
        if "values" in spec and (not isinstance(spec["values"], list) or not spec["values"]):
            raise ValueError(f"{where}: parameters.{key}.values={spec['values']!r}; give a non-empty list")
    command = sweep.get("command")
    if not isinstance(command, list) or "${args}" not in command:
        raise ValueError(f"{where}: command={command!r}; give a list with the ${{args}} macro, e.g. [${{env}}, "
                         "${interpreter}, ${program}, fit, --config, configs/default.yaml, ${args}]")
    if not isinstance(sweep.get("program"), str):
        raise ValueError(f"{where}: program={sweep.get('program')!r}; give the script, e.g. program: train.py")
    return sweep


def grid(params: dict) -> list[dict]:
    """Every combination of the parameters' values (fixed ``value``s in each), last key fastest."""
    keys = list(params)
    choices = [params[k]["values"] if "values" in params[k] else [params[k]["value"]] for k in keys]
    return [dict(zip(keys, combo, strict=True)) for combo in itertools.product(*choices)]


def _draw(spec: dict, rng: np.random.Generator):
    if "value" in spec:
        return spec["value"]
    if "values" in spec:
        return spec["values"][int(rng.integers(len(spec["values"])))]
    lo, hi, dist = spec.get("min"), spec.get("max"), spec["distribution"]
    if dist == "uniform":
        return float(rng.uniform(lo, hi))
    if dist == "log_uniform_values":
        return float(math.exp(rng.uniform(math.log(lo), math.log(hi))))
    if dist == "int_uniform":
        return int(rng.integers(lo, hi + 1))
    if dist == "q_uniform":
        q = spec.get("q", 1.0)
        return float(round(rng.uniform(lo, hi) / q) * q)
    raise ValueError(f"distribution={dist!r} is not supported here; use uniform, log_uniform_values, int_uniform, "
                     "q_uniform or values: [...]")


def sample(params: dict, count: int, seed: int = 0) -> list[dict]:
    """``count`` random draws of every parameter (method: random)."""
    rng = np.random.default_rng(seed)
    return [{k: _draw(spec, rng) for k, spec in params.items()} for _ in range(count)]


def sweep_points(sweep: dict, count: int | None = None, seed: int = 0) -> list[dict]:
    """The parameter values of every run: the whole grid, or ``count`` (default ``run_cap``, 4) draws."""
    if sweep["method"] == "grid":
        return grid(sweep["parameters"])
    return sample(sweep["parameters"], count or int(sweep.get("run_cap", 4)), seed)


def agent_command(sweep: dict, values: dict, interpreter: str = sys.executable) -> list[str]:
    """The command line W&B's agent runs for ``values`` (its own macro expansion, ``wandb_agent``)."""
    from wandb.sdk.launch.sweeps.utils import create_sweep_command, create_sweep_command_args

    macros = create_sweep_command_args({"args": {k: {"value": v} for k, v in values.items()}})
    macros.update(interpreter=[interpreter], program=[sweep["program"]], env=[])
    out = []
    for chunk in create_sweep_command(list(sweep["command"])):
        chunk = str(chunk)
        if chunk.startswith("${") and chunk.endswith("}"):
            out += macros.get(chunk[2:-1]) or []
        else:
            out.append(chunk)
    return out


def run_sweep(sweep: dict, out: Path, extra: list[str], cwd: Path, count: int | None = None, seed: int = 0,
              timeout: float | None = None) -> dict:
    """Run every point of the sweep one after another; returns (and writes) the results."""
    points = sweep_points(sweep, count, seed)
    metric, goal = sweep["metric"]["name"], sweep["metric"].get("goal", "maximize")
    out.mkdir(parents=True, exist_ok=True)
    # each run starts its own W&B service: one inherited from a parent that used W&B in-process
    # (WANDB_SERVICE) may be gone, or still hold an earlier run
    env = {k: v for k, v in os.environ.items() if k != "WANDB_SERVICE"}
    runs = []
    for i, values in enumerate(points):
        root = out / f"run-{i:03d}"
        cmd = agent_command(sweep, values) + list(extra) + ["--trainer.default_root_dir", str(root)]
        print(f"[sweep {i + 1}/{len(points)}] {' '.join(f'{k}={v}' for k, v in values.items())}", flush=True)
        proc = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
        record = {"index": i, "values": values, "root": str(root), "returncode": proc.returncode, "metric": None}
        found = root / METRICS_FILE
        if proc.returncode != 0:
            record["error"] = proc.stderr[-2000:]
        elif found.is_file():
            final = json.loads(found.read_text())
            value = final.get("metrics", {}).get(metric)
            record.update(metric=value if isinstance(value, (int, float)) and math.isfinite(value) else None,
                          wandb_run=final.get("wandb_run"))
        runs.append(record)
        print(f"    -> {metric} = {record['metric']}" + ("" if proc.returncode == 0 else f" (exit {proc.returncode})"),
              flush=True)
    scored = [r for r in runs if r["metric"] is not None]
    best = (max if goal == "maximize" else min)(scored, key=lambda r: r["metric"]) if scored else None
    results = {"metric": metric, "goal": goal, "method": sweep["method"], "runs": runs,
               "selected": None if best is None else best["index"]}
    (out / "sweep_results.json").write_text(json.dumps(results, indent=1, default=str))
    return results


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m luma_pl.tracking.sweep", description=__doc__.splitlines()[0])
    p.add_argument("sweep", help="a W&B sweep file, e.g. configs/sweeps/bridge_linear.yaml")
    p.add_argument("--out", default="artifacts/sweep", help="folder of the runs and sweep_results.json")
    p.add_argument("--count", type=int, default=None, help="runs of a random sweep (default: run_cap or 4)")
    p.add_argument("--seed", type=int, default=0, help="seed of a random sweep's draws")
    p.add_argument("--cwd", default=".", help="folder the sweep's command runs in (its relative paths)")
    p.add_argument("--dry-run", action="store_true", help="print each run's command line and stop")
    args, extra = p.parse_known_args(argv)
    extra = [a for a in extra if a != "--"]
    sweep = load_sweep(args.sweep)
    if args.dry_run:
        for values in sweep_points(sweep, args.count, args.seed):
            print(" ".join(agent_command(sweep, values) + extra))
        return 0
    res = run_sweep(sweep, Path(args.out).resolve(), extra, Path(args.cwd).resolve(), args.count, args.seed)
    print(f"\n{'run':<8} {res['metric']:>16}  values")
    for r in res["runs"]:
        mark = "*" if r["index"] == res["selected"] else " "
        shown = "failed" if r["returncode"] else f"{r['metric']:.4f}" if r["metric"] is not None else "not logged"
        print(f"{mark}run-{r['index']:03d} {shown:>16}  {r['values']}")
    if res["selected"] is None:
        print("no run logged the metric; see sweep_results.json for their errors")
        return 1
    sel = res["runs"][res["selected"]]
    print(f"selected: run-{sel['index']:03d} ({res['goal']} {res['metric']} = {sel['metric']:.4f}), "
          f"W&B run {sel.get('wandb_run')}, folder {sel['root']}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
