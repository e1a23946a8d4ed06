"""Start and stop the services of the Bulk Shift stack.

Used by ``scripts/up.sh`` and by the integration tests: a Redis server, Label Studio,
the ML backend and its worker, each a child process bound to 127.0.0.1.
"""

from bulkshift.stack.labelstudio import LabelStudioServer
from bulkshift.stack.processes import StackError, free_port
from bulkshift.stack.redis_server import RedisServer

__all__ = ["LabelStudioServer", "RedisServer", "StackError", "free_port"]
