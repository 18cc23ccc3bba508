"""`python -m tasks <command> ...`: every step without Airflow.

Commands:
  <step> --dataset D --ds YYYY-MM-DD [--lake URL] [--param k=v ...]
      runs ``tasks.<step>.run(ctx)`` and prints its JSON result. Steps: validate_raw, clean,
      split, validate_clean, secure, plan_clean, plan_train, train, evaluate, compress, publish.
  pipeline --dataset D --ds YYYY-MM-DD   all steps in order (no Airflow).
  <module> ARGS...   modules with their own CLI (``cli(argv)``):
      datagen          synthetic events into the raw zone (--lake --dataset --start --days --rows/--gb --seed)
      suites           regenerate the stored Great Expectations suites from the spec (--dataset)
      rotate-keys      new master key; re-wrap data keys without rewriting data (--keyring [--lake --dataset])
      verify-artifact  verify a published model's signature and checksums (URL)
      report           what the lake holds for one interval (--dataset --ds [--html F] [--json])
"""

from __future__ import annotations

import importlib
import sys

# command -> "module:function"; a module's own argument parser lives in its cli().
ALIASES = {
    "datagen": "tasks.prep.datagen:cli",
    "verify-artifact": "tasks.publishing.publish:verify_cli",
    "rotate-keys": "tasks.security.crypto:rotate_cli",
    "pipeline": "tasks.steps:pipeline_cli",
    "report": "tasks.publishing.report:cli",
    "suites": "tasks.validation.suites:cli",
}


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in {"-h", "--help"}:
        print(__doc__)
        return 0
    cmd, rest = argv[0], argv[1:]
    target = ALIASES.get(cmd)
    if target is None:
        from tasks.steps import step_cli

        return step_cli(cmd, rest)
    module, func = target.split(":")
    return int(getattr(importlib.import_module(module), func)(rest) or 0)


if __name__ == "__main__":
    sys.exit(main())
