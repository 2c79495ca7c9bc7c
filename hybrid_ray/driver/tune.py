"""``hybrid-ray tune``: Ray Tune search over the mixing ratio alpha against validation mAP.

Locally (starts a loopback-only Ray cluster)::

    hybrid-ray tune --config tune/configs/demo.yaml
    python -m hybrid_ray.driver.tune --config tiny.yaml train_overrides+=[data.path=/tmp/pairs] --set num_samples=2

On a cluster (the same program; the RayJob in k8s/rayjob-train-tune.yaml runs this)::

    ray job submit --working-dir . -- python -m hybrid_ray.driver.tune --config tune/configs/miracl.yaml \\
        --set run.storage_path=/mnt/shared/ray_results

Overrides are ``key=value`` (YAML value, replaces) or ``key+=value`` (appends to a list such as
``train_overrides``), positional or after ``--set``. The whole config, including the training
config it names, is validated before Ray starts. Rerunning the same command resumes an interrupted
search (``run.resume=auto``); ``--resume`` insists on resuming, ``--fresh`` refuses to.
"""

from __future__ import annotations

import argparse

from hybrid_ray.cli import run_main
from hybrid_ray.console import add_verbose_flag, configure_console


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="hybrid-ray tune", description=__doc__.split("\n")[0])
    p.add_argument("--config", required=True, help="tune YAML (a file, or a name in tune/configs)")
    p.add_argument("overrides", nargs="*", help="key=value / key+=value, e.g. search_space.alpha=[0,0.5,1]")
    p.add_argument("--set", dest="more", action="append", default=[], help="same as a positional override")
    group = p.add_mutually_exclusive_group()
    group.add_argument("--resume", action="store_true", default=None,
                       help="resume the experiment <run.storage_path>/<run.name> (error if there is none)")
    group.add_argument("--fresh", dest="resume", action="store_false",
                       help="never resume: error if the experiment directory already holds a Tune state")
    p.add_argument("--dashboard", action="store_true", help="start the Ray dashboard (local clusters, 127.0.0.1)")
    p.add_argument("--print-config", action="store_true", help="print the resolved tune config and exit")
    add_verbose_flag(p)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    configure_console(args.verbose)
    from omegaconf import OmegaConf

    from hybrid_ray.tuning import load_tune_config, run_search

    overrides = [*args.overrides, *args.more]
    if args.dashboard:
        overrides.append("run.dashboard=true")
    spec = load_tune_config(args.config, overrides, preflight=not args.print_config)
    if args.print_config:
        print(OmegaConf.to_yaml(spec.cfg))
        print(f"# training config: {spec.train_path}\n# experiment dir: {spec.exp_dir}\n"
              f"# best encoder -> {spec.export_dir}")
        return 0
    run_search(spec, resume=args.resume)
    return 0


if __name__ == "__main__":
    run_main(main)
