from transcriber.cli import main

raise SystemExit(main())
