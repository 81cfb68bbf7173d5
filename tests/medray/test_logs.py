import json
import logging

from medray.logs import JsonFormatter, get_logger


def test_json_lines_carry_extra_fields():
    record = logging.makeLogRecord({"name": "medray.x", "levelname": "INFO", "msg": "done %d",
                                    "args": (3,), "lane": "emergency"})
    entry = json.loads(JsonFormatter().format(record))
    assert entry["message"] == "done 3" and entry["lane"] == "emergency" and entry["level"] == "INFO"


def test_loggers_live_under_medray():
    assert get_logger("preprocess").name == "medray.preprocess"
    assert get_logger("medray.cluster.status").name == "medray.cluster.status"
