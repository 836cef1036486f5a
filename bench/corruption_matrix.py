"""Damage every kind of repository object every way, many times, and tally what freezeframe does.

Usage: .venv/bin/python bench/corruption_matrix.py [--trials 50] [--seed N] [--kinds K,...]
                                                   [--mutations M,...] [--work DIR] [--json OUT]

The matrix of tests/corruption.py (kinds: config, key, index, snapshot, data pack, tree pack,
lock; mutations: flip, truncate, delete), with ``--trials`` trials per kind and mutation
(deletions: at most one per object) instead of the CI's few. Per trial, on a fresh copy of one
template repository: ``check --read-data`` must fail, name the object and list exactly the files
it destroys; the documented repair must leave check clean and every surviving snapshot restoring
byte-exact. The template is kept under ``--work`` (``FREEZEFRAME_CORRUPTION_TEMPLATE`` there
replays a trial in the test suite on the same bytes), and so are the first failing trials of
each defect. Results go to bench/results/corruption_matrix-<time>.json.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import subprocess
import sys
import time
from pathlib import Path

PROJECT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(PROJECT / "tests"))  # the corruption harness the tests use

from corruption import (  # noqa: E402
    CELLS,
    KINDS,
    KNOWN,
    MUTATIONS,
    Tally,
    Trial,
    build_template,
    run_trial,
    trial_count,
)
from ffharness import freezeframe_executable  # noqa: E402

KEEP_PER_SIGNATURE = 2  # failing trials kept on disk per distinct failure


def _version() -> str:
    done = subprocess.run(
        [freezeframe_executable(), "--version"], capture_output=True, text=True, check=False
    )
    return done.stdout.strip()


def _names(values: list[str], allowed: tuple[str, ...], what: str) -> list[str]:
    names = [name.strip() for item in values for name in item.split(",") if name.strip()]
    if unknown := [n for n in names if n not in allowed]:
        sys.exit(f"unknown {what}: {', '.join(unknown)} (from {', '.join(allowed)})")
    return names


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=50, help="per kind and mutation")
    parser.add_argument("--seed", type=int, help="default: random (printed)")
    parser.add_argument("--kinds", nargs="+", default=list(KINDS), metavar="KIND")
    parser.add_argument("--mutations", nargs="+", default=list(MUTATIONS), metavar="MUTATION")
    parser.add_argument(
        "--work", type=Path, default=PROJECT / "bench" / "work" / "corruption_matrix"
    )
    parser.add_argument("--json", type=Path, help="default bench/results/corruption_matrix-<time>")
    args = parser.parse_args()
    kinds = _names(args.kinds, KINDS, "kinds")
    mutations = _names(args.mutations, MUTATIONS, "mutations")
    if args.trials < 1:
        sys.exit("--trials needs at least 1")
    seed = args.seed if args.seed is not None else random.SystemRandom().randrange(2**31)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    out = args.json or PROJECT / "bench" / "results" / f"corruption_matrix-{stamp}.json"
    if args.work.exists():
        shutil.rmtree(args.work)
    args.work.mkdir(parents=True)
    os.environ["XDG_CACHE_HOME"] = str(args.work / "cache")

    print(f"seed {seed}; template under {args.work / 'template'}", flush=True)
    template = build_template(args.work / "template")
    print(f"template built in {template.seconds:.1f} s", flush=True)
    tally = Tally(seed)
    kept: dict[str, int] = {}

    def keep(trial: Trial) -> bool:
        """The first failing trials of each signature stay on disk for inspection."""
        if not trial.failures:
            return False
        signature = trial.failures[0].signature
        kept[signature] = kept.get(signature, 0) + 1
        return kept[signature] <= KEEP_PER_SIGNATURE

    started = time.monotonic()
    for kind, mutation in CELLS:
        if kind not in kinds or mutation not in mutations:
            continue
        count = trial_count(template, kind, mutation, args.trials)
        for number in range(count):
            work = args.work / "trials" / f"{kind}-{mutation}-{number}".replace(" ", "-")
            trial = run_trial(template, kind, mutation, number, seed=seed, work=work, keep=keep)
            tally.add(trial)
            for failure in trial.failures:
                label = "known" if failure.signature in KNOWN else "NEW"
                print(f"  !!! {label} {failure.signature}: trial {number}", flush=True)
        cell = tally.cells[(kind, mutation)]
        print(
            f"{kind:<10} {mutation:<9} {cell.trials:>4} trials, {cell.failed} failed "
            f"({cell.seconds:.1f} s)",
            flush=True,
        )
    seconds = time.monotonic() - started

    table = tally.table()
    print("\n" + "\n".join(table))
    signatures = tally.signatures()
    for signature, trials in signatures.items():
        known = KNOWN.get(signature)
        print(f"\n{'known defect: ' + known if known else 'NEW FAILURE'}: {signature}")
        print(f"  {len(trials)} trials; first:\n" + trials[0].describe())
    doc = {
        "started": stamp,
        "command": sys.argv,
        "freezeframe": _version(),
        "cpus": os.cpu_count(),
        "settings": {
            "trials": args.trials,
            "seed": seed,
            "kinds": kinds,
            "mutations": mutations,
            "work": str(args.work),
        },
        "template_seconds": round(template.seconds, 2),
        "seconds": round(seconds, 1),
        **tally.to_json(),
        "table": table,
    }
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(doc, indent=1) + "\n")
    print(f"\nwritten to {out}")
    new = [s for s in signatures if s not in KNOWN]
    if new:
        print(f"{len(new)} new failures (first trials kept under {args.work / 'trials'})")
    return 1 if new else 0


if __name__ == "__main__":
    sys.exit(main())
