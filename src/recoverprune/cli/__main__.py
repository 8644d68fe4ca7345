from recoverprune.cli.main import main

raise SystemExit(main())
