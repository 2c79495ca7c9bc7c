"""``hybrid-ray experiment``: alpha x seeds (x variants) as one Ray Tune experiment, one report.

    hybrid-ray experiment --config experiments/demo.yaml
    hybrid-ray experiment --config experiments/demo.yaml --set 'seeds=[1,2]' --set alphas=[0,1]
    hybrid-ray experiment --config experiments/demo.yaml --report-only      # rebuild the report from disk

Every trial trains (Ray Train + DeepSpeed, like ``hybrid-ray train``) and is evaluated on each
configured test set with per-query results (``<exp>/evals/<trial>/<set>/per_query.parquet``); the
off-the-shelf encoder is evaluated as one more trial. The report (``report.out``: ``.md``, ``.json``,
``.png`` alpha curves, per-language heatmaps) gives each setting's mean and 95% interval over seeds
and paired tests (hybrid alpha vs X-X and X-Y, variants vs default, all vs off-the-shelf) broken
down by language, resource class, seen / zero-shot and domain. Rerunning the command resumes an
interrupted experiment (``Tuner.restore``); ``--resume`` insists, ``--fresh`` refuses.
"""

from __future__ import annotations

import argparse
import shlex
import sys

from hybrid_ray.cli import run_main
from hybrid_ray.console import add_verbose_flag, configure_console


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="hybrid-ray experiment", description=__doc__.split("\n")[0])
    p.add_argument("--config", required=True, help="experiment YAML (a file, or a name in experiments/)")
    p.add_argument("overrides", nargs="*", help="key=value / key+=value, e.g. seeds=[1,2] alphas=[0,0.5,1]")
    p.add_argument("--set", dest="more", action="append", default=[], help="same as a positional override")
    group = p.add_mutually_exclusive_group()
    group.add_argument("--resume", action="store_true", default=None, help="resume (error if there is nothing)")
    group.add_argument("--fresh", dest="resume", action="store_false", help="never resume")
    p.add_argument("--report-only", action="store_true", help="rebuild the report from the trials on disk")
    p.add_argument("--print-grid", action="store_true", help="print the trials and exit")
    add_verbose_flag(p)
    return p


def _header(elapsed: float | None) -> list[str]:
    import os

    load = os.getloadavg()
    cmd = "hybrid-ray experiment " + " ".join(shlex.quote(a) for a in sys.argv[2:] if a) \
        if len(sys.argv) > 1 and sys.argv[1] == "experiment" else "hybrid-ray experiment " + \
        " ".join(shlex.quote(a) for a in sys.argv[1:])
    lines = [f"Command: `{cmd}`", ""]
    if elapsed is not None:
        lines += [f"Wall time: {elapsed / 60:.1f} min; load average at the end (1/5/15 min): "
                  f"{load[0]:.2f} / {load[1]:.2f} / {load[2]:.2f} on {os.cpu_count()} CPUs.", ""]
    return lines


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    configure_console(args.verbose)
    from hybrid_ray.experiment.config import load_experiment_config

    spec = load_experiment_config(args.config, [*args.overrides, *args.more])
    if args.print_grid:
        for t in spec.trials:
            print(t.label, dict(t.overrides) or "")
        print(f"# {len(spec.trials)} trials; experiment dir {spec.exp_dir}; report {spec.report_base}.md")
        return 0
    from hybrid_ray.experiment.report import build_report, write_report

    if args.report_only:
        report = build_report(spec)
        paths = write_report(report, spec.report_base, header=_header(None))
        print("wrote " + ", ".join(map(str, paths)))
        return 0
    from hybrid_ray.experiment.run import run_experiment

    report = run_experiment(spec, resume=args.resume)
    # rewrite with the command, wall time and load average in the header
    write_report(report, spec.report_base, header=_header(report.get("elapsed_s")))
    return 0


if __name__ == "__main__":
    run_main(main)
