import sys

from cryoconf.cli.main import main

sys.exit(main())
