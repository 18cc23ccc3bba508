"""`python -m tasks <command> ...`: every step without Airflow.

Commands:
  <step> --dataset D --ds YYYY-MM-DD [--lake URL] [--<setting> VALUE ...]
      runs one step and prints its JSON result. Steps: validate_raw, plan_clean, clean, split,
      validate_clean, secure, plan_train, train, evaluate, compress, publish.
      `python -m tasks <step> --help` lists the settings that step reads, as flags.
  pipeline --dataset D --ds YYYY-MM-DD [--<setting> VALUE ...]   all steps in order (no Airflow).
  params [--json | --markdown]   every setting: type, default, section, steps, cache key.
  <module> ARGS...   modules with their own CLI (``cli(argv)``):
      datagen          synthetic events into the raw zone (--lake --dataset --start --days --rows/--gb --seed)
      suites           regenerate the stored Great Expectations suites from the spec (--dataset)
      keys             init | show | export-public | rotate-signing | revoke MK_ID  (--keyring PATH)
      rotate-keys      new master key; re-wrap data keys, seals kept (--keyring [--lake --dataset])
      verify-artifact  verify a published model's signature and checksums (URL --public-key FILE)
      rollback-model   point a model's signed `latest` back at an older version (--name --to)
      report           what the lake holds for one interval (--dataset --ds [--html F] [--json])
      spec check       validate a dataset spec (NAME, a file PATH, or every spec); prints OK or each problem
"""

from __future__ import annotations

import sys
from collections.abc import Callable

from tasks import steps


def _commands() -> dict[str, Callable[[list[str]], int]]:
    """Commands with their own argument parser; anything else is a step name."""

    def datagen(argv: list[str]) -> int:
        from tasks.prep import datagen

        return datagen.cli(argv)

    def verify_artifact(argv: list[str]) -> int:
        from tasks.publishing import publish

        return publish.verify_cli(argv)

    def rotate_keys(argv: list[str]) -> int:
        from tasks.context import Settings
        from tasks.security import rotation

        return rotation.cli(argv, Settings.from_env().keyring_path)

    def keys(argv: list[str]) -> int:
        from tasks.context import Settings
        from tasks.security import keyring

        env = Settings.from_env()
        return keyring.cli(argv, env.keyring_path, env.kms)

    def rollback_model(argv: list[str]) -> int:
        from tasks.publishing import publish

        return publish.rollback_cli(argv)

    def report(argv: list[str]) -> int:
        from tasks.publishing import report

        return report.cli(argv)

    def suites(argv: list[str]) -> int:
        from tasks.validation import suites

        return suites.cli(argv)

    def spec(argv: list[str]) -> int:
        from tasks import spec
        from tasks.context import Settings

        return spec.cli(argv, Settings.from_env().specs_dir)

    return {"datagen": datagen, "verify-artifact": verify_artifact, "rotate-keys": rotate_keys, "keys": keys,
            "rollback-model": rollback_model,
            "pipeline": steps.pipeline_cli, "report": report, "suites": suites, "params": steps.params_cli,
            "spec": spec}


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in {"-h", "--help"}:
        print(__doc__)
        return 0
    cmd, rest = argv[0], argv[1:]
    command = _commands().get(cmd)
    if command is None:
        return steps.step_cli(cmd, rest)
    return int(command(rest) or 0)


if __name__ == "__main__":
    sys.exit(main())
