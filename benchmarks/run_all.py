"""Run every benchmark in turn: `python benchmarks/run_all.py [--quick]` (results in benchmarks/results/)."""

import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
SCRIPTS = [
    "data.py",
    "probing.py",
    "population.py",
    "pretrained.py",
    "probelog.py",
    "lora.py",
    "selection.py",
    "selection_real.py",
]


def main() -> int:
    extra = sys.argv[1:]
    failed = []
    for name in SCRIPTS:
        print(f"== {name} {' '.join(extra)}", flush=True)
        if subprocess.call([sys.executable, str(HERE / name), *extra]) != 0:
            failed.append(name)
    if failed:
        print(f"failed: {', '.join(failed)}", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
