from arrowsmith.cli import main

raise SystemExit(main())
