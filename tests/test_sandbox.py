"""The sandbox against hostile programs: each is contained (its outcome says how), the caller
goes on, and nothing outside the sandbox changes: a file beside the project, the environment's
secrets, the sandbox's own folder gone afterwards."""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path

import pytest

from crescent.methods.sandbox import Limits, network_namespace, run_calls, run_python

QUICK = Limits(wall_s=3, cpu_s=3)
HOSTILE = {
    "an infinite loop": ("while True:\n    pass\n", "timeout", ""),
    "a fork bomb": ("import os\nwhile True:\n    os.fork()\n", "error",
                    "sandbox: os.fork is not allowed"),
    "a process pool": ("import multiprocessing\nmultiprocessing.Pool(4).map(abs, range(9))\n",
                       "error", "is not allowed"),
    "a 10 GB allocation": ("x = bytearray(10 * 1024 ** 3)\n", "memory", "MemoryError"),
    "a write outside its folder": ("open({outside!r}, 'w').write('overwritten')\n", "error",
                                   "is outside the sandbox"),
    "a delete outside its folder": ("import os\nos.remove({outside!r})\n", "error",
                                    "is outside the sandbox"),
    "a look into the home directory": ("import os\nprint(os.listdir({home!r}))\n", "error",
                                       "is outside the sandbox"),
    "a socket to 127.0.0.1": ("import socket\nsocket.create_connection(('127.0.0.1', 22))\n",
                              "error", "sandbox: socket.getaddrinfo is not allowed"),
    "os.system": ("import os\nos.system('touch {outside}.pwned')\n", "error",
                  "sandbox: os.system is not allowed"),
    "subprocess": ("import subprocess\nsubprocess.run(['rm', '-f', {outside!r}])\n", "error",
                   "sandbox: subprocess.Popen is not allowed"),
    "ctypes": ("import ctypes\nctypes.CDLL(None).system(b'true')\n", "error", "is not allowed"),
    "a huge print": ("while True:\n    print('x' * 100000)\n", "output_limit", ""),
}


@pytest.fixture
def outside():
    """A file outside the sandbox that no program may touch."""
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "precious.txt"
        path.write_text("precious")
        yield path


@pytest.mark.parametrize("case", HOSTILE)
def test_sandbox_contains_a_hostile_program(case, outside):
    code, status, said = HOSTILE[case]
    before = set(Path(tempfile.gettempdir()).glob("crescent-sandbox-*"))
    outcome = run_python(code.format(outside=str(outside), home=str(Path.home())), limits=QUICK)
    assert outcome.status == status, (outcome.status, outcome.stderr[-500:])
    assert said in outcome.stderr
    assert outcome.seconds < QUICK.wall_s + 2
    assert outside.read_text() == "precious" and not Path(f"{outside}.pwned").exists()
    assert set(Path(tempfile.gettempdir()).glob("crescent-sandbox-*")) == before  # removed


def test_sandbox_environment_holds_no_secrets(monkeypatch):
    monkeypatch.setenv("OPENAI_API_KEY", "sk-do-not-leak")
    monkeypatch.setenv("WANDB_API_KEY", "wandb-do-not-leak")
    outcome = run_python("import os\nprint(dict(os.environ))\n"
                         "print(open('/proc/self/environ', 'rb').read())\n", limits=QUICK)
    assert "do-not-leak" not in outcome.stdout + outcome.stderr
    assert "sk-do-not-leak" == os.environ["OPENAI_API_KEY"]  # the caller's own is untouched


def test_sandbox_runs_repeat_what_a_program_returns(monkeypatch, tmp_path):
    # A set of strings iterates in the order of the run's string hashes, and `random` draws
    # from the run's seed: both are fixed, so a vote run again groups programs the same way.
    program = "import random\ndef f(xs):\n    return list(set(xs)), random.random()\n"
    calls = ["f(['john.doe@example.com', 'jane.smith@workplace.com', 'doe@example.com'])"]
    runs = {json.dumps(run_calls(program, calls, 2.0, 200, QUICK)[1]) for _ in range(4)}
    assert len(runs) == 1 and '"ok"' in runs.pop()
    # a value shown by its address would differ in every run: opaque, with nothing to compare
    _, ran = run_calls("def g():\n    return lambda: 1\n", ["g()", "g()()"], 2.0, 200, QUICK)
    assert [r[0] for r in ran["results"]] == ["opaque", "ok"]
    assert ran["results"][0][1] == "" and "<function g.<locals>.<lambda> at 0x" in ran["results"][0][2]
    # a call's limit is CPU time: waiting counts for nothing (the run's wall clock bounds it),
    # so how busy the machine is decides no timeout; computing past it does
    waits = "import time\ndef f():\n    time.sleep(1.5)\n    return 1\n"
    status, _, shown = run_calls(waits, ["f()"], 1.0, 200, QUICK)[1]["results"][0]
    assert (status, shown) == ("ok", "1")
    spins = "def f():\n    while True:\n        pass\n"
    assert run_calls(spins, ["f()", "1"], 1.0, 200, QUICK)[1]["results"][0][0] == "timeout"
    # nothing on its import path that the caller's environment or the program itself put there
    monkeypatch.setenv("PYTHONPATH", str(tmp_path))
    code = ("import sys\nopen('shadow.py', 'w').write('')\nprint(repr(sys.path))\n"
            "import shadow\n")
    outcome = run_python(code, limits=QUICK)
    assert outcome.status == "error" and "ModuleNotFoundError" in outcome.stderr
    assert str(tmp_path) not in outcome.stdout and "''" not in outcome.stdout


def test_sandbox_program_may_use_its_own_folder_and_the_standard_library():
    code = ("import json, os, collections\n"
            "open('notes.txt', 'w').write('kept')\n"
            "for name in os.listdir('.'):\n"
            "    os.remove(name)\n"
            "a, b = map(int, input().split())\n"
            "print(json.dumps({'sum': a + b, 'left': os.listdir('.')}))\n")
    outcome = run_python(code, stdin="2 3\n", limits=QUICK)
    assert outcome.ok, outcome.stderr
    assert outcome.stdout == '{"sum": 5, "left": []}\n'


def test_sandbox_reports_an_exception_and_the_caller_goes_on():
    failed = run_python("raise ValueError('bad input')\n", limits=QUICK)
    assert failed.status == "error" and failed.returncode == 1
    assert failed.stderr.strip().endswith("ValueError: bad input")
    assert run_python("print('next')\n", limits=QUICK).stdout == "next\n"


def test_sandbox_network_namespace_where_the_kernel_allows():
    # Where `unshare` can make a network namespace, a socket made before the audit hook would
    # find no route; the hook refuses it in every case (a test above).
    if network_namespace() is None:
        pytest.skip("this kernel allows no unprivileged network namespace here")
    outcome = run_python("print('isolated')\n", limits=QUICK)
    assert outcome.ok and outcome.isolated_network
