from corral_app.cli import main

raise SystemExit(main())
