import sys

from fipo_trl.cli import main


sys.exit(main())
