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
import sys
import traceback

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, ROOT)

from absl import app  # noqa: E402

import run  # noqa: E402


def run_case(args: list[str]) -> dict:
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
    with open(sys.argv[1]) as f:
        cases = json.load(f)
    results = [run_case(args) for args in cases]
    with open(sys.argv[2], "w") as f:
        json.dump(results, f)
