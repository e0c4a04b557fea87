import sys

from rewind_cli.main import main

sys.exit(main())
