"""``python -m ml_backend [--host H] [--port P]``: serve the backend over HTTP."""

from __future__ import annotations

import argparse
import logging
import sys

from werkzeug.serving import run_simple

from bulkshift import store
from ml_backend.app import create_app
from ml_backend.config import configure_process


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m ml_backend", description="Bulk Shift's Label Studio ML backend"
    )
    parser.add_argument("--host", default="127.0.0.1", help="default: 127.0.0.1")
    parser.add_argument("--port", type=int, default=9090, help="default: 9090")
    parser.add_argument("--log-level", default="INFO")
    arguments = parser.parse_args(argv)

    settings = configure_process("ml_backend", arguments.log_level)
    # werkzeug logs every request line at INFO; query strings can carry tokens.
    logging.getLogger("werkzeug").setLevel(logging.WARNING)

    url = store.redis_url()
    app = create_app(settings, store.connect(url))
    logging.getLogger("ml_backend").info(
        "serving on http://%s:%d (basic auth %s, extractor %s, classifier %s, "
        "uncertainty %s)",
        arguments.host,
        arguments.port,
        "on" if settings.basic_auth else "off",
        settings.extractor,
        settings.classifier,
        settings.uncertainty,
    )
    run_simple(arguments.host, arguments.port, app, threaded=True, use_reloader=False)
    return 0


if __name__ == "__main__":
    sys.exit(main())
