"""Runs run.py's command line once per argument list, all in one process.

`python tests/run_many.py CASES.json OUT.json`: CASES.json holds a list of argument lists
(without the program name). Each goes through `absl.app.run(main, flags_parser=...)` exactly as
`python run.py ARGS` does, flags reset in between; OUT.json gets, per case, the exit status and
what was written to sys.stderr (a Python traceback included, if the case raised). TensorFlow is
imported once instead of once per case, which is what makes many wrong invocations cheap to
check. Cases that get as far as training share the process: give them `--train_steps=1`.
"""

import contextlib
import io
import json
import os
import subprocess
import sys
import traceback

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def run_many(cases: list[list[str]], cwd, timeout: int = 600) -> list[dict]:
    """Runs the cases in one subprocess started in `cwd` (a test's own directory);
    returns, per case, {"args", "code", "stderr"}."""
    with open(os.path.join(cwd, "cases.json"), "w") as f:
        json.dump(cases, f)
    proc = subprocess.run(
        [sys.executable, os.path.abspath(__file__), "cases.json", "out.json"],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    with open(os.path.join(cwd, "out.json")) as f:
        results = json.load(f)
    assert len(results) == len(cases)
    return results


def run_case(args: list[str]) -> dict:
    from absl import app

    import run

    run.FLAGS.unparse_flags()
    stderr = io.StringIO()
    code = None
    with contextlib.redirect_stderr(stderr):
        try:
            app.run(
                run.main, argv=[os.path.join(ROOT, "run.py"), *args], flags_parser=run._parse_flags
            )
        except SystemExit as exit_:
            code = exit_.code
        except BaseException:  # noqa: BLE001 (reported to the test, which fails)
            traceback.print_exc()
            code = "raised"
    return {"args": args, "code": code, "stderr": stderr.getvalue()}


if __name__ == "__main__":
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    sys.path.insert(0, ROOT)
    with open(sys.argv[1]) as f:
        cases = json.load(f)
    results = [run_case(args) for args in cases]
    with open(sys.argv[2], "w") as f:
        json.dump(results, f)
