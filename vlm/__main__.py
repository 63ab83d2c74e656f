"""`python -m vlm`: see `vlm.cli`."""

import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # before TensorFlow loads

from vlm.cli import main  # noqa: E402

sys.exit(main())
