import sys

from reltrust.cli import main

sys.exit(main())
