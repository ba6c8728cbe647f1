from polder.cli import main

raise SystemExit(main())
