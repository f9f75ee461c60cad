from __future__ import annotations

from ptm.main import main

raise SystemExit(main())
