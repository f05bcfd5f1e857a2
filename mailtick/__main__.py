import sys

from mailtick.cli import main

sys.exit(main())
