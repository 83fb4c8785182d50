from spooler.cli import main

raise SystemExit(main())
