import sys

from rewind.cli import main

sys.exit(main())
