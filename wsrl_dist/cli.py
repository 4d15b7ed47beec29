"""`wsrl-dist`: the one command line. Every subcommand takes config YAMLs and `key.sub=value` overrides.

  wsrl-dist run [CONFIG...] [k=v...]          single process: pretrain -> warmup -> online (local.py)
  wsrl-dist pretrain [CONFIG...] [k=v...]     offline stage only (checkpoints/pretrained.pt)
  wsrl-dist finetune CKPT [CONFIG...]         warmup + online from a pre-trained checkpoint
  wsrl-dist launch [CONFIG...] [k=v...]       the distributed Ray job (runtime/orchestration/driver.py)
  wsrl-dist scale --workers N [--address A]   resize the rollout pool of a running job
  wsrl-dist status [RUN_DIR|NAME] [--json]    stage, progress + ETA, throughput, UTD, replay, lag
  wsrl-dist status --study DIR                a study's units: status, attempts, how far (ops/study_status.py)
  wsrl-dist build-dataset TASK [k=v...]       D4RL-recipe dataset into the cache
  wsrl-dist report RUN_DIR                    learning curve, throughput plot, results table
                                              (a multi-seed run dir: one per seed-<s>/)
  wsrl-dist study STUDY.yaml [--dir D] [k=v]  tasks x methods x seeds as Ray jobs, resumable (study.py)
  wsrl-dist report --study DIR                a study's figures, table and CSVs (ops/study_report.py)
  wsrl-dist report --study DIR --merge SRC..  first bring parts of the study run elsewhere into DIR
  wsrl-dist bench learner|rollout|replay|publish|job|builder  benchmarks (tables with ratios vs in-run baselines)

Bad input (a corrupt dataset or checkpoint) ends with one line naming the file and the problem;
add --debug anywhere for the full traceback.
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
from pathlib import Path


def _split(items: list[str]) -> tuple[list[str], list[str]]:
    """Positional args are YAML files or key=value overrides."""
    files = [a for a in items if "=" not in a]
    sets = [a for a in items if "=" in a]
    return files, sets


def _load(items: list[str], extra: list[str] | None = None):
    from wsrl_dist import config

    files, sets = _split(items)
    for f in files:
        if not Path(f).exists():
            raise SystemExit(f"wsrl-dist: config file not found: {f}")
    return config.load(files, sets + (extra or []))


def _load_run(run_dir: str, items: list[str], extra: list[str]):
    """The config a run was started with (its run dir's config.yaml), plus new overrides."""
    import yaml

    from wsrl_dist import config

    path = Path(run_dir) / "config.yaml"
    if not path.exists():
        raise SystemExit(f"wsrl-dist: no config.yaml in {run_dir}: not a run directory")
    cfg = config.from_dict(yaml.safe_load(path.read_text()))
    files, sets = _split(items)
    for f in files:
        config.merge(cfg, config._read_yaml(Path(f)))
    for o in sets + extra:
        config.merge(cfg, config.parse_override(o))
    cfg.run.run_dir = str(run_dir)
    return cfg.validate()


def _command() -> str:
    return "wsrl-dist " + " ".join(shlex.quote(a) for a in sys.argv[1:])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="wsrl-dist", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="cmd", required=True)
    for name in ("run", "pretrain", "launch"):
        p = sub.add_parser(name)
        p.add_argument("items", nargs="*", help="config YAMLs and key.sub=value overrides")
        p.add_argument("--resume", metavar="RUN_DIR", help="continue a run from its checkpoints")
        p.add_argument("--force-config", action="store_true",
                       help="with --resume: use a checkpoint written by a config that hashes differently")
    p = sub.add_parser("finetune")
    p.add_argument("checkpoint")
    p.add_argument("items", nargs="*")
    for name in ("scale", "status"):
        p = sub.add_parser(name)
        # status: default the Ray address recorded in RUN_DIR/run.json, else "auto"
        p.add_argument("--address", default="auto" if name == "scale" else None)
        if name == "scale":
            p.add_argument("--workers", type=int, required=True)
        else:
            p.add_argument("job", nargs="?", help="run dir or its name (needed when several jobs run)")
            p.add_argument("--json", action="store_true", help="the raw status record")
            p.add_argument("--study", metavar="DIR", help="a study's units and how far each got, from its files")
    p = sub.add_parser("build-dataset")
    p.add_argument("task")
    p.add_argument("items", nargs="*")
    p = sub.add_parser("report")
    p.add_argument("run_dir", nargs="?")
    p.add_argument("--study", metavar="DIR", help="a study dir (or one holding only its results/ CSVs)")
    p.add_argument("--merge", nargs="+", metavar="SRC", help="with --study: bring these study dirs of the "
                   "same study (parts run elsewhere) into DIR first (ops/study_merge.py)")
    p = sub.add_parser("study")
    p.add_argument("rest", nargs=argparse.REMAINDER, help="STUDY.yaml [--dir DIR] [key.sub=value ...]")
    p = sub.add_parser("bench")
    p.add_argument("what", choices=["learner", "rollout", "replay", "publish", "job", "builder"])
    p.add_argument("rest", nargs=argparse.REMAINDER)
    argv = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in argv  # anywhere on the line: the full traceback of a project error
    args = parser.parse_args([a for a in argv if a != "--debug"])
    from wsrl_dist.config import ConfigError
    from wsrl_dist.runtime.orchestration.stop import JobStopped
    from wsrl_dist.storage import ResumeError

    try:
        return _dispatch(args)
    except ConfigError as e:
        print(f"wsrl-dist: config error: {e}", file=sys.stderr)
        return 2
    except ResumeError as e:  # a --resume target that is no run dir: one line, no traceback
        print(f"wsrl-dist: {e}", file=sys.stderr)
        return 2
    except JobStopped as e:  # Ctrl-C / SIGTERM on launch: checkpointed; 130 / 143 like the shell
        print(f"wsrl-dist: {e.line}", file=sys.stderr)
        return e.exit_code
    except Exception as e:  # bad input (a corrupt HDF5, checkpoint, frame): one line, not Ray's frames
        from wsrl_dist.errors import one_line

        line = None if debug else one_line(e)
        if line is None:
            raise
        print(f"wsrl-dist: error: {line} (--debug for the traceback)", file=sys.stderr)
        return 1


