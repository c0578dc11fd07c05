#!/usr/bin/env python
"""One command line over the whole project. Run ``python run.py COMMAND --help``.

Commands:
  generate       write synthetic I-80-like traffic as NGSIM trajectory files
  inspect        summarise a trajectory file (real NGSIM or generated)
  build-dataset  episodes for learning: state images, states, actions, splits, statistics
  train-model    train the forward model (deterministic, or latent-variable warm-started)
  eval-model     per-horizon prediction errors of a forward model against baselines
  train-policy   train a driving policy through the model (MPUR, VG, SVG, MPER) or by imitation
  evaluate       closed-loop success / collision rates of driving policies
  report         train (or reuse) everything for a preset and compare all methods
  watch          pygame view of a car driving in replayed traffic (or --record a video)

Every command works with no arguments on the embedded synthetic I-80 traffic, which is
generated into ./artifacts on first use.
"""

from __future__ import annotations

import argparse
import os
import sys


def _commands():
    from data import build as db
    from traffic_sim import commands as tc
    from traffic_sim import evaluate as ev
    from traffic_sim import viewer as vw
    from policy import report as pr
    from policy import train as pt
    from world_model import evaluate as we
    from world_model import train as wt

    def train_model(cfg):
        from world_model.train import train_model

        print(f"wrote {train_model(cfg)}")

    def eval_model(cfg):
        from world_model.evaluate import eval_model

        table, paths = eval_model(cfg)
        print(table)
        for path in paths if isinstance(paths, (list, tuple)) else [paths]:
            print(f"wrote {path}")

    def train_policy(cfg):
        from policy.train import train_policy

        print(f"wrote {train_policy(cfg)}")

    def evaluate(cfg):
        table, path = ev.evaluate_command(cfg)
        print(table)
        print(f"wrote {path}")

    return {
        "generate": (tc.GenerateConfig, lambda c: print(f"wrote {tc.generate_command(c)}")),
        "inspect": (tc.InspectConfig, lambda c: print(tc.inspect_command(c))),
        "build-dataset": (db.BuildConfig, lambda c: print(f"wrote {db.build_dataset(c)}")),
        "train-model": (wt.TrainConfig, train_model),
        "eval-model": (we.EvalModelConfig, eval_model),
        "train-policy": (pt.TrainPolicyConfig, train_policy),
        "evaluate": (ev.EvaluateConfig, evaluate),
        "report": (pr.ReportConfig, lambda c: print(pr.report_command(c))),
        "watch": (vw.WatchConfig, lambda c: print(vw.watch_command(c))),
    }


class _Parser(argparse.ArgumentParser):
    """Bad options get one line (``run.py CMD --help`` shows the usage), exit status 2."""

    def error(self, message):
        self.exit(2, f"error: {self.prog}: {message}\n")


def _one_line_warning(message, category, filename, lineno, file=None, line=None):
    print(f"warning: {message}", file=sys.stderr if file is None else file)


def main(argv=None) -> int:
    import warnings

    from traffic_sim.cli_util import UserError, add_config_arguments, config_from_args

    warnings.showwarning = _one_line_warning
    commands = _commands()
    parser = _Parser(
        prog="run.py", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, (config_cls, _) in commands.items():
        p = sub.add_parser(name, help=config_cls.__doc__.splitlines()[0],
                           description=config_cls.__doc__)
        add_config_arguments(p, config_cls)
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 2
    config_cls, action = commands[args.command]
    try:
        action(config_from_args(config_cls, args))
    except BrokenPipeError:  # the output was piped into a command that stopped reading
        sys.stdout = open(os.devnull, "w")
        return 0
    except KeyboardInterrupt:
        print("interrupted: nothing half-written was left behind", file=sys.stderr)
        return 130
    except (UserError, ValueError, OSError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
