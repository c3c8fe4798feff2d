from knowngood.cli import main

raise SystemExit(main())
