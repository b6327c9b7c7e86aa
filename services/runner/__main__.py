"""`python -m services.runner`: a runner configured from the environment."""

from __future__ import annotations

import asyncio

from corral import logs
from corral.config import Settings
from services.runner.main import serve


def main() -> None:
    settings = Settings.from_env()
    logs.setup("runner")
    asyncio.run(serve(settings))


if __name__ == "__main__":
    main()