def _dispatch(args: argparse.Namespace) -> int:
    if args.cmd in ("run", "pretrain", "launch"):
        if args.resume:
            from wsrl_dist.storage import check_resume_dir

            args.resume = str(check_resume_dir(args.resume))
        if args.resume and args.cmd == "launch":
            from wsrl_dist.runtime.orchestration import driver

            print(f"run dir: {driver.resume(args.resume, _command(), force_config=args.force_config)}")
            return 0
        extra = ["finetune.online_steps=0"] if args.cmd == "pretrain" else []
        cfg = _load_run(args.resume, args.items, extra) if args.resume else _load(args.items, extra)
        if args.cmd == "launch":
            from wsrl_dist.runtime.orchestration import driver

            run_dir = driver.launch(cfg, _command())
        else:
            from wsrl_dist import local

            run_dir = local.run(cfg, _command(), resume=bool(args.resume))
        print(f"run dir: {run_dir}")
        return 0
    if args.cmd == "finetune":
        from wsrl_dist import local

        cfg = _load(args.items, [f"pretrain.checkpoint={args.checkpoint}"])
        print(f"run dir: {local.run(cfg, _command())}")
        return 0
    if args.cmd == "status" and args.study:
        from wsrl_dist.ops.study_status import format_study_status, study_status

        rows = study_status(args.study)
        print(json.dumps(rows, indent=2) if args.json else format_study_status(rows), end="" if not args.json else "\n")
        return 0
    if args.cmd == "status":
        from wsrl_dist.runtime.orchestration.control import status_command

        return status_command(args.address, args.job, args.json)
    if args.cmd == "scale":
        from wsrl_dist.runtime.orchestration import driver

        print(json.dumps(driver.scale(args.address, args.workers), indent=2, default=str))
        return 0
    if args.cmd == "build-dataset":
        from wsrl_dist import job
        from wsrl_dist.data import builder

        cfg = _load(args.items, [f"task.name={args.task}"])
        path = builder.build_dataset(job.build_spec(cfg, args.task),
                                     checkpoint_every=cfg.dataset.build_checkpoint_every)
        print(f"dataset: {path}")
        return 0
    if args.cmd == "study":
        from wsrl_dist import study

        return study.main(args.rest)
    if args.cmd == "report" and args.merge and not args.study:
        raise SystemExit("wsrl-dist report: --merge SRC needs --study DIR (the study dir to merge into)")
    if args.cmd == "report" and args.study:
        from wsrl_dist.ops.study_report import write_study_report

        if args.merge:
            from wsrl_dist.ops.study_merge import merge_studies

            notes: list[str] = []
            for src, keys in merge_studies(args.study, args.merge, notes).items():
                cells = sorted({f"{t}/{m}" for t, m, _ in keys})
                print(f"merged from {src}: {len(keys)} runs ({', '.join(cells) or 'none new'})")
            for line in notes:
                print(line)
        for name, path in write_study_report(args.study).items():
            print(f"{name}: {path}")
        return 0
    if args.cmd == "report":
        if not args.run_dir:
            raise SystemExit("wsrl-dist report: give a RUN_DIR or --study DIR")
        from wsrl_dist.ops.report import write_report

        run_json = Path(args.run_dir) / "run.json"
        seed_dirs = json.loads(run_json.read_text()).get("seed_dirs") if run_json.is_file() else None
        for run_dir in [Path(args.run_dir) / d for d in seed_dirs] if seed_dirs else [args.run_dir]:
            for name, path in write_report(run_dir).items():  # a multi-seed run: one report per seed
                print(f"{name}: {path}")
        return 0
    if args.cmd == "bench":
        import importlib

        mod = importlib.import_module(f"wsrl_dist.bench.{args.what}")
        return int(mod.main(args.rest) or 0)
    raise AssertionError(args.cmd)


if __name__ == "__main__":
    sys.exit(main())
