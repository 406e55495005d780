"""``python -m tuneloop.feedback label …``: the label commands without the rest of tuneloop."""

import sys

from tuneloop.feedback.cli import main

sys.exit(main())
