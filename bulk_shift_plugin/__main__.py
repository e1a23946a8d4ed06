"""``python -m bulk_shift_plugin``: start the bulk-shift service."""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from bulk_shift_plugin.config import (
    ConfigError,
    Settings,
    connect_redis,
    read_api_key,
)


def parse_arguments(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m bulk_shift_plugin",
        description="Start the bulk-shift service: Label Studio webhooks, proposals, "
        "the review, shift-history and folder-naming pages. Every option falls back "
        "to the environment variable named in its help.",
    )
    parser.add_argument(
        "--host", help="address to listen on (BULKSHIFT_PLUGIN_HOST, default 127.0.0.1)"
    )
    parser.add_argument(
        "--port", type=int, help="port (BULKSHIFT_PLUGIN_PORT, default 9095)"
    )
    parser.add_argument(
        "--public-url",
        help="URL Label Studio uses to reach this "
        "service (BULKSHIFT_PLUGIN_URL, default http://HOST:PORT)",
    )
    parser.add_argument(
        "--redis-url",
        help="Redis URL (REDIS_URL; unset: an embedded "
        "redis-server under BULKSHIFT_DATA_DIR)",
    )
    parser.add_argument(
        "--label-studio-url",
        help="Label Studio URL (LABEL_STUDIO_URL, else http://127.0.0.1:"
        "BULKSHIFT_LS_PORT, port 8080 unless set)",
    )
    parser.add_argument(
        "--api-key-file",
        type=Path,
        help="file holding the Label Studio API key, or the credentials.json "
        "scripts/up.sh writes (else LABEL_STUDIO_API_KEY)",
    )
    parser.add_argument(
        "--project",
        type=int,
        action="append",
        dest="projects",
        help="register the webhook for this Label Studio project id "
        "(repeatable; BULKSHIFT_PROJECTS=1,2)",
    )
    parser.add_argument(
        "--auto-apply",
        action="store_true",
        default=None,
        help="accept large confident proposals without review (BULKSHIFT_AUTO_APPLY)",
    )
    parser.add_argument(
        "--auto-apply-min-size",
        type=int,
        help="BULKSHIFT_AUTO_APPLY_MIN_SIZE, default 20",
    )
    parser.add_argument(
        "--auto-apply-min-confidence",
        type=float,
        help="BULKSHIFT_AUTO_APPLY_MIN_CONFIDENCE, default 0.9",
    )
    parser.add_argument("--log-level", default="INFO")
    return parser.parse_args(argv)


def main(argv=None) -> int:
    arguments = parse_arguments(argv)
    logging.basicConfig(
        level=arguments.log_level.upper(),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    # Werkzeug's access log would print every URL; keep it at warnings.
    logging.getLogger("werkzeug").setLevel(logging.WARNING)
    # httpx logs every request URL to Label Studio at INFO; the service's own lines
    # say what was decided.
    logging.getLogger("httpx").setLevel(logging.WARNING)

    from bulk_shift_plugin.app import create_app
    from bulk_shift_plugin.labelstudio import LabelStudioGateway
    from bulk_shift_plugin.service import AutoApply, BulkShiftService

    try:
        settings = Settings.from_environment(
            host=arguments.host,
            port=arguments.port,
            public_url=arguments.public_url,
            redis_url=arguments.redis_url,
            label_studio_url=arguments.label_studio_url,
            label_studio_api_key=(
                read_api_key(arguments.api_key_file) if arguments.api_key_file else None
            ),
            projects=tuple(arguments.projects) if arguments.projects else None,
            auto_apply=arguments.auto_apply,
            auto_apply_min_size=arguments.auto_apply_min_size,
            auto_apply_min_confidence=arguments.auto_apply_min_confidence,
        )
    except ConfigError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2

    redis_client = connect_redis(settings.redis_url)
    gateway = LabelStudioGateway(
        settings.label_studio_url, settings.label_studio_api_key
    )
    service = BulkShiftService(
        redis_client,
        gateway,
        auto_apply=AutoApply(
            enabled=settings.auto_apply,
            min_size=settings.auto_apply_min_size,
            min_confidence=settings.auto_apply_min_confidence,
        ),
    )
    app = create_app(service, settings.webhook_secret)

    from werkzeug.serving import make_server

    # Threaded: Label Studio sends webhooks synchronously while our own batch calls
    # to it are waiting, so the server must answer them meanwhile.
    server = make_server(settings.host, settings.port, app, threaded=True)
    for project in settings.projects:
        service.register(project, settings.service_url, settings.webhook_secret)
    logging.getLogger("bulk_shift_plugin").info(
        "bulk-shift service on %s (Label Studio %s, projects %s)",
        settings.service_url,
        settings.label_studio_url,
        ", ".join(map(str, settings.projects)) or "none registered",
    )
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    return 0


if __name__ == "__main__":
    sys.exit(main())
