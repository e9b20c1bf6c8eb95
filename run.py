"""Command-line entry point: `python run.py --mode=train_then_eval ...`.

Flags live here and only here (see ../shared/DESIGN.md). The command line,
the input pipeline and the run lifecycle are not built yet: until then the
library is used from Python (see README.md).
"""

import sys

from absl import app, flags

FLAGS = flags.FLAGS
flags.DEFINE_enum("mode", "train_then_eval", ["train", "eval", "train_then_eval"], "What to run.")


def main(argv):
    del argv
    sys.stderr.write(
        f"run.py: --mode={FLAGS.mode} is not available yet: the command line and the "
        "input pipeline are still being built. Use the Python API shown in README.md.\n"
    )
    return 2


if __name__ == "__main__":
    app.run(main)
