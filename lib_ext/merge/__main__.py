import sys

from lib_ext.merge.cli import main

sys.exit(main())
