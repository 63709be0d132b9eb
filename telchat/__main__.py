from telchat.cli import main

raise SystemExit(main())
