"""`crescent-report <run or multirun dir>...`: paper tables and plots from finished runs."""

from __future__ import annotations

import argparse
import sys


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="crescent-report", description=__doc__.split(":")[1])
    parser.add_argument("dirs", nargs="+", help="run or multirun directories")
    parser.parse_args(argv)
    sys.exit("crescent-report: error: reports are not implemented yet")
