import sys

from chatsmith.cli import main

sys.exit(main())
