from recoverprune.cli import main

raise SystemExit(main())
